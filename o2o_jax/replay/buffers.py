"""Replay buffers as pure functions over pytree states (flashbax style).

A transition batch is a dict of float32 arrays with a shared leading axis:
`observations [.., obs_dim]`, `actions [.., act_dim]`, `rewards [..]`,
`next_observations [.., obs_dim]`, `dones [..]` (1.0 = terminal). The functions
below only rely on the leading axis, so extra keys are carried along.

Two structures:

* A uniform FIFO ring buffer: `TransitionStoreState` with `store_init`,
  `store_add`, `store_sample_uniform`.
* The balanced replay of Off2OnRL (spec section 4): `BalancedReplayState` with
  `init`, `set_initial_max_priority`, `add_online`, `sample`, `set_priorities`,
  plus `offline_fraction`, `sample_uniform_offline`.
  One exact sum tree covers M offline transitions and the online ring buffer:
  leaf i < M is offline transition i, leaf M + j is online slot j. The offline
  data themselves are *not* in the state; they are passed to `sample`, so many
  vmapped seeds (`jax.vmap(..., in_axes=(0, None, 0, None))`) share one copy.

All sizes are static (`pytree_node=False`), so every function works under
`jax.jit` and `jax.vmap` over a leading seed axis of the state. The update and
sampling functions are already wrapped in `jax.jit` (`batch_size` static); wrap
them again with `jax.jit(..., donate_argnums=0)`, or call them inside your own
jitted step with a donated state, for in-place updates. `init`, `store_init` and
`set_initial_max_priority` take Python numbers and validate them.
"""
import functools
from typing import Dict, Tuple

import flax.struct
import jax
import jax.numpy as jnp

from o2o_jax.replay import sum_tree

Transitions = Dict[str, jax.Array]



def _leading_size(transitions: Transitions) -> int:
    sizes = {k: v.shape[0] for k, v in transitions.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"transition arrays disagree on the leading axis: {sizes}")
    return next(iter(sizes.values()))


def _gather(data: Transitions, indices: jax.Array) -> Transitions:
    return {k: v[indices] for k, v in data.items()}


# --------------------------------------------------------------------------------------
# Uniform FIFO ring buffer
# --------------------------------------------------------------------------------------

class TransitionStoreState(flax.struct.PyTreeNode):
    """A FIFO ring buffer.

    `data`: dict of arrays [capacity, ...]; `size`: int32 number of valid items
    (<= capacity); `insert_pos`: int32 slot the next item goes to. Valid items are
    the slots [0, size); once full, new items overwrite the oldest.
    """
    data: Transitions
    size: jax.Array
    insert_pos: jax.Array
    capacity: int = flax.struct.field(pytree_node=False)


def store_init(capacity: int, example_transition: Transitions) -> TransitionStoreState:
    """An empty store for `capacity` items shaped like `example_transition`.

    `example_transition` is one *unbatched* transition (dict of arrays or scalars);
    only its shapes and dtypes are used.
    """
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity <= 0:
        raise ValueError(f"capacity must be a positive int, got {capacity!r}")
    if not example_transition:
        raise ValueError("example_transition must be a non-empty dict of arrays")
    data = {k: jnp.zeros((capacity,) + jnp.shape(v), jnp.asarray(v).dtype)
            for k, v in example_transition.items()}
    return TransitionStoreState(data=data, size=jnp.zeros((), jnp.int32),
                                insert_pos=jnp.zeros((), jnp.int32), capacity=capacity)


def _write_slots(state: TransitionStoreState, num_new: int) -> Tuple[jax.Array, int]:
    """Slots for the last min(num_new, capacity) of `num_new` new items, and that count.

    When more than `capacity` items arrive at once, only the last `capacity` of
    them survive, exactly as if they had been added one at a time.
    """
    kept = min(num_new, state.capacity)
    skipped = num_new - kept
    slots = (state.insert_pos + skipped + jnp.arange(kept, dtype=jnp.int32)) % state.capacity
    return slots, kept


@jax.jit
def store_add(state: TransitionStoreState, transitions: Transitions) -> TransitionStoreState:
    """Append a batch `transitions` [K, ...] in order, overwriting the oldest when full."""
    state, _ = _store_add_with_slots(state, transitions)
    return state


def _store_add_with_slots(state: TransitionStoreState,
                          transitions: Transitions) -> Tuple[TransitionStoreState, jax.Array]:
    if set(transitions) != set(state.data):
        raise ValueError(f"transition keys {sorted(transitions)} != store keys "
                         f"{sorted(state.data)}")
    num_new = _leading_size(transitions)
    slots, kept = _write_slots(state, num_new)
    data = {k: state.data[k].at[slots].set(
        jnp.asarray(transitions[k][num_new - kept:], state.data[k].dtype))
        for k in state.data}
    new_state = state.replace(
        data=data,
        size=jnp.minimum(state.size + num_new, state.capacity).astype(jnp.int32),
        insert_pos=((state.insert_pos + num_new) % state.capacity).astype(jnp.int32))
    return new_state, slots


def store_set(state: TransitionStoreState, key: str, slots: jax.Array,
              values: jax.Array) -> TransitionStoreState:
    """Overwrite field `key` at `slots` (out-of-range slots are dropped: padding)."""
    data = dict(state.data)
    data[key] = data[key].at[slots].set(values.astype(data[key].dtype), mode="drop")
    return state.replace(data=data)


@functools.partial(jax.jit, static_argnames="batch_size")
def store_sample_uniform(state: TransitionStoreState, key: jax.Array,
                         batch_size: int) -> Transitions:
    """`batch_size` items drawn uniformly with replacement from the valid slots.

    With an empty store the result is slot 0 (zeros); check `state.size` first.
    """
    idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(state.size, 1))
    return _gather(state.data, idx)


@functools.partial(jax.jit, static_argnames=("batch_size", "window"))
def store_sample_recent(state: TransitionStoreState, key: jax.Array, batch_size: int,
                        window: int) -> Transitions:
    """Uniform draws from the newest min(size, window) items: a FIFO of capacity `window`
    viewed inside a larger store (the spec's 250k online DR buffer inside the store that
    holds every online transition)."""
    count = jnp.maximum(jnp.minimum(state.size, window), 1)
    back = jax.random.randint(key, (batch_size,), 0, count)
    idx = (state.insert_pos - 1 - back) % state.capacity
    return _gather(state.data, idx)


# --------------------------------------------------------------------------------------
# Balanced replay (Off2OnRL, spec section 4)
# --------------------------------------------------------------------------------------

class BalancedReplayState(flax.struct.PyTreeNode):
    """Prioritized replay over offline data (held outside) plus an online ring buffer.

    `tree`: sum tree over `num_offline + online.capacity` leaves (leaf i < M is
    offline transition i, leaf M + j is online slot j); `online`: the online
    `TransitionStoreState`; `max_priority`: float32 running maximum priority, the
    priority a new online transition enters with; `num_offline`: static M.
    """
    tree: sum_tree.SumTreeState
    online: TransitionStoreState
    max_priority: jax.Array
    num_offline: int = flax.struct.field(pytree_node=False)

    @property
    def online_capacity(self) -> int:
        return self.online.capacity


def init(num_offline: int, online_capacity: int,
         example_transition: Transitions) -> BalancedReplayState:
    """Balanced replay for `num_offline` (M) offline transitions and an online ring buffer.

    Offline leaves start at priority 1.0, online leaves at 0 (nothing there yet);
    the running max priority starts at 1.0 (the largest priority written so far).
    """
    if not isinstance(num_offline, int) or isinstance(num_offline, bool) or num_offline <= 0:
        raise ValueError(f"num_offline must be a positive int, got {num_offline!r}")
    online = store_init(online_capacity, example_transition)
    leaves = jnp.concatenate([jnp.ones((num_offline,), jnp.float32),
                              jnp.zeros((online_capacity,), jnp.float32)])
    return BalancedReplayState(tree=sum_tree.from_priorities(leaves), online=online,
                               max_priority=jnp.ones((), jnp.float32),
                               num_offline=num_offline)


def initial_max_priority(num_offline: int, init_online_fraction: float,
                         first_epoch_steps: int) -> float:
    """M f / ((1 - f) n1): the priority at which n1 online items hold mass fraction f.

    With M offline items at priority 1, n1 online items at priority p hold
    n1 p / (M + n1 p) of the mass, which equals f for this p.
    """
    if not 0.0 < init_online_fraction < 1.0:
        raise ValueError(f"init_online_fraction must be in (0, 1), got {init_online_fraction!r}")
    if first_epoch_steps <= 0:
        raise ValueError(f"first_epoch_steps must be positive, got {first_epoch_steps!r}")
    f = init_online_fraction
    return num_offline * f / ((1.0 - f) * first_epoch_steps)


def set_initial_max_priority(state: BalancedReplayState, init_online_fraction: float,
                             first_epoch_steps: int) -> BalancedReplayState:
    """Set the running max priority to M f / ((1 - f) n1), before the first online step.

    Following the spec ("before the first online step the maximum is *set* to"),
    this overwrites the running maximum, even if that lowers it (e.g. below the
    offline priority 1.0 when f is small); from then on it only increases. Call it
    once, before any `add_online`. `init_online_fraction` (f) must be in (0, 1)
    and `first_epoch_steps` (n1) positive; both are Python numbers.
    """
    value = initial_max_priority(state.num_offline, init_online_fraction, first_epoch_steps)
    return state.replace(max_priority=jnp.full_like(state.max_priority, value))


@jax.jit
def add_online(state: BalancedReplayState, transitions: Transitions) -> BalancedReplayState:
    """Append online `transitions` [K, ...]; each enters with the running max priority.

    A slot that is overwritten (ring buffer full) takes the new item's priority.
    """
    online, slots = _store_add_with_slots(state.online, transitions)
    leaf_idx = state.num_offline + slots
    prio = jnp.broadcast_to(state.max_priority, leaf_idx.shape)
    tree = sum_tree.set_priorities(state.tree, leaf_idx, prio)
    return state.replace(tree=tree, online=online)


def _check_offline(state: BalancedReplayState, offline_data: Transitions) -> None:
    m = _leading_size(offline_data)
    if m != state.num_offline:
        raise ValueError(f"offline_data has {m} items, the buffer was built for "
                         f"num_offline={state.num_offline}")
    if set(offline_data) != set(state.online.data):
        raise ValueError(f"offline keys {sorted(offline_data)} != online keys "
                         f"{sorted(state.online.data)}")


@jax.jit
def gather(state: BalancedReplayState, offline_data: Transitions,
           indices: jax.Array) -> Transitions:
    """The transitions at tree leaves `indices`: offline item i for i < M, else online slot i - M.

    Both sources are gathered with clipped indices and merged with `jnp.where`,
    so there is no data-dependent branching.
    """
    _check_offline(state, offline_data)
    m = state.num_offline
    is_off = indices < m
    off_idx = jnp.clip(indices, 0, m - 1)
    on_idx = jnp.clip(indices - m, 0, state.online.capacity - 1)

    def pick(off, on):
        mask = is_off.reshape(is_off.shape + (1,) * (off.ndim - 1))
        return jnp.where(mask, off[off_idx], on[on_idx].astype(off.dtype))

    return {k: pick(offline_data[k], state.online.data[k]) for k in offline_data}


@functools.partial(jax.jit, static_argnames="batch_size")
def sample(state: BalancedReplayState, offline_data: Transitions, key: jax.Array,
           batch_size: int) -> Tuple[Transitions, jax.Array]:
    """Stratified proportional sample: (batch [batch_size, ...], tree indices [batch_size]).

    Probability of leaf i is priority_i / total (PER exponent 1, no importance
    weights). `indices` are what `set_priorities` expects back.
    """
    indices = sum_tree.sample(state.tree, key, batch_size)
    return gather(state, offline_data, indices), indices


@jax.jit
def set_priorities(state: BalancedReplayState, indices: jax.Array,
                   priorities: jax.Array) -> BalancedReplayState:
    """Write `priorities` [K] at tree leaves `indices` [K]; raise the running max.

    Duplicated indices: the last occurrence wins (see `sum_tree.set_priorities`).
    The running max becomes max(old max, max(priorities)), so it never decreases.
    """
    priorities = jnp.asarray(priorities, jnp.float32)
    tree = sum_tree.set_priorities(state.tree, indices, priorities)
    max_priority = jnp.maximum(state.max_priority, jnp.max(priorities))
    return state.replace(tree=tree, max_priority=max_priority)


def offline_fraction(indices: jax.Array, num_offline: int) -> jax.Array:
    """Fraction of `indices` that point at offline data (index < num_offline)."""
    return jnp.mean((jnp.asarray(indices) < num_offline).astype(jnp.float32))


@functools.partial(jax.jit, static_argnames="batch_size")
def sample_uniform_offline(offline_data: Transitions, key: jax.Array,
                           batch_size: int) -> Transitions:
    """`batch_size` offline transitions drawn uniformly with replacement."""
    m = _leading_size(offline_data)
    idx = jax.random.randint(key, (batch_size,), 0, m)
    return _gather(offline_data, idx)
