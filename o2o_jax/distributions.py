"""Tanh-squashed diagonal Gaussians and the moment-matched ensemble policy (paper eq. 5).

A policy distribution is represented by its pre-tanh parameters `(mean, log_std)`,
arrays of shape [..., act_dim]. Everything here is a pure function of those arrays.
"""
import math

import jax
import jax.numpy as jnp

LOG_2 = math.log(2.0)
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
# Bounds on the ensemble's pre-tanh std (spec section 2): sigma_E in [e^-20, e^2].
ENSEMBLE_LOG_STD_MIN = -20.0
ENSEMBLE_LOG_STD_MAX = 2.0
# Actions are clipped to (-1 + eps, 1 - eps) before atanh when scoring given actions.
ATANH_EPS = 1e-6


def log_det_tanh_jacobian(z: jax.Array) -> jax.Array:
    """sum_d log(1 - tanh(z_d)^2), computed stably as 2 (log 2 - z - softplus(-2 z))."""
    return jnp.sum(2.0 * (LOG_2 - z - jax.nn.softplus(-2.0 * z)), axis=-1)


def gaussian_log_prob(z: jax.Array, mean: jax.Array, log_std: jax.Array) -> jax.Array:
    """Diagonal-Gaussian log-density of pre-tanh `z`, summed over the last axis."""
    eps = (z - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * eps ** 2 - log_std - HALF_LOG_2PI, axis=-1)


def sample(key: jax.Array, mean: jax.Array, log_std: jax.Array, sample_shape=()):
    """Reparameterised sample a = tanh(mean + std * eps) and its log-probability.

    `sample_shape` is prepended to the batch shape of `mean`, e.g. (n,) for n actions per state.
    Returns (actions, log_probs) with shapes [*sample_shape, *batch, act_dim] and
    [*sample_shape, *batch].
    """
    noise = jax.random.normal(key, tuple(sample_shape) + mean.shape, dtype=mean.dtype)
    z = mean + jnp.exp(log_std) * noise
    log_prob = (jnp.sum(-0.5 * noise ** 2 - log_std - HALF_LOG_2PI, axis=-1)
                - log_det_tanh_jacobian(z))
    return jnp.tanh(z), log_prob


def log_prob(mean: jax.Array, log_std: jax.Array, actions: jax.Array) -> jax.Array:
    """log pi(a) of given squashed actions in (-1, 1) (clipped to 1 - 1e-6 before atanh)."""
    a = jnp.clip(actions, -1.0 + ATANH_EPS, 1.0 - ATANH_EPS)
    z = jnp.arctanh(a)
    return gaussian_log_prob(z, mean, log_std) - log_det_tanh_jacobian(z)


def mode(mean: jax.Array) -> jax.Array:
    """Deterministic action tanh(mean)."""
    return jnp.tanh(mean)


def ensemble_moments(means: jax.Array, log_stds: jax.Array):
    """Moment-match N members' pre-tanh Gaussians (leading axis N) to one Gaussian.

    mu_E = mean_i mu_i;  sigma_E^2 = mean_i (sigma_i^2 + mu_i^2) - mu_E^2, with sigma_E
    clamped to [e^-20, e^2]. Returns (mean_E, log_std_E). Differentiable in all members.

    Computed as mean_i sigma_i^2 + mean_i (mu_i - mu_E)^2, the same quantity without the
    cancellation of the textbook form: in float32, mean(sigma^2 + mu^2) - mu_E^2 loses
    sigma^2 entirely when members agree on a large mean (mu = 5, sigma_i = e^-6: the
    variance rounds to 0 and sigma_E clamps to e^-20).
    """
    mean_e = jnp.mean(means, axis=0)
    var_e = (jnp.mean(jnp.exp(2.0 * log_stds), axis=0)
             + jnp.mean((means - mean_e) ** 2, axis=0))
    # Clamp in log space; the floor also keeps log() finite where var_e rounds to 0.
    log_std_e = 0.5 * jnp.log(jnp.maximum(var_e, math.exp(2.0 * ENSEMBLE_LOG_STD_MIN)))
    return mean_e, jnp.clip(log_std_e, ENSEMBLE_LOG_STD_MIN, ENSEMBLE_LOG_STD_MAX)
