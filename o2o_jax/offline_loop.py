"""The offline phase's loop: pretraining of N members per seed (compiled chunks of
`offline.make_train_chunk`), periodic evaluation and checkpoints, and a method's phase
after pretraining (`Algorithm.post_offline`, e.g. FQE-init's critic refit)."""
import jax
import jax.numpy as jnp
import numpy as np

from o2o_jax import algorithm, config_checks, distributed, envs, offline
from o2o_jax.context import Context, check_finite
from o2o_jax.progress import Progress
from o2o_jax.rundir import to_scalar
from o2o_jax.seeds import per_seed_rows, seeds_jit, split_each

OFFLINE_EVAL_SEED = 10_000   # eval episode e of seed s: OFFLINE_EVAL_SEED + 1_000 s + e


def evaluate_offline(ctx: Context, members):
    seeds = [OFFLINE_EVAL_SEED + 1_000 * s for s in ctx.seeds]
    policy = seeds_jit(algorithm.get(ctx.cfg.algo).members_act_eval)
    return envs.evaluate_seeds(lambda o: distributed.to_host(policy(members, jnp.asarray(o))),
                               ctx.cfg.env,
                               ctx.cfg.offline.eval_episodes, seeds)


def scored(ctx: Context, members):
    """(mean eval return per seed, the row's extra columns) of an offline evaluation."""
    returns = evaluate_offline(ctx, members).mean(axis=1)
    return returns, {"eval_return": returns,
                     "normalized_score": envs.normalized_score(ctx.cfg.env, returns)}


def eval_message(ctx: Context, returns) -> str:
    return (f" | eval {np.mean(returns):.1f} "
            f"({np.mean(envs.normalized_score(ctx.cfg.env, returns)):.1f})")


def pretrain(ctx: Context, members, key, start_step: int = 0):
    """Offline phase: cfg.offline.steps updates per member per seed, evaluating and
    checkpointing periodically. Returns (members, mean eval return per seed or None)."""
    cfg, oc = ctx.cfg, ctx.cfg.offline
    progress = Progress("offline " + cfg.algo, oc.steps, "steps", every_s=5.0, initial=start_step)
    step, last_eval = start_step, None
    ckpt_every = cfg.checkpoint.every_offline_steps or oc.steps
    if start_step == 0 and oc.get("init_from", ""):
        # Members from a checkpoint: their score before any update here (step 0).
        last_eval, extra = scored(ctx, members)
        check_finite(ctx, {"eval_return": last_eval}, "the evaluation of offline.init_from")
        for row in per_seed_rows({"phase": "offline", "step": 0, "env_steps": 0}, {},
                                 ctx.seeds, extra):
            ctx.run_dir.log(row)
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
            last_eval, extra = scored(ctx, members)
        check_finite(ctx, {**info, **extra}, f"offline step {step:,}")
        for row in per_seed_rows({"phase": "offline", "step": step, "env_steps": 0}, info,
                                 ctx.seeds, extra):
            ctx.run_dir.log(row)
        msg = " ".join(f"{k} {to_scalar(info[k]):.3g}"
                       for k in algorithm.get(cfg.algo).progress_keys if k in info)
        if last_eval is not None:
            msg += eval_message(ctx, last_eval)
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
    per member, logged as phase `post.phase`; the members are evaluated at its end (the
    policy fine-tuning starts from). Returns (members, mean eval return per seed, None if
    the phase has no steps)."""
    cfg = ctx.cfg
    k_reset, key = split_each(key, 2)
    members = jax.vmap(lambda m, k: post.reset(m, k, cfg))(members, k_reset)
    total = config_checks._get(cfg, post.steps_field)
    progress = Progress(post.label, total, "steps", every_s=5.0)
    step, returns = 0, None
    while step < total:
        k = min(cfg.offline.chunk, total - step)
        chunk = offline.make_train_chunk(k, cfg.offline.batch_size, post.update(cfg),
                                         seed_axis=True)
        key, k_chunk = split_each(key, 2)
        members, info = chunk(members, ctx.data, k_chunk)
        info = distributed.to_host_tree(info)
        step += k
        check_finite(ctx, info, f"{post.phase} step {step:,}")
        extra = {}
        if step >= total:
            returns, extra = scored(ctx, members)
            check_finite(ctx, extra, f"the evaluation after {post.phase}")
        for row in per_seed_rows({"phase": post.phase, "step": step, "env_steps": 0}, info,
                                 ctx.seeds, extra):
            ctx.run_dir.log(row)
        shown = [k for k in ("critic_loss", "actor_loss") if k in info]
        msg = " ".join(f"{k} {to_scalar(info[k]):.3g}" for k in shown)
        if extra:
            msg += eval_message(ctx, returns)
        progress.update(step, msg)
    return members, returns
