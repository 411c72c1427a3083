"""Offline updates of N independent members in one compiled program, for any method.

`make_train_chunk(K, batch_size, update_fn)` returns a jitted function that runs K updates
of all N members with `jax.lax.scan` (state donated); `update_fn(member, batch, key) ->
(member, info)` is the method's (`Algorithm.offline_update(cfg)`). Each update splits the
step key into one key per member; member i draws its own minibatch uniformly from the
device-resident dataset and takes its step (`jax.vmap` over members), so members differ in
initialisation and data order.
"""
import functools

import jax
import jax.numpy as jnp

from o2o_jax.agents import stacking



def sample_batch(data, key: jax.Array, batch_size: int):
    """A uniform minibatch (with replacement) from a dict of device arrays [M, ...] (every
    field it holds: the transitions, and e.g. `mc_returns` where a method reads them)."""
    num = data["rewards"].shape[0]
    idx = jax.random.randint(key, (batch_size,), 0, num)
    return {k: v[idx] for k, v in data.items()}


def member_step(agent, data, key: jax.Array, batch_size: int, update_fn):
    """One member's update on its own minibatch: (agent, data, key) -> (agent, info)."""
    k_batch, k_update = jax.random.split(key)
    return update_fn(agent, sample_batch(data, k_batch, batch_size), k_update)


def members_step(members, data, key: jax.Array, batch_size: int, update_fn):
    """All N members take one step, member i with key split(key, N)[i]."""
    num_members = stacking.num_stacked(members)
    keys = jax.random.split(key, num_members)
    step = functools.partial(member_step, batch_size=batch_size, update_fn=update_fn)
    return jax.vmap(step, in_axes=(0, None, 0))(members, data, keys)


def train_chunk(members, data, key, num_steps: int, batch_size: int, update_fn):
    """`num_steps` updates of all members (lax.scan); info averaged over steps, per member."""
    def body(m, k):
        return members_step(m, data, k, batch_size, update_fn)

    members, infos = jax.lax.scan(body, members, jax.random.split(key, num_steps))
    return members, jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), infos)


@functools.lru_cache(maxsize=None)
def make_train_chunk(num_steps: int, batch_size: int, update_fn, seed_axis: bool = False):
    """jit((members, data, key) -> (members, info)): `num_steps` updates in one call.

    With `seed_axis`, members and key carry a leading seed axis [S, ...] and the dataset is
    shared by all seeds (vmap with in_axes=None: one copy in memory). State is donated.
    Cached: the same arguments return the same compiled function.
    """
    chunk = functools.partial(train_chunk, num_steps=num_steps, batch_size=batch_size,
                              update_fn=update_fn)
    if seed_axis:
        chunk = jax.vmap(chunk, in_axes=(0, None, 0))
    return jax.jit(chunk, donate_argnums=0)
