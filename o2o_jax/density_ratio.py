"""Density ratio w(s, a) ~ d_online(s, a) / d_offline(s, a) for balanced replay (spec section 4).

* `dr_loss`: the Jensen-Shannon variational bound, minimised; its optimum is
  w = d_on / d_off.
* `priorities_from_ratio`: the sampling priorities of an RL batch, computed from
  the *pre-update* DR network with temperature T = 5 and normalised by the mean of
  w^(1/T) over the offline DR batch.
* `create_dr_state` / `dr_update` / `predict_ratio`: a small pure training helper
  around `networks.DensityRatio` (a flax `TrainState` with Adam).
"""
from typing import Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
from flax.training.train_state import TrainState

from o2o_jax import optim
from o2o_jax.networks import DensityRatio, make

DR_EPS = 1e-10
DR_TEMPERATURE = 5.0
PRIORITY_MIN = 1e-3
PRIORITY_MAX = 1e3


def dr_loss(w_offline: jax.Array, w_online: jax.Array, eps: float = DR_EPS) -> jax.Array:
    """mean_off log((w + 1) / 2) - mean_on log(2 w / (w + 1) + eps).

    f*(f'(w)) = log((w+1)/2) on offline samples and f'(w) = log(2w/(w+1)) on
    online samples of the Jensen-Shannon f-divergence; minimised at w = d_on/d_off.
    """
    off = jnp.mean(jnp.log((w_offline + 1.0) / 2.0))
    on = jnp.mean(jnp.log(2.0 * w_online / (w_online + 1.0) + eps))
    return off - on


def priorities_from_ratio(w_rl_batch: jax.Array, w_offline_dr_batch: jax.Array,
                          temperature: float = DR_TEMPERATURE,
                          eps: float = DR_EPS) -> jax.Array:
    """clip( w^(1/T) / (mean(w_off^(1/T)) + eps), 1e-3, 1e3 ) for each w of the RL batch.

    `w_rl_batch`: ratios of the sampled RL batch; `w_offline_dr_batch`: ratios of
    the offline DR batch (the normaliser). No gradient flows through the result.
    """
    inv_t = 1.0 / temperature
    w_rl = jax.lax.stop_gradient(w_rl_batch)
    w_off = jax.lax.stop_gradient(w_offline_dr_batch)
    normaliser = jnp.mean(jnp.power(w_off, inv_t)) + eps
    return jnp.clip(jnp.power(w_rl, inv_t) / normaliser, PRIORITY_MIN, PRIORITY_MAX)


def create_dr_state(key: jax.Array, obs_dim: int, act_dim: int,
                    hidden_dims: Sequence[int] = (256, 256), lr: float = 3e-4,
                    activation: str = "relu") -> TrainState:
    """A fresh `DensityRatio` network with an Adam `TrainState` (`apply_fn` = module.apply)."""
    if obs_dim <= 0 or act_dim <= 0:
        raise ValueError(f"obs_dim and act_dim must be positive, got {obs_dim}, {act_dim}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    module = make(DensityRatio, hidden_dims=tuple(hidden_dims), activation=activation)
    params = jax.jit(module.init)(key, jnp.zeros((1, obs_dim), jnp.float32),
                                  jnp.zeros((1, act_dim), jnp.float32))["params"]
    return TrainState.create(apply_fn=module.apply, params=params, tx=optim.adam(lr))


def predict_ratio(state: TrainState, observations: jax.Array, actions: jax.Array,
                  params=None) -> jax.Array:
    """w(s, a) >= 0 for a batch, with `state.params` unless `params` is given."""
    params = state.params if params is None else params
    return state.apply_fn({"params": params}, observations, actions)


def dr_update(state: TrainState, offline_obs: jax.Array, offline_act: jax.Array,
              online_obs: jax.Array, online_act: jax.Array
              ) -> Tuple[TrainState, Dict[str, jax.Array]]:
    """One Adam step on `dr_loss`; metrics are for the pre-update parameters.

    Returns (state, {"dr_loss", "w_offline", "w_online"}), the last two being the
    mean ratio on the offline and online batches.
    """
    def loss_fn(params):
        w_off = predict_ratio(state, offline_obs, offline_act, params)
        w_on = predict_ratio(state, online_obs, online_act, params)
        return dr_loss(w_off, w_on), (w_off, w_on)

    (loss, (w_off, w_on)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads)
    return state, {"dr_loss": loss, "w_offline": jnp.mean(w_off), "w_online": jnp.mean(w_on)}
