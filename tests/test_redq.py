"""REDQ: the subset-min target against NumPy, the actor's mean over critics, and the
scanned UTD call against the same updates made one by one."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from o2o_jax.agents import actor_critic as ac
from o2o_jax.agents import redq, sac
from tests import numpy_ref as ref
from tests.helpers import random_batch

OBS, ACT, B, NQ = 4, 2, 8, 6


def _np(x):
    return np.asarray(x, np.float64)


def np_critics(params, obs, act):
    """[NQ, *batch] Q-values of every critic."""
    x = np.concatenate([_np(obs), _np(act)], -1)
    n = params["VmapCritic_0"]["Dense_0"]["kernel"].shape[0]
    return np.stack([ref.mlp(ref.critic_layers(params, j), x)[..., 0] for j in range(n)])


def make_agent(tiny_agent_cfg):
    tiny_agent_cfg.backup_entropy = True
    agent = ac.create(jax.random.PRNGKey(0), OBS, ACT, tiny_agent_cfg, num_qs=NQ,
                      actor_q="mean")
    noisy = jax.tree_util.tree_map(lambda x: x + 0.2 * jax.random.normal(
        jax.random.PRNGKey(1), x.shape), agent.critic.params)
    return agent.replace(target_critic_params=noisy, temp=agent.temp.replace(
        params={"log_value": jnp.float32(-1.2)}))


def test_subset_min_target_matches_numpy(tiny_agent_cfg):
    agent = make_agent(tiny_agent_cfg)
    batch, key = random_batch(2, B, OBS, ACT), jax.random.PRNGKey(3)
    y = redq.subset_target(agent, batch, key, subset=2)
    k_sub, k_a = jax.random.split(key)
    idx = np.asarray(jax.random.choice(k_sub, NQ, (2,), replace=False))
    assert idx[0] != idx[1]
    mean, log_std = ref.actor(agent.actor.params, batch["next_observations"])
    noise = _np(jax.random.normal(k_a, mean.shape))
    a, log_p = ref.tanh_gaussian_sample(mean, log_std, noise)
    q = np_critics(agent.target_critic_params, batch["next_observations"], a)
    want = _np(batch["rewards"]) + 0.99 * (1 - _np(batch["dones"])) * (
        q[idx].min(0) - np.exp(-1.2) * log_p)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    # It is not the min over all critics, and the subsets vary over keys.
    assert np.max(np.abs(q[idx].min(0) - q.min(0))) > 1e-4
    pairs = {tuple(sorted(np.asarray(jax.random.choice(k, NQ, (2,), replace=False))))
             for k in jax.random.split(jax.random.PRNGKey(8), 200)}
    assert len(pairs) == NQ * (NQ - 1) // 2


def test_actor_maximises_the_mean_over_critics(tiny_agent_cfg):
    agent = make_agent(tiny_agent_cfg)
    batch, key = random_batch(4, B, OBS, ACT), jax.random.PRNGKey(5)
    loss, _ = sac.actor_loss(agent.actor.params, agent, batch, key)
    mean, log_std = ref.actor(agent.actor.params, batch["observations"])
    a, log_p = ref.tanh_gaussian_sample(mean, log_std, _np(jax.random.normal(key, mean.shape)))
    q = np_critics(agent.critic.params, batch["observations"], a).mean(0)
    np.testing.assert_allclose(loss, np.mean(np.exp(-1.2) * log_p - q), rtol=1e-4)


def test_utd_scan_equals_sequential_updates(tiny_agent_cfg):
    agent = make_agent(tiny_agent_cfg)
    utd = 3
    batch, key = random_batch(6, utd * B, OBS, ACT), jax.random.PRNGKey(7)
    scanned, info = jax.jit(redq.make_update(utd, 2))(agent, batch, key)
    keys = jax.random.split(key, utd)
    minis = [jax.tree_util.tree_map(lambda x: x[i * B:(i + 1) * B], batch) for i in range(utd)]
    a = agent
    step = jax.jit(functools.partial(redq.critic_step, subset=2))
    for i in range(utd - 1):
        a, _ = step(a, minis[i], keys[i])
    a, want_info = jax.jit(functools.partial(
        sac.update, target_fn=functools.partial(redq.subset_target, subset=2)))(
        a, minis[-1], keys[-1])
    for x, y in zip(jax.tree_util.tree_leaves(scanned), jax.tree_util.tree_leaves(a)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(info["critic_loss"], want_info["critic_loss"], rtol=1e-5)
    # G critic updates, one actor and alpha update.
    assert int(scanned.critic.step) == utd and int(scanned.actor.step) == 1
    assert int(scanned.temp.step) == 1
