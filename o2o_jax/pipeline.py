"""The experiment pipeline behind `python -m experiments.train`: orchestration and resume.

dataset -> offline pretraining of N members -> online fine-tuning, for S seeds at once.
The loops are their own rooms (`offline_loop`, `online_loop`), as are sharding
(`sharding`), a run's checkpoints (`checkpoints`), seed utilities (`seeds`) and what the
loops share (`context`); this module checks the inputs, takes the run directory, picks up
where a checkpoint left off, and hands each phase its state.

Every piece of training state carries a leading seed axis [S, ...] (S = `num_seeds`,
S = 1 included), and seed i of a run is driven by PRNGKey(cfg.seed + i): its parameters,
minibatches, buffers and environments are exactly those of a single-seed run with
`seed = cfg.seed + i`. The offline dataset is held once and shared by all seeds. With
several devices the seed axis is sharded across them (`jax.sharding`), on one host or,
with `jax.distributed` (the `distributed` config section), on several (see
o2o_jax/distributed.py: every process runs this same code; the primary writes).

The run directory holds config.json, metrics.csv (one row per seed per log point),
summary.json (once the run has finished), offline_members/ (the members the offline stage
hands over: pretrained, then through a method's phase after pretraining where it has one)
and checkpoints/ (full training state, the last `checkpoint.keep` of them); re-running
into the same directory resumes.
"""
import glob
import json
import os
import sys
import time
from typing import List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from o2o_jax import algorithm, checkpoints, config_checks, distributed, envs, rundir, stats
from o2o_jax.checkpoints import (CheckpointManager, branch_source, comparable_config,
                                 load_members, members_expect, members_meta, read_env_state)
from o2o_jax.context import Context, PhaseTimes
from o2o_jax.offline_loop import post_offline_phase, pretrain
from o2o_jax.online_loop import finetune, init_online, member_mask
from o2o_jax.rundir import CONFIG_FILE, SUMMARY_FILE, RunDir, read_metrics_rows
from o2o_jax.seeds import seed_list, split_each
from o2o_jax.sharding import Sharder
from o2o_jax.transitions import TRANSITION_KEYS


def run_path(cfg) -> str:
    if cfg.run_name:
        return os.path.join(cfg.run_dir, cfg.run_name)
    prefix = f"{cfg.env}-{cfg.dataset.kind}-{cfg.algo}-seed{cfg.seed}"
    if cfg.resume:   # continue the newest run of this experiment
        found = sorted(glob.glob(os.path.join(cfg.run_dir, prefix + "-*")))
        if found:
            return found[-1]
    return os.path.join(cfg.run_dir, f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}")


def finished(cfg) -> Optional[Tuple[str, List[str]]]:
    """(run directory, the config keys it differs in) if `cfg` names a run directory
    (`run_name`) whose run has finished (its summary.json is there: `run` removes it when
    a run starts or resumes); None otherwise. The keys are empty when it finished with
    this very config (up to what a resume may change). Lets a driver of many runs
    (experiments.compare) skip the finished ones when run again."""
    if not cfg.run_name:
        return None
    path = run_path(cfg)
    saved = rundir.saved_json(path, CONFIG_FILE)
    if saved is None or rundir.saved_json(path, SUMMARY_FILE) is None:
        return None
    return path, checkpoints.config_diff(saved, cfg)


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


def device_arrays(dataset, mc_discount=None):
    """The transitions on device; with `mc_discount`, also each one's Monte-Carlo
    return-to-go (`mc_returns`, for methods that read it)."""
    out = {k: jnp.asarray(dataset.arrays[k], jnp.float32) for k in TRANSITION_KEYS}
    if mc_discount is not None:
        from o2o_jax import mc_returns
        out[mc_returns.KEY] = jnp.asarray(dataset.returns_to_go(float(mc_discount)))
    return out


# ----------------------------------------------------------------------------- run

def create_members(ctx: Context, key):
    """[S, N, ...] members: seed s's N members are created from its key alone."""
    create = algorithm.get(ctx.cfg.algo).create_members
    return jax.jit(jax.vmap(lambda k: create(k, ctx.obs_dim, ctx.act_dim, ctx.cfg)))(key)


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
        path = distributed.broadcast_str(run_path(cfg))   # one clock names the directory
        existed = os.path.isdir(path)
        # Members (to fine-tune, to pretrain on from, or a branch's source) are read only
        # by a run with no checkpoint of its own yet: once it has one it resumes from that
        # (the source may be gone by then).
        own_ckpt = existed and bool(CheckpointManager(os.path.join(path, "checkpoints"), 1,
                                                      None).complete())
        if cfg.online.load_offline_from and not own_ckpt:
            members_expect(cfg, obs_dim, act_dim)
        if cfg.offline.get("init_from", "") and not own_ckpt:
            members_expect(cfg, obs_dim, act_dim, "offline.init_from")
        branch = (branch_source(cfg) if cfg.online.get("branch_from", "") and not own_ckpt
                  else None)
        # The writer takes the directory's lock first: a second process is refused here.
        run_dir = RunDir(path, tensorboard=cfg.tensorboard, write=distributed.is_primary())
        try:
            ckpt = CheckpointManager(os.path.join(path, "checkpoints"), cfg.checkpoint.keep,
                                     comparable_config(cfg), dataset_identity(dataset))
            latest = ckpt.latest() if existed else None
            if latest is None and branch is not None:   # a new branch: start at its source
                latest = {**branch, "branch": True}
            distributed.agree(lambda: latest["path"] if latest else "(none)",
                              "the newest checkpoint of the run directory",
                              "the run directory must be on a filesystem every host shares")
            distributed.barrier("o2o_run_dir")   # all have looked before the primary writes
            run_dir.write_config(cfg.to_json_best_effort(indent=2))
            # Until this run ends, no summary of an earlier one says it has finished.
            if distributed.is_primary() and os.path.exists(os.path.join(path, SUMMARY_FILE)):
                os.remove(os.path.join(path, SUMMARY_FILE))
            how = "branching from" if latest and latest.get("branch") else "resuming from"
            print(f"run directory: {run_dir.path}" + (f" ({how} {latest['path']})"
                                                      if latest else ""))
            return _run(cfg, run_dir, ckpt, latest, dataset, obs_dim, act_dim)
        finally:
            run_dir.close()   # also on errors and interrupts: TensorBoard writers flushed


def dataset_identity(dataset) -> dict:
    """What a run's checkpoints record of its offline data: id, size and a checksum."""
    return {"id": dataset.dataset_id, "transitions": int(dataset.num_transitions),
            "checksum": _checksum(dataset)}


def _checksum(dataset) -> str:
    return repr(float(np.sum(dataset.arrays["observations"], dtype=np.float64)))


def load_dataset_everywhere(cfg, obs_dim: int, act_dim: int):
    """The primary builds a missing dataset; the other processes then read it."""
    dataset = load_dataset(cfg, obs_dim, act_dim) if distributed.is_primary() else None
    distributed.barrier("o2o_dataset")
    if dataset is None:
        dataset = load_dataset(cfg, obs_dim, act_dim)
    distributed.agree(
        lambda: f"{dataset.num_transitions} {_checksum(dataset)}",
        f"dataset {dataset.dataset_id}", "point MINARI_DATASETS_PATH of every host at one "
        "shared folder (or copy the primary's dataset there)")
    return dataset


def _run(cfg, run_dir: RunDir, ckpt: CheckpointManager, latest, dataset, obs_dim: int,
         act_dim: int):
    if latest is None:
        run_dir.truncate(0)
    sharder = Sharder(cfg.num_seeds, cfg.shard_seeds, num_members=cfg.agent.num_members)
    mc_discount = cfg.agent.discount if algorithm.get(cfg.algo).mc_returns else None
    ctx = Context(cfg, run_dir, ckpt, sharder,
                  sharder.shared(device_arrays(dataset, mc_discount)),
                  obs_dim, act_dim)
    print(f"dataset {dataset.dataset_id}: {dataset.num_transitions} transitions (held once "
          f"for {cfg.num_seeds} seed(s)); devices: {jax.devices()}"
          + (f" in {jax.process_count()} processes" if distributed.multiprocess() else ""))

    keys = jnp.stack([jax.random.PRNGKey(s) for s in ctx.seeds])
    k_init, k_offline, k_online = split_each(keys, 3)
    members = create_members(ctx, k_init)
    from_data = algorithm.get(cfg.algo).from_data
    if from_data is not None:   # e.g. IQL's reward scale (a loaded checkpoint has its own)
        members = from_data(members, dataset, cfg)
    members = sharder.seeds(members)
    times = PhaseTimes.resumed(None if latest and latest.get("branch") else latest)
    ckpt.stamp = times.meta     # every checkpoint from here records the phase times
    offline_return = None
    phase = latest["phase"] if latest else None
    if phase == "online":
        pass   # members are inside the online checkpoint
    elif cfg.online.load_offline_from:
        members = sharder.seeds(load_members(cfg, members, obs_dim, act_dim))
        print(f"loaded offline members from {cfg.online.load_offline_from}; skipping "
              "pretraining")
    else:
        times.start("offline")
        start = 0
        if phase == "offline":
            restored = ckpt.restore(latest, {"members": members, "key": k_offline})
            members, k_offline = sharder.seeds(restored["members"]), restored["key"]
            start = latest["step"]
            run_dir.truncate(latest["csv_rows"])   # only once restore succeeded
        elif cfg.offline.get("init_from", ""):
            members = sharder.seeds(load_members(cfg, members, obs_dim, act_dim,
                                                 "offline.init_from"))
            print(f"pretraining goes on from the members of {cfg.offline.init_from}")
        members, offline_return = pretrain(ctx, members, k_offline, start)
        post = algorithm.get(cfg.algo).post_offline
        if post is not None:
            # the summary's offline score: the members fine-tuning starts from
            members, post_return = post_offline_phase(ctx, members, k_offline, post)
            offline_return = offline_return if post_return is None else post_return
        if cfg.offline.save_members and (cfg.offline.steps > 0
                                          or cfg.offline.get("init_from", "")):
            checkpoints.save(os.path.join(run_dir.path, "offline_members"), members,
                             {**members_meta(cfg, obs_dim, act_dim), "algo": cfg.algo})
        times.stop("offline")

    online_return = None
    if cfg.online.epochs > 0:
        times.start("online")
        k_state, k_loop = split_each(k_online, 2)
        state = init_online(ctx, members, k_state)
        start_epoch, resume_meta = 0, None
        if phase == "online":
            template = {"state": state, "key": k_loop}
            if latest.get("branch"):
                try:
                    restored = checkpoints.restore(latest["path"], template)
                except checkpoints.CheckpointError as e:
                    raise checkpoints.branch_state_mismatch(
                        latest.get("config", {}).get("algo", ""), cfg.algo, e) from e
            else:
                restored = ckpt.restore(latest, template)
            state, k_loop = restored["state"], restored["key"]
            env_state = read_env_state(latest["path"])
            # Only once everything is restored: a failed resume must lose no row.
            if latest.get("branch"):   # the source run's rows up to its checkpoint
                source_csv = os.path.join(os.path.dirname(os.path.dirname(latest["path"])),
                                          "metrics.csv")
                history = read_metrics_rows(source_csv)[:latest["csv_rows"]]
                if len(history) < latest["csv_rows"]:
                    print(f"WARNING: {source_csv} has {len(history)} of the "
                          f"{latest['csv_rows']} rows the checkpoint counts; the branch's "
                          "metrics.csv starts with those only", file=sys.stderr)
                run_dir.truncate(0)
                run_dir.copy_rows(history)
            else:
                run_dir.truncate(latest["csv_rows"])
            start_epoch, resume_meta = latest["epoch"], {**latest, "env_state": env_state}
            offline_return = latest.get("offline_return")
        state = sharder.seeds(state, member_mask(ctx, members))
        del members
        _, online_return = finetune(ctx, state, k_loop, start_epoch, resume_meta,
                                    offline_return)
        times.stop("online")
    summary = summarize(cfg, dataset, offline_return, online_return, times.seconds("offline"),
                        times.seconds("online"), run_dir.path)
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
        "dataset_transitions": int(dataset.num_transitions),
        "seeds": seed_list(cfg), "num_members": cfg.agent.num_members,
        "offline_steps": cfg.offline.steps, "replay": cfg.online.replay,
        "online_env_steps": cfg.online.epochs * cfg.online.env_steps_per_epoch,
        "offline_time_s": offline_time, "online_time_s": online_time,
        "offline": scores(offline_return), "final": scores(online_return),
    }
