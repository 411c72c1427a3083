"""Replay: an exact sum tree, a FIFO transition store, the balanced replay buffer, and the
replay modes built on them.

`sum_tree` holds the prioritized index structure; `buffers` holds the ring buffer
(`store_*`) and the Off2OnRL balanced replay (`init`, `add_online`, `sample`,
`set_priorities`, ...); `modes` gives each replay mode of the online phase (balanced,
uniform, online_only) as `make_replay(mode)`, a frozen set of pure functions. Everything is
pure functions over pytree states.
"""
from o2o_jax.replay import buffers, sum_tree
from o2o_jax.replay.buffers import (BalancedReplayState, TransitionStoreState, Transitions,
                                    offline_fraction, sample_uniform_offline)
from o2o_jax.replay.sum_tree import SumTreeState

__all__ = ["buffers", "sum_tree", "BalancedReplayState", "TransitionStoreState", "Transitions",
           "SumTreeState", "offline_fraction", "sample_uniform_offline"]
