"""Timing and exact-totals check of the balanced replay at full size.

`time_buffer_ops()` is called by `experiments/bench.py`; it can also be run as
`python -m experiments.bench_buffer`.
"""
import functools
import time
from typing import Callable, Dict

import jax
import jax.numpy as jnp
import numpy as np

from o2o_jax.replay import buffers, sum_tree

LOG_LO, LOG_HI = float(np.log(1e-3)), float(np.log(1e3))


def _median_seconds(fn: Callable[[], object], reps: int) -> float:
    jax.block_until_ready(fn())  # compile + warm up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _random_priorities(key, capacity, batch_size):
    k1, k2 = jax.random.split(key)
    idx = jax.random.randint(k1, (batch_size,), 0, capacity)
    vals = jnp.exp(jax.random.uniform(k2, (batch_size,), minval=LOG_LO, maxval=LOG_HI))
    return idx, vals


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _random_transitions(key, n, obs_dim, act_dim):
    ks = jax.random.split(key, 4)
    return {"observations": jax.random.normal(ks[0], (n, obs_dim)),
            "actions": jax.random.uniform(ks[1], (n, act_dim), minval=-1, maxval=1),
            "rewards": jax.random.normal(ks[2], (n,)),
            "next_observations": jax.random.normal(ks[3], (n, obs_dim)),
            "dones": jnp.zeros((n,), jnp.float32)}


def _delta_set_priorities(nodes, indices, values, p2, depth):
    """A naive delta-updating tree (the flashbax-style one that drifts), for comparison."""
    order = jnp.argsort(indices, stable=True)
    sorted_idx = indices[order]
    is_last = jnp.concatenate([sorted_idx[1:] != sorted_idx[:-1], jnp.ones((1,), bool)])
    node = p2 + sorted_idx
    delta = jnp.where(is_last, values[order] - nodes[node], 0.0)
    for _ in range(depth + 1):  # the leaf and each ancestor get += delta
        nodes = nodes.at[node].add(delta)
        node = node // 2
    return nodes


@functools.partial(jax.jit, static_argnames=("num_rounds", "batch_size"))
def _drift_rounds(tree: sum_tree.SumTreeState, delta_nodes: jax.Array, key: jax.Array,
                  num_rounds: int, batch_size: int):
    p2, depth = tree.num_leaves_pow2, tree.depth

    def body(carry, key):
        tree, delta_nodes = carry
        idx, vals = _random_priorities(key, tree.capacity, batch_size)
        tree = sum_tree.set_priorities(tree, idx, vals)
        delta_nodes = _delta_set_priorities(delta_nodes, idx, vals, p2, depth)
        return (tree, delta_nodes), None

    (tree, delta_nodes), _ = jax.lax.scan(body, (tree, delta_nodes),
                                          jax.random.split(key, num_rounds))
    return tree, delta_nodes


def time_buffer_ops(capacity: int = 1_000_000, batch_size: int = 256, reps: int = 50,
                    obs_dim: int = 11, act_dim: int = 3, drift_rounds: int = 10_000,
                    seed: int = 0) -> Dict[str, float]:
    """Time sampling / priority updates on a `capacity`-leaf buffer and check exact totals.

    Timings are medians over `reps` calls after compilation, each ended with
    `block_until_ready`; state arguments of updates are donated (in place):
      * `tree_sample_s`, `tree_set_priorities_s`: the bare sum tree.
      * `replay_sample_s`, `replay_set_priorities_s`: the balanced replay, with half
        the leaves offline and half a full online ring buffer; `sample` includes
        gathering the transitions (obs_dim, act_dim).
    Drift check: starting from all priorities 1, `drift_rounds` rounds of
    `batch_size` log-uniform priorities in [1e-3, 1e3] at random leaves (one jitted
    `lax.scan`); `drift_rel_error` is |root - float64 sum of leaves| / that sum.
    `delta_tree_rel_error` is the same for a naive delta-updating float32 tree fed
    the same updates, for contrast; `drift_seconds` the wall time of both.
    """
    if capacity < 2:
        raise ValueError(f"capacity must be >= 2, got {capacity}")
    key = jax.random.PRNGKey(seed)
    k_tree, k_replay, k_drift, k_data = jax.random.split(key, 4)
    out: Dict[str, float] = {"capacity": capacity, "batch_size": batch_size, "reps": reps,
                             "backend": jax.default_backend()}

    # --- bare sum tree
    tree = sum_tree.from_priorities(jnp.ones((capacity,), jnp.float32))
    idx, vals = _random_priorities(k_tree, capacity, batch_size)
    tree_sample = jax.jit(sum_tree.sample, static_argnums=2)
    out["tree_sample_s"] = _median_seconds(lambda: tree_sample(tree, k_tree, batch_size), reps)
    tree_set = jax.jit(sum_tree.set_priorities, donate_argnums=0)
    holder = [tree]

    def tree_update():
        holder[0] = tree_set(holder[0], idx, vals)
        return holder[0].nodes

    out["tree_set_priorities_s"] = _median_seconds(tree_update, reps)
    del holder, tree

    # --- balanced replay: half offline, half a full online ring buffer
    num_offline = capacity // 2
    online_capacity = capacity - num_offline

    k_off, k_on = jax.random.split(k_data)
    offline = _random_transitions(k_off, num_offline, obs_dim, act_dim)
    example = jax.tree_util.tree_map(lambda x: x[0], offline)
    state = buffers.init(num_offline, online_capacity, example)
    state = buffers.set_initial_max_priority(state, 0.5, 1000)
    state = jax.jit(buffers.add_online, donate_argnums=0)(
        state, _random_transitions(k_on, online_capacity, obs_dim, act_dim))
    replay_sample = jax.jit(buffers.sample, static_argnums=3)
    out["replay_sample_s"] = _median_seconds(
        lambda: replay_sample(state, offline, k_replay, batch_size), reps)
    _, r_idx = replay_sample(state, offline, k_replay, batch_size)
    replay_set = jax.jit(buffers.set_priorities, donate_argnums=0)
    holder = [state]

    def replay_update():
        holder[0] = replay_set(holder[0], r_idx, vals)
        return holder[0].tree.nodes

    out["replay_set_priorities_s"] = _median_seconds(replay_update, reps)
    del holder, state, offline

    # --- exact totals over many rounds (and a delta-updating tree for contrast)
    tree = sum_tree.from_priorities(jnp.ones((capacity,), jnp.float32))
    start = time.perf_counter()
    tree, delta_nodes = _drift_rounds(tree, tree.nodes, k_drift, drift_rounds, batch_size)
    jax.block_until_ready((tree, delta_nodes))
    out["drift_seconds"] = time.perf_counter() - start
    leaf_sum = float(np.asarray(sum_tree.leaves(tree), np.float64).sum())
    out["drift_rounds"] = drift_rounds
    out["drift_rel_error"] = abs(float(sum_tree.total(tree)) - leaf_sum) / leaf_sum
    out["delta_tree_rel_error"] = abs(float(delta_nodes[1]) - leaf_sum) / leaf_sum
    return out


if __name__ == "__main__":
    for name, value in time_buffer_ops().items():
        print(f"{name:>26s}: {value}")
