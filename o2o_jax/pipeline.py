"""The experiment pipeline behind `python -m experiments.train`.

dataset -> offline pretraining of N members -> online fine-tuning, for S seeds at once.

Every piece of training state carries a leading seed axis [S, ...] (S = `num_seeds`,
S = 1 included), and seed i of a run is driven by PRNGKey(cfg.seed + i): its parameters,
minibatches, buffers and environments are exactly those of a single-seed run with
`seed = cfg.seed + i`. The offline dataset is held once and shared by all seeds. With
several devices the seed axis is sharded across them (`jax.sharding`), on one host or,
with `jax.distributed` (the `distributed` config section), on several (see
o2o_jax/distributed.py: every process runs this same code; the primary writes).

The run directory holds config.json, metrics.csv (one row per seed per log point),
summary.json, offline_members/ (the pretrained members) and checkpoints/ (full training
state, the last `checkpoint.keep` of them); re-running into the same directory resumes.
"""
import dataclasses
import functools
import glob
import json
import os
import pickle
import shutil
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from o2o_jax import (algorithm, checkpoints, config_checks, distributed, envs, finite, offline,
                     online, stats)
from o2o_jax.progress import Progress
from o2o_jax.rundir import RunDir, to_scalar
from o2o_jax.replay import buffers
from o2o_jax.transitions import TRANSITION_KEYS

# Env seeds of seed s: collection envs 30_000 + s; eval episode e: base + 1_000 s + e.
OFFLINE_EVAL_SEED, ONLINE_EVAL_SEED, COLLECT_SEED = 10_000, 20_000, 30_000


# ----------------------------------------------------------------------------- helpers

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


def run_path(cfg) -> str:
    if cfg.run_name:
        return os.path.join(cfg.run_dir, cfg.run_name)
    prefix = f"{cfg.env}-{cfg.dataset.kind}-{cfg.algo}-seed{cfg.seed}"
    if cfg.resume:   # continue the newest run of this experiment
        found = sorted(glob.glob(os.path.join(cfg.run_dir, prefix + "-*")))
        if found:
            return found[-1]
    return os.path.join(cfg.run_dir, f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}")


class Sharder:
    """Places seed-stacked state on a device mesh (identity on 1 device).

    Seeds are split over the devices (the largest count dividing `num_seeds`, taken
    evenly from every process's devices in a distributed run); with a
    single seed the ensemble members are split instead (axis 1 of every member-stacked
    leaf of the agent; buffers, density-ratio net and shared scalars are replicated).
    Placement only steers XLA's partitioner: the numbers are those of one device up to
    the order of float reductions across devices.
    """

    def __init__(self, num_seeds: int, enabled: bool = True, num_members: int = 1):
        devices = jax.devices()
        self.mesh, self.axis, self.num_members = None, None, num_members
        procs = jax.process_count()
        by_process = [[d for d in devices if d.process_index == p] for p in range(procs)]

        def usable(count):
            # Every process holds the same number of the mesh's devices: a process with
            # none of them could not read the results it has to act on.
            return max((d for d in range(1, len(devices) + 1) if count % d == 0
                        and d % procs == 0 and d // procs <= min(map(len, by_process))),
                       default=1)

        def mesh(n, axis):
            return Mesh(np.array([d for local in by_process for d in local[:n // procs]]),
                        (axis,))

        n = usable(num_seeds if num_seeds > 1 else num_members) if enabled else 1
        if n > 1:
            self.axis = "seed" if num_seeds > 1 else "member"
            self.mesh = mesh(n, self.axis)
        if len(devices) == 1:
            return
        if n == 1 and procs > 1:
            print(f"[shard] not sharded: each of the {procs} processes computes the whole run"
                  + (" (shard_seeds=False)" if not enabled else
                     f" (no split of {max(num_seeds, num_members)} over the same number of "
                     "devices on every process)"))
        elif not enabled:
            return
        elif num_seeds > 1:
            if n < len(devices):
                print(f"[shard] {num_seeds} seeds over {n} of {len(devices)} devices (a "
                      "multiple of the device count would use them all)")
        else:
            print(f"[shard] 1 seed: its {num_members} ensemble member(s) split over {n} of "
                  f"{len(devices)} devices (several seeds, --config.num_seeds, would use "
                  "them better)" if n < len(devices) else
                  f"[shard] 1 seed: its {num_members} ensemble members split over "
                  f"{n} devices")

    def seeds(self, tree):
        """Place seed-stacked state: offline members or the online state."""
        if self.mesh is None:
            return tree
        if self.axis == "seed":
            return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec("seed")))
        by_member = NamedSharding(self.mesh, PartitionSpec(None, "member"))
        replicated = NamedSharding(self.mesh, PartitionSpec())

        def place_agent(agent):
            return jax.tree_util.tree_map(
                lambda x: jax.device_put(x, by_member if x.ndim >= 2
                                         and x.shape[1] == self.num_members else replicated),
                agent)

        if isinstance(tree, online.OnlineState):
            return jax.device_put(tree, replicated).replace(agent=place_agent(tree.agent))
        return place_agent(tree)      # offline members: every leaf is [S, N, ...]

    def shared(self, tree):
        if self.mesh is None:
            return tree
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))


# ----------------------------------------------------------------------------- data

def load_dataset(cfg, obs_dim: int, act_dim: int):
    from o2o_jax import data
    if not cfg.dataset.build_if_missing:
        dataset = data.load(cfg.dataset.id or data.default_id(cfg.env, cfg.dataset.kind),
                            cfg.env)
    else:
        budget = {k: v for k, v in cfg.dataset.build_budget.items() if v is not None}
        dataset = data.ensure(cfg.env, cfg.dataset.kind, dataset_id=cfg.dataset.id,
                              build_transitions=cfg.dataset.build_transitions,
                              seed=cfg.dataset.build_seed, **budget)
    if (dataset.obs_dim, dataset.act_dim) != (obs_dim, act_dim):
        raise ValueError(
            f"dataset {dataset.dataset_id!r} has observation/action dims "
            f"({dataset.obs_dim}, {dataset.act_dim}) but env {cfg.env!r} has "
            f"({obs_dim}, {act_dim}); point --config.dataset.id at a dataset of that env")
    return dataset


def device_arrays(dataset):
    return {k: jnp.asarray(dataset.arrays[k], jnp.float32) for k in TRANSITION_KEYS}


# ----------------------------------------------------------------------------- checkpoints

def comparable_config(cfg) -> dict:
    """The config a checkpoint must share with the run resuming it."""
    d = json.loads(cfg.to_json_best_effort())
    for k in ("resume", "run_dir", "run_name", "tensorboard", "distributed"):
        d.pop(k, None)
    d.get("checkpoint", {}).pop("keep", None)
    return d


class CheckpointManager:
    """<run>/checkpoints/<order>/: full state; keeps the newest `keep` complete ones."""

    def __init__(self, root: str, keep: int, config: dict):
        self.root, self.keep, self.config = root, keep, config

    def complete(self):
        paths = sorted(glob.glob(os.path.join(self.root, "[0-9]" * 10)))
        return [p for p in paths if os.path.exists(os.path.join(p, "meta.json"))]

    def latest(self) -> Optional[dict]:
        done = self.complete()
        if not done:
            return None
        meta = checkpoints.read_meta(done[-1])
        checkpoints.check_meta(done[-1], meta, {"config": self.config})
        return {**meta, "path": done[-1]}

    def save(self, order: int, tree, meta: dict, extra: Optional[dict] = None):
        path = os.path.join(self.root, f"{order:010d}")
        checkpoints.save(path, tree, {**meta, "config": self.config}, extra_files=extra)
        if not distributed.is_primary():
            return
        for old in self.complete()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for unfinished in sorted(glob.glob(os.path.join(self.root, "[0-9]" * 10))):
            if unfinished < path and not os.path.exists(os.path.join(unfinished, "meta.json")):
                shutil.rmtree(unfinished, ignore_errors=True)

    def restore(self, latest: dict, template):
        return checkpoints.restore(latest["path"], template, expect={"config": self.config})


def members_meta(cfg, obs_dim: int, act_dim: int) -> dict:
    """What must match for an offline-members checkpoint to be reused."""
    a = cfg.agent
    return {"kind": "offline_members", "env": cfg.env, "obs_dim": obs_dim, "act_dim": act_dim,
            "num_seeds": cfg.num_seeds, "num_members": a.num_members,
            "hidden_dims": list(a.hidden_dims), "activation": a.activation,
            "actor_layer_norm": a.actor_layer_norm, "critic_layer_norm": a.critic_layer_norm}


def members_expect(cfg, obs_dim: int, act_dim: int) -> dict:
    """What the members checkpoint at `online.load_offline_from` must say of itself; checks
    it (CheckpointError naming the difference) and returns it. A checkpoint of one seed's
    members (e.g. imported by experiments.import_members) is accepted for S seeds."""
    path = cfg.online.load_offline_from
    expect = members_meta(cfg, obs_dim, act_dim)
    meta = checkpoints.read_meta(path)
    if meta.get("num_seeds") == 1:
        expect["num_seeds"] = 1
    checkpoints.check_meta(path, meta, expect)
    return expect


def load_members(cfg, template, obs_dim: int, act_dim: int):
    """The members checkpoint at `online.load_offline_from`, shaped like `template` [S, N, ...].

    One seed's members are given to every one of the S seeds: S online runs from the same
    members."""
    path = cfg.online.load_offline_from
    expect = members_expect(cfg, obs_dim, act_dim)
    if expect["num_seeds"] == 1 and cfg.num_seeds > 1:
        one = checkpoints.restore(path, jax.tree_util.tree_map(lambda x: x[:1], template),
                                  expect=expect)
        print(f"the members of {path} are shared by all {cfg.num_seeds} seeds")
        return jax.tree_util.tree_map(lambda x: jnp.repeat(x, cfg.num_seeds, axis=0), one)
    return checkpoints.restore(path, template, expect=expect)


def read_env_state(path: str):
    try:
        return pickle.loads(checkpoints.read_extra(path, "env_state.pkl"))
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise checkpoints.CheckpointError(
            f"checkpoint {path!r} has an unreadable env_state.pkl ({type(e).__name__}); it "
            "is corrupt — delete it to resume from the one before") from e


# ----------------------------------------------------------------------------- phases

@dataclasses.dataclass
class Context:
    cfg: object
    run_dir: RunDir
    ckpt: CheckpointManager
    sharder: Sharder
    data: dict
    obs_dim: int
    act_dim: int

    @property
    def seeds(self):
        return seed_list(self.cfg)


def check_finite(ctx: Context, values: dict, where: str):
    """Stop the run (finite.NonFiniteError) on a NaN/inf in `values`, before it is logged or
    checkpointed, naming the newest checkpoint kept."""
    done = ctx.ckpt.complete() if distributed.is_primary() else []
    finite.check(values, where, ctx.seeds, done[-1] if done else None)


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


@functools.lru_cache(maxsize=None)
def seeds_jit(fn, donate: bool = False):
    """jit(vmap(fn)) over the seed axis, one compiled function per `fn`."""
    return jax.jit(jax.vmap(fn), donate_argnums=0 if donate else ())


def evaluate_offline(ctx: Context, members):
    seeds = [OFFLINE_EVAL_SEED + 1_000 * s for s in ctx.seeds]
    policy = seeds_jit(algorithm.get(ctx.cfg.algo).members_act_eval)
    return envs.evaluate_seeds(lambda o: distributed.to_host(policy(members, jnp.asarray(o))),
                               ctx.cfg.env,
                               ctx.cfg.offline.eval_episodes, seeds)


def pretrain(ctx: Context, members, key, start_step: int = 0):
    """Offline phase: cfg.offline.steps updates per member per seed, evaluating and
    checkpointing periodically. Returns (members, mean eval return per seed or None)."""
    cfg, oc = ctx.cfg, ctx.cfg.offline
    progress = Progress("offline " + cfg.algo, oc.steps, "steps", every_s=5.0, initial=start_step)
    step, last_eval = start_step, None
    ckpt_every = cfg.checkpoint.every_offline_steps or oc.steps
    while step < oc.steps:
        next_eval = (step // oc.eval_interval + 1) * oc.eval_interval
        next_ckpt = (step // ckpt_every + 1) * ckpt_every
        k = min(oc.chunk, next_eval - step, next_ckpt - step, oc.steps - step)
        chunk = offline.make_train_chunk(k, oc.batch_size,
                                         algorithm.get(cfg.algo).offline_update(cfg),
                                         seed_axis=True)
        key, k_chunk = split_each(key, 2)
        members, info = chunk(members, ctx.data, k_chunk)
        info = distributed.to_host_tree(info)
        step += k
        extra = {}
        if step % oc.eval_interval == 0 or step == oc.steps:
            returns = evaluate_offline(ctx, members).mean(axis=1)
            last_eval = returns
            extra = {"eval_return": returns,
                     "normalized_score": envs.normalized_score(cfg.env, returns)}
        check_finite(ctx, {**info, **extra}, f"offline step {step:,}")
        for row in per_seed_rows({"phase": "offline", "step": step, "env_steps": 0}, info,
                                 ctx.seeds, extra):
            ctx.run_dir.log(row)
        msg = " ".join(f"{k} {to_scalar(info[k]):.3g}"
                       for k in algorithm.get(cfg.algo).progress_keys if k in info)
        if last_eval is not None:
            msg += (f" | eval {np.mean(last_eval):.1f} "
                    f"({np.mean(envs.normalized_score(cfg.env, last_eval)):.1f})")
        progress.update(step, msg)
        if step % ckpt_every == 0 and step < oc.steps:
            ctx.run_dir.flush()
            ctx.ckpt.save(step, {"members": members, "key": key},
                          {"phase": "offline", "step": step,
                           "csv_rows": len(ctx.run_dir.metrics.rows),
                           "last_eval": None if last_eval is None else list(last_eval)})
    return members, last_eval


def post_offline_phase(ctx: Context, members, key, post):
    """A method's phase after pretraining (`algorithm.PostOffline`, e.g. FQE-init's critic
    refit): `post.reset` once per seed, then `post.steps_field` updates of `post.update`
    per member, logged as phase `post.phase`."""
    cfg = ctx.cfg
    k_reset, key = split_each(key, 2)
    members = jax.vmap(lambda m, k: post.reset(m, k, cfg))(members, k_reset)
    total = config_checks._get(cfg, post.steps_field)
    progress = Progress(post.label, total, "steps", every_s=5.0)
    step = 0
    while step < total:
        k = min(cfg.offline.chunk, total - step)
        chunk = offline.make_train_chunk(k, cfg.offline.batch_size, post.update(cfg),
                                         seed_axis=True)
        key, k_chunk = split_each(key, 2)
        members, info = chunk(members, ctx.data, k_chunk)
        info = distributed.to_host_tree(info)
        step += k
        check_finite(ctx, info, f"{post.phase} step {step:,}")
        for row in per_seed_rows({"phase": post.phase, "step": step, "env_steps": 0}, info,
                                 ctx.seeds):
            ctx.run_dir.log(row)
        progress.update(step, f"critic {to_scalar(info['critic_loss']):.3g}")
    return members


def step_config(cfg) -> online.StepConfig:
    oc = cfg.online
    return online.StepConfig(batch_size=oc.batch_size, dr_batch_size=oc.dr_batch_size,
                             replay=oc.replay, priority_temperature=oc.priority_temperature,
                             fifo_window=oc.fifo_capacity,
                             update_fn=algorithm.get(cfg.algo).online_update(cfg))


def init_online(ctx: Context, members, key):
    """Per-seed online states (built one seed at a time), stacked on the seed axis."""
    k_init = distributed.to_host(key)
    algo = algorithm.get(ctx.cfg.algo)
    states = []
    for s in range(ctx.cfg.num_seeds):
        m = unstack(members, s)
        states.append(online.init_state(m, ctx.data, jnp.asarray(k_init[s]), ctx.cfg.online,
                                        ctx.obs_dim, ctx.act_dim,
                                        agent=algo.to_online(m, ctx.cfg)))
    return stack(states)


_add_online = jax.jit(jax.vmap(buffers.add_online), donate_argnums=0)


def finetune(ctx: Context, state, key, start_epoch: int = 0, resume_meta=None,
             offline_return=None):
    """Online phase (spec section 5): per epoch evaluate, collect, train; S seeds at once.
    `offline_return` (the pretrained members' score) rides in the checkpoints so that a
    resumed run's summary still reports it."""
    cfg, oc = ctx.cfg, ctx.cfg.online
    step_cfg = step_config(cfg)
    algo = algorithm.get(cfg.algo)
    act, act_eval = seeds_jit(algo.act), seeds_jit(algo.act_eval)
    q_auroc = seeds_jit(functools.partial(online.q_auroc, q_fn=algo.q_value))
    env = envs.BatchedEnvs(cfg.env, cfg.num_seeds, 0,
                           seeds=[COLLECT_SEED + s for s in ctx.seeds])
    recent = [[] for _ in ctx.seeds]           # last 10 training-episode returns per seed
    if resume_meta is not None:
        env.set_state(resume_meta["env_state"])
        recent = resume_meta["recent_returns"]
    progress = Progress("online " + cfg.online.replay, oc.epochs, "epochs", every_s=0.0,
                        initial=start_epoch)
    eval_seeds = [ONLINE_EVAL_SEED + 1_000 * s for s in ctx.seeds]
    final = None
    for epoch in range(start_epoch, oc.epochs + 1):
        returns = envs.evaluate_seeds(
            lambda o: distributed.to_host(act_eval(state.agent, jnp.asarray(o))), cfg.env,
            oc.eval_episodes, eval_seeds).mean(axis=1)
        final = returns
        base = {"phase": "online", "epoch": epoch, "step": epoch,
                "env_steps": epoch * oc.env_steps_per_epoch}
        extra = {"eval_return": returns,
                 "normalized_score": envs.normalized_score(cfg.env, returns)}
        check_finite(ctx, {"eval_return": returns}, f"the evaluation at online epoch {epoch}")
        if epoch == oc.epochs:   # the final evaluation, after the last epoch's training
            for row in per_seed_rows(base, {}, ctx.seeds, extra):
                ctx.run_dir.log(row)
            break
        # Collect: one batched policy call per env step for all seeds.
        key, k_collect, k_auc, k_train = split_each(key, 4)
        step_keys = distributed.to_host(_split_each(k_collect, oc.env_steps_per_epoch))
        steps = []
        for t in range(oc.env_steps_per_epoch):
            action = act(state.agent, jnp.asarray(env.obs[:, None]),
                         jnp.asarray(step_keys[:, t]))
            transition, _ = env.step(distributed.to_host(action)[:, 0])
            steps.append(transition)
            for s in np.flatnonzero(env.episode_length == 0):   # episodes that just ended
                recent[s] = (recent[s] + [float(env.last_returns[s])])[-10:]
        new = {k: jnp.asarray(np.stack([t[k] for t in steps], axis=1))
               for k in TRANSITION_KEYS}
        state = state.replace(replay=_add_online(state.replay, new))
        auroc = distributed.to_host(q_auroc(state.agent, new["observations"], new["actions"],
                                            k_auc))
        # Train: one compiled call per epoch's worth of updates, all seeds; the first
        # epoch runs `first_epoch_multiplier` of them.
        train = online.make_train_epoch(oc.updates_per_epoch, step_cfg, seed_axis=True)
        calls = oc.first_epoch_multiplier if epoch == 0 else 1
        infos = []
        for k in (split_each(k_train, calls) if calls > 1 else [k_train]):
            state, info = train(state, ctx.data, k)
            infos.append(info)
        info = distributed.to_host_tree(
            {k: (infos[0][k] if k.endswith(online.FIRST_BATCH_SUFFIX)   # the epoch's first
                 else sum(i[k] for i in infos) / len(infos)) for k in infos[0]})
        check_finite(ctx, info, f"online epoch {epoch} (training)")
        extra.update({"q_auroc": auroc,
                      "train_episode_return": [np.mean(r) if r else "" for r in recent]})
        for row in per_seed_rows(base, info, ctx.seeds, extra):
            ctx.run_dir.log(row)
        progress.update(epoch + 1, f"eval at epoch {epoch}'s start {np.mean(returns):.1f} "
                                   f"({np.mean(envs.normalized_score(cfg.env, returns)):.1f}) "
                                   f"offline frac {to_scalar(info['offline_fraction']):.2f}")
        every = cfg.checkpoint.every_online_epochs
        if every and (epoch + 1) % every == 0 and epoch + 1 < oc.epochs:
            ctx.run_dir.flush()
            ctx.ckpt.save(cfg.offline.steps + epoch + 1, {"state": state, "key": key},
                          {"phase": "online", "epoch": epoch + 1,
                           "csv_rows": len(ctx.run_dir.metrics.rows), "recent_returns": recent,
                           "offline_return": None if offline_return is None
                           else [float(r) for r in offline_return]},
                          extra={"env_state.pkl": pickle.dumps(env.get_state())})
    env.close()
    return state, final


# ----------------------------------------------------------------------------- run

def create_members(ctx: Context, key):
    """[S, N, ...] members: seed s's N members are created from its key alone."""
    create = algorithm.get(ctx.cfg.algo).create_members
    return stack([create(k, ctx.obs_dim, ctx.act_dim, ctx.cfg) for k in jnp.asarray(key)])


def run(cfg) -> dict:
    """Run the whole experiment described by `cfg`; returns the summary dict.

    In a distributed run every process calls this with the same config (but its own
    `distributed.process_id`); only the primary process prints and writes."""
    config_checks.check(cfg)
    distributed.initialize(cfg.get("distributed"))   # before any device is touched
    with distributed.primary_output():
        obs_dim, act_dim = envs.env_dims(cfg.env)
        # Every input is checked before anything of the run is written: a bad dataset or
        # members checkpoint leaves no run directory behind.
        dataset = load_dataset_everywhere(cfg, obs_dim, act_dim)
        if cfg.online.load_offline_from:
            members_expect(cfg, obs_dim, act_dim)
        path = distributed.broadcast_str(run_path(cfg))   # one clock names the directory
        existed = os.path.isdir(path)
        # The writer takes the directory's lock first: a second process is refused here.
        run_dir = RunDir(path, tensorboard=cfg.tensorboard, write=distributed.is_primary())
        try:
            ckpt = CheckpointManager(os.path.join(path, "checkpoints"), cfg.checkpoint.keep,
                                     comparable_config(cfg))
            latest = ckpt.latest() if existed else None
            distributed.agree(lambda: latest["path"] if latest else "(none)",
                              "the newest checkpoint of the run directory",
                              "the run directory must be on a filesystem every host shares")
            distributed.barrier("o2o_run_dir")   # all have looked before the primary writes
            run_dir.write_config(cfg.to_json_best_effort(indent=2))
            print(f"run directory: {run_dir.path}" + (f" (resuming from {latest['path']})"
                                                      if latest else ""))
            return _run(cfg, run_dir, ckpt, latest, dataset, obs_dim, act_dim)
        finally:
            run_dir.close()   # also on errors and interrupts: TensorBoard writers flushed


def load_dataset_everywhere(cfg, obs_dim: int, act_dim: int):
    """The primary builds a missing dataset; the other processes then read it."""
    dataset = load_dataset(cfg, obs_dim, act_dim) if distributed.is_primary() else None
    distributed.barrier("o2o_dataset")
    if dataset is None:
        dataset = load_dataset(cfg, obs_dim, act_dim)
    distributed.agree(
        lambda: f"{dataset.num_transitions} "
                f"{float(np.sum(dataset.arrays['observations'], dtype=np.float64))!r}",
        f"dataset {dataset.dataset_id}", "point MINARI_DATASETS_PATH of every host at one "
        "shared folder (or copy the primary's dataset there)")
    return dataset


def _run(cfg, run_dir: RunDir, ckpt: CheckpointManager, latest, dataset, obs_dim: int,
         act_dim: int):
    if latest is None:
        run_dir.truncate(0)
    sharder = Sharder(cfg.num_seeds, cfg.shard_seeds, num_members=cfg.agent.num_members)
    ctx = Context(cfg, run_dir, ckpt, sharder, sharder.shared(device_arrays(dataset)),
                  obs_dim, act_dim)
    print(f"dataset {dataset.dataset_id}: {dataset.num_transitions} transitions (held once "
          f"for {cfg.num_seeds} seed(s)); devices: {jax.devices()}"
          + (f" in {jax.process_count()} processes" if distributed.multiprocess() else ""))

    keys = jnp.stack([jax.random.PRNGKey(s) for s in ctx.seeds])
    k_init, k_offline, k_online = split_each(keys, 3)
    members = sharder.seeds(create_members(ctx, k_init))
    t0 = time.time()
    offline_return = None
    phase = latest["phase"] if latest else None
    if phase == "online":
        pass   # members are inside the online checkpoint
    elif cfg.online.load_offline_from:
        members = sharder.seeds(load_members(cfg, members, obs_dim, act_dim))
        print(f"loaded offline members from {cfg.online.load_offline_from}; skipping "
              "pretraining")
    else:
        start = 0
        if phase == "offline":
            restored = ckpt.restore(latest, {"members": members, "key": k_offline})
            members, k_offline = sharder.seeds(restored["members"]), restored["key"]
            start = latest["step"]
            run_dir.truncate(latest["csv_rows"])   # only once restore succeeded
        members, offline_return = pretrain(ctx, members, k_offline, start)
        post = algorithm.get(cfg.algo).post_offline
        if post is not None:
            members = post_offline_phase(ctx, members, k_offline, post)
        if cfg.offline.save_members and cfg.offline.steps > 0:
            checkpoints.save(os.path.join(run_dir.path, "offline_members"), members,
                             members_meta(cfg, obs_dim, act_dim))
    offline_time = time.time() - t0

    t0 = time.time()
    online_return = None
    if cfg.online.epochs > 0:
        k_state, k_loop = split_each(k_online, 2)
        state = init_online(ctx, members, k_state)
        start_epoch, resume_meta = 0, None
        if phase == "online":
            restored = ckpt.restore(latest, {"state": state, "key": k_loop})
            state, k_loop = restored["state"], restored["key"]
            env_state = read_env_state(latest["path"])
            # Only once everything is restored: a failed resume must lose no row.
            run_dir.truncate(latest["csv_rows"])
            start_epoch, resume_meta = latest["epoch"], {**latest, "env_state": env_state}
            offline_return = latest.get("offline_return")
        state = sharder.seeds(state)
        del members
        _, online_return = finetune(ctx, state, k_loop, start_epoch, resume_meta,
                                    offline_return)
    summary = summarize(cfg, dataset, offline_return, online_return, offline_time,
                        time.time() - t0, run_dir.path)
    run_dir.write_summary(summary)
    print(json.dumps(summary, indent=2))
    return summary


def summarize(cfg, dataset, offline_return, online_return, offline_time, online_time,
              path) -> dict:
    def scores(returns):
        if returns is None:
            return None
        norm = np.asarray(envs.normalized_score(cfg.env, np.asarray(returns)))
        return {"per_seed_return": [float(r) for r in returns],
                "per_seed_normalized": [float(x) for x in norm],
                "normalized": stats.summarize(norm)}

    return {
        "run_dir": path, "env": cfg.env, "algo": cfg.algo, "dataset": dataset.dataset_id,
        "seeds": seed_list(cfg), "num_members": cfg.agent.num_members,
        "offline_steps": cfg.offline.steps, "replay": cfg.online.replay,
        "online_env_steps": cfg.online.epochs * cfg.online.env_steps_per_epoch,
        "offline_time_s": offline_time, "online_time_s": online_time,
        "offline": scores(offline_return), "final": scores(online_return),
    }
