"""Sum tree: against a sequential NumPy reference, sampling frequencies, exact totals."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax.replay import sum_tree
from tests.helpers import pooled_chisquare


def numpy_tree(leaves: np.ndarray) -> np.ndarray:
    """Reference: the full node array of a float32 sum tree built from `leaves`."""
    capacity = len(leaves)
    p2 = 1
    while p2 < capacity:
        p2 *= 2
    nodes = np.zeros(2 * p2, np.float32)
    nodes[p2:p2 + capacity] = leaves
    for i in range(p2 - 1, 0, -1):
        nodes[i] = np.float32(nodes[2 * i]) + np.float32(nodes[2 * i + 1])
    return nodes


# Many independent batches at once; module level so that the compilation is cached.
sample_many = jax.jit(jax.vmap(sum_tree.sample, in_axes=(None, 0, None)), static_argnums=2)


def sample_counts(state, key, batch_size, num_batches):
    keys = jax.random.split(key, num_batches)
    idx = sample_many(state, keys, batch_size)
    idx = np.asarray(idx).reshape(-1)
    return np.bincount(idx, minlength=state.capacity), idx


def log_uniform(rng, n, lo=1e-3, hi=1e3):
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n)).astype(np.float32)


def test_init_validates_capacity():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError):
            sum_tree.init(bad)
    state = sum_tree.init(5)
    assert state.nodes.shape == (16,) and state.num_leaves_pow2 == 8 and state.depth == 3
    assert float(sum_tree.total(state)) == 0.0


@pytest.mark.parametrize("capacity", [1, 2, 5, 8, 13, 100, 1000])
@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_set_priorities_matches_sequential_reference(capacity, batch_size):
    rng = np.random.default_rng(capacity * 1000 + batch_size)
    state = sum_tree.init(capacity)
    ref = np.zeros(capacity, np.float32)
    update = jax.jit(sum_tree.set_priorities)
    for _ in range(4):
        # Draw from a small range so that duplicated indices are common.
        high = max(1, min(capacity, batch_size // 2 + 1))
        idx = rng.integers(0, high, batch_size) if rng.random() < 0.5 else \
            rng.integers(0, capacity, batch_size)
        vals = log_uniform(rng, batch_size)
        for i, v in zip(idx, vals):  # sequential reference: last write wins
            ref[i] = v
        state = update(state, jnp.asarray(idx), jnp.asarray(vals))
        np.testing.assert_array_equal(np.asarray(state.nodes), numpy_tree(ref))
    np.testing.assert_array_equal(np.asarray(sum_tree.leaves(state)), ref)
    np.testing.assert_array_equal(np.asarray(sum_tree.get(state, np.arange(capacity))), ref)


def test_duplicate_indices_last_occurrence_wins():
    state = sum_tree.init(6)
    idx = jnp.array([3, 1, 3, 3, 1, 5])
    vals = jnp.array([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
    state = sum_tree.set_priorities(state, idx, vals)
    np.testing.assert_array_equal(np.asarray(sum_tree.leaves(state)),
                                  [0, 50, 0, 40, 0, 60])
    assert float(sum_tree.total(state)) == 150.0


def test_empty_update_is_a_no_op():
    state = sum_tree.from_priorities(jnp.arange(5.0))
    same = sum_tree.set_priorities(state, jnp.zeros((0,), jnp.int32), jnp.zeros((0,)))
    np.testing.assert_array_equal(np.asarray(same.nodes), np.asarray(state.nodes))


def test_from_priorities_equals_reference_and_updates():
    rng = np.random.default_rng(0)
    leaves = log_uniform(rng, 77)
    built = sum_tree.from_priorities(jnp.asarray(leaves))
    np.testing.assert_array_equal(np.asarray(built.nodes), numpy_tree(leaves))
    updated = sum_tree.set_priorities(sum_tree.init(77), jnp.arange(77), jnp.asarray(leaves))
    np.testing.assert_array_equal(np.asarray(built.nodes), np.asarray(updated.nodes))


def test_sampling_frequencies_match_skewed_priorities():
    rng = np.random.default_rng(1)
    capacity = 300
    prio = log_uniform(rng, capacity)
    prio[[7, 150, 299]] = [1e3, 800.0, 1e3]  # a few heavy items, one at the right edge
    prio[[3, 4, 200]] = 0.0  # zero-priority leaves must never be drawn
    state = sum_tree.from_priorities(jnp.asarray(prio))
    counts, _ = sample_counts(state, jax.random.PRNGKey(0), 256, 400)
    assert counts[[3, 4, 200]].sum() == 0
    probs = prio.astype(np.float64) / prio.astype(np.float64).sum()
    assert pooled_chisquare(counts, probs).pvalue > 1e-3

    # After rewriting a third of the priorities the frequencies follow the new ones.
    idx = rng.choice(capacity, 100, replace=False)
    new = log_uniform(rng, 100)
    prio[idx] = new
    state = jax.jit(sum_tree.set_priorities)(state, jnp.asarray(idx), jnp.asarray(new))
    counts, _ = sample_counts(state, jax.random.PRNGKey(1), 256, 400)
    probs = prio.astype(np.float64) / prio.astype(np.float64).sum()
    assert pooled_chisquare(counts, probs).pvalue > 1e-3
    # The old distribution is rejected: the test can fail.
    old_probs = np.roll(probs, 1)
    assert pooled_chisquare(counts, old_probs).pvalue < 1e-3


@pytest.mark.parametrize("batch_size", [8, 256])
def test_stratified_equal_priorities_each_leaf_exactly_once(batch_size):
    state = sum_tree.from_priorities(jnp.ones((batch_size,), jnp.float32))
    for seed in range(5):
        idx = np.asarray(sum_tree.sample(state, jax.random.PRNGKey(seed), batch_size))
        np.testing.assert_array_equal(np.sort(idx), np.arange(batch_size))


def test_find_guards_edges_and_zero_leaves():
    # Capacity 13 (padding leaves 13..15); zeros at the start, in the middle and at the end.
    prio = np.array([0, 0, 1e-3, 5, 0, 0, 2, 1e3, 0, 3e-3, 0, 0, 0], np.float32)
    state = sum_tree.from_priorities(jnp.asarray(prio))
    tot = float(sum_tree.total(state))
    mass = jnp.array([-1.0, 0.0, tot, tot * 1.001, 1e30, np.nextafter(np.float32(tot), 0)])
    got = np.asarray(sum_tree.find(state, mass))
    np.testing.assert_array_equal(got, [2, 2, 9, 9, 9, 9])
    # Interior: prefix sums cross exactly where the NumPy cumsum says.
    cum = np.cumsum(prio.astype(np.float64))
    u = np.linspace(0.0, tot, 2001, dtype=np.float32)[:-1]
    expected = np.searchsorted(cum, u.astype(np.float64), side="right")
    got = np.asarray(sum_tree.find(state, jnp.asarray(u)))
    assert np.all(prio[got] > 0) and np.all(got < 13)
    # Allow disagreement only within float32 rounding of a boundary.
    mismatch = got != expected
    assert np.all(np.min(np.abs(u[mismatch, None] - cum[None, :]), axis=1) < 1e-3 * tot)
    assert mismatch.mean() < 0.01


def test_sample_never_returns_zero_priority_or_out_of_range():
    rng = np.random.default_rng(2)
    capacity = 1000  # not a power of 2: 24 padding leaves
    prio = np.where(rng.random(capacity) < 0.5, 0.0, log_uniform(rng, capacity))
    prio[-1] = 1e3  # heavy last leaf: right-edge rounding would go into padding
    state = sum_tree.from_priorities(jnp.asarray(prio, jnp.float32))
    _, idx = sample_counts(state, jax.random.PRNGKey(3), 256, 200)
    assert idx.max() < capacity
    assert np.all(prio[idx] > 0)


def _random_rounds(state, key, num_rounds, batch_size):
    def body(state, key):
        k1, k2 = jax.random.split(key)
        idx = jax.random.randint(k1, (batch_size,), 0, state.capacity)
        vals = jnp.exp(jax.random.uniform(k2, (batch_size,), minval=np.log(1e-3),
                                          maxval=np.log(1e3)))
        return sum_tree.set_priorities(state, idx, vals), None

    state, _ = jax.lax.scan(body, state, jax.random.split(key, num_rounds))
    return state


def test_exact_totals_do_not_drift():
    capacity = 2 ** 16
    state = sum_tree.from_priorities(jnp.ones((capacity,), jnp.float32))
    run = jax.jit(functools.partial(_random_rounds, num_rounds=2000, batch_size=256))
    state = run(state, jax.random.PRNGKey(0))
    leaves = np.asarray(sum_tree.leaves(state), np.float64)
    root = float(sum_tree.total(state))
    assert abs(root - leaves.sum()) / leaves.sum() < 1e-5
    # Stronger: the whole tree is bit-identical to one rebuilt from its leaves.
    np.testing.assert_array_equal(np.asarray(state.nodes),
                                  np.asarray(sum_tree.from_priorities(leaves).nodes))


def test_jit_and_vmap_over_states():
    rng = np.random.default_rng(4)
    a = sum_tree.from_priorities(jnp.asarray(log_uniform(rng, 50)))
    b = sum_tree.from_priorities(jnp.asarray(log_uniform(rng, 50)))
    stacked = jax.tree_util.tree_map(lambda x, y: jnp.stack([x, y]), a, b)
    idx = jnp.asarray(rng.integers(0, 50, (2, 16)))
    vals = jnp.asarray(log_uniform(rng, 32).reshape(2, 16))
    keys = jax.random.split(jax.random.PRNGKey(5), 2)
    upd = jax.jit(jax.vmap(sum_tree.set_priorities))(stacked, idx, vals)
    smp = jax.jit(jax.vmap(sum_tree.sample, in_axes=(0, 0, None)), static_argnums=2)(
        upd, keys, 32)
    for i, s in enumerate((a, b)):
        s = sum_tree.set_priorities(s, idx[i], vals[i])
        np.testing.assert_array_equal(np.asarray(upd.nodes[i]), np.asarray(s.nodes))
        np.testing.assert_array_equal(np.asarray(smp[i]),
                                      np.asarray(sum_tree.sample(s, keys[i], 32)))
