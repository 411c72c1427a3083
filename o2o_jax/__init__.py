"""o2o_jax: offline-to-online RL (balanced replay + pessimistic Q-ensemble) in JAX."""

__version__ = "0.1.0"
