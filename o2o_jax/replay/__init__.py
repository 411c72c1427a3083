"""Replay: an exact sum tree, a FIFO transition store and the balanced replay buffer.

`sum_tree` holds the prioritized index structure; `buffers` holds the ring buffer
(`store_*`) and the Off2OnRL balanced replay (`init`, `add_online`, `sample`,
`set_priorities`, ...). Everything is pure functions over pytree states.
"""
from o2o_jax.replay import buffers, sum_tree
from o2o_jax.replay.buffers import (BalancedReplayState, TransitionStoreState, Transitions,
                                    offline_fraction, sample_uniform_offline)
from o2o_jax.replay.sum_tree import SumTreeState

__all__ = ["buffers", "sum_tree", "BalancedReplayState", "TransitionStoreState", "Transitions",
           "SumTreeState", "offline_fraction", "sample_uniform_offline"]
