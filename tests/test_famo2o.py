"""FamO2O against NumPy on fixed parameters: the sin/cos encoding, the balance-conditioned
actor loss (offline: Uniform beta; online: the balance model's beta), the balance-model
loss and its temperature's step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax.agents import famo2o
from tests import numpy_ref as ref
from tests.helpers import random_batch
from tests.test_iql import np_gauss_logp, np_value

OBS, ACT, B = 4, 2, 16


def _np(x):
    return np.asarray(x, np.float64)


def np_encode(beta, d=6, n=10_000.0):
    """The FamO2O code's sin_cos_skill_func, written out."""
    k = _np(beta).reshape(-1, 1)
    i = np.arange(0, d / 2, 1)
    inner = k / (n ** (2 * i / d))
    out = np.empty((k.shape[0], d))
    out[:, 0:d:2] = np.sin(inner)
    out[:, 1:d:2] = np.cos(inner)
    return out


def np_gaussian_head(params, x, tanh_mean=True, lo=-5.0, hi=2.0):
    mlp_p = params["MLP_0"]
    layers = [(_np(mlp_p[f"Dense_{i}"]["kernel"]), _np(mlp_p[f"Dense_{i}"]["bias"]))
              for i in range(len(mlp_p))]
    h = np.maximum(ref.mlp(layers, _np(x)), 0.0)
    mean = h @ _np(params["mean"]["kernel"]) + _np(params["mean"]["bias"])
    return (np.tanh(mean) if tanh_mean else mean), np.broadcast_to(
        np.clip(_np(params["log_std"]), lo, hi), mean.shape)


@pytest.fixture(scope="module")
def member():
    from configs import base
    cfg = base.get_config()
    cfg.iql.hidden_dims = (16, 16)
    m = jax.jit(lambda k: famo2o.create(k, OBS, ACT, cfg))(jax.random.PRNGKey(0))
    perturb = lambda t, k: jax.tree_util.tree_map(   # noqa: E731
        lambda x: x + 0.3 * jax.random.normal(k, x.shape), t)
    s = m.iql
    s = s.replace(target_critic_params=perturb(s.target_critic_params, jax.random.PRNGKey(1)),
                  value=s.value.replace(params=perturb(s.value.params, jax.random.PRNGKey(2))))
    return m.replace(iql=s, balance=m.balance.replace(
        params={**m.balance.params, "log_std": jnp.array([-0.4])}))


def test_encoding_matches_the_code():
    beta = np.array([1.0, 2.5, 4.99, 3.0])
    np.testing.assert_allclose(famo2o.encode(jnp.asarray(beta), 6, 1e4), np_encode(beta),
                               rtol=1e-5, atol=1e-6)


def np_actor_loss(m, new_value_params, batch, beta):
    obs, a = _np(batch["observations"]), _np(batch["actions"])
    adv = (ref.critic(m.iql.target_critic_params, obs, a).min(0)
           - np_value(new_value_params, obs))
    w = np.minimum(np.exp(beta * adv), m.iql.max_weight)
    mean, log_std = np_gaussian_head(m.iql.actor.params,
                                     np.concatenate([obs, np_encode(beta)], -1))
    return -np.mean(w * np_gauss_logp(a, mean, log_std))


@pytest.mark.parametrize("online", [False, True])
def test_balance_conditioned_actor_loss_matches_numpy(member, online):
    m = member.replace(online=online)
    batch = random_batch(3, B, OBS, ACT)
    key = jax.random.PRNGKey(4)
    new, info = jax.jit(famo2o.update)(m, batch, key)
    k_beta = jax.random.split(key)[1]
    if online:   # a sample of the pre-update balance model
        mean, log_std = np_gaussian_head(m.balance.params, batch["observations"],
                                         tanh_mean=False, lo=-10.0)
        noise = _np(jax.random.normal(k_beta, mean.shape))
        u = np.tanh(mean + np.exp(log_std) * noise)[:, 0]
        beta = 1.0 + (u + 1.0) / 2.0 * 4.0
    else:        # Uniform[beta_min, beta_max]
        beta = _np(jax.random.uniform(k_beta, (B,), minval=1.0, maxval=5.0))
    assert beta.min() >= 1.0 and beta.max() <= 5.0 and beta.std() > 0.05
    np.testing.assert_allclose(info["beta_actor"], beta.mean(), rtol=1e-5)
    np.testing.assert_allclose(info["actor_loss"],
                               np_actor_loss(m, new.iql.value.params, batch, beta), rtol=2e-4)


def test_balance_loss_and_temperature_step_match_numpy(member):
    batch = random_batch(5, B, OBS, ACT)
    key = jax.random.PRNGKey(6)
    new, info = jax.jit(famo2o.update)(member, batch, key)
    k_u, k_a = jax.random.split(jax.random.split(key)[0])
    obs = _np(batch["observations"])
    mean, log_std = np_gaussian_head(member.balance.params, obs, tanh_mean=False, lo=-10.0)
    eps = _np(jax.random.normal(k_u, mean.shape))
    z = mean + np.exp(log_std) * eps
    u = np.tanh(z)
    log_p = (np.sum(-0.5 * eps ** 2 - log_std - 0.5 * np.log(2 * np.pi), -1)
             - np.sum(np.log(1 - u ** 2), -1))
    beta = 1.0 + (u[:, 0] + 1.0) / 2.0 * 4.0
    a_mean, a_log_std = np_gaussian_head(member.iql.actor.params,
                                         np.concatenate([obs, np_encode(beta)], -1))
    a = a_mean + np.exp(a_log_std) * _np(jax.random.normal(k_a, a_mean.shape))
    q = ref.critic(member.iql.target_critic_params, obs, a).min(0)
    np.testing.assert_allclose(info["balance_loss"], np.mean(1.0 * log_p - q), rtol=2e-4,
                               atol=1e-5)
    entropy = -np.mean(log_p)
    np.testing.assert_allclose(info["balance_entropy"], entropy, rtol=2e-4, atol=1e-5)
    # c's loss c (H + 0.5): Adam's first step moves log c by -lr sign(H + 0.5).
    new_log_c = float(new.temp.params["log_value"])
    assert np.sign(new_log_c) == -np.sign(entropy + 0.5)
    np.testing.assert_allclose(abs(new_log_c), 3e-4, rtol=1e-3)
    # The balance model moved; the universal actor's step did not use it (it moved by AWR).
    moved = [float(np.max(np.abs(_np(x) - _np(y)))) for x, y in zip(
        jax.tree_util.tree_leaves(new.balance.params),
        jax.tree_util.tree_leaves(member.balance.params))]
    assert min(moved) > 0
