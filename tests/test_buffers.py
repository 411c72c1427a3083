"""FIFO transition store and balanced replay: references in NumPy / Python deques."""
import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from o2o_jax.replay import buffers, sum_tree
from tests.helpers import pooled_chisquare

OBS_DIM, ACT_DIM = 3, 2
EXAMPLE = {"observations": np.zeros(OBS_DIM, np.float32), "actions": np.zeros(ACT_DIM, np.float32),
           "rewards": np.zeros((), np.float32),
           "next_observations": np.zeros(OBS_DIM, np.float32), "dones": np.zeros((), np.float32)}


def make_transitions(ids):
    """Transitions whose every field encodes its id, so contents identify the item."""
    ids = np.asarray(ids, np.float32)
    return {"observations": ids[:, None] + np.arange(OBS_DIM, dtype=np.float32) * 0.125,
            "actions": -ids[:, None] - np.arange(ACT_DIM, dtype=np.float32) * 0.25,
            "rewards": ids * 2.0,
            "next_observations": ids[:, None] + 0.5 + np.zeros(OBS_DIM, np.float32),
            "dones": (ids.astype(np.int64) % 2).astype(np.float32)}


def ids_of(batch):
    return np.asarray(batch["rewards"]) / 2.0


# Many independent batches at once (module level so that compilations are cached).
sample_many = jax.jit(jax.vmap(buffers.sample, in_axes=(None, None, 0, None)), static_argnums=3)


# ------------------------------------------------------------------ TransitionStore

def test_store_init_validates():
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError):
            buffers.store_init(bad, EXAMPLE)
    with pytest.raises(ValueError):
        buffers.store_init(4, {})
    state = buffers.store_init(4, EXAMPLE)
    assert state.data["observations"].shape == (4, OBS_DIM)
    assert int(state.size) == 0 and int(state.insert_pos) == 0


def test_store_fifo_wraparound_matches_deque():
    capacity = 7
    state = buffers.store_init(capacity, EXAMPLE)
    ref = collections.deque(maxlen=capacity)
    add = jax.jit(buffers.store_add)
    next_id = 0
    for k in (3, 1, 5, 7, 2, 10, 4):  # includes K == capacity and K > capacity
        ids = np.arange(next_id, next_id + k)
        next_id += k
        state = add(state, make_transitions(ids))
        ref.extend(ids)
        assert int(state.size) == len(ref)
        assert int(state.insert_pos) == next_id % capacity
        stored = ids_of(state.data)[:int(state.size)]
        np.testing.assert_array_equal(np.sort(stored), np.sort(np.array(ref)))
        # The oldest item sits at insert_pos once full: reading from there is FIFO order.
        if len(ref) == capacity:
            order = (int(state.insert_pos) + np.arange(capacity)) % capacity
            np.testing.assert_array_equal(ids_of(state.data)[order], np.array(ref))
        for key in state.data:  # contents, not just ids, are intact
            np.testing.assert_array_equal(
                np.asarray(state.data[key])[:len(ref)],
                make_transitions(ids_of(state.data)[:len(ref)])[key])


def test_store_uniform_sampling_only_valid_and_uniform():
    state = buffers.store_init(50, EXAMPLE)
    state = buffers.store_add(state, make_transitions(np.arange(100, 120)))  # 20 of 50 valid
    keys = jax.random.split(jax.random.PRNGKey(0), 200)
    batch = jax.jit(jax.vmap(buffers.store_sample_uniform, in_axes=(None, 0, None)),
                    static_argnums=2)(state, keys, 64)
    ids = ids_of(batch).reshape(-1)
    assert set(np.unique(ids)) <= set(range(100, 120))
    counts = np.bincount(ids.astype(int) - 100, minlength=20)
    assert stats.chisquare(counts).pvalue > 1e-3


# ------------------------------------------------------------------ Balanced replay

M, ONLINE_CAP = 40, 16


@pytest.fixture(scope="module")
def offline():
    return {k: jnp.asarray(v) for k, v in make_transitions(np.arange(1000, 1000 + M)).items()}


def test_balanced_init_and_validation():
    with pytest.raises(ValueError):
        buffers.init(0, 4, EXAMPLE)
    with pytest.raises(ValueError):
        buffers.init(4, 0, EXAMPLE)
    state = buffers.init(M, ONLINE_CAP, EXAMPLE)
    np.testing.assert_array_equal(np.asarray(sum_tree.leaves(state.tree)),
                                  np.r_[np.ones(M), np.zeros(ONLINE_CAP)])
    assert float(state.max_priority) == 1.0
    for f in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            buffers.set_initial_max_priority(state, f, 10)
    with pytest.raises(ValueError):
        buffers.set_initial_max_priority(state, 0.5, 0)
    # Exactly M f / ((1 - f) n1), even when that is below the current max of 1.
    s = buffers.set_initial_max_priority(state, 0.75, 10)
    np.testing.assert_allclose(float(s.max_priority), M * 0.75 / (0.25 * 10), rtol=1e-6)
    s = buffers.set_initial_max_priority(state, 0.1, 1000)
    np.testing.assert_allclose(float(s.max_priority), M * 0.1 / (0.9 * 1000), rtol=1e-6)


def test_sample_rejects_mismatched_offline(offline):
    state = buffers.init(M + 1, ONLINE_CAP, EXAMPLE)
    with pytest.raises(ValueError):
        buffers.sample(state, offline, jax.random.PRNGKey(0), 4)


def test_add_online_priorities_and_overwrite(offline):
    state = buffers.init(M, ONLINE_CAP, EXAMPLE)
    state = buffers.set_initial_max_priority(state, 0.5, 20)  # max = 40*.5/(.5*20) = 2
    state = buffers.add_online(state, make_transitions(np.arange(10)))
    leaves = np.asarray(sum_tree.leaves(state.tree))
    np.testing.assert_allclose(leaves[M:M + 10], 2.0)
    np.testing.assert_array_equal(leaves[M + 10:], 0.0)
    # A larger written priority raises the max; the next items enter with it.
    state = buffers.set_priorities(state, jnp.array([M + 1, M + 3, 5]),
                                   jnp.array([0.01, 7.0, 0.5]))
    assert float(state.max_priority) == 7.0
    state = buffers.add_online(state, make_transitions(np.arange(10, 20)))  # wraps 4 slots
    leaves = np.asarray(sum_tree.leaves(state.tree))
    expected = np.full(ONLINE_CAP, 2.0)
    expected[np.r_[10:16, 0:4]] = 7.0  # new items at 7, incl. overwritten slot 1 (was 0.01)
    np.testing.assert_allclose(leaves[M:], expected)
    assert leaves[5] == 0.5
    np.testing.assert_array_equal(ids_of(state.online.data),
                                  np.r_[16:20, 4:16].astype(np.float32))
    np.testing.assert_array_equal(np.asarray(state.tree.nodes),
                                  np.asarray(sum_tree.from_priorities(leaves).nodes))


def test_running_max_never_decreases():
    state = buffers.init(M, ONLINE_CAP, EXAMPLE)
    rng = np.random.default_rng(0)
    history = [float(state.max_priority)]
    written = [1.0]
    for scale in (5.0, 0.1, 50.0, 1e-3, 2.0):
        p = rng.uniform(0.5, 1.0, 8).astype(np.float32) * scale
        state = buffers.set_priorities(state, jnp.asarray(rng.integers(0, M, 8)),
                                       jnp.asarray(p))
        written.extend(p)
        history.append(float(state.max_priority))
    assert all(b >= a for a, b in zip(history, history[1:]))
    assert history[-1] == np.float32(max(written))


def test_sample_returns_right_contents(offline):
    state = buffers.init(M, ONLINE_CAP, EXAMPLE)
    state = buffers.add_online(state, make_transitions(np.arange(20)))  # wraps
    sample = jax.jit(buffers.sample, static_argnums=3)
    online_np = {k: np.asarray(v) for k, v in state.online.data.items()}
    offline_np = {k: np.asarray(v) for k, v in offline.items()}
    seen_off = seen_on = 0
    for seed in range(5):
        batch, idx = sample(state, offline, jax.random.PRNGKey(seed), 32)
        idx = np.asarray(idx)
        for key in batch:
            ref = np.where((idx < M).reshape((-1,) + (1,) * (offline_np[key].ndim - 1)),
                           offline_np[key][np.minimum(idx, M - 1)],
                           online_np[key][np.maximum(idx - M, 0)])
            np.testing.assert_array_equal(np.asarray(batch[key]), ref)
        seen_off += (idx < M).sum()
        seen_on += (idx >= M).sum()
    assert seen_off > 0 and seen_on > 0
    # Explicit gather of chosen leaves: offline item 0, the last offline, online slots.
    got = buffers.gather(state, offline, jnp.array([0, M - 1, M, M + ONLINE_CAP - 1]))
    np.testing.assert_array_equal(ids_of(got), [1000, 1000 + M - 1, 16, 15])


def test_sampling_frequencies_after_appends_and_updates(offline):
    rng = np.random.default_rng(1)
    state = buffers.init(M, ONLINE_CAP, EXAMPLE)
    state = buffers.set_initial_max_priority(state, 0.5, 8)
    state = buffers.add_online(state, make_transitions(np.arange(12)))
    idx = np.r_[rng.choice(M, 20, replace=False), M + np.arange(0, 12, 2)]
    new = np.exp(rng.uniform(np.log(1e-3), np.log(1e3), len(idx))).astype(np.float32)
    state = buffers.set_priorities(state, jnp.asarray(idx), jnp.asarray(new))
    state = buffers.add_online(state, make_transitions(np.arange(12, 14)))
    ref = np.r_[np.ones(M), np.zeros(ONLINE_CAP)].astype(np.float32)
    ref[M:M + 12] = 5.0  # initial max = M f / ((1 - f) n1) = 40 * 0.5 / (0.5 * 8)
    ref[idx] = new
    ref[M + 12:M + 14] = max(5.0, new.max())
    keys = jax.random.split(jax.random.PRNGKey(2), 400)
    _, sampled = sample_many(state, offline, keys, 128)
    counts = np.bincount(np.asarray(sampled).reshape(-1), minlength=M + ONLINE_CAP)
    assert counts[M + 14:].sum() == 0  # empty online slots are never drawn
    probs = ref.astype(np.float64) / ref.sum()
    assert pooled_chisquare(counts, probs).pvalue > 1e-3


@pytest.mark.parametrize("f", [0.5, 0.75])
def test_initial_max_gives_online_fraction(f):
    m, n1 = 10_000, 1_000
    ex = {"rewards": np.zeros((), np.float32)}
    offline_data = {"rewards": jnp.zeros((m,), jnp.float32)}
    state = buffers.init(m, 2 * n1, ex)
    state = buffers.set_initial_max_priority(state, f, n1)
    state = buffers.add_online(state, {"rewards": jnp.ones((n1,), jnp.float32)})
    keys = jax.random.split(jax.random.PRNGKey(0), 100)
    batch, idx = sample_many(state, offline_data, keys, 256)
    frac_online = 1.0 - float(buffers.offline_fraction(idx, m))
    assert abs(frac_online - f) < 0.05
    np.testing.assert_allclose(float(jnp.mean(batch["rewards"])), frac_online, atol=1e-6)


def test_offline_fraction_and_uniform_offline(offline):
    assert float(buffers.offline_fraction(jnp.array([0, M - 1, M, M + 5]), M)) == 0.5
    keys = jax.random.split(jax.random.PRNGKey(3), 100)
    batch = jax.vmap(buffers.sample_uniform_offline, in_axes=(None, 0, None))(offline, keys, 64)
    ids = ids_of(batch).reshape(-1).astype(int) - 1000
    assert ids.min() >= 0 and ids.max() < M
    assert stats.chisquare(np.bincount(ids, minlength=M)).pvalue > 1e-3
    np.testing.assert_array_equal(np.asarray(batch["observations"]).reshape(-1, OBS_DIM),
                                  np.asarray(offline["observations"])[ids])


def test_vmap_over_seeds_equals_separate_calls(offline):
    def run(state, key, new_ids):
        k1, k2 = jax.random.split(key)
        state = buffers.add_online(state, make_transitions_jnp(new_ids))
        _, idx = buffers.sample(state, offline, k1, 16)
        state = buffers.set_priorities(state, idx, jax.random.uniform(k2, (16,)) * 10)
        batch, idx = buffers.sample(state, offline, k2, 16)
        return state, batch, idx

    base = buffers.init(M, ONLINE_CAP, EXAMPLE)
    keys = jax.random.split(jax.random.PRNGKey(7), 2)
    new_ids = jnp.stack([jnp.arange(5.0), jnp.arange(100.0, 105.0)])
    stacked = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), base)
    vm = jax.jit(jax.vmap(run))(stacked, keys, new_ids)
    for i in range(2):
        single = run(base, keys[i], new_ids[i])  # eager; the pieces are jitted
        for a, b in zip(jax.tree_util.tree_leaves(single), jax.tree_util.tree_leaves(vm)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b[i]))
    # The two seeds really differ.
    assert not np.array_equal(np.asarray(vm[2][0]), np.asarray(vm[2][1]))


def make_transitions_jnp(ids):
    ids = ids.astype(jnp.float32)
    return {"observations": ids[:, None] + jnp.arange(OBS_DIM, dtype=jnp.float32) * 0.125,
            "actions": -ids[:, None] - jnp.arange(ACT_DIM, dtype=jnp.float32) * 0.25,
            "rewards": ids * 2.0,
            "next_observations": ids[:, None] + 0.5 + jnp.zeros(OBS_DIM, jnp.float32),
            "dones": (ids.astype(jnp.int32) % 2).astype(jnp.float32)}


def test_jit_with_donated_state(offline):
    state = buffers.init(M, ONLINE_CAP, EXAMPLE)
    add = jax.jit(buffers.add_online, donate_argnums=0)
    setp = jax.jit(buffers.set_priorities, donate_argnums=0)
    state = add(state, make_transitions(np.arange(4)))
    state = setp(state, jnp.array([0, M + 1]), jnp.array([3.0, 4.0]))
    leaves = np.asarray(sum_tree.leaves(state.tree))
    assert leaves[0] == 3.0 and leaves[M + 1] == 4.0 and float(state.max_priority) == 4.0


def test_benchmark_smoke():
    from experiments.bench_buffer import time_buffer_ops
    out = time_buffer_ops(capacity=1024, batch_size=32, reps=2, drift_rounds=20)
    for name in ("tree_sample_s", "tree_set_priorities_s", "replay_sample_s",
                 "replay_set_priorities_s"):
        assert 0 < out[name] < 1.0
    assert out["drift_rel_error"] < 1e-5


def test_store_sample_recent_draws_only_the_newest_window():
    example = {"x": jnp.zeros((), jnp.float32)}
    st = buffers.store_init(10, example)
    st = buffers.store_add(st, {"x": jnp.arange(13, dtype=jnp.float32)})  # holds 3..12
    got = np.asarray(buffers.store_sample_recent(st, jax.random.PRNGKey(0), 4000, 4)["x"])
    assert set(got.astype(int)) == {9, 10, 11, 12}
    counts = np.bincount(got.astype(int))[9:]
    assert counts.min() > 900  # roughly uniform over the window (1000 expected each)
    # A window larger than the content falls back to everything there.
    got = np.asarray(buffers.store_sample_recent(st, jax.random.PRNGKey(1), 2000, 50)["x"])
    assert set(got.astype(int)) == set(range(3, 13))
