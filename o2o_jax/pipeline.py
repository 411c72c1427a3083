"""The experiment pipeline behind `python -m experiments.train`: dataset, offline
pretraining of the N CQL members, then online fine-tuning. Writes a run directory.
"""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from o2o_jax import checkpoints, config_checks, envs, offline, online
from o2o_jax.agents import ensemble
from o2o_jax.logging import Progress, RunDir, to_scalar
from o2o_jax.replay import buffers


def run_path(cfg) -> str:
    name = cfg.run_name or (f"{cfg.env}-{cfg.dataset.kind}-{cfg.algo}-seed{cfg.seed}-"
                            f"{time.strftime('%Y%m%d-%H%M%S')}")
    return os.path.join(cfg.run_dir, name)


def load_dataset(cfg, obs_dim: int, act_dim: int):
    from o2o_jax import data
    if not cfg.dataset.build_if_missing:
        dataset = data.load(cfg.dataset.id or data.default_id(cfg.env, cfg.dataset.kind),
                            cfg.env)
    else:
        budget = {k: v for k, v in cfg.dataset.build_budget.items()
                  if v is not None} if "build_budget" in cfg.dataset else {}
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
    return {k: jnp.asarray(dataset.arrays[k], jnp.float32) for k in offline.TRANSITION_KEYS}


@jax.jit
def _members_mode(members, obs):
    return ensemble.members_policy_ensemble(members, obs)


def evaluate_members(members, cfg, episodes: int):
    """Deterministic moment-matched ensemble policy of stacked members; raw returns."""
    returns = envs.evaluate(lambda o: _members_mode(members, jnp.asarray(o)), cfg.env,
                            episodes, seed=10_000 + 1_000 * cfg.seed)
    return returns


def pretrain(members, data, cfg, run_dir: RunDir, key: jax.Array):
    """Offline phase: cfg.offline.steps CQL updates per member, evaluating periodically."""
    oc = cfg.offline
    chunk_fns = {}
    progress = Progress(oc.steps, "offline CQL")
    step = 0
    last_eval = None
    while step < oc.steps:
        next_eval = (step // oc.eval_interval + 1) * oc.eval_interval
        k = min(oc.chunk, next_eval - step, oc.steps - step)
        if k not in chunk_fns:
            chunk_fns[k] = offline.make_train_chunk(k, oc.batch_size)
        key, k_chunk = jax.random.split(key)
        members, info = chunk_fns[k](members, data, k_chunk)
        step += k
        row = {"phase": "offline", "step": step, "env_steps": 0}
        row.update({name: to_scalar(v) for name, v in info.items()})
        if step % oc.eval_interval == 0 or step == oc.steps:
            returns = evaluate_members(members, cfg, oc.eval_episodes)
            last_eval = float(np.mean(returns))
            row["eval_return"] = last_eval
            row["normalized_score"] = float(envs.normalized_score(cfg.env, last_eval))
        run_dir.log(row)
        extra = f"critic {row['critic_loss']:.3g} q {row['q_data']:.3g}"
        if last_eval is not None:
            extra += f" | eval {last_eval:.1f} ({envs.normalized_score(cfg.env, last_eval):.1f})"
        progress.update(step, extra)
    return members, last_eval


def members_meta(cfg, obs_dim: int, act_dim: int) -> dict:
    """What must match for a members checkpoint to be reused."""
    a = cfg.agent
    return {"kind": "offline_members", "env": cfg.env, "obs_dim": obs_dim, "act_dim": act_dim,
            "num_members": a.num_members, "hidden_dims": list(a.hidden_dims),
            "activation": a.activation, "actor_layer_norm": a.actor_layer_norm,
            "critic_layer_norm": a.critic_layer_norm}


def step_config(cfg) -> online.StepConfig:
    oc = cfg.online
    return online.StepConfig(batch_size=oc.batch_size, dr_batch_size=oc.dr_batch_size,
                             replay=oc.replay, priority_temperature=oc.priority_temperature,
                             fifo_window=oc.fifo_capacity, cql=oc.cql_weight > 0)


def finetune(members, data, cfg, run_dir: RunDir, key: jax.Array, obs_dim: int,
             act_dim: int):
    """Online phase (spec section 5): per epoch evaluate, collect, train."""
    oc = cfg.online
    k_init, key = jax.random.split(key)
    state = online.init_state(members, data, k_init, oc, obs_dim, act_dim)
    del members
    step_cfg = step_config(cfg)
    train_fns = {}
    env = envs.BatchedEnvs(cfg.env, 1, seed=cfg.seed)
    progress = Progress(oc.epochs, "online epochs")
    eval_return = None
    returns_seen = []
    for epoch in range(oc.epochs + 1):
        returns = envs.evaluate(
            lambda o: online.act_deterministic(state.agent, jnp.asarray(o)), cfg.env,
            oc.eval_episodes, seed=20_000 + 1_000 * cfg.seed)
        eval_return = float(np.mean(returns))
        row = {"phase": "online", "epoch": epoch, "env_steps": epoch * oc.env_steps_per_epoch,
               "eval_return": eval_return,
               "normalized_score": float(envs.normalized_score(cfg.env, eval_return))}
        if epoch == oc.epochs:   # final evaluation after the last epoch's training
            run_dir.log(row)
            break
        # Collect with the stochastic ensemble policy.
        steps = []
        for _ in range(oc.env_steps_per_epoch):
            key, k_act = jax.random.split(key)
            action = np.asarray(online.act_stochastic(state.agent, jnp.asarray(env.obs), k_act))
            transition, finished = env.step(action)
            steps.append(transition)
            returns_seen += finished
        new = {k: jnp.asarray(np.concatenate([t[k] for t in steps]))
               for k in offline.TRANSITION_KEYS}
        state = state.replace(replay=online_add(state.replay, new))
        key, k_auc = jax.random.split(key)
        row["q_auroc"] = float(online.q_auroc(state.agent, new["observations"], new["actions"],
                                              k_auc))
        # Train.
        num_updates = oc.updates_per_epoch * (oc.first_epoch_multiplier if epoch == 0 else 1)
        if num_updates not in train_fns:
            train_fns[num_updates] = online.make_train_epoch(num_updates, step_cfg)
        key, k_train = jax.random.split(key)
        state, info = train_fns[num_updates](state, data, k_train)
        row.update({name: to_scalar(v) for name, v in info.items()})
        row["train_episode_return"] = float(np.mean(returns_seen[-10:])) if returns_seen else ""
        row["step"] = epoch + 1
        run_dir.log(row)
        progress.update(epoch + 1, f"eval {eval_return:.1f} "
                                   f"({envs.normalized_score(cfg.env, eval_return):.1f}) "
                                   f"offline frac {row['offline_fraction']:.2f}")
    env.close()
    return state, eval_return


online_add = jax.jit(buffers.add_online, donate_argnums=0)


def run(cfg) -> dict:
    """Run the whole experiment described by `cfg`; returns the summary dict."""
    config_checks.check(cfg)
    obs_dim, act_dim = envs.env_dims(cfg.env)
    run_dir = RunDir(run_path(cfg), cfg.to_json_best_effort(indent=2))
    print(f"run directory: {run_dir.path}")
    dataset = load_dataset(cfg, obs_dim, act_dim)
    data = device_arrays(dataset)
    print(f"dataset {dataset.dataset_id}: {dataset.num_transitions} transitions; "
          f"device {jax.devices()[0].platform}")
    key = jax.random.PRNGKey(cfg.seed)
    k_init, k_offline, k_online = jax.random.split(key, 3)
    members = ensemble.create_members(k_init, obs_dim, act_dim, cfg.agent,
                                      cfg.agent.num_members)
    t0 = time.time()
    meta = members_meta(cfg, obs_dim, act_dim)
    offline_return = None
    if cfg.online.load_offline_from:
        members = checkpoints.restore(cfg.online.load_offline_from, members, expect=meta)
        print(f"loaded offline members from {cfg.online.load_offline_from}; "
              "skipping pretraining")
    else:
        members, offline_return = pretrain(members, data, cfg, run_dir, k_offline)
        if cfg.offline.save_members:
            checkpoints.save(os.path.join(run_dir.path, "offline_members"), members, meta)
    offline_time = time.time() - t0
    t0 = time.time()
    online_return = None
    if cfg.online.epochs > 0:
        _, online_return = finetune(members, data, cfg, run_dir, k_online, obs_dim, act_dim)
    summary = {
        "run_dir": run_dir.path, "env": cfg.env, "dataset": dataset.dataset_id,
        "num_members": cfg.agent.num_members, "offline_steps": cfg.offline.steps,
        "offline_time_s": offline_time, "online_time_s": time.time() - t0,
        "replay": cfg.online.replay, "online_env_steps":
            cfg.online.epochs * cfg.online.env_steps_per_epoch,
        "final_eval_return": online_return,
        "final_normalized_score": (None if online_return is None else
                                   float(envs.normalized_score(cfg.env, online_return))),
        "offline_eval_return": offline_return,
        "offline_normalized_score": (None if offline_return is None else
                                     float(envs.normalized_score(cfg.env, offline_return))),
    }
    run_dir.write_summary(summary)
    print(json.dumps(summary, indent=2))
    return summary
