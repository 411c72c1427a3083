"""Seed utilities: every piece of a run's state carries a leading seed axis [S, ...].

Seed i of a run is driven by PRNGKey(cfg.seed + i). `split_each` splits each seed's key on
its own (on device), `seeds_jit` compiles a function vmapped over the seed axis, and
`per_seed_rows` turns seed-stacked metrics into one CSV row per seed.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from o2o_jax.rundir import to_scalar


def stack(trees):
    return jax.tree_util.tree_map(lambda *x: jnp.stack(x), *trees)


def unstack(tree, i):
    return jax.tree_util.tree_map(lambda x: x[i], tree)


@functools.partial(jax.jit, static_argnums=1)
def _split_each(keys: jax.Array, num: int):
    return jax.vmap(lambda k: jax.random.split(k, num))(keys)


def split_each(keys: jax.Array, num: int):
    """keys [S, 2] -> `num` arrays [S, 2]: split each seed's key independently."""
    parts = _split_each(keys, num)
    return [parts[:, i] for i in range(num)]


def seed_list(cfg):
    return [cfg.seed + i for i in range(cfg.num_seeds)]


@functools.lru_cache(maxsize=None)
def seeds_jit(fn, donate: bool = False):
    """jit(vmap(fn)) over the seed axis, one compiled function per `fn`."""
    return jax.jit(jax.vmap(fn), donate_argnums=0 if donate else ())


def per_seed_rows(base_row: dict, info: dict, seeds, extra_per_seed=None):
    """One CSV row per seed; `info` values have a leading seed axis (members averaged)."""
    rows = []
    for s, seed in enumerate(seeds):
        row = {**base_row, "seed": seed}
        row.update({k: to_scalar(np.asarray(v)[s]) for k, v in info.items()})
        for k, v in (extra_per_seed or {}).items():
            row[k] = v[s]
        rows.append(row)
    return rows
