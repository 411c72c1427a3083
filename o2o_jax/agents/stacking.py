"""N members of any state type stacked on a leading axis, written once.

Offline members are N independent states of one type (actor-critic, BCQ, ...) whose
parameters, optimizer states and counters are stacked leaf by leaf; updates `jax.vmap` over
the leading axis. Member i is created from `jax.random.split(key, N)[i]`.
"""
from typing import Callable

import jax
import jax.numpy as jnp


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
