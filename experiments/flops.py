"""Analytic matmul FLOP counts of the update steps (2 FLOPs per multiply-add).

Only dense-layer matmuls are counted (they dominate: elementwise work is O(width), not
O(width^2)). For a network with layer sizes d_0 -> d_1 -> ... -> d_L and n inputs:
  forward               F = n * sum_l d_{l-1} d_l
  weight gradients      F
  input gradients       F - n d_0 d_1   (the first layer's input gradient is only needed
                                         when differentiating w.r.t. the input itself)
"""
from typing import Sequence


def macs(sizes: Sequence[int]) -> int:
    return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def first_layer(sizes: Sequence[int]) -> int:
    return sizes[0] * sizes[1]


def _nets(obs_dim, act_dim, hidden):
    critic = [obs_dim + act_dim, *hidden, 1]
    actor = [obs_dim, *hidden, 2 * act_dim]          # mean and log-std heads
    return critic, actor


def sac_update_flops(obs_dim, act_dim, hidden, batch, cql_actions=0, members=1):
    """FLOPs of one SAC/CQL update of `members` agents (each with twin critics); the same
    per member for the online ensemble (all members' actor forwards feed one policy).

    cql_actions: total sampled actions per state in the CQL logsumexp (3 x n), 0 for SAC.
    """
    critic, actor = _nets(obs_dim, act_dim, hidden)
    fc, fa = macs(critic), macs(actor)
    per_sample = 0
    # Critic step: actor forward at s', twin target forward, twin forward + backward.
    per_sample += fa + 2 * fc + 2 * fc + 2 * (fc + fc - first_layer(critic))
    # Actor step: actor forward at s, twin forward, input gradients through the twin
    # critics (to the action), actor weight + input gradients.
    per_sample += fa + 2 * fc + 2 * fc + fa + (fa - first_layer(actor))
    if cql_actions:
        # Policy samples at s and s' reuse the actor forwards above (XLA CSE), so only
        # the twin critics on the sampled actions: forward + weight and input grads.
        per_sample += cql_actions * 2 * (fc + fc + fc - first_layer(critic))
    return 2 * members * batch * per_sample


def dr_update_flops(obs_dim, act_dim, hidden, batch):
    """Density-ratio net: forward+backward on the offline and online DR batches, and a
    forward on the RL batch for the new priorities."""
    sizes = [obs_dim + act_dim, *hidden, 1]
    f = macs(sizes)
    return 2 * batch * (2 * (f + f + f - first_layer(sizes)) + f)


def matmul_flops(m, k, n):
    return 2 * m * k * n
