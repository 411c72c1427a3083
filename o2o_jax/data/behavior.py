"""Behaviour policies for the dataset recipe: a plain SAC trainer, rollouts, policy files.

* `train_sac`: SAC from scratch on one env (our `actor_critic.create` + `sac.update` with
  the CQL penalty off and the entropy backup on). The loop alternates `chunk` env steps
  with `chunk` gradient steps done in one compiled call (`lax.scan`, agent donated,
  minibatches sampled on device from the FIFO `replay.buffers` store), so the update-to-data
  ratio is 1 with no host round trip per update. The first `start_steps` actions are
  uniformly random (no updates yet). Every `eval_every` env steps the current stochastic
  policy, the one that would generate a dataset, is evaluated; the first evaluation whose
  mean return reaches `target_return` is the *medium point*: a snapshot of the agent and
  of every transition collected so far (the medium-replay data) is kept.
* `rollout`: run a batched policy in `num_envs` envs until exactly N transitions, returning
  Minari-layout episodes (see `store.py`); episodes still running when the budget is spent
  are cut and their last step marked as a truncation.
* `save_policy` / `load_policy`: actor parameters (flax msgpack) plus a JSON file with the
  agent config, dims and provenance; `save_agent` / `load_agent`: the whole training state,
  so a run stopped at the medium point can be continued to the expert level.
"""
import dataclasses
import functools
import io
import json
import os
import pathlib
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from o2o_jax import envs
from o2o_jax.agents import actor_critic as ac
from o2o_jax.agents import sac
from o2o_jax.progress import Progress
from o2o_jax.replay import buffers

Episode = Dict[str, np.ndarray]
Log = Callable[[str], None]


def sac_config(hidden_dims=(256, 256)) -> ml_collections.ConfigDict:
    """Plain SAC from the shared agent config: no CQL, entropy backup, standard 3e-4 rates."""
    c = ac.default_config()
    c.num_members = 1
    c.hidden_dims = tuple(hidden_dims)
    c.cql_weight = 0.0
    c.backup_entropy = True
    c.bc_steps = 0
    c.actor_lr = 3e-4
    c.critic_lr = 3e-4
    c.temp_lr = 3e-4
    return c


# --------------------------------------------------------------------------------------
# Compiled pieces
# --------------------------------------------------------------------------------------

@jax.jit
def _sample_actions(agent: ac.ActorCritic, obs: jax.Array, key: jax.Array, step: jax.Array):
    return ac.act(agent, obs, jax.random.fold_in(key, step))


@jax.jit
def _mode_actions(agent: ac.ActorCritic, obs: jax.Array):
    return ac.act(agent, obs)


@functools.partial(jax.jit, static_argnames=("num_updates", "batch_size"),
                   donate_argnums=(0,))
def _update_chunk(agent, store, key, num_updates: int, batch_size: int):
    """`num_updates` SAC steps on minibatches drawn uniformly from `store`, in one call."""
    def body(agent, k):
        k_batch, k_update = jax.random.split(k)
        batch = buffers.store_sample_uniform(store, k_batch, batch_size)
        agent, info = sac.update(agent, batch, k_update)
        return agent, (info["critic_loss"], info["alpha"])

    agent, (losses, alphas) = jax.lax.scan(body, agent, jax.random.split(key, num_updates))
    return agent, {"critic_loss": jnp.mean(losses), "alpha": alphas[-1]}


_store_add = jax.jit(buffers.store_add, donate_argnums=(0,))


def policy_fn(agent: ac.ActorCritic, seed: int, deterministic: bool = False):
    """A NumPy batch policy obs [B, obs_dim] -> actions [B, act_dim] for `envs` helpers."""
    key = jax.random.PRNGKey(seed)
    counter = [0]

    def fn(obs):
        obs = jnp.asarray(obs, jnp.float32)
        if deterministic:
            return np.asarray(_mode_actions(agent, obs))
        counter[0] += 1
        return np.asarray(_sample_actions(agent, obs, key, counter[0]))

    return fn


def uniform_policy(act_dim: int, seed: int):
    rng = np.random.default_rng(seed)
    return lambda obs: rng.uniform(-1.0, 1.0, (len(obs), act_dim)).astype(np.float32)


# --------------------------------------------------------------------------------------
# Episodes
# --------------------------------------------------------------------------------------

class _EpisodeRecorder:
    """Builds Minari-layout episodes from a stream of single-env steps."""

    def __init__(self, first_obs: np.ndarray):
        self.episodes: List[Episode] = []
        self._start(first_obs)

    def _start(self, obs):
        self.obs, self.actions, self.rewards, self.terms, self.truncs = [obs], [], [], [], []

    def add(self, action, reward, next_obs, terminated, truncated, reset_obs=None):
        self.actions.append(action)
        self.rewards.append(reward)
        self.terms.append(bool(terminated))
        self.truncs.append(bool(truncated))
        self.obs.append(next_obs)
        if terminated or truncated:
            self.episodes.append(self._current())
            self._start(reset_obs)

    def _current(self, cut: bool = False) -> Episode:
        truncs = list(self.truncs)
        if cut and self.rewards:
            truncs[-1] = True
        ep = {"observations": np.asarray(self.obs, np.float64),
              "actions": np.asarray(self.actions, np.float32),
              "rewards": np.asarray(self.rewards, np.float64),
              "terminations": np.asarray(self.terms, bool),
              "truncations": np.asarray(truncs, bool)}
        if cut:
            ep["cut"] = True
        return ep

    def snapshot(self) -> List[Episode]:
        """Finished episodes plus the running one cut here (last step marked truncated)."""
        return self.episodes + ([self._current(cut=True)] if self.rewards else [])

    @property
    def num_steps(self) -> int:
        return sum(len(e["rewards"]) for e in self.episodes) + len(self.rewards)


def episode_returns(episodes: List[Episode], complete_only: bool = True) -> np.ndarray:
    """Undiscounted returns; `complete_only` skips episodes cut by the data budget."""
    out = [float(np.sum(e["rewards"])) for e in episodes
           if not (complete_only and e.get("cut", False))]
    return np.asarray(out, np.float64)


def trim_episodes(episodes: List[Episode], num_transitions: int) -> List[Episode]:
    """Drop trailing steps so exactly `num_transitions` remain; shortened episodes become
    truncations (their kept last step is marked truncated, `cut` = True)."""
    total = sum(len(e["rewards"]) for e in episodes)
    excess = total - num_transitions
    if excess < 0:
        raise ValueError(f"only {total} transitions, {num_transitions} requested")
    out = list(episodes)
    while excess > 0:
        ep = out.pop()
        t = len(ep["rewards"])
        if t <= excess:
            excess -= t
            continue
        keep = t - excess
        excess = 0
        truncs = np.array(ep["truncations"][:keep], bool)
        truncs[-1] = True
        out.append({"observations": ep["observations"][:keep + 1],
                    "actions": ep["actions"][:keep], "rewards": ep["rewards"][:keep],
                    "terminations": np.zeros(keep, bool), "truncations": truncs, "cut": True})
    return out


def rollout(env_name: str, policy: Callable[[np.ndarray], np.ndarray], num_transitions: int,
            seed: int, num_envs: int = 8, label: str = "rollout",
            log: Optional[Log] = None) -> List[Episode]:
    """Exactly `num_transitions` transitions of `policy` in `num_envs` envs side by side.

    Episodes are listed in the order they finish; those still running at the end are cut
    (`cut` = True, last step marked truncated).
    """
    num_envs = max(1, min(num_envs, num_transitions))
    benv = envs.BatchedEnvs(env_name, num_envs, seed)
    recs = [_EpisodeRecorder(benv.obs[i].copy()) for i in range(num_envs)]
    finished: List[Episode] = []
    progress = Progress(label, num_transitions, "transitions", log=log)
    steps, return_sum = 0, 0.0

    def extra():
        if not finished:
            return ""
        return f"{len(finished)} episodes, mean return {return_sum / len(finished):.1f}"

    try:
        while steps < num_transitions:
            actions = np.asarray(policy(benv.obs), np.float32)
            tr, _ = benv.step(actions)
            for i, rec in enumerate(recs):
                n_before = len(rec.episodes)
                rec.add(tr["actions"][i], float(tr["rewards"][i]), tr["next_observations"][i],
                        tr["dones"][i] > 0, tr["truncations"][i] > 0, benv.obs[i].copy())
                if len(rec.episodes) > n_before:
                    finished.append(rec.episodes[-1])
                    return_sum += float(np.sum(finished[-1]["rewards"]))
            steps += num_envs
            progress.update(min(steps, num_transitions), extra)
    finally:
        benv.close()
    running = [rec._current(cut=True) for rec in recs if rec.rewards]
    episodes = trim_episodes(finished + running, num_transitions)
    progress.done(f"{len(episodes)} episodes")
    return episodes


# --------------------------------------------------------------------------------------
# SAC training
# --------------------------------------------------------------------------------------

@dataclasses.dataclass
class Snapshot:
    agent: ac.ActorCritic
    env_steps: int
    eval_return: float          # mean return of the stochastic policy (the behaviour policy)


@dataclasses.dataclass
class SACRun:
    final: Snapshot
    medium: Optional[Snapshot]               # None if the target was never reached
    medium_replay: Optional[List[Episode]]   # every transition collected up to `medium`
    history: List[Tuple[int, float]]         # (env steps, stochastic eval return)
    final_replay: Optional[List[Episode]] = None   # everything, if `medium` is None


def _example_transition(obs_dim: int, act_dim: int) -> Dict[str, np.ndarray]:
    return {"observations": np.zeros(obs_dim, np.float32),
            "actions": np.zeros(act_dim, np.float32), "rewards": np.zeros((), np.float32),
            "next_observations": np.zeros(obs_dim, np.float32),
            "dones": np.zeros((), np.float32)}


def episodes_to_transitions(episodes: List[Episode]) -> Dict[str, np.ndarray]:
    obs = [e["observations"] for e in episodes]
    return {"observations": np.concatenate([o[:-1] for o in obs]).astype(np.float32),
            "actions": np.concatenate([e["actions"] for e in episodes]).astype(np.float32),
            "rewards": np.concatenate([e["rewards"] for e in episodes]).astype(np.float32),
            "next_observations": np.concatenate([o[1:] for o in obs]).astype(np.float32),
            "dones": np.concatenate([e["terminations"] for e in episodes]).astype(np.float32)}


def train_sac(env_name: str, cfg, *, train_steps: int, target_return: float,
              stop_at_target: bool, seed: int, batch_size: int = 256,
              start_steps: int = 10_000, chunk: int = 1_000, eval_every: int = 10_000,
              eval_episodes: int = 5, resume: Optional[Tuple[ac.ActorCritic, int,
                                                            List[Episode]]] = None,
              on_medium: Optional[Callable[[Snapshot, List[Episode]], None]] = None,
              resume_medium_reached: bool = True, checkpoint_every: int = 0,
              on_checkpoint: Optional[Callable[[ac.ActorCritic, int, bool, List[Episode]],
                                               None]] = None,
              log: Optional[Log] = None, label: str = "SAC") -> SACRun:
    """Train SAC for `train_steps` env steps (UTD 1); see the module docstring.

    `resume = (agent, env_steps, replay_episodes)` continues a run (from the medium point,
    or from a checkpoint): the replay store is refilled with those episodes and training
    goes on from `env_steps` with a fresh episode (`resume_medium_reached`: whether that
    run had passed its medium point). `on_medium(snapshot, replay_episodes)` is called once
    when the target is first reached (e.g. to save the policy right away).
    `on_checkpoint(agent, env_steps, medium_reached, replay_episodes)` is called every
    `checkpoint_every` env steps (0: never) before the end, so that a run stopped there can
    be resumed; the agent is donated to the next update, so save it before returning.
    """
    log = log or print
    chunk = max(1, min(chunk, eval_every))  # evaluations fall on chunk boundaries
    obs_dim, act_dim = envs.env_dims(env_name)
    key = jax.random.PRNGKey(seed)
    key, k_init, k_act = jax.random.split(key, 3)
    rng = np.random.default_rng(seed)
    env = envs.make_env(env_name)
    obs, _ = env.reset(seed=seed)
    rec = _EpisodeRecorder(np.asarray(obs, np.float64))
    store = buffers.store_init(max(train_steps, 1), _example_transition(obs_dim, act_dim))
    if resume is not None:
        agent, step, old_episodes = resume
        rec.episodes = list(old_episodes)
        store = _store_add(store, episodes_to_transitions(old_episodes))
        medium_reached = bool(resume_medium_reached)
        key = jax.random.fold_in(key, step)    # not the start's update keys again
    else:
        agent = ac.create(k_init, obs_dim, act_dim, cfg)
        step = 0
        medium_reached = False
    medium = medium_replay = None
    history: List[Tuple[int, float]] = []
    next_eval = (step // eval_every + 1) * eval_every
    next_checkpoint = ((step // checkpoint_every + 1) * checkpoint_every
                       if checkpoint_every > 0 else 0)
    progress = Progress(label, train_steps, "env steps", log=log, initial=step,
                        stops_early=(f"at the medium point (eval return >= "
                                     f"{target_return:.1f})"
                                     if stop_at_target and not medium_reached else None))
    progress.update(step, f"target return {target_return:.1f}", force=True)
    last_eval, info = float("nan"), {}
    try:
        while step < train_steps:
            n = min(chunk, train_steps - step)
            batch = {k: [] for k in ("observations", "actions", "rewards",
                                     "next_observations", "dones")}
            for _ in range(n):
                if step < start_steps:
                    action = rng.uniform(-1.0, 1.0, act_dim).astype(np.float32)
                else:
                    action = np.asarray(_sample_actions(
                        agent, jnp.asarray(obs, jnp.float32)[None], k_act, step))[0]
                next_obs, reward, term, trunc, _ = env.step(action)
                batch["observations"].append(obs)
                batch["actions"].append(action)
                batch["rewards"].append(reward)
                batch["next_observations"].append(next_obs)
                batch["dones"].append(float(term))
                reset_obs = env.reset()[0] if (term or trunc) else None
                rec.add(action, float(reward), np.asarray(next_obs, np.float64), term, trunc,
                        None if reset_obs is None else np.asarray(reset_obs, np.float64))
                obs = next_obs if reset_obs is None else reset_obs
                step += 1
            store = _store_add(store, {k: np.asarray(v, np.float32) for k, v in batch.items()})
            num_updates = min(n, step - start_steps)
            if num_updates > 0 and int(store.size) >= batch_size:
                key, k_up = jax.random.split(key)
                agent, info = _update_chunk(agent, store, k_up, num_updates=num_updates,
                                            batch_size=batch_size)
            if step >= next_eval or step >= train_steps:
                next_eval = (step // eval_every + 1) * eval_every
                returns = envs.evaluate(policy_fn(agent, seed + step), env_name,
                                        eval_episodes, seed=10_000 + step)
                last_eval = float(np.mean(returns))
                history.append((step, last_eval))
                if not medium_reached and last_eval >= target_return:
                    medium_reached = True
                    medium = Snapshot(agent=jax.tree.map(jnp.copy, agent), env_steps=step,
                                      eval_return=last_eval)
                    medium_replay = rec.snapshot()
                    log(f"[{label}] medium point: eval return {last_eval:.1f} >= target "
                        f"{target_return:.1f} at {step:,} env steps "
                        f"({len(medium_replay)} episodes in the replay)")
                    if on_medium is not None:
                        on_medium(medium, medium_replay)
                    if stop_at_target:
                        break
            if (checkpoint_every > 0 and on_checkpoint is not None and step < train_steps
                    and step >= next_checkpoint):
                next_checkpoint = (step // checkpoint_every + 1) * checkpoint_every
                on_checkpoint(agent, step, medium_reached, rec.snapshot())
            extra = f"eval return {last_eval:.1f}" if history else "no eval yet"
            if not medium_reached:
                extra += f" (medium target {target_return:.1f})"
            if info:
                extra += (f", critic loss {float(info['critic_loss']):.3g}, "
                          f"alpha {float(info['alpha']):.3g}")
            progress.update(step, extra)
    finally:
        env.close()
    progress.count = step
    if not history or history[-1][0] != step:
        returns = envs.evaluate(policy_fn(agent, seed + step), env_name, eval_episodes,
                                seed=10_000 + step)
        last_eval = float(np.mean(returns))
        history.append((step, last_eval))
    progress.done(f"final eval return {last_eval:.1f}")
    return SACRun(final=Snapshot(agent=agent, env_steps=step, eval_return=last_eval),
                  medium=medium, medium_replay=medium_replay, history=history,
                  final_replay=rec.snapshot() if not medium_reached else None)


# --------------------------------------------------------------------------------------
# Policy and agent files
# --------------------------------------------------------------------------------------

def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _to_jsonable(x):
    if isinstance(x, ml_collections.ConfigDict):
        return _to_jsonable(x.to_dict())
    if isinstance(x, dict):
        return {k: _to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def save_policy(path: pathlib.Path, agent: ac.ActorCritic, cfg, info: Dict[str, Any]) -> None:
    """`<path>.msgpack` (actor parameters) and `<path>.json` (config, dims, provenance)."""
    path = pathlib.Path(path)
    _atomic_write(path.with_suffix(".msgpack"), flax.serialization.to_bytes(agent.actor.params))
    meta = {"agent_config": _to_jsonable(cfg), **_to_jsonable(info)}
    _atomic_write(path.with_suffix(".json"), json.dumps(meta, indent=1).encode())


def config_from_json(d: Dict[str, Any]) -> ml_collections.ConfigDict:
    cfg = ac.default_config()
    for k, v in d.items():
        if k in cfg:
            cfg[k] = tuple(v) if isinstance(v, list) else v
    return cfg


def load_policy(path: pathlib.Path) -> Tuple[ac.ActorCritic, Dict[str, Any]]:
    """An agent whose actor is the saved policy (critics fresh), and the policy's info."""
    path = pathlib.Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    cfg = config_from_json(meta["agent_config"])
    agent = ac.create(jax.random.PRNGKey(0), meta["obs_dim"], meta["act_dim"], cfg)
    params = flax.serialization.from_bytes(agent.actor.params,
                                           path.with_suffix(".msgpack").read_bytes())
    return agent.replace(actor=agent.actor.replace(params=params)), meta


EPISODE_KEYS = ("actions", "rewards", "terminations", "truncations")


def save_episodes(path: pathlib.Path, episodes: List[Episode]) -> None:
    """Episodes (Minari layout, as the recorder makes them) in one .npz, written
    atomically: each key concatenated, with the episode lengths and `cut` flags."""
    lengths = np.asarray([len(e["rewards"]) for e in episodes], np.int64)
    arrays = {k: (np.concatenate([e[k] for e in episodes]) if episodes else np.zeros(0))
              for k in EPISODE_KEYS}
    arrays["observations"] = (np.concatenate([e["observations"] for e in episodes])
                              if episodes else np.zeros(0))
    arrays["lengths"] = lengths
    arrays["cut"] = np.asarray([bool(e.get("cut", False)) for e in episodes], bool)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _atomic_write(pathlib.Path(path), buf.getvalue())


def load_episodes(path: pathlib.Path) -> List[Episode]:
    """The episodes `save_episodes` wrote, array for array."""
    with np.load(pathlib.Path(path)) as f:
        z = {k: f[k] for k in f.files}        # each read once, not once per episode
    lengths, cut = z["lengths"], z["cut"]
    ends = np.cumsum(lengths)
    starts = ends - lengths
    out = []
    for i, (a, b) in enumerate(zip(starts, ends)):
        ep = {k: z[k][a:b] for k in EPISODE_KEYS}
        ep["observations"] = z["observations"][a + i:b + i + 1]   # T + 1 each
        if cut[i]:
            ep["cut"] = True
        out.append(ep)
    return out


def save_agent(path: pathlib.Path, agent: ac.ActorCritic) -> None:
    """The whole training state (networks, targets, optimisers, temperature)."""
    _atomic_write(pathlib.Path(path), flax.serialization.to_bytes(agent))


def load_agent(path: pathlib.Path, template: ac.ActorCritic) -> ac.ActorCritic:
    return flax.serialization.from_bytes(template, pathlib.Path(path).read_bytes())
