"""N members of any state type stacked on a leading axis, written once.

Offline members are N independent states of one type (actor-critic, BCQ, ...) whose
parameters, optimizer states and counters are stacked leaf by leaf; updates `jax.vmap` over
the leading axis. Member i is created from `jax.random.split(key, N)[i]`.
"""
from typing import Callable, List

import jax
import jax.numpy as jnp
import numpy as np
from jax import custom_batching


def own_buffers(tree):
    """Every leaf in a buffer of its own. vmap (and jit) may hand back one buffer for equal
    outputs (a critic and its target at init); a donated state must not alias."""
    return jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), tree)


def create(make_one: Callable, key: jax.Array, num_members: int):
    """`make_one(key) -> state` for N member keys, stacked: [N, ...]."""
    if num_members < 1:
        raise ValueError(f"agent.num_members must be >= 1, got {num_members}")
    keys = jax.random.split(key, num_members)
    return own_buffers(jax.jit(jax.vmap(make_one))(keys))


def num_stacked(members) -> int:
    """N of a stacked set: the leading dim of its leaves (all of them carry it)."""
    return jax.tree_util.tree_leaves(members)[0].shape[0]


def member(members, i: int):
    """The i-th single state of a stacked set."""
    return jax.tree_util.tree_map(lambda x: x[i], members)


@custom_batching.custom_vmap
def lockstep(x: jax.Array) -> jax.Array:
    """`x`, a value every vmapped member (and seed) holds alike, as one unbatched value.

    For the branch of a `jax.lax.cond` on a step counter (TD3's policy delay, OPT's phase):
    under `jax.vmap` a cond whose predicate is batched becomes a select that computes both
    branches for every member. The members of a stacked set (and the seeds of a run) are
    created together and always take their steps together, so their counters are equal;
    passing the predicate through `lockstep` takes it from the first of them, unbatched, and
    the cond stays a branch (measured on CPU: BENCHMARKS.md; on a GPU a branch waits for
    its predicate on the host, so there the gain is unmeasured). Outside
    vmap it is the identity. Only for values equal across the mapped axes by construction:
    where they differ, the first member's decides for all.
    """
    return x


@lockstep.def_vmap
def _lockstep_vmap(axis_size, in_batched, x):
    del axis_size
    # Called again on the first element so that an outer vmap (seeds over members) takes
    # its first element too.
    return lockstep(x[0] if in_batched[0] else x), False


# Counters: a train state's `step`, Adam's `count` (and OPT's, BAQ's own `step`).
COUNTER_NAMES = ("step", "count")


def is_counter(path) -> bool:
    """Whether the leaf at `path` (of `jax.tree_util.tree_flatten_with_path`) is a counter:
    its last key (a field or a dict key) is one of `COUNTER_NAMES`."""
    last = path[-1] if path else None
    return getattr(last, "name", getattr(last, "key", None)) in COUNTER_NAMES


def unequal_counters(tree, to_host: Callable = np.asarray) -> List[str]:
    """The counters of a stacked set (leaves named as in `COUNTER_NAMES`) with any two
    entries unequal, each as "<path>: <values>"; empty when all are in lockstep. Members
    created and trained together always are; members put together from different runs or
    steps are not, and the updates would take the first one's counter for all of them
    (`lockstep`; also the online hand-over, `ensemble.to_ensemble`). `to_host`: a leaf as
    a NumPy array (`distributed.to_host` where leaves span processes)."""
    bad = []
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not is_counter(path) or np.ndim(x) == 0:
            continue
        a = to_host(x)
        if not np.all(a == a.flat[0]):
            values = sorted(set(a.ravel().tolist()))
            shown = ", ".join(map(str, values[:4])) + (", ..." if len(values) > 4 else "")
            bad.append(f"{jax.tree_util.keystr(path)}: {shown}")
    return bad


def member_mask(build: Callable, members):
    """Which leaves of `build(members)` carry the member axis first, as a bool per leaf.

    Found by building abstractly (`jax.eval_shape`, no compute) from N and from N + 1
    members: a leaf whose leading size follows N is member-stacked. Exact where a guess
    from shapes (`x.shape[0] == N`) would take any other axis of size N for the member
    axis. E.g. the online ensemble agent of N members: its actor, critics, targets and
    their Adam moments are member-stacked; the shared temperature and step counters are
    not."""
    n = num_stacked(members)
    more = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct((n + 1,) + tuple(x.shape[1:]), x.dtype), members)
    now, tree = jax.tree_util.tree_flatten(jax.eval_shape(build, members))
    # Leaf by leaf: the two trees' static fields may hold N itself (e.g. `members`).
    grown = jax.tree_util.tree_leaves(jax.eval_shape(build, more))
    return jax.tree_util.tree_unflatten(tree, [
        len(a.shape) > 0 and a.shape[0] == n and b.shape[0] == n + 1
        for a, b in zip(now, grown, strict=True)])
