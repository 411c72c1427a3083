"""Our D4RL-style recipe (spec: shared/spec/datasets.md), built with our own SAC.

* random: uniformly random actions in [-1, 1]^A; `transitions` of them.
* medium: SAC until its stochastic eval return reaches `target_return` (default one third
  of D4RL's expert return), then that policy rolled out stochastically; `transitions`.
* medium-replay: every transition SAC collected up to that medium point (its random
  warm-up steps included); whatever it holds.
* expert: the same SAC run continued to `train_steps` env steps, rolled out
  stochastically; `transitions`.
* medium-expert: the medium and expert datasets concatenated; 2 x `transitions`.

Differences from D4RL, recorded in each dataset's metadata: D4RL's random data came from a
randomly *initialised* SAC policy, ours from uniform actions (the task's definition);
Gymnasium v5 envs instead of v2; terminations and truncations stored separately.

Ids: `o2o/<env>/<kind>-v0`. Behaviour policies and SAC training states are saved under
`<minari root>/o2o/<env>/policies/sac-seed<seed>/` (`medium`, `expert`: `.msgpack`
actor parameters + `.json` config and provenance; `*_agent.msgpack`: full training
state), so a dataset can be rebuilt or extended without retraining, and an expert build
continues the run from its medium point. A SAC run that passes the medium point also
writes the medium-replay dataset if it is missing (it cannot be recovered later).
"""
import dataclasses
import json
import pathlib
import platform
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import numpy as np

from o2o_jax import envs
from o2o_jax.agents import actor_critic as ac
from o2o_jax.data import behavior, store
from o2o_jax.progress import format_seconds

KINDS = ("random", "medium", "medium-replay", "expert", "medium-expert")
NAMESPACE = "o2o"
VERSION = 0
REFERENCE_SOURCE = ("D4RL (Fu et al., 2020) random/expert raw returns for the v2 MuJoCo "
                    "tasks, shared/spec/off2on.md section 7; our envs are Gymnasium v5")

# Rough speeds on a 2-core AMD EPYC CPU (see DATASETS.md), for the announced estimate only.
SAC_STEPS_PER_S = 95.0           # env step + gradient step + evals, hidden (256, 256)
ROLLOUT_STEPS_PER_S = 5_800.0    # batched stochastic policy rollouts, 8 envs
RANDOM_STEPS_PER_S = 7_600.0     # uniform random actions, 8 envs
WRITE_EPISODES_PER_S = 500.0     # HDF5 episode groups written by Minari
# Reset seeds of a saved policy's recorded evaluation: episode i is reset with EVAL_SEED + i.
EVAL_SEED = 20_000
# Env steps at which our own seed-0 SAC runs with the default budget reached the default
# medium target (DATASETS.md): the typical length of the medium / medium-replay SAC run.
MEDIUM_POINT_STEPS = {"hopper": 200_000, "halfcheetah": 90_000, "walker2d": 280_000}
# Behaviour policies shipped with the package (experiments.ship_policy writes them):
# <env>/<role>.msgpack (actor parameters) and <role>.json (config, returns, provenance).
SHIPPED_DIR = pathlib.Path(__file__).resolve().parent / "policies"

DIFFERENCES_FROM_D4RL = (
    "Gymnasium v5 envs (D4RL: v2); terminations and truncations stored separately; random "
    "data from uniform actions (D4RL: a randomly initialised SAC policy); the medium point "
    "is judged on the stochastic policy that generates the data; the expert is trained for "
    "the given SAC budget, not necessarily to D4RL's expert level")

RECIPES = {
    "random": "uniformly random actions in [-1, 1]^A (D4RL used a randomly initialised "
              "SAC policy)",
    "medium": "SAC trained until its stochastic evaluation return reached the target "
              "(default one third of D4RL's expert return), then rolled out stochastically",
    "medium-replay": "every transition in the replay buffer of that SAC run up to the "
                     "medium point (random warm-up steps included)",
    "expert": "the same SAC run trained to the full budget, rolled out stochastically",
    "medium-expert": "the medium and expert datasets concatenated (medium first)",
}


def check_env_kind(env_name: str, kind: str) -> None:
    envs.env_info(env_name)  # raises a clear ValueError for unknown envs
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; allowed: {list(KINDS)} "
                         "(--kind / config.dataset.kind)")


def default_id(env_name: str, kind: str) -> str:
    """Our recipe's Minari id, `o2o/<env>/<kind>-v0` (never collides with `mujoco/...`)."""
    check_env_kind(env_name, kind)
    return f"{NAMESPACE}/{env_name}/{kind}-v{VERSION}"


def built_size(kind: str, transitions: int) -> Optional[int]:
    """The number of transitions a build of `kind` with `transitions` holds; None where it
    is not set by it alone (medium-replay: whatever SAC collected; medium-expert: the two
    parts as they are)."""
    return transitions if kind in ("random", "medium", "expert") else None


def parse_id(dataset_id: str):
    """(env, kind) if `dataset_id` is one of our recipe's ids, else None."""
    parts = dataset_id.split("/")
    if len(parts) != 3 or parts[0] != NAMESPACE or not parts[2].endswith(f"-v{VERSION}"):
        return None
    env_name, kind = parts[1], parts[2][:-len(f"-v{VERSION}")]
    if env_name in envs.ENVS and kind in KINDS:
        return env_name, kind
    return None


def build_command(env_name: str, kind: str) -> str:
    return f"python -m experiments.make_dataset --env={env_name} --kind={kind}"


def policy_dir(env_name: str, seed: int):
    return store.dataset_root() / NAMESPACE / env_name / "policies" / f"sac-seed{seed}"


def shipped_policy(env_name: str, role: str) -> Optional[pathlib.Path]:
    """The package's shipped `role` policy of `env_name` (path without suffix), or None."""
    p = SHIPPED_DIR / env_name / role
    return p if p.with_suffix(".json").exists() and p.with_suffix(".msgpack").exists() \
        else None


def shipped_info(path: pathlib.Path) -> Dict[str, Any]:
    return json.loads(pathlib.Path(path).with_suffix(".json").read_text())


def uses_shipped(env_name: str, role: str, b: "Budget") -> Optional[pathlib.Path]:
    """The shipped policy a build of `role` rolls out instead of training SAC, or None:
    when there is one, no policy of this seed was saved before, `--retrain` is off, and
    the budget asks for what it is (seed 0, its network; medium: the default target, and
    the shipped policy was made for it; expert: its number of SAC steps)."""
    path = shipped_policy(env_name, role)
    if (path is None or b.retrain or b.seed != 0
            or (policy_dir(env_name, b.seed) / f"{role}.json").exists()):
        return None
    info = shipped_info(path)
    if tuple(info["agent_config"]["hidden_dims"]) != tuple(b.hidden_dims):
        return None
    if role == "medium" and (b.target_return is not None or not np.isclose(
            float(info.get("target_return", np.nan)), b.target(env_name))):
        return None
    if role == "expert" and int(info["env_steps"]) != int(b.train_steps):
        return None
    return path


@dataclasses.dataclass(frozen=True)
class Budget:
    """Sizes and the SAC budget. Defaults follow D4RL (1M transitions, SAC to 1M steps)."""
    transitions: int = 1_000_000        # per rolled-out dataset (medium-expert: 2x)
    train_steps: int = 1_000_000        # SAC env steps (= gradient steps) for the expert
    target_return: Optional[float] = None   # medium point; None: expert reference / 3
    seed: int = 0
    hidden_dims: tuple = (256, 256)
    batch_size: int = 256
    start_steps: int = 10_000           # uniform-random warm-up actions
    chunk: int = 1_000                  # env steps, then this many updates in one call
    eval_every: int = 10_000
    eval_episodes: int = 5
    num_envs: int = 8                   # envs side by side in dataset rollouts
    retrain: bool = False               # train SAC even where a shipped policy fits
    checkpoint_every: int = 50_000      # SAC env steps between resumable checkpoints; 0: none

    def target(self, env_name: str) -> float:
        if self.target_return is not None:
            return float(self.target_return)
        return envs.env_info(env_name).expert_score / 3.0

    def check(self) -> None:
        for name in ("transitions", "train_steps", "batch_size", "chunk", "eval_every",
                     "eval_episodes", "num_envs"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if int(self.checkpoint_every) < 0:
            raise ValueError(f"checkpoint_every must be >= 0 (0: no checkpoints), got "
                             f"{self.checkpoint_every!r}")


def make_budget(**kwargs) -> Budget:
    fields = {f.name for f in dataclasses.fields(Budget)}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(f"unknown build settings {unknown}; allowed: {sorted(fields)}")
    if "hidden_dims" in kwargs:
        kwargs["hidden_dims"] = tuple(kwargs["hidden_dims"])
    b = Budget(**kwargs)
    b.check()
    return b


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import os
    return f"{model}, {os.cpu_count()} CPU cores"


# --------------------------------------------------------------------------------------
# Announcement
# --------------------------------------------------------------------------------------

def _sac_scale(b: Budget) -> float:
    return (np.prod(b.hidden_dims) / 256.0 ** 2) * (b.batch_size / 256.0)


def _sac_rate(b: Budget) -> float:
    """SAC env steps per second for this budget's network and batch sizes."""
    return SAC_STEPS_PER_S / max(_sac_scale(b), 0.05)


def estimate_seconds(env_name: str, kind: str, b: Budget) -> float:
    """A rough upper estimate from the speeds measured on a 2-core CPU (see the constants)."""
    sac_rate = _sac_rate(b)
    rollout = b.transitions / ROLLOUT_STEPS_PER_S
    if kind == "random":
        return b.transitions / RANDOM_STEPS_PER_S + b.transitions / 20 / WRITE_EPISODES_PER_S
    if kind in ("medium", "medium-replay", "expert"):
        train = 0.0
        if trains_sac(env_name, kind, b):
            left = b.train_steps - sac_start(env_name, b, to_expert=(kind == "expert"))[0]
            train = max(left, 0) / sac_rate
        return train + (0.0 if kind == "medium-replay" else rollout)
    return sum(estimate_seconds(env_name, k, b) for k in ("medium", "expert")
               if not store.exists_locally(default_id(env_name, k)))


def trains_sac(env_name: str, kind: str, b: Budget) -> bool:
    """Whether building `kind` runs SAC: medium-replay always; medium and expert unless
    the package ships the policy for this budget or an earlier build saved it."""
    if kind == "medium-replay":
        return True
    if kind not in ("medium", "expert"):
        return False
    return (uses_shipped(env_name, kind, b) is None
            and not (policy_dir(env_name, b.seed) / f"{kind}.json").exists())


def medium_point_seconds(env_name: str, b: Budget) -> Optional[float]:
    """Expected time of the SAC run to the medium point, from where our own build of the
    same recipe stopped (seed 0, default target and SAC settings); None where the budget
    differs: then when it stops is not known in advance."""
    d = Budget()
    same = (b.target_return is None and b.seed == d.seed
            and tuple(b.hidden_dims) == d.hidden_dims and b.batch_size == d.batch_size
            and b.start_steps == d.start_steps and b.eval_every == d.eval_every)
    steps = MEDIUM_POINT_STEPS.get(env_name)
    if not same or steps is None:
        return None
    start = sac_start(env_name, b, to_expert=False)[0]
    if start >= min(steps, b.train_steps):   # resumed past where ours stopped: not known
        return None
    return (min(steps, b.train_steps) - start) / _sac_rate(b)


def describe(env_name: str, kind: str, b: Budget) -> str:
    ds = default_id(env_name, kind)
    target = b.target(env_name)
    sac = (f"SAC {b.hidden_dims} (batch {b.batch_size}, {b.start_steps:,} random warm-up "
           f"steps, UTD 1)")
    what = {
        "random": f"{b.transitions:,} transitions of uniformly random actions",
        "medium": f"{sac} until its eval return reaches {target:.1f} (at most "
                  f"{b.train_steps:,} env steps), then {b.transitions:,} transitions of it",
        "medium-replay": f"{sac} until its eval return reaches {target:.1f} (at most "
                         f"{b.train_steps:,} env steps); its whole replay buffer",
        "expert": f"{sac} for {b.train_steps:,} env steps, then {b.transitions:,} "
                  "transitions of it",
        "medium-expert": f"medium + expert datasets ({b.transitions:,} transitions each)",
    }[kind]
    est = estimate_seconds(env_name, kind, b)
    shipped = uses_shipped(env_name, kind, b) if kind in ("medium", "expert") else None
    if shipped is not None:
        info = shipped_info(shipped)
        what = (f"{b.transitions:,} transitions of the shipped {kind} policy "
                f"({shipped.relative_to(SHIPPED_DIR.parent.parent)}: SAC "
                f"{info['env_steps']:,} env steps, recorded stochastic return "
                f"{info['eval_return_stochastic']:.1f}, deterministic "
                f"{info['eval_return_deterministic']:.1f}; --retrain trains SAC instead)")
    typical = medium_point_seconds(env_name, b)
    trains = trains_sac(env_name, kind, b)
    trains_to_medium = trains and kind != "expert"
    start, how = sac_start(env_name, b, to_expert=(kind == "expert"))
    if trains and start >= b.train_steps:
        what += (f" (SAC from {start:,} env steps: {how}; no SAC steps left, so the "
                 f"{kind} policy is the one at {start:,} steps)")
    elif trains and start > 0:
        what += f" (SAC from {start:,} env steps: {how})"
    if trains_to_medium and typical is not None:
        rest = est - (b.train_steps - start) / _sac_rate(b)
        when = (f"~{format_seconds(typical + rest)} (our seed-0 build of this recipe "
                f"reached the medium point at {MEDIUM_POINT_STEPS[env_name]:,} env steps; "
                f"up to ~{format_seconds(est)} if it is reached later or not at all")
    elif trains_to_medium:
        when = (f"up to ~{format_seconds(est)} (SAC stops at the medium point, which is not "
                "known in advance for these settings")
    elif kind == "random" or shipped is not None:
        return (f"Building dataset {ds}: {what}. Expected time: ~{format_seconds(est)} (no "
                f"training; rough, from a 2-core CPU at ~{ROLLOUT_STEPS_PER_S:,.0f} rollout "
                "steps/s). Progress with ETA follows.")
    else:
        when = f"up to ~{format_seconds(est)} (reused policies make it shorter"
    return (f"Building dataset {ds}: {what}. Expected time: {when}; rough, from a 2-core CPU "
            f"at ~{SAC_STEPS_PER_S:.0f} SAC steps/s). Progress with ETA follows.")


# --------------------------------------------------------------------------------------
# Writing one dataset
# --------------------------------------------------------------------------------------

def _returns_summary(env_name: str, episodes: List[Dict[str, Any]]) -> Dict[str, Any]:
    complete = [float(np.sum(e["rewards"])) for e in episodes if not e.get("cut", False)]
    basis = complete or [float(np.sum(e["rewards"])) for e in episodes]
    mean = float(np.mean(basis))
    return {"o2o_behavior_return": mean,
            "o2o_behavior_return_std": float(np.std(basis)),
            "o2o_behavior_normalized_score": float(envs.normalized_score(env_name, mean)),
            "o2o_complete_episodes": len(complete),
            "o2o_cut_episodes": len(episodes) - len(complete)}


def write(env_name: str, kind: str, episodes: List[Dict[str, Any]], b: Budget, *,
          started: float, force: bool, log: Callable[[str], None],
          policy: Optional[Dict[str, Any]] = None, extra: Optional[Dict[str, Any]] = None,
          dataset_id: Optional[str] = None, recipe: Optional[str] = None) -> str:
    """Write `episodes` as `o2o/<env>/<kind>-v0` (or `dataset_id`) with the recipe's
    metadata (`recipe`: the description of a kind outside RECIPES)."""
    dataset_id = dataset_id or default_id(env_name, kind)
    recipe = recipe or RECIPES[kind]
    info = envs.env_info(env_name)
    metadata = {
        "algorithm_name": f"o2o_jax D4RL-style recipe: {kind}",
        "author": {"o2o_jax"},
        "code_permalink": "o2o_jax/data/recipes.py",
        "description": f"{env_name} {kind}: {recipe}.",
        "ref_min_score": info.random_score,
        "ref_max_score": info.expert_score,
        "o2o_env": env_name,
        "o2o_kind": kind,
        "o2o_recipe": recipe,
        "o2o_differences_from_d4rl": DIFFERENCES_FROM_D4RL,
        "o2o_reference": {"random": info.random_score, "expert": info.expert_score,
                          "source": REFERENCE_SOURCE, "gym_id": info.gym_id},
        **_returns_summary(env_name, episodes),
        "o2o_policy": policy or {},
        "o2o_build": {"machine": machine(),
                      "budget": dataclasses.asdict(b),
                      "target_return": b.target(env_name)},
        **(extra or {}),
    }
    env = envs.make_env(env_name)
    try:
        log(f"[{dataset_id}] writing {sum(len(e['rewards']) for e in episodes):,} "
            f"transitions in {len(episodes):,} episodes")
        store.write_dataset(dataset_id, episodes, env=env, metadata=metadata, force=force,
                            started=started, log=log)
    finally:
        env.close()
    log(f"[{dataset_id}] done: behaviour return {metadata['o2o_behavior_return']:.1f} "
        f"(normalised {metadata['o2o_behavior_normalized_score']:.1f}), "
        f"{format_seconds(time.time() - started)}")
    return dataset_id


# --------------------------------------------------------------------------------------
# Behaviour policies
# --------------------------------------------------------------------------------------

def _policy_info(env_name: str, snap: behavior.Snapshot, b: Budget, role: str,
                 target_reached: bool, train_seconds: float) -> Dict[str, Any]:
    obs_dim, act_dim = envs.env_dims(env_name)
    det = envs.evaluate(behavior.policy_fn(snap.agent, b.seed, deterministic=True), env_name,
                        b.eval_episodes, seed=EVAL_SEED)
    return {"role": role, "env": env_name, "obs_dim": obs_dim, "act_dim": act_dim,
            "seed": b.seed, "env_steps": snap.env_steps,
            "eval_return_stochastic": snap.eval_return,
            "eval_return_deterministic": float(np.mean(det)),
            "eval_episodes": b.eval_episodes, "target_return": b.target(env_name),
            "target_reached": bool(target_reached),
            "train_seconds_so_far": round(train_seconds, 1)}


def _save_snapshot(env_name: str, role: str, snap: behavior.Snapshot, cfg, b: Budget,
                   target_reached: bool, train_seconds: float,
                   log: Callable[[str], None]) -> Dict[str, Any]:
    pdir = policy_dir(env_name, b.seed)
    info = _policy_info(env_name, snap, b, role, target_reached, train_seconds)
    info["file"] = str((pdir / role).relative_to(store.dataset_root())) + ".msgpack"
    behavior.save_agent(pdir / f"{role}_agent.msgpack", snap.agent)
    behavior.save_policy(pdir / role, snap.agent, cfg, info)
    log(f"[policy] saved the {role} policy ({snap.env_steps:,} env steps, stochastic eval "
        f"{info['eval_return_stochastic']:.1f}, deterministic "
        f"{info['eval_return_deterministic']:.1f}) to {pdir / role}.msgpack")
    return info


def _run_sac(env_name: str, b: Budget, *, to_expert: bool, force_replay: bool,
             log: Callable[[str], None]) -> Dict[str, Any]:
    """Train (or continue) the SAC run; saves policies and writes medium-replay if missing."""
    pdir = policy_dir(env_name, b.seed)
    replay_id = default_id(env_name, "medium-replay")
    cfg = behavior.sac_config(b.hidden_dims)
    started = time.time()
    target = b.target(env_name)
    resume, resume_medium_reached = None, True
    _, how = sac_start(env_name, b, to_expert, force_replay)
    progress_ckpt = _progress_checkpoint(env_name, cfg, b, target, to_expert, log)
    if progress_ckpt is not None:
        agent, step, reached, episodes = progress_ckpt
        resume, resume_medium_reached = (agent, step, episodes), reached
    elif how == FROM_MEDIUM:
        template, meta = behavior.load_policy(pdir / "medium")
        cfg = behavior.config_from_json(meta["agent_config"])
        agent = behavior.load_agent(pdir / "medium_agent.msgpack", template)
        episodes = list(store.read_episodes(replay_id))
        resume = (agent, int(meta["env_steps"]), episodes)
        if b.train_steps <= resume[1]:
            log(f"[SAC] WARNING: --train_steps={b.train_steps:,} is not beyond the medium "
                f"point ({resume[1]:,} env steps): the expert policy will be the medium one.")
        log(f"[SAC] continuing the run from its medium point ({meta['env_steps']:,} env "
            f"steps, replay {replay_id})")
    if not to_expert and (pdir / "medium.json").exists():
        log(f"[SAC] note: retraining replaces the saved medium policy in {pdir}; datasets "
            "rolled out from the old one (medium, expert, medium-expert) then come from "
            "another run: rebuild them with --force to keep one lineage.")
    out: Dict[str, Any] = {}

    def on_medium(snap: behavior.Snapshot, replay: List[Dict[str, Any]]) -> None:
        reached = snap.eval_return >= target
        out["medium"] = _save_snapshot(env_name, "medium", snap, cfg, b, reached,
                                       time.time() - started, log)
        if force_replay or not store.exists_locally(replay_id):
            write(env_name, "medium-replay", replay, b, started=started, force=force_replay,
                  log=log, policy=out["medium"])
            out["medium-replay"] = replay_id

    def on_checkpoint(agent, step: int, medium_reached: bool, replay) -> None:
        _save_progress_checkpoint(pdir, agent, step, medium_reached, replay, cfg, b, target)
        log(f"[SAC] checkpoint at {step:,} env steps ({pdir / PROGRESS}*): an interrupted "
            "build resumes from here")

    run = behavior.train_sac(
        env_name, cfg, train_steps=b.train_steps, target_return=target,
        stop_at_target=not to_expert, seed=b.seed, batch_size=b.batch_size,
        start_steps=b.start_steps, chunk=b.chunk, eval_every=b.eval_every,
        eval_episodes=b.eval_episodes, resume=resume, on_medium=on_medium, log=log,
        resume_medium_reached=resume_medium_reached, checkpoint_every=b.checkpoint_every,
        on_checkpoint=on_checkpoint, label=f"{env_name} SAC")
    # A run that had not passed its medium point when it began (fresh, or resumed from a
    # checkpoint before it) and never reached the target.
    fresh = resume is None or not resume_medium_reached
    if run.medium is None and fresh and to_expert:
        log(f"[SAC] WARNING: eval return never reached the medium target {target:.1f}; "
            "no medium policy or medium-replay data came out of this run.")
    elif run.medium is None and fresh:
        log(f"[SAC] WARNING: eval return never reached the target {target:.1f} in "
            f"{b.train_steps:,} env steps (last {run.final.eval_return:.1f}); using the "
            "final policy as the medium policy and the whole run as medium-replay. Raise "
            "--train_steps or lower --target_return for a true medium point.")
        on_medium(run.final, run.final_replay)
    if to_expert:
        out["expert"] = _save_snapshot(env_name, "expert", run.final, cfg, b,
                                       run.final.eval_return >= target,
                                       time.time() - started, log)
    _remove_progress_checkpoint(pdir)     # the run's results are saved; nothing to resume
    return out


# A SAC run's checkpoint every `Budget.checkpoint_every` env steps, so that an interrupted
# build (an expert run is ~1.5 h of CPU) resumes there: the whole agent, the replay's
# episodes so far (the running one cut), and a JSON record written last, which marks the
# checkpoint complete. The resumed run starts a fresh episode and draws new update keys,
# so it continues the run without repeating it bit for bit.
PROGRESS = "in_progress"


def _progress_paths(pdir):
    return (pdir / f"{PROGRESS}.json", pdir / f"{PROGRESS}_agent.msgpack",
            pdir / f"{PROGRESS}_episodes.npz")


def _progress_key(cfg, b: Budget, target: float) -> Dict[str, Any]:
    """What a checkpoint must share with the build to continue its run."""
    return {"agent_config": behavior._to_jsonable(cfg), "seed": b.seed,
            "target_return": float(target), "batch_size": b.batch_size,
            "start_steps": b.start_steps, "chunk": b.chunk, "eval_every": b.eval_every}


def _save_progress_checkpoint(pdir, agent, step: int, medium_reached: bool, episodes,
                              cfg, b: Budget, target: float) -> None:
    meta_path, agent_path, episodes_path = _progress_paths(pdir)
    if meta_path.exists():
        meta_path.unlink()                # the old record must not vouch for new files
    behavior.save_agent(agent_path, agent)
    behavior.save_episodes(episodes_path, episodes)
    record = {"env_steps": int(step), "medium_reached": bool(medium_reached),
              **_progress_key(cfg, b, target)}
    behavior._atomic_write(meta_path, json.dumps(record, indent=1).encode())


def _remove_progress_checkpoint(pdir) -> None:
    for path in _progress_paths(pdir):    # the record first: it vouches for the rest
        if path.exists():
            path.unlink()


def _progress_record(env_name: str, cfg, b: Budget, target: float, to_expert: bool):
    """(the record of a complete checkpoint this build can continue, None) or (None, why
    not; None when there is no checkpoint): it must be of the same run settings, before
    `b.train_steps`, and (for a medium build) before the medium point."""
    meta_path = _progress_paths(policy_dir(env_name, b.seed))[0]
    if not meta_path.exists():
        return None, None
    try:
        record = json.loads(meta_path.read_text())
        int(record["env_steps"]), bool(record["medium_reached"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"its record {meta_path.name} is unreadable ({type(e).__name__})"
    want = _progress_key(cfg, b, target)
    differs = sorted(k for k in want if record.get(k) != want[k])
    if differs:
        return None, f"{', '.join(differs)} differ from this build's"
    step = int(record["env_steps"])
    if step >= b.train_steps:
        return None, (f"its {step:,} env steps are not below this build's --train_steps="
                      f"{b.train_steps:,}")
    if record["medium_reached"] and not to_expert:
        return None, "it is past the medium point and this build needs the run up to it"
    return record, None


def _continues_from_medium(env_name: str, b: Budget) -> bool:
    """Whether an expert build continues the saved run from its medium point."""
    pdir = policy_dir(env_name, b.seed)
    return ((pdir / "medium_agent.msgpack").exists() and (pdir / "medium.json").exists()
            and store.exists_locally(default_id(env_name, "medium-replay")))


RESUMES, FROM_MEDIUM, NEW_RUN = ("resuming its checkpoint", "continuing from its medium point",
                                 "a new run")


def sac_start(env_name: str, b: Budget, to_expert: bool,
              force_replay: bool = False) -> Tuple[int, str]:
    """(env steps the SAC run of this build starts at, how): its resumable checkpoint
    (RESUMES), the saved run's medium point (FROM_MEDIUM: an expert build that does not
    rewrite medium-replay), or 0 (NEW_RUN). `_run_sac` starts where this says."""
    cfg = behavior.sac_config(b.hidden_dims)
    record, _ = _progress_record(env_name, cfg, b, b.target(env_name), to_expert)
    if record is not None:
        return int(record["env_steps"]), RESUMES
    if to_expert and not force_replay and _continues_from_medium(env_name, b):
        meta = json.loads((policy_dir(env_name, b.seed) / "medium.json").read_text())
        return int(meta["env_steps"]), FROM_MEDIUM
    return 0, NEW_RUN


def _progress_checkpoint(env_name: str, cfg, b: Budget, target: float, to_expert: bool,
                         log: Callable[[str], None]):
    """(agent, env_steps, medium_reached, episodes) of a checkpoint this build can
    continue (`_progress_record`), or None."""
    pdir = policy_dir(env_name, b.seed)
    _, agent_path, episodes_path = _progress_paths(pdir)
    record, why = _progress_record(env_name, cfg, b, target, to_expert)
    if record is None:
        if why is not None:
            log(f"[SAC] not resuming the checkpoint in {pdir} ({why}); a new run starts "
                "and replaces it")
        return None
    step = int(record["env_steps"])
    template = ac.create(jax.random.PRNGKey(0), *envs.env_dims(env_name), cfg)
    agent = behavior.load_agent(agent_path, template)
    episodes = behavior.load_episodes(episodes_path)
    log(f"[SAC] resuming the interrupted run from its checkpoint at {step:,} env steps "
        f"({sum(len(e['rewards']) for e in episodes):,} transitions in the replay)")
    return agent, step, bool(record["medium_reached"]), episodes


def _policy(env_name: str, role: str, b: Budget, log: Callable[[str], None]):
    """The `role` policy: shipped with the package where it fits the budget
    (`uses_shipped`), else saved by an earlier build, else trained now: (agent, info)."""
    pdir = policy_dir(env_name, b.seed)
    shipped = uses_shipped(env_name, role, b)
    if shipped is not None:
        agent, info = behavior.load_policy(shipped)
        log(f"[policy] using the shipped {role} policy {shipped}.msgpack (SAC "
            f"{info['env_steps']:,} env steps, recorded stochastic return "
            f"{info['eval_return_stochastic']:.1f}); --retrain trains SAC instead")
        return agent, {**info, "shipped": str(shipped.relative_to(SHIPPED_DIR.parent.parent))}
    if not (pdir / f"{role}.json").exists():
        _run_sac(env_name, b, to_expert=(role == "expert"), force_replay=False, log=log)
    else:
        log(f"[policy] reusing the saved {role} policy {pdir / role}.msgpack")
    return behavior.load_policy(pdir / role)


# --------------------------------------------------------------------------------------
# Kinds
# --------------------------------------------------------------------------------------

def _build_rollout(env_name: str, kind: str, b: Budget, force: bool,
                   log: Callable[[str], None]) -> str:
    started = time.time()
    if kind == "random":
        act_dim = envs.env_dims(env_name)[1]
        policy, info = behavior.uniform_policy(act_dim, b.seed), {"role": "uniform random"}
    else:
        agent, info = _policy(env_name, kind, b, log)
        policy = behavior.policy_fn(agent, b.seed + 1)
        info = {**info, "rollout": "stochastic"}
    episodes = behavior.rollout(env_name, policy, b.transitions, seed=b.seed + 1000,
                                num_envs=b.num_envs, label=f"{env_name}-{kind} rollout",
                                log=log)
    return write(env_name, kind, episodes, b, started=started, force=force, log=log,
                 policy=info)


def _build_medium_expert(env_name: str, b: Budget, force: bool,
                         log: Callable[[str], None]) -> str:
    started = time.time()
    parts = [default_id(env_name, k) for k in ("medium", "expert")]
    for k, ds in zip(("medium", "expert"), parts):
        if not store.exists_locally(ds):
            log(f"[medium-expert] {ds} is missing: building it first")
            build(env_name, k, b, log=log)
    episodes, part_info = [], {}
    env = envs.make_env(env_name)
    max_steps = env.spec.max_episode_steps or np.inf
    env.close()
    for ds in parts:
        eps = list(store.read_episodes(ds))
        for e in eps:  # episodes the parts' data budget cut short (not time limits)
            e["cut"] = bool(e["truncations"][-1]) and len(e["rewards"]) < max_steps
        meta = store.read_raw_metadata(ds)
        part_info[ds] = {k: meta.get(k) for k in ("o2o_num_transitions",
                                                  "o2o_behavior_return",
                                                  "o2o_behavior_normalized_score")}
        episodes += eps
    return write(env_name, "medium-expert", episodes, b, started=started, force=force,
                 log=log, extra={"combined_datasets": parts, "o2o_parts": part_info})


def build(env_name: str, kind: str, budget: Optional[Budget] = None, *, force: bool = False,
          log: Optional[Callable[[str], None]] = None, **settings) -> str:
    """Build `o2o/<env>/<kind>-v0` with the recipe and return its id.

    `budget` or keyword `settings` (fields of `Budget`) set sizes and the SAC budget.
    An existing dataset is kept unless `force`. Policies saved by an earlier build are
    reused (delete `policy_dir(env, seed)` to retrain).
    """
    log = log or print
    check_env_kind(env_name, kind)
    b = budget if budget is not None else make_budget(**settings)
    dataset_id = default_id(env_name, kind)
    if store.exists_locally(dataset_id) and not force:
        log(f"[{dataset_id}] exists; keeping it (use --force to rebuild)")
        return dataset_id
    log(describe(env_name, kind, b))
    if kind == "medium-replay":
        out = _run_sac(env_name, b, to_expert=False, force_replay=True, log=log)
        if "medium-replay" not in out:
            raise RuntimeError(f"the SAC run did not produce {dataset_id}")
        return dataset_id
    if kind == "medium-expert":
        return _build_medium_expert(env_name, b, force, log)
    return _build_rollout(env_name, kind, b, force, log)


def build_from_members(env_name: str, sample: Callable, num_members: int, dataset_id: str,
                       b: Budget, *, info: Dict[str, Any], force: bool = False,
                       log: Optional[Callable[[str], None]] = None) -> str:
    """Roll out the stochastic policy `sample(obs [E, O], key) -> actions [E, A]` of
    `num_members` members (for an ensemble: pi_E, e.g. of members imported by
    experiments.import_members) as the dataset `dataset_id`: `b.transitions` transitions
    in `b.num_envs` envs; `info` (where the members came from) goes into the metadata. The
    closest we can get to the data such members were trained on when that data cannot be
    had."""
    import jax
    import jax.numpy as jnp
    log = log or print
    if store.exists_locally(dataset_id) and not force:
        log(f"[{dataset_id}] exists; keeping it (use --force to rebuild)")
        return dataset_id
    started = time.time()
    key = [jax.random.PRNGKey(b.seed + 1)]

    def policy(obs):
        key[0], k = jax.random.split(key[0])
        return np.asarray(sample(jnp.asarray(obs, jnp.float32), k))

    log(f"[{dataset_id}] rolling out the stochastic ensemble policy of "
        f"{num_members} members: {b.transitions:,} transitions in "
        f"{b.num_envs} envs")
    episodes = behavior.rollout(env_name, policy, b.transitions, seed=b.seed + 1000,
                                num_envs=b.num_envs, label=f"{dataset_id} rollout", log=log)
    return write(env_name, "members", episodes, b, started=started, force=force, log=log,
                 policy={"role": "members' stochastic ensemble policy",
                         "rollout": "stochastic", **info},
                 dataset_id=dataset_id,
                 recipe="the stochastic moment-matched ensemble policy of a members "
                        "checkpoint, rolled out")
