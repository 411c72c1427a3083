"""Small data makers and statistics shared by the tests."""
import jax.numpy as jnp
import numpy as np
from scipy import stats


def random_batch(seed: int, b: int, obs_dim: int, act_dim: int, dones: str = "random"):
    """A transition batch of float32 arrays; `dones` "random" or "alternate" (0, 1, 0, ...)."""
    rng = np.random.default_rng(seed)
    done = (rng.integers(0, 2, size=b) if dones == "random"
            else np.array([0, 1] * (b // 2) + [0] * (b % 2)))
    return {
        "observations": jnp.asarray(rng.normal(size=(b, obs_dim)), jnp.float32),
        "actions": jnp.asarray(rng.uniform(-0.9, 0.9, size=(b, act_dim)), jnp.float32),
        "rewards": jnp.asarray(rng.normal(size=b), jnp.float32),
        "next_observations": jnp.asarray(rng.normal(size=(b, obs_dim)), jnp.float32),
        "dones": jnp.asarray(done, jnp.float32),
    }


def pooled_chisquare(counts: np.ndarray, probs: np.ndarray, min_expected: float = 5.0):
    """Chi-square GOF, pooling every bin with expected count < min_expected into one bin."""
    expected = probs * counts.sum()
    small = expected < min_expected
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return stats.chisquare(obs, exp)
