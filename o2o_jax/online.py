"""Online fine-tuning (spec sections 3-5): one XLA program per gradient step, one per epoch.

`online_step` is the whole online gradient step, fused in one jitted function:
  1. draw the RL batch from the replay mode (`replay/modes.py`: balanced, prioritized by
     density ratio; uniform: offline + online; online_only; mixed: a fixed offline share;
     oorb: APL's online / offline buffers);
  2. the method's online update (`StepConfig.update_fn`, `Algorithm.online_update(cfg)`;
     off2on's is the ensemble SAC update: critics, moment-matched actor, temperature, all
     gradients at the pre-update parameters, Polyak targets);
  3. the replay's refresh (balanced: new priorities of the sampled indices from the
     *pre-update* density-ratio net, written back, and that net's update).
`make_train_epoch` scans it K times in one call with the state donated.
"""
import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import struct
from flax.training.train_state import TrainState

from o2o_jax.agents import ensemble, sac
from o2o_jax.agents.actor_critic import ActorCritic
from o2o_jax.replay import buffers
from o2o_jax.replay.modes import REPLAY_MODES, make_replay


class OnlineState(struct.PyTreeNode):
    agent: ActorCritic                      # the online agent (ensemble; BCQ: its members)
    dr: Optional[TrainState]                # density-ratio network (balanced replay; else None)
    replay: Any                             # the replay mode's state (replay/modes.py)


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static knobs of the fused step (hashable: part of the compiled program)."""
    batch_size: int = 256
    dr_batch_size: int = 256
    replay: str = "balanced"
    priority_temperature: float = 5.0
    fifo_window: int = 250_000             # online DR batch: newest items only
    offline_ratio: float = 0.5             # mixed replay: offline share of each batch
    oorb_window: int = 20_000              # oorb replay: the online buffer's newest items
    oorb_online_prob: float = 0.5          # oorb replay: P(a batch from the online buffer)
    update_fn: Optional[Callable] = None   # the method's online update; None: SAC

    def __post_init__(self):
        if self.replay not in REPLAY_MODES:
            raise ValueError(f"replay mode {self.replay!r}: allowed {REPLAY_MODES}")


def replay_of(cfg: StepConfig):
    """The replay mode's pure functions for these knobs."""
    return make_replay(cfg.replay, cfg.dr_batch_size, cfg.priority_temperature,
                       cfg.fifo_window, cfg.offline_ratio, cfg.oorb_window,
                       cfg.oorb_online_prob)


def rl_batch(replay, offline_data, key, cfg: StepConfig):
    """The RL minibatch and its buffer indices (index < M: offline transition)."""
    return replay_of(cfg).sample(replay, offline_data, key, cfg.batch_size)


def online_step(state: OnlineState, offline_data, key: jax.Array, cfg: StepConfig):
    """One fused online gradient step: (state, offline_data, key) -> (state, info)."""
    k_rl, k_off, k_on, k_agent = jax.random.split(key, 4)
    replay = replay_of(cfg)
    batch, idx = replay.sample(state.replay, offline_data, k_rl, cfg.batch_size)
    update_fn = cfg.update_fn or sac.update
    agent, info = update_fn(state.agent, batch, k_agent)
    priorities = info.pop("priorities", None)     # a method's own (replay 'prioritized')
    info["offline_fraction"] = buffers.offline_fraction(idx, state.replay.num_offline)
    # The refresh's keys are the two the step has always given the DR batches.
    replay_state, dr_state, replay_info = replay.refresh(
        state.replay, state.dr, offline_data, batch, idx, jnp.stack([k_off, k_on]),
        priorities=priorities)
    info.update(replay_info)
    return OnlineState(agent=agent, dr=dr_state, replay=replay_state), info


# Also reported for the first step of each call, as `<key>_first_batch`: the authors' rlkit
# logs its trainer statistics from the first batch of each epoch, so these columns are the
# like-for-like comparison with their progress.csv.
FIRST_BATCH_KEYS = ("q1_data", "q_data", "q_target", "alpha", "w_offline", "w_online", "w_rl",
                    "offline_fraction", "entropy")
FIRST_BATCH_SUFFIX = "_first_batch"
# And their largest value over the epoch's steps, as `<key>_max`: an epoch mean hides
# whether a loss grows in every step or in a few (where a divergence starts).
MAX_KEYS = ("critic_loss",)
MAX_SUFFIX = "_max"
MAX_INFO_KEYS = tuple(k + MAX_SUFFIX for k in MAX_KEYS)


def train_epoch(state: OnlineState, offline_data, key, num_steps: int, cfg: StepConfig):
    """`num_steps` fused steps (lax.scan); info averaged over the steps, plus the first
    step's values of FIRST_BATCH_KEYS and the largest of MAX_KEYS."""
    def body(s, k):
        return online_step(s, offline_data, k, cfg)

    state, infos = jax.lax.scan(body, state, jax.random.split(key, num_steps))
    out = jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), infos)
    out.update({k + FIRST_BATCH_SUFFIX: infos[k][0] for k in FIRST_BATCH_KEYS if k in infos})
    out.update({k + MAX_SUFFIX: jnp.max(infos[k], axis=0) for k in MAX_KEYS if k in infos})
    return state, out


@functools.lru_cache(maxsize=None)
def make_train_epoch(num_steps: int, cfg: StepConfig, seed_axis: bool = False):
    """jit((state, offline_data, key) -> (state, info)): `num_steps` fused steps, one call.

    With `seed_axis`, state and key carry a leading seed axis and the offline data are
    shared by all seeds (in_axes=None). State is donated. Cached by its arguments.
    """
    epoch = functools.partial(train_epoch, num_steps=num_steps, cfg=cfg)
    if seed_axis:
        epoch = jax.vmap(epoch, in_axes=(0, None, 0))
    return jax.jit(epoch, donate_argnums=0)


def init_state(members: ActorCritic, offline_data, key: jax.Array, online_cfg,
               obs_dim: int, act_dim: int, agent=None,
               initial_priorities=None) -> OnlineState:
    """The online state at the start of fine-tuning (spec sections 3-4).

    `agent`: the online agent if already built (e.g. by `Algorithm.to_online`); by
    default the members become one ensemble agent (the method's reference hand-over).
    The replay state (and, for balanced replay, the density-ratio net from `key`) come
    from the replay mode's `init`; with `online.seed_fraction` > 0 the online buffer then
    receives `seed_count` random offline transitions (drawn with fold_in(key, 1)); with
    replay `prioritized` and `initial_priorities(agent, offline_data)` (the method's), the
    offline items start at those priorities.
    """
    oc = online_cfg
    if agent is None:
        agent = ensemble.hand_over(members, oc)
    num_offline = int(offline_data["rewards"].shape[0])
    example = {k: v[0] for k, v in offline_data.items()}
    mode = make_replay(oc.replay)
    replay, dr_state = mode.init(num_offline, example, key, oc, obs_dim, act_dim)
    if initial_priorities is not None and oc.replay == "prioritized":
        prio = initial_priorities(agent, offline_data)          # [M], the method's own
        replay = buffers.set_priorities(replay, jnp.arange(num_offline), prio)
    seeds = seed_count(num_offline, oc)
    if seeds:   # the online buffer starts with a random share of the offline data
        idx = jax.random.randint(jax.random.fold_in(key, 1), (seeds,), 0, num_offline)
        replay = mode.add(replay, {k: v[idx] for k, v in offline_data.items()})
    return OnlineState(agent=agent, dr=dr_state, replay=replay)


def total_updates(online_cfg) -> int:
    """Every online update of a run: (epochs - 1 + first_epoch_multiplier) x
    updates_per_epoch (0 without an online phase); the horizon of methods' schedules."""
    oc = online_cfg
    if oc.epochs <= 0:
        return 0
    return int((oc.epochs - 1 + oc.first_epoch_multiplier) * oc.updates_per_epoch)


def seed_count(num_offline: int, online_cfg) -> int:
    """Offline transitions copied into the online buffer at the start (drawn with
    replacement, AdaptiveBC's `distill`): max(seed_fraction x M, seed_min) if
    seed_fraction > 0, else 0."""
    frac = float(online_cfg.get("seed_fraction", 0.0))
    if frac <= 0:
        return 0
    return max(int(frac * num_offline), int(online_cfg.get("seed_min", 0)))


def q_auroc(agent: ActorCritic, observations, actions_taken, key, q_fn=ensemble.q_ens):
    """AUROC of Q_ens separating (s, a_taken) from (s, a_uniform) pairs (paper Fig. 4b).

    Mann-Whitney form: P(Q(s, a_taken) > Q(s', a_uniform)) + 0.5 P(tie) over all pairs.
    """
    uniform = jax.random.uniform(key, actions_taken.shape, minval=-1.0, maxval=1.0)
    pos = q_fn(agent, observations, actions_taken)
    neg = q_fn(agent, observations, uniform)
    diff = pos[:, None] - neg[None, :]
    return jnp.mean((diff > 0).astype(jnp.float32) + 0.5 * (diff == 0).astype(jnp.float32))
