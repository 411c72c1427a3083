"""Replay modes: how the online phase stores transitions and draws its RL batch, each as
`make_replay(mode, ...)` returning a frozen set of pure functions (flashbax's `make_*`).

* `balanced` (Off2OnRL, spec section 4): one prioritized buffer over the offline data and
  the online ring buffer (`buffers.BalancedReplayState`), with priorities from a
  density-ratio network that is trained in the same step (`refresh`).
* `uniform`: offline + online transitions drawn uniformly.
* `online_only`: online transitions drawn uniformly.
* `mixed`: a fixed share of every batch from the offline data, the rest from the online
  transitions, each drawn uniformly (`offline_ratio`; 0.5 is RLPD's symmetric sampling,
  PEX's 128 + 128 and Cal-QL's `mixing_ratio`). The offline part comes first in the batch.
* `prioritized`: the balanced buffer's sum tree over offline + online items, with the
  priorities the *method* gives: its update returns `info["priorities"]` [B] for the
  batch it drew (BAQ's BC divergence), written back by `refresh`; new online items enter
  at the running maximum, offline items start at 1. No density-ratio net.
* `oorb` (APL's online-offline replay): an online buffer of the newest `oorb_window`
  online transitions and an offline buffer of the dataset plus the online transitions
  that aged out of it; each batch comes wholly from the online buffer with probability
  `oorb_online_prob`, else from the offline buffer, and carries `w` [B]: 0 from the
  online buffer, 1 from the offline one. Nothing is moved: both are index ranges of the
  same stores.

The uniform modes (all but `balanced` and `prioritized`) build neither the sum tree nor
the density-ratio network: their state is the online ring buffer alone
(`UniformReplayState`); `prioritized` builds the sum tree but no density-ratio net. For
all but `balanced`, `dr` is None.

    replay = make_replay("balanced", dr_batch_size=256, priority_temperature=5.0,
                         fifo_window=250_000)
    state, dr = replay.init(num_offline, example, key, online_cfg, obs_dim, act_dim)
    state = replay.add(state, transitions)                       # [K, ...]
    batch, idx = replay.sample(state, offline_data, key, batch_size)
    ... the method's update on `batch` ...
    state, dr, info = replay.refresh(state, dr, offline_data, batch, idx, keys)  # 2 keys

Indices are buffer leaves: i < num_offline is offline transition i, num_offline + j is
online slot j (the same convention in every mode).
"""
import functools
from typing import Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

from o2o_jax import density_ratio as dr
from o2o_jax.replay import buffers

REPLAY_MODES = ("balanced", "uniform", "online_only", "mixed", "oorb",
                "prioritized")


class UniformReplayState(flax.struct.PyTreeNode):
    """Offline data (held outside, as for balanced replay) plus the online ring buffer."""
    online: buffers.TransitionStoreState
    num_offline: int = flax.struct.field(pytree_node=False)

    @property
    def online_capacity(self) -> int:
        return self.online.capacity


class Replay(NamedTuple):
    """One replay mode's pure functions (see the module docstring for their shapes)."""
    mode: str
    init: Callable      # (num_offline, example, key, online_cfg, obs_dim, act_dim) -> (state, dr)
    add: Callable       # (state, transitions [K, ...]) -> state
    sample: Callable    # (state, offline_data, key, batch_size) -> (batch, indices)
    refresh: Callable   # (state, dr, offline_data, batch, indices, keys [2],
    #                      priorities=None) -> (state, dr, info)


def online_capacity(online_cfg) -> int:
    """Every online transition of the run is kept: epochs x env steps per epoch (offline
    seed data, `online.seed_fraction`, are the oldest items: once the buffer is full,
    late in the run, they are the first overwritten)."""
    return int(online_cfg.epochs * online_cfg.env_steps_per_epoch)


# ------------------------------------------------------------------------------ balanced

def _balanced_init(num_offline, example, key, online_cfg, obs_dim, act_dim):
    oc = online_cfg
    state = buffers.init(num_offline, online_capacity(oc), example)
    state = buffers.set_initial_max_priority(state, oc.init_online_fraction,
                                             oc.env_steps_per_epoch)
    dr_state = dr.create_dr_state(key, obs_dim, act_dim, tuple(oc.dr_hidden_dims), oc.dr_lr)
    return state, dr_state


def _balanced_refresh(state, dr_state, offline_data, batch, indices, keys, priorities=None,
                      *, dr_batch_size, priority_temperature, fifo_window):
    """New priorities of the sampled leaves from the *pre-update* density-ratio net, and
    the net's own update from the same parameters (an offline and an online DR batch).
    `keys` [2, ...]: the offline and the online DR batch's keys."""
    k_off, k_on = keys
    off = buffers.sample_uniform_offline(offline_data, k_off, dr_batch_size)
    on = buffers.store_sample_recent(state.online, k_on, dr_batch_size, fifo_window)
    w_rl = dr.predict_ratio(dr_state, batch["observations"], batch["actions"])
    w_off = dr.predict_ratio(dr_state, off["observations"], off["actions"])
    priorities = dr.priorities_from_ratio(w_rl, w_off, priority_temperature)
    dr_state, info = dr.dr_update(dr_state, off["observations"], off["actions"],
                                  on["observations"], on["actions"])
    state = buffers.set_priorities(state, indices, priorities)
    info["priority_mean"] = jnp.mean(priorities)
    info["w_rl"] = jnp.mean(w_rl)      # mean ratio of the RL batch
    return state, dr_state, info


# ------------------------------------------------------------------------- uniform modes

def _uniform_init(num_offline, example, key, online_cfg, obs_dim, act_dim):
    del key, obs_dim, act_dim        # no density-ratio net
    if not isinstance(num_offline, int) or isinstance(num_offline, bool) or num_offline <= 0:
        raise ValueError(f"num_offline must be a positive int, got {num_offline!r}")
    store = buffers.store_init(online_capacity(online_cfg), example)
    return UniformReplayState(online=store, num_offline=num_offline), None


def _uniform_add(state: UniformReplayState, transitions) -> UniformReplayState:
    return state.replace(online=buffers.store_add(state.online, transitions))


def _uniform_sample(state, offline_data, key, batch_size, *, online_only: bool):
    m = state.num_offline
    if online_only:
        idx = m + jax.random.randint(key, (batch_size,), 0, jnp.maximum(state.online.size, 1))
    else:
        idx = jax.random.randint(key, (batch_size,), 0, m + state.online.size)
    return buffers.gather(state, offline_data, idx), idx


def _mixed_sample(state, offline_data, key, batch_size, *, offline_ratio: float):
    m = state.num_offline
    n_off = int(round(offline_ratio * batch_size))
    k_off, k_on = jax.random.split(key)
    idx = jnp.concatenate([
        jax.random.randint(k_off, (n_off,), 0, m),
        m + jax.random.randint(k_on, (batch_size - n_off,), 0,
                               jnp.maximum(state.online.size, 1))])
    return buffers.gather(state, offline_data, idx), idx


def _oorb_sample(state, offline_data, key, batch_size, *, window: int, online_prob: float):
    m, store = state.num_offline, state.online
    k_coin, k_on, k_off = jax.random.split(key, 3)
    recent = jnp.minimum(store.size, window)
    aged = store.size - recent
    from_online = (jax.random.uniform(k_coin) < online_prob) & (recent > 0)
    oldest = store.insert_pos - store.size            # slot of the oldest online item
    j_on = jax.random.randint(k_on, (batch_size,), 0, jnp.maximum(recent, 1))
    on_idx = m + (store.insert_pos - 1 - j_on) % store.capacity
    j_off = jax.random.randint(k_off, (batch_size,), 0, m + aged)
    off_idx = jnp.where(j_off < m, j_off, m + (oldest + j_off - m) % store.capacity)
    idx = jnp.where(from_online, on_idx, off_idx)
    batch = buffers.gather(state, offline_data, idx)
    batch["w"] = jnp.full((batch_size,), 1.0 - from_online.astype(jnp.float32))
    return batch, idx


def _no_refresh(state, dr_state, offline_data, batch, indices, keys, priorities=None):
    del offline_data, batch, indices, keys, priorities
    return state, dr_state, {}


# ----------------------------------------------------------- prioritized by the method

def _prioritized_init(num_offline, example, key, online_cfg, obs_dim, act_dim):
    del key, obs_dim, act_dim        # no density-ratio net
    return buffers.init(num_offline, online_capacity(online_cfg), example), None


def _method_refresh(state, dr_state, offline_data, batch, indices, keys, priorities=None):
    del offline_data, batch, keys
    if priorities is None:
        raise ValueError("replay 'prioritized' takes its priorities from the method: its "
                         "online update must return info['priorities'] [B] (e.g. algo "
                         "'baq'); use another replay mode for this method")
    state = buffers.set_priorities(state, indices, priorities)
    return state, dr_state, {"priority_mean": jnp.mean(priorities)}


@functools.lru_cache(maxsize=None)
def make_replay(mode: str, dr_batch_size: int = 256, priority_temperature: float = 5.0,
                fifo_window: int = 250_000, offline_ratio: float = 0.5,
                oorb_window: int = 20_000, oorb_online_prob: float = 0.5) -> Replay:
    """The pure functions of replay `mode` (one of REPLAY_MODES); the density-ratio knobs
    only matter for `balanced`, `offline_ratio` only for `mixed`, the `oorb_*` ones only
    for `oorb`. Cached: equal arguments give the same object."""
    if mode == "balanced":
        refresh = functools.partial(_balanced_refresh, dr_batch_size=dr_batch_size,
                                    priority_temperature=priority_temperature,
                                    fifo_window=fifo_window)
        return Replay(mode, _balanced_init, buffers.add_online, buffers.sample, refresh)
    if mode in ("uniform", "online_only"):
        sample = functools.partial(_uniform_sample, online_only=mode == "online_only")
        return Replay(mode, _uniform_init, _uniform_add, sample, _no_refresh)
    if mode == "mixed":
        if not 0.0 <= offline_ratio <= 1.0:
            raise ValueError(f"offline_ratio must lie in [0, 1], got {offline_ratio!r}")
        sample = functools.partial(_mixed_sample, offline_ratio=float(offline_ratio))
        return Replay(mode, _uniform_init, _uniform_add, sample, _no_refresh)
    if mode == "prioritized":
        return Replay(mode, _prioritized_init, buffers.add_online, buffers.sample,
                      _method_refresh)
    if mode == "oorb":
        if oorb_window < 1 or not 0.0 <= oorb_online_prob <= 1.0:
            raise ValueError(f"oorb needs oorb_window >= 1 and oorb_online_prob in [0, 1]; "
                             f"got {oorb_window}, {oorb_online_prob}")
        sample = functools.partial(_oorb_sample, window=int(oorb_window),
                                   online_prob=float(oorb_online_prob))
        return Replay(mode, _uniform_init, _uniform_add, sample, _no_refresh)
    raise ValueError(f"replay mode {mode!r}: allowed {REPLAY_MODES}")
