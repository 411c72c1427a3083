"""An exact sum tree for proportional (prioritized) sampling, as pure functions.

Layout: one flat float32 array `nodes` of size 2P, where P is the smallest power of
two >= `capacity`. Node 1 is the root, node i has children 2i and 2i+1, and the
leaves (the priorities) live at [P, 2P); leaf j is node P + j. Node 0 and the
padding leaves [P + capacity, 2P) are always 0.

Exactness: every internal node is always *set* to `left + right` of its current
children (never incremented by a delta), so after any sequence of updates the
whole `nodes` array is bit-identical to a tree built from scratch from the current
leaves. The root is then a pairwise float32 sum of the leaves (relative error
~log2(P) * 2^-24 at worst), and it does not drift however many updates are made.
A tree that adds deltas along the path accumulates rounding error on every
update and drifts without bound (spec section 4).

Everything here works under `jax.jit` (the capacity is a static field) and
`jax.vmap` over a leading axis of the state. The heavier functions are wrapped in
`jax.jit` already (so eager calls do not recompile their loops each time); nest
them in your own `jax.jit(..., donate_argnums=0)` for in-place updates.
"""
import functools

import flax.struct
import jax
import jax.numpy as jnp


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class SumTreeState(flax.struct.PyTreeNode):
    """`nodes`: float32 [2P] (root at 1, leaves at [P, 2P)); `capacity`: static leaf count."""
    nodes: jax.Array
    capacity: int = flax.struct.field(pytree_node=False)

    @property
    def num_leaves_pow2(self) -> int:
        """P: the number of leaf slots, the smallest power of two >= capacity."""
        return _next_pow2(self.capacity)

    @property
    def depth(self) -> int:
        """log2(P): the number of levels between a leaf and the root."""
        return self.num_leaves_pow2.bit_length() - 1


def _check_capacity(capacity) -> int:
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity <= 0:
        raise ValueError(f"capacity must be a positive int, got {capacity!r}")
    return capacity


def init(capacity: int) -> SumTreeState:
    """A tree over `capacity` leaves, all with priority 0."""
    capacity = _check_capacity(capacity)
    return SumTreeState(nodes=jnp.zeros((2 * _next_pow2(capacity),), jnp.float32),
                        capacity=capacity)


@jax.jit
def from_priorities(priorities: jax.Array) -> SumTreeState:
    """A tree whose leaves are `priorities` [capacity], built level by level.

    Uses the same arithmetic as `set_priorities` (parent = left + right in
    float32), so the result equals any tree reached by updates to the same leaves.
    (The Python loop here runs over levels of different shapes at trace time.)
    """
    priorities = jnp.asarray(priorities, jnp.float32)
    if priorities.ndim != 1:
        raise ValueError(f"priorities must be 1-D, got shape {priorities.shape}")
    capacity = _check_capacity(int(priorities.shape[0]))
    p2 = _next_pow2(capacity)
    level = jnp.zeros((p2,), jnp.float32).at[:capacity].set(priorities)
    levels = [level]
    while level.shape[0] > 1:
        level = level[0::2] + level[1::2]
        levels.append(level)
    nodes = jnp.concatenate([jnp.zeros((1,), jnp.float32)] + levels[::-1])
    return SumTreeState(nodes=nodes, capacity=capacity)


def total(state: SumTreeState) -> jax.Array:
    """The sum of all priorities (the root), a float32 scalar."""
    return state.nodes[1]


def get(state: SumTreeState, indices: jax.Array) -> jax.Array:
    """The priorities of leaves `indices` (any integer shape)."""
    return state.nodes[state.num_leaves_pow2 + jnp.asarray(indices, jnp.int32)]


def leaves(state: SumTreeState) -> jax.Array:
    """All `capacity` priorities, float32 [capacity]."""
    p2 = state.num_leaves_pow2
    return state.nodes[p2:p2 + state.capacity]


@jax.jit
def set_priorities(state: SumTreeState, indices: jax.Array,
                   values: jax.Array) -> SumTreeState:
    """Set leaves `indices` [K] to `values` [K] and recompute their ancestors.

    Duplicated indices: the value of the *last* occurrence wins, exactly as a
    sequential `for k: leaf[indices[k]] = values[k]` loop would do. Only that last
    occurrence is written (the others are scattered out of bounds and dropped), so
    the result does not depend on XLA's unspecified scatter order.

    Parents are then recomputed from their children one level at a time inside a
    `lax.fori_loop` over the log2(P) levels: at each level the K touched nodes are
    set to `left + right`. Several touched leaves may share an ancestor; those
    duplicate writes all carry the same value, so they are harmless.

    `indices` must lie in [0, capacity); values must be finite and >= 0.
    Cost: O(K log K + K log P).
    """
    indices = jnp.asarray(indices, jnp.int32).reshape(-1)
    values = jnp.asarray(values, jnp.float32).reshape(-1)
    if indices.shape != values.shape:
        raise ValueError(f"indices {indices.shape} and values {values.shape} differ in size")
    if indices.shape[0] == 0:
        return state
    p2 = state.num_leaves_pow2
    nodes = state.nodes
    # Last occurrence of each index: a stable sort keeps equal indices in their
    # original order, so within a run of equal indices the last one is the latest.
    order = jnp.argsort(indices, stable=True)
    sorted_idx = indices[order]
    is_last = jnp.concatenate([sorted_idx[1:] != sorted_idx[:-1], jnp.ones((1,), bool)])
    leaf_nodes = jnp.where(is_last, p2 + sorted_idx, nodes.shape[0])  # OOB -> dropped
    nodes = nodes.at[leaf_nodes].set(values[order], mode="drop")

    def recompute_level(_, carry):
        nodes, node_ids = carry
        node_ids = node_ids // 2
        nodes = nodes.at[node_ids].set(nodes[2 * node_ids] + nodes[2 * node_ids + 1])
        return nodes, node_ids

    nodes, _ = jax.lax.fori_loop(0, state.depth, recompute_level,
                                 (nodes, p2 + sorted_idx))
    return state.replace(nodes=nodes)


@jax.jit
def find(state: SumTreeState, mass: jax.Array) -> jax.Array:
    """For each value in `mass`, the leaf j where the prefix sum of priorities crosses it.

    Returns j with sum(p[:j]) <= mass < sum(p[:j+1]) (int32, same shape as `mass`),
    descending the tree in a `lax.fori_loop` over levels (O(log P) gathers each).

    Guards against float rounding: the descent never enters a zero-mass subtree
    (it goes left when the right child is empty and right when the left child is
    empty), so as long as the total is > 0 the result is a leaf with priority > 0
    and index < capacity; a mass >= total gives the last positive leaf and a mass
    <= 0 the first one. With an all-zero tree the result is clamped into range
    but meaningless.
    """
    mass = jnp.asarray(mass, jnp.float32)
    nodes = state.nodes

    def descend(_, carry):
        node, u = carry
        left = nodes[2 * node]
        right = nodes[2 * node + 1]
        go_right = jnp.where(left <= 0.0, True, jnp.where(right <= 0.0, False, u >= left))
        u = jnp.where(go_right, u - left, u)
        return 2 * node + go_right.astype(jnp.int32), u

    node0 = jnp.ones(mass.shape, jnp.int32)
    node, _ = jax.lax.fori_loop(0, state.depth, descend, (node0, mass))
    return jnp.clip(node - state.num_leaves_pow2, 0, state.capacity - 1)


@functools.partial(jax.jit, static_argnames="batch_size")
def sample(state: SumTreeState, key: jax.Array, batch_size: int) -> jax.Array:
    """Stratified proportional sampling: int32 indices [batch_size].

    The total mass is split into `batch_size` equal segments and one point is
    drawn uniformly in each, so draw b lands in [b, b+1) * total / batch_size.
    Marginally each leaf i is expected batch_size * p_i / total times per batch.
    The returned indices are sorted by leaf (segment order). Zero-priority leaves
    and indices >= capacity are never returned (see `find`) unless the tree is
    empty (total 0), in which case the result is meaningless.
    """
    u = jax.random.uniform(key, (batch_size,), jnp.float32)
    seg = total(state) / batch_size
    mass = (jnp.arange(batch_size, dtype=jnp.float32) + u) * seg
    return find(state, mass)

