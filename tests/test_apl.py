"""APL: the OORB replay's W switch on a scripted buffer, and GCQL's penalty gated by W."""
import jax
import jax.numpy as jnp
import numpy as np

from o2o_jax.agents import apl, cql
from o2o_jax.replay import buffers
from o2o_jax.replay.modes import make_replay
from tests.helpers import random_batch

OBS, ACT, M, ONLINE, WINDOW = 4, 2, 50, 30, 10


def scripted():
    """Offline item i has reward i; online item j (in insertion order) reward 1000 + j."""
    data = random_batch(0, M, OBS, ACT)
    data["rewards"] = jnp.arange(M, dtype=jnp.float32)
    replay = make_replay("oorb", oorb_window=WINDOW, oorb_online_prob=0.3)
    cfg = type("C", (), {"epochs": 1, "env_steps_per_epoch": 40})()
    state, _ = replay.init(M, {k: v[0] for k, v in data.items()}, None, cfg, OBS, ACT)
    new = random_batch(1, ONLINE, OBS, ACT)
    new["rewards"] = 1000.0 + jnp.arange(ONLINE, dtype=jnp.float32)
    return replay, replay.add(state, new), data


def test_oorb_batches_come_wholly_from_one_buffer_with_their_w():
    replay, state, data = scripted()
    sample = jax.jit(jax.vmap(lambda k: replay.sample(state, data, k, 64)))
    batch, idx = sample(jax.random.split(jax.random.PRNGKey(0), 2000))
    w = np.asarray(batch["w"])
    r = np.asarray(batch["rewards"])
    assert np.all(w == w[:, :1])                             # one source per batch
    online = w[:, 0] == 0
    recent = set(1000.0 + np.arange(ONLINE - WINDOW, ONLINE))
    aged = set(1000.0 + np.arange(ONLINE - WINDOW))
    assert set(r[online].ravel()) == recent                  # the newest 10, all of them
    off_values = set(r[~online].ravel())
    assert off_values == set(np.arange(M, dtype=float)) | aged   # dataset + aged-out items
    # P(online batch) = 0.3 (binomial, 5 sigma).
    assert abs(online.mean() - 0.3) < 5 * np.sqrt(0.3 * 0.7 / 2000)
    # Within the offline buffer, uniform over its M + 20 items.
    frac_aged = np.isin(r[~online], list(aged)).mean()
    assert abs(frac_aged - 20 / 70) < 0.02
    np.testing.assert_array_equal(np.asarray(batch["observations"][0]), np.asarray(
        buffers.gather(state, data, idx[0])["observations"]))


def test_oorb_without_online_data_draws_offline():
    replay, _, data = scripted()
    cfg = type("C", (), {"epochs": 1, "env_steps_per_epoch": 40})()
    empty, _ = replay.init(M, {k: v[0] for k, v in data.items()}, None, cfg, OBS, ACT)
    batch, idx = replay.sample(empty, data, jax.random.PRNGKey(1), 32)
    assert np.all(np.asarray(batch["w"]) == 1) and np.all(np.asarray(idx) < M)


def test_gcql_penalty_is_cql_on_offline_buffer_batches_only(tiny_agent_cfg):
    state = cql.create(jax.random.PRNGKey(2), OBS, ACT, tiny_agent_cfg)
    agent = state.ac
    batch, key = random_batch(3, 16, OBS, ACT), jax.random.PRNGKey(4)
    q = jnp.zeros((2, 16))
    plain, _ = cql.penalty(state, agent, agent.critic.params, batch, key, q)
    for w, want in ((1.0, float(plain)), (0.0, 0.0)):
        b = {**batch, "w": jnp.full((16,), w)}
        got, info = apl.gated_penalty(state, agent, agent.critic.params, b, key, q)
        np.testing.assert_allclose(float(got), want, rtol=1e-6)
        assert float(info["apl_w"]) == w
    assert abs(float(plain)) > 1e-3


def test_gctd3bc_bc_term_only_on_offline_buffer_batches():
    from configs import base
    from o2o_jax.agents import td3
    c = base.get_config().td3
    c.hidden_dims = (16, 16)
    state = td3.create(jax.random.PRNGKey(5), OBS, ACT, c, "td3_bc")
    batch = random_batch(6, 16, OBS, ACT)
    gated = state.replace(gate_bc=True)
    for w in (1.0, 0.0):
        b = {**batch, "w": jnp.full((16,), w)}
        got, info = td3.actor_loss(gated.actor.params, gated, gated.critic.params, b)
        want, want_info = td3.actor_loss(state.actor.params, state, state.critic.params, batch)
        bc = float(want_info["bc_mse"])
        assert bc > 1e-4
        np.testing.assert_allclose(float(got), float(want) - (1 - w) * bc, rtol=1e-5)
