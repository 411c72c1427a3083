"""Cal-QL against NumPy: the floored CQL penalty (the floor binds for policy samples and
must not touch uniform ones), the max-target backup; and the online returns-to-go
(terminated, time-limited and unfinished episodes) written into the replay."""
import math

import jax
import jax.numpy as jnp
import numpy as np

from o2o_jax import mc_returns
from o2o_jax.agents import calql, cql, sac
from o2o_jax.replay import buffers
from tests import numpy_ref as ref
from tests.helpers import random_batch
from tests.test_agents import perturb

OBS, ACT, B, N_ACT = 4, 2, 8, 3


def _np(x):
    return np.asarray(x, np.float64)


def np_sampled(agent, batch, key, n):
    """CQL's 3n actions and log-densities, regenerated from the key (as test_agents)."""
    k_rand, k_pi, k_next = jax.random.split(key, 3)
    acts = [_np(jax.random.uniform(k_rand, (B, n, ACT), minval=-1.0, maxval=1.0))]
    log_q = [np.full((B, n), -ACT * np.log(2.0))]
    for k, obs_key in ((k_pi, "observations"), (k_next, "next_observations")):
        mean, log_std = ref.actor(agent.actor.params, batch[obs_key])
        noise = _np(jax.random.normal(k, (n,) + mean.shape))
        a, lp = ref.tanh_gaussian_sample(mean[None], log_std[None], noise)
        acts.append(a.transpose(1, 0, 2))
        log_q.append(lp.T)
    return np.concatenate(acts, 1), np.concatenate(log_q, 1)


def test_floored_penalty_matches_numpy_and_spares_uniform_samples(tiny_agent_cfg):
    tiny_agent_cfg.cql_n_actions = N_ACT
    state = cql.create(jax.random.PRNGKey(5), OBS, ACT, tiny_agent_cfg)
    agent = perturb(state.ac, 6)
    state = state.replace(ac=agent)
    batch, key = random_batch(1, B, OBS, ACT), jax.random.PRNGKey(7)
    acts, log_q = np_sampled(agent, batch, key, N_ACT)
    obs_rep = np.repeat(_np(batch["observations"])[:, None], 3 * N_ACT, 1)
    q_ood = ref.critic(agent.critic.params, obs_rep, acts)              # [2, B, 3n]
    # The floor: per state, the median of its policy samples' Q (over both twins), so it
    # binds for about half of them; it lies above some uniform samples' Q too.
    floor = np.median(q_ood[:, :, N_ACT:].transpose(1, 0, 2).reshape(B, -1), axis=1)
    assert np.any(q_ood[:, :, :N_ACT] < floor[None, :, None])
    batch[mc_returns.KEY] = jnp.asarray(floor, jnp.float32)
    q_data = ref.critic(agent.critic.params, batch["observations"], batch["actions"])

    def np_penalty(floor_uniform_too):
        q = q_ood.copy()
        lo = 0 if floor_uniform_too else N_ACT
        q[:, :, lo:] = np.maximum(q[:, :, lo:], floor[None, :, None])
        lse = ref.logsumexp(q - log_q[None], axis=2)
        return np.sum(5.0 * (lse.mean(1) - q_data.mean(1)))

    got, info = cql.penalty(state, agent, agent.critic.params, batch, key,
                            jnp.asarray(q_data, jnp.float32), floor_key=mc_returns.KEY)
    np.testing.assert_allclose(got, np_penalty(False), rtol=1e-4)
    assert abs(np_penalty(True) - np_penalty(False)) > 1e-3       # the test can tell
    np.testing.assert_allclose(info["cql_floor_rate"],
                               np.mean(q_ood[:, :, N_ACT:] < floor[None, :, None]))
    assert 0.3 < float(info["cql_floor_rate"]) < 0.7
    # Without a floor key: plain CQL (the floor field is ignored).
    plain, _ = cql.penalty(state, agent, agent.critic.params, batch, key,
                           jnp.asarray(q_data, jnp.float32))
    lse = ref.logsumexp(q_ood - log_q[None], axis=2)
    np.testing.assert_allclose(plain, np.sum(5.0 * (lse.mean(1) - q_data.mean(1))),
                               rtol=1e-4)


def test_max_target_backup_matches_numpy(tiny_agent_cfg):
    agent = perturb(cql.create(jax.random.PRNGKey(1), OBS, ACT, tiny_agent_cfg).ac, 2)
    batch, key, n = random_batch(3, B, OBS, ACT), jax.random.PRNGKey(4), 5
    y = calql.max_target(agent, batch, key, n)
    mean, log_std = ref.actor(agent.actor.params, batch["next_observations"])
    noise = _np(jax.random.normal(key, (n,) + mean.shape))
    a, _ = ref.tanh_gaussian_sample(mean[None], log_std[None], noise)      # [n, B, A]
    next_obs = np.broadcast_to(_np(batch["next_observations"]), (n, B, OBS))
    q = ref.critic(agent.target_critic_params, next_obs, a).min(0).max(0)  # no entropy
    want = _np(batch["rewards"]) + 0.99 * (1 - _np(batch["dones"])) * q
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    # It is the TD target of the Cal-QL update's critic loss.
    loss, info = sac.critic_loss(agent.critic.params, agent, batch, jax.random.PRNGKey(9),
                                 target_fn=lambda ag, b, k: calql.max_target(ag, b, k, n))
    np.testing.assert_allclose(info["q_target"],
                               np.mean(calql.max_target(agent, batch, jax.random.split(
                                   jax.random.PRNGKey(9))[0], n)), rtol=1e-6)


def test_online_returns_to_go_by_hand():
    g = 0.9
    np.testing.assert_allclose(mc_returns.returns_to_go([1.0, 2.0, 3.0], g),
                               [1 + 0.9 * 2 + 0.81 * 3, 2 + 0.9 * 3, 3.0], rtol=1e-6)
    # Two seeds over 5 steps written at slots 10..14. Seed 0: an episode terminates at
    # step 1, the next is cut by the time limit at step 4 (same zero tail). Seed 1: one
    # episode ends at step 2; the next is unfinished and stays pending.
    p = mc_returns.PendingEpisodes(2, g)
    rewards = np.array([[1, 10], [2, 20], [3, 30], [4, 40], [5, 50]], np.float32)
    ended = np.array([[0, 0], [1, 0], [0, 1], [0, 0], [1, 0]], bool)
    for t in range(5):
        p.add(10 + t, rewards[t], ended[t])
    slots, values = p.take_writes(pad_slot=999)
    want0 = {10: 1 + 0.9 * 2, 11: 2.0, 12: 3 + 0.9 * 4 + 0.81 * 5, 13: 4 + 0.9 * 5, 14: 5.0}
    want1 = {10: 10 + 0.9 * 20 + 0.81 * 30, 11: 20 + 0.9 * 30, 12: 30.0}
    for s, want in ((0, want0), (1, want1)):
        got = {int(k): float(v) for k, v in zip(slots[s], values[s]) if k != 999}
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-6)
    assert list(slots[1]).count(999) == 2                     # padding
    assert p.take_writes(999) is None                         # nothing new
    # The unfinished episode survives a checkpoint and completes later.
    q = mc_returns.PendingEpisodes(2, g, state=p.state())
    q.add(15, np.array([0.0, 60.0]), np.array([False, True]))
    slots, values = q.take_writes(999)
    got = {int(k): float(v) for k, v in zip(slots[1], values[1]) if k != 999}
    np.testing.assert_allclose([got[13], got[14], got[15]],
                               [40 + 0.9 * 50 + 0.81 * 60, 50 + 0.9 * 60, 60.0], rtol=1e-6)
    assert all(k == 999 for k in slots[0])
    # Widths come in steps of `bucket` (few shapes, few compilations).
    r = mc_returns.PendingEpisodes(2, g)
    r.add(20, np.array([1.0, 1.0]), np.array([True, True]))
    assert r.take_writes(999, bucket=4)[0].shape == (2, 4)


def test_writes_land_in_the_online_store_and_padding_is_dropped():
    store = buffers.store_init(6, {"rewards": jnp.float32(0), mc_returns.KEY: jnp.float32(0)})
    store = buffers.store_add(store, {"rewards": jnp.arange(4, dtype=jnp.float32),
                                      mc_returns.KEY: jnp.full(4, -jnp.inf)})
    store = buffers.store_set(store, mc_returns.KEY, jnp.array([1, 3, 2 ** 30]),
                              jnp.array([7.0, 8.0, 9.0]))
    np.testing.assert_array_equal(store.data[mc_returns.KEY][:4], [-math.inf, 7, -math.inf, 8])
    np.testing.assert_array_equal(store.data[mc_returns.KEY][4:], [0, 0])
