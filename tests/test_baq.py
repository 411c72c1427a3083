"""BAQ (our reading) against NumPy: the uncertainty gate and its relaxation, the TD
weights, and the method-given priorities of the 'prioritized' replay."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax import online
from o2o_jax.agents import baq
from o2o_jax.replay import buffers
from o2o_jax.replay.modes import make_replay
from tests import numpy_ref as ref
from tests.helpers import random_batch

OBS, ACT, B = 4, 2, 16


def _np(x):
    return np.asarray(x, np.float64)


@pytest.fixture(scope="module")
def setup():
    from configs import base
    from o2o_jax import algorithm
    cfg = algorithm.get("baq").apply_preset(base.get_config())
    cfg.agent.hidden_dims = (16, 16)
    cfg.online.update(epochs=3, updates_per_epoch=10, first_epoch_multiplier=1)
    cfg.baq.update(lambda0=2.0, k=0.5)
    members = baq.create_members(jax.random.PRNGKey(0), OBS, ACT, cfg)
    return cfg, baq.to_online(members, cfg)


def one(tree):
    return jax.tree_util.tree_map(lambda x: np.asarray(x)[0], tree)


def test_relaxation_and_gate_match_numpy(setup):
    _, state = setup
    assert state.t_relax == 30.0                       # the run's online updates
    for t, want in ((0, 2.0), (15, 1.0), (30, 0.0), (45, 0.0)):
        assert float(baq.relax(state, t)) == pytest.approx(want)
    agent = state.cql.ac
    b = random_batch(1, B, OBS, ACT)
    mean, log_std = ref.actor(one(agent.actor.params), b["observations"])
    loss, info = baq.gated_bc(state, agent, b, jnp.asarray(mean, jnp.float32),
                              jnp.asarray(log_std, jnp.float32))
    mu = np.tanh(mean)
    q = ref.critic(one(agent.critic.params), b["observations"], mu)      # [2, B]
    u = q.std(0) / q.std(0).mean()
    mu_bc = np.tanh(ref.actor(state.bc.params, b["observations"])[0])
    want = 2.0 * np.mean(u * np.sum((mu - mu_bc) ** 2, -1))
    np.testing.assert_allclose(loss, want, rtol=1e-4)


def test_td_weights_match_numpy(setup):
    _, state = setup
    agent = state.cql.ac
    b = random_batch(2, B, OBS, ACT)
    _, w = baq.weighted_target(state, agent, b, jax.random.PRNGKey(3))
    mu = np.tanh(ref.actor(one(agent.actor.params), b["observations"])[0])
    mu_bc = np.tanh(ref.actor(state.bc.params, b["observations"])[0])
    np.testing.assert_allclose(w, np.exp(-0.5 * np.sum((mu - mu_bc) ** 2, -1)), rtol=1e-5)


def test_own_step_counter_and_offline_priorities(setup):
    _, state = setup
    b = random_batch(7, B, OBS, ACT)
    new, _ = jax.jit(baq.online_update)(state, b, jax.random.PRNGKey(8))
    assert int(new.step) == int(state.step) + 1 == 1
    data = random_batch(9, 50, OBS, ACT)
    got = baq.offline_priorities(state, data, chunk=16)         # 50 = 3 x 16 + 2 padded
    mu_bc = np.tanh(ref.actor(state.bc.params, data["observations"])[0])
    np.testing.assert_allclose(got, np.sum((_np(data["actions"]) - mu_bc) ** 2, -1) + 1e-3,
                               rtol=1e-5)
    # The replay's offline leaves start there.
    cfg, _ = setup
    oc = cfg.online.copy_and_resolve_references()
    s = online.init_state(None, data, jax.random.PRNGKey(1), oc, OBS, ACT, agent=state,
                          initial_priorities=baq.offline_priorities)
    leaves = np.asarray(s.replay.tree.nodes)[s.replay.tree.num_leaves_pow2:][:50]
    np.testing.assert_allclose(leaves, got, rtol=1e-6)


def test_prioritized_replay_writes_the_methods_priorities(setup):
    cfg, state = setup
    data = random_batch(4, 60, OBS, ACT)
    replay, _ = make_replay("prioritized").init(60, {k: v[0] for k, v in data.items()},
                                                None, cfg.online, OBS, ACT)
    replay = make_replay("prioritized").add(replay, random_batch(5, 20, OBS, ACT))
    s = online.OnlineState(agent=state, dr=None, replay=replay)
    step_cfg = online.StepConfig(batch_size=B, replay="prioritized",
                                 update_fn=baq.online_update)
    key = jax.random.PRNGKey(6)
    new, info = jax.jit(lambda s, d, k: online.online_step(s, d, k, step_cfg))(s, data, key)
    k_rl = jax.random.split(key, 4)[0]
    batch, idx = buffers.sample(replay, data, k_rl, B)
    mu_bc = np.tanh(ref.actor(state.bc.params, batch["observations"])[0])
    prio = np.sum((_np(batch["actions"]) - mu_bc) ** 2, -1) + 1e-3
    leaf = np.asarray(new.replay.tree.nodes)[new.replay.tree.num_leaves_pow2:]
    last = {int(i): p for i, p in zip(np.asarray(idx), prio)}
    np.testing.assert_allclose([leaf[i] for i in last], list(last.values()), rtol=1e-5)
    assert "priorities" not in info
    with pytest.raises(ValueError, match="priorities"):
        make_replay("prioritized").refresh(replay, None, data, batch, idx, None)
