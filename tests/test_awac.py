"""AWAC losses against a float64 NumPy re-implementation, single agent and 3-member ensemble.

Random draws are regenerated with the key derivation documented in `awac.py`; everything
else (policy, moment matching, twin critics, advantages, weights, log-densities) is
recomputed here in NumPy.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax import distributions as dist
from o2o_jax.agents import actor_critic as ac
from o2o_jax.agents import awac, ensemble
from tests import numpy_ref as ref
from tests.helpers import random_batch

OBS, ACT, B = 4, 2, 8
N_MEMBERS = 3

actor_loss = jax.jit(awac.actor_loss, static_argnums=(4, 5, 6))


def make_batch(seed=0, b=B):
    return random_batch(seed, b, OBS, ACT)


def _member(tree, i):
    # NumPy slicing: eager jax indexing compiles a kernel per leaf shape (slow on CPU).
    return jax.tree_util.tree_map(lambda x: np.asarray(x)[i], tree)


def np_policy(agent, obs):
    """Pre-tanh (mean, log_std): one actor, or the moment-matched ensemble (eq. 5)."""
    if agent.members == 0:
        return ref.actor(agent.actor.params, obs)
    ms, ls = zip(*(ref.actor(_member(agent.actor.params, i), obs)
                   for i in range(agent.members)))
    ms, ls = np.stack(ms), np.stack(ls)
    mean_e = ms.mean(0)
    var_e = (np.exp(2 * ls) + ms ** 2).mean(0) - mean_e ** 2
    return mean_e, np.clip(0.5 * np.log(var_e), -20, 2)


def np_q(agent, obs, act):
    """Q used by AWAC: min of twins; ensemble: mean over members of each member's min."""
    if agent.members == 0:
        return ref.critic(agent.critic.params, obs, act).min(0)
    return np.mean([ref.critic(_member(agent.critic.params, i), obs, act).min(0)
                    for i in range(agent.members)], 0)


def np_log_prob(mean, log_std, a):
    z = np.arctanh(a)
    return (np.sum(-0.5 * ((z - mean) / np.exp(log_std)) ** 2 - log_std
                   - 0.5 * np.log(2 * np.pi), -1) - np.sum(np.log(1 - a ** 2), -1))


def np_awac(agent, batch, key, lam, max_weight, n):
    """(raw weights exp(A / lambda), clipped weights, actor loss) in float64."""
    obs = np.asarray(batch["observations"], np.float64)
    a_data = np.asarray(batch["actions"], np.float64)
    mean, log_std = np_policy(agent, obs)
    noise = np.asarray(jax.random.normal(key, (n,) + mean.shape), np.float64)
    a_pi, _ = ref.tanh_gaussian_sample(mean[None], log_std[None], noise)     # [n, B, A]
    v = np.mean(np_q(agent, np.broadcast_to(obs, (n,) + obs.shape), a_pi), 0)
    adv = np_q(agent, obs, a_data) - v
    raw = np.exp(adv / lam)
    w = np.minimum(raw, max_weight)
    return raw, w, -np.mean(w * np_log_prob(mean, log_std, a_data))


@pytest.fixture(scope="module")
def agents():
    from configs import base
    cfg = base.get_agent_config()
    cfg.hidden_dims = (16, 16)
    cfg.bc_steps = 0
    create = jax.jit(lambda k: ac.create(k, OBS, ACT, cfg))   # one compile for all agents
    single = create(jax.random.PRNGKey(1))
    members = [create(k) for k in jax.random.split(jax.random.PRNGKey(2), N_MEMBERS)]
    members = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *members)
    return {"single": single, "ensemble": ensemble.to_ensemble(members)}


@pytest.mark.parametrize("kind,n_samples", [("single", 1), ("ensemble", 3)])
def test_weights_clip_and_actor_loss_match_numpy(agents, kind, n_samples):
    agent = agents[kind]
    batch, key, lam = make_batch(3), jax.random.PRNGKey(4), 0.05
    raw, _, _ = np_awac(agent, batch, key, lam, math.inf, n_samples)
    # Clip at the median raw weight: half the batch is clipped, half is not.
    max_weight = float(np.median(raw))
    raw, w, expected = np_awac(agent, batch, key, lam, max_weight, n_samples)
    assert 0 < np.sum(raw > max_weight) < B and np.all(np.diff(np.sort(raw)) > 1e-3)

    loss, info = actor_loss(agent.actor.params, agent, batch, key, lam, max_weight, n_samples)
    np.testing.assert_allclose(info["weights"], w, rtol=2e-4)
    np.testing.assert_allclose(loss, expected, rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(info["awac_clip_fraction"], np.mean(raw >= max_weight))


def test_actor_gradient_does_not_flow_through_weights(agents):
    """The actor gradient is that of -mean(w log pi(a|s)) with w held fixed."""
    agent = agents["single"]
    batch, key, lam, max_weight = make_batch(5), jax.random.PRNGKey(6), 0.1, 3.0
    _, w, _ = np_awac(agent, batch, key, lam, max_weight, 1)
    w = jnp.asarray(w, jnp.float32)

    @jax.jit
    def grads(params):
        g_awac = jax.grad(lambda p: awac.actor_loss(p, agent, batch, key, lam, max_weight)[0])(
            params)
        g_fixed = jax.grad(lambda p: -jnp.mean(w * dist.log_prob(
            *ac.policy(agent, p, batch["observations"]), batch["actions"])))(params)
        return g_awac, g_fixed

    g_awac, g_fixed = grads(agent.actor.params)
    for got, want in zip(jax.tree_util.tree_leaves(g_awac), jax.tree_util.tree_leaves(g_fixed)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_update_moves_actor_and_critic_not_temperature(agents):
    agent = agents["ensemble"]
    batch, key = make_batch(7), jax.random.PRNGKey(8)
    update = jax.jit(awac.make_update(awac_lambda=1.0, max_weight=100.0))
    new, info = update(agent, batch, key)
    leaves = jax.tree_util.tree_leaves
    for got, want in zip(leaves(new.temp), leaves(agent.temp)):
        np.testing.assert_array_equal(got, want)
    for name in ("actor", "critic"):
        moved = [np.max(np.abs(np.asarray(a) - np.asarray(b))) for a, b in
                 zip(leaves(getattr(new, name).params), leaves(getattr(agent, name).params))]
        assert min(moved) > 0, name
    for tgt, old, crit in zip(leaves(new.target_critic_params),
                              leaves(agent.target_critic_params), leaves(new.critic.params)):
        np.testing.assert_allclose(tgt, (1 - agent.tau) * old + agent.tau * crit,
                                   rtol=1e-5, atol=1e-7)
    assert set(info) >= {"critic_loss", "actor_loss", "awac_weight", "advantage"}
    assert all(np.ndim(v) == 0 for v in info.values())
    with pytest.raises(ValueError, match="backup_entropy"):
        awac.update(agent.replace(backup_entropy=True), batch, key, awac_lambda=1.0,
                    max_weight=100.0)
