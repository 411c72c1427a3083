"""The fused online step against the same step computed piece by piece, outside it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from o2o_jax import density_ratio as dr
from o2o_jax import online
from o2o_jax.agents import ensemble, sac
from o2o_jax.replay import buffers
from o2o_jax.replay.modes import make_replay
from tests.helpers import random_batch

OBS, ACT, M = 4, 2, 200


def offline_data(seed=0, m=M):
    return random_batch(seed, m, OBS, ACT)


def online_cfg(replay="balanced"):
    c = base.get_config().online
    c.epochs, c.env_steps_per_epoch, c.replay = 3, 50, replay
    c.dr_hidden_dims = (16, 16)
    return c


def make_state(replay="balanced", n=3):
    a = base.get_agent_config()
    a.hidden_dims = (16, 16)
    members = ensemble.create_members(jax.random.PRNGKey(0), OBS, ACT, a, n)
    data = offline_data()
    state = online.init_state(members, data, jax.random.PRNGKey(1), online_cfg(replay), OBS, ACT)
    new = offline_data(seed=5, m=50)
    new["observations"] = new["observations"] + 2.0   # online data look different
    state = state.replace(replay=make_replay(replay).add(state.replay, new))
    return state, data


def leaves_close(a, b, **kw):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


def test_fused_step_equals_piecewise_step():
    state, data = make_state()
    cfg = online.StepConfig(batch_size=32, dr_batch_size=32, fifo_window=1000)
    key = jax.random.PRNGKey(7)
    fused, info = jax.jit(lambda s, d, k: online.online_step(s, d, k, cfg))(state, data, key)

    # Piece by piece, each from the pre-update state.
    k_rl, k_off, k_on, k_agent = jax.random.split(key, 4)
    batch, idx = buffers.sample(state.replay, data, k_rl, 32)
    agent, _ = jax.jit(sac.update)(state.agent, batch, k_agent)
    off = buffers.sample_uniform_offline(data, k_off, 32)
    on = buffers.store_sample_recent(state.replay.online, k_on, 32, 1000)
    w = lambda o, a: state.dr.apply_fn({"params": state.dr.params}, o, a)
    w_rl, w_off, w_on = (np.asarray(w(b["observations"], b["actions"]), np.float64)
                         for b in (batch, off, on))
    prio = np.clip(w_rl ** 0.2 / (np.mean(w_off ** 0.2) + 1e-10), 1e-3, 1e3)
    grads = jax.grad(lambda p: dr.dr_loss(
        state.dr.apply_fn({"params": p}, off["observations"], off["actions"]),
        state.dr.apply_fn({"params": p}, on["observations"], on["actions"])))(state.dr.params)
    dr_state = state.dr.apply_gradients(grads=grads)

    leaves_close(fused.agent, agent, rtol=1e-5, atol=1e-6)
    leaves_close(fused.dr, dr_state, rtol=1e-5, atol=1e-6)
    # The sampled leaves now hold the pre-update-DR priorities (last write of duplicates).
    leaf = np.asarray(fused.replay.tree.nodes)[fused.replay.tree.num_leaves_pow2:]
    last = {int(i): p for i, p in zip(np.asarray(idx), prio)}
    np.testing.assert_allclose([leaf[i] for i in last], list(last.values()), rtol=1e-5)
    untouched = np.setdiff1d(np.arange(M + 150), list(last))
    before = np.asarray(state.replay.tree.nodes)[state.replay.tree.num_leaves_pow2:]
    np.testing.assert_array_equal(leaf[untouched], before[untouched])
    assert float(fused.replay.max_priority) >= max(float(state.replay.max_priority), prio.max()) - 1e-6
    np.testing.assert_allclose(info["offline_fraction"], np.mean(np.asarray(idx) < M))
    np.testing.assert_allclose(info["w_offline"], w_off.mean(), rtol=1e-5)
    np.testing.assert_allclose(info["w_online"], w_on.mean(), rtol=1e-5)


@pytest.mark.parametrize("mode", ["uniform", "online_only"])
def test_other_replay_modes_sample_where_they_should(mode):
    state, data = make_state(mode)
    cfg = online.StepConfig(batch_size=512, replay=mode)
    batch, idx = online.rl_batch(state.replay, data, jax.random.PRNGKey(3), cfg)
    idx = np.asarray(idx)
    size = M + 50
    if mode == "uniform":
        assert idx.min() >= 0 and idx.max() < size
        assert abs(np.mean(idx < M) - M / size) < 0.06   # uniform over all 250 items
    else:
        assert idx.min() >= M and idx.max() < size
    np.testing.assert_array_equal(np.asarray(batch["observations"]),
                                  np.asarray(buffers.gather(state.replay, data, jnp.asarray(idx))["observations"]))


@pytest.mark.parametrize("ratio", [0.5, 0.25, 0.0, 1.0])
def test_mixed_replay_takes_a_fixed_offline_share(ratio):
    """mixed: round(ratio B) offline items first, the rest online; each part uniform."""
    state, data = make_state("mixed")
    cfg = online.StepConfig(batch_size=400, replay="mixed", offline_ratio=ratio)
    batch, idx = online.rl_batch(state.replay, data, jax.random.PRNGKey(3), cfg)
    idx = np.asarray(idx)
    n_off = int(round(ratio * 400))
    assert np.all(idx[:n_off] < M) and np.all((idx[n_off:] >= M) & (idx[n_off:] < M + 50))
    if 0 < ratio < 1:   # each part covers its range evenly (chi-square over 5 bins each)
        from scipy import stats
        for part, lo, hi in ((idx[:n_off], 0, M), (idx[n_off:], M, M + 50)):
            counts = np.histogram(part, bins=5, range=(lo, hi))[0]
            assert stats.chisquare(counts).pvalue > 1e-3
    np.testing.assert_array_equal(np.asarray(batch["observations"]), np.asarray(
        buffers.gather(state.replay, data, jnp.asarray(idx))["observations"]))
    with pytest.raises(ValueError, match="offline_ratio"):
        make_replay("mixed", offline_ratio=1.5)


@pytest.mark.parametrize("mode", ["uniform", "online_only", "mixed"])
def test_uniform_modes_build_no_density_ratio_net_or_sum_tree(mode):
    """make_replay(mode): the uniform modes hold the online ring buffer alone, and their
    fused step leaves it as it was (no priorities to write back)."""
    state, data = make_state(mode)
    assert state.dr is None
    assert not hasattr(state.replay, "tree")
    leaves = jax.tree_util.tree_leaves(state.replay)
    online_items = online_cfg().epochs * online_cfg().env_steps_per_epoch
    assert sum(x.size for x in leaves) == sum(x.size for x in jax.tree_util.tree_leaves(
        buffers.store_init(online_items, {k: v[0] for k, v in data.items()}))) 
    cfg = online.StepConfig(batch_size=32, replay=mode)
    after, info = jax.jit(lambda s, d, k: online.online_step(s, d, k, cfg))(
        state, data, jax.random.PRNGKey(2))
    leaves_close(after.replay, state.replay, rtol=0, atol=0)
    assert "w_rl" not in info and "dr_loss" not in info


def test_scanned_epoch_equals_repeated_steps():
    state, data = make_state()
    cfg = online.StepConfig(batch_size=16, dr_batch_size=16)
    key = jax.random.PRNGKey(11)
    copy = lambda t: jax.tree_util.tree_map(jnp.copy, t)
    scanned, info = online.make_train_epoch(3, cfg)(copy(state), data, key)
    step = jax.jit(lambda s, k: online.online_step(s, data, k, cfg))
    s = state
    step_infos = []
    for k in jax.random.split(key, 3):
        s, i = step(s, k)
        step_infos.append(i)
    leaves_close(scanned, s, rtol=2e-5, atol=2e-6)
    # Epoch means, and the first step's values as <key>_first_batch (rlkit's statistics).
    for k in ("critic_loss", "w_rl", "offline_fraction"):
        np.testing.assert_allclose(float(info[k]), np.mean([float(i[k]) for i in step_infos]),
                                   rtol=1e-5)
    for k in online.FIRST_BATCH_KEYS:
        np.testing.assert_allclose(float(info[k + "_first_batch"]), float(step_infos[0][k]),
                                   rtol=1e-5)
    # And the epoch's largest critic loss.
    for k in online.MAX_KEYS:
        np.testing.assert_allclose(float(info[k + "_max"]), max(float(i[k]) for i in step_infos),
                                   rtol=1e-5)

    # q1_data: the first twin of every member on the RL batch, at the pre-update critics.
    k_rl, _, _, _ = jax.random.split(jax.random.split(key, 3)[0], 4)
    batch, _ = buffers.sample(state.replay, data, k_rl, 16)
    from o2o_jax.agents import actor_critic as ac
    q = np.asarray(ac.q_values(state.agent, state.agent.critic.params, batch["observations"],
                               batch["actions"]))                       # [N, 2, B]
    np.testing.assert_allclose(float(step_infos[0]["q1_data"]), q[:, 0].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(step_infos[0]["q_data"]), q.mean(), rtol=1e-5)


def test_q_auroc_is_mann_whitney():
    state, data = make_state()
    obs, act = data["observations"][:64], data["actions"][:64]
    key = jax.random.PRNGKey(4)
    got = float(online.q_auroc(state.agent, obs, act, key))
    uni = jax.random.uniform(key, act.shape, minval=-1.0, maxval=1.0)
    pos = np.asarray(ensemble.q_ens(state.agent, obs, act))
    neg = np.asarray(ensemble.q_ens(state.agent, obs, uni))
    expected = np.mean([[1.0 if p > q else 0.5 if p == q else 0.0 for q in neg] for p in pos])
    assert abs(got - expected) < 1e-6


def test_to_ensemble_resets_temperature_and_optimizers():
    state, _ = make_state()
    assert float(state.agent.alpha) == pytest.approx(1.0)
    assert int(state.agent.actor.step) == 0 and state.agent.members == 3
    mu = jax.tree_util.tree_leaves(state.agent.critic.opt_state)
    assert all(float(jnp.abs(x).sum()) == 0 for x in mu if x.ndim > 0)


def first_adam_step(state, value=1.0):
    """|parameter change| of one Adam step on a constant gradient: the learning rate
    (Adam's first step is lr * g / (|g| + eps))."""
    grads = jax.tree_util.tree_map(lambda x: jnp.full_like(x, value), state.params)
    new = state.apply_gradients(grads=grads)
    deltas = [np.abs(np.asarray(a) - np.asarray(b)) for a, b in
              zip(jax.tree_util.tree_leaves(new.params), jax.tree_util.tree_leaves(state.params))]
    return np.concatenate([d.ravel() for d in deltas])


@pytest.mark.parametrize("fresh", [True, False])
def test_online_optimizers_use_the_online_learning_rates(fresh):
    """Reference: policy lr = alpha lr = 3e-4 online, while offline CQL used 1e-4."""
    from o2o_jax import algorithm
    cfg = base.get_config()
    cfg.agent.hidden_dims = (16, 16)
    cfg.online.fresh_optimizers = fresh
    cfg.online.critic_lr = 2e-4     # a value of its own, to tell the three apart
    assert cfg.agent.actor_lr == 1e-4 and cfg.agent.temp_lr == 1e-4
    from o2o_jax.agents import cql
    members = cql.create_members(jax.random.PRNGKey(0), OBS, ACT, cfg.agent, 3)
    np.testing.assert_allclose(first_adam_step(ensemble.member(members, 0).ac.actor), 1e-4,
                               rtol=1e-3)
    via_algo = algorithm.get(cfg.algo).to_online(members, cfg)
    via_init = online.init_state(members.ac, offline_data(), jax.random.PRNGKey(1),
                                 cfg.online, OBS, ACT).agent
    for agent in (via_algo, via_init):
        for train_state, lr in ((agent.actor, 3e-4), (agent.critic, 2e-4),
                                (agent.temp, 3e-4)):
            step = first_adam_step(train_state)
            if not fresh and train_state is not agent.temp:
                # Kept Adam moments (all zero for never-trained members): still lr-sized.
                np.testing.assert_allclose(step.max(), lr, rtol=1e-3)
            else:
                np.testing.assert_allclose(step, lr, rtol=1e-3)


@pytest.mark.parametrize("mode", ["online_only", "balanced"])
def test_online_buffer_starts_with_seed_data(mode):
    """online.seed_fraction: max(f M, seed_min) offline transitions drawn with
    replacement by fold_in(key, 1) go into the online buffer first."""
    a = base.get_agent_config()
    a.hidden_dims = (16, 16)
    members = ensemble.create_members(jax.random.PRNGKey(0), OBS, ACT, a, 2)
    data = offline_data()
    oc = online_cfg(mode)
    oc.seed_fraction, oc.seed_min = 0.1, 30       # max(0.1 x 200, 30) = 30
    key = jax.random.PRNGKey(1)
    state = online.init_state(members, data, key, oc, OBS, ACT)
    assert online.seed_count(M, oc) == 30 and int(state.replay.online.size) == 30
    idx = np.asarray(jax.random.randint(jax.random.fold_in(key, 1), (30,), 0, M))
    np.testing.assert_array_equal(np.asarray(state.replay.online.data["observations"][:30]),
                                  np.asarray(data["observations"])[idx])
    oc.seed_fraction = 0.0
    assert int(online.init_state(members, data, key, oc, OBS, ACT).replay.online.size) == 0
