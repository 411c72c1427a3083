"""The online phase's loop (spec section 5): per epoch evaluate, collect with the online
agent in the seeds' envs, add to the replay, and train (compiled calls of
`online.make_train_epoch`: one after the epoch's collection, or, with
`online.train_every` = k, one after every k env steps, each with its share of the epoch's
updates); checkpoints with the envs' exact states."""
import functools
import pickle

import jax
import jax.numpy as jnp
import numpy as np

from o2o_jax import algorithm, distributed, envs, mc_returns, online
from o2o_jax.agents import stacking
from o2o_jax.context import Context, check_finite
from o2o_jax.progress import Progress
from o2o_jax.replay import buffers
from o2o_jax.replay.modes import make_replay
from o2o_jax.rundir import to_scalar
from o2o_jax.seeds import _split_each, per_seed_rows, seeds_jit, split_each
from o2o_jax.transitions import TRANSITION_KEYS

# Env seeds of seed s: collection envs COLLECT_SEED + s; eval episode e: base + 1_000 s + e.
ONLINE_EVAL_SEED, COLLECT_SEED = 20_000, 30_000


def step_config(cfg) -> online.StepConfig:
    oc = cfg.online
    return online.StepConfig(batch_size=oc.batch_size, dr_batch_size=oc.dr_batch_size,
                             replay=oc.replay, priority_temperature=oc.priority_temperature,
                             fifo_window=oc.fifo_window, offline_ratio=oc.offline_ratio,
                             oorb_window=oc.oorb_window, oorb_online_prob=oc.oorb_online_prob,
                             update_fn=algorithm.get(cfg.algo).online_update(cfg))


def train_chunk(online_cfg) -> int:
    """Env steps collected between two training calls (`online.train_every`; 0: the
    epoch's, one call after its collection)."""
    return int(online_cfg.get("train_every", 0)) or int(online_cfg.env_steps_per_epoch)


def init_online(ctx: Context, members, key):
    """The online states of all seeds at once (`jax.vmap` over the seed axis of `members`
    [S, N, ...] and `key` [S, 2]); the offline data are shared, not copied per seed."""
    algo, cfg = algorithm.get(ctx.cfg.algo), ctx.cfg

    def one(m, k, data):
        return online.init_state(m, data, k, cfg.online, ctx.obs_dim, ctx.act_dim,
                                 agent=algo.to_online(m, cfg),
                                 initial_priorities=algo.initial_priorities)

    # The data go in as an argument (a closed-over array would be baked into the program).
    return jax.jit(jax.vmap(one, in_axes=(0, 0, None)))(members, key, ctx.data)


def member_mask(ctx: Context, members):
    """Which leaves of the online agent carry the member axis (after the seed axis of
    `members` [S, N, ...]), from the method's own hand-over (`stacking.member_mask`): what
    the Sharder splits when it places one seed's ensemble by member."""
    algo, cfg = algorithm.get(ctx.cfg.algo), ctx.cfg
    one_seed = jax.tree_util.tree_map(lambda x: x[0], members)
    return stacking.member_mask(lambda m: algo.to_online(m, cfg), one_seed)


@functools.lru_cache(maxsize=None)
def _add_online(mode: str):
    """The replay mode's `add` for all seeds at once (state donated)."""
    return jax.jit(jax.vmap(make_replay(mode).add), donate_argnums=0)


@functools.lru_cache(maxsize=None)
def _write_mc_returns():
    """All seeds' replays: `mc_returns` written at online slots [S, P] (state donated)."""
    def write(replay, slots, values):
        return replay.replace(online=buffers.store_set(replay.online, mc_returns.KEY, slots,
                                                       values))
    return jax.jit(jax.vmap(write), donate_argnums=0)


@functools.partial(jax.jit, static_argnums=1)
def _per_step_keys(keys: jax.Array, num: int):
    """keys [S, 2] -> `num` device arrays [S, 2]: step t's key of every seed, as
    `split(key_s, num)[t]`."""
    split = _split_each(keys, num)
    return [split[:, t] for t in range(num)]


def finetune(ctx: Context, state, key, start_epoch: int = 0, resume_meta=None,
             offline_return=None):
    """Online phase (spec section 5): per epoch evaluate, collect, train; S seeds at once.
    `offline_return` (the score of the members the offline stage handed over: after a
    method's phase after pretraining where it has one) rides in the checkpoints so that a
    resumed run's summary still reports it."""
    cfg, oc = ctx.cfg, ctx.cfg.online
    step_cfg = step_config(cfg)
    algo = algorithm.get(cfg.algo)
    act, act_eval = seeds_jit(algo.act), seeds_jit(algo.act_eval)
    episode_end = seeds_jit(algo.episode_end) if algo.episode_end is not None else None
    q_auroc = seeds_jit(functools.partial(online.q_auroc, q_fn=algo.q_value))
    env = envs.BatchedEnvs(cfg.env, cfg.num_seeds, 0,
                           seeds=[COLLECT_SEED + s for s in ctx.seeds])
    recent = [[] for _ in ctx.seeds]           # last 10 training-episode returns per seed
    # Methods reading Monte-Carlo returns: each online episode's, written when it ends.
    pending = (mc_returns.PendingEpisodes(cfg.num_seeds, cfg.agent.discount)
               if algo.mc_returns else None)
    if resume_meta is not None:
        env.set_state(resume_meta["env_state"])
        recent = resume_meta["recent_returns"]
        if pending is not None:
            pending = mc_returns.PendingEpisodes(cfg.num_seeds, cfg.agent.discount,
                                                 resume_meta["mc_pending"])
    first = ("it includes the compilation" if start_epoch > 0 or oc.first_epoch_multiplier == 1
             else f"it has {oc.first_epoch_multiplier}x the updates and the compilation")
    progress = Progress("online " + cfg.online.replay, oc.epochs, "epochs", every_s=0.0,
                        initial=start_epoch, first_unit_differs=first)
    eval_seeds = [ONLINE_EVAL_SEED + 1_000 * s for s in ctx.seeds]
    final = None
    for epoch in range(start_epoch, oc.epochs + 1):
        returns = envs.evaluate_seeds(
            lambda o: distributed.to_host(act_eval(state.agent, jnp.asarray(o))), cfg.env,
            oc.eval_episodes, eval_seeds).mean(axis=1)
        final = returns
        if algo.online_start is not None and epoch == 0:   # a fresh phase (not a resume)
            state = state.replace(agent=seeds_jit(algo.online_start)(
                state.agent, jnp.asarray(returns, jnp.float32)))
        base = {"phase": "online", "epoch": epoch, "step": epoch,
                "env_steps": epoch * oc.env_steps_per_epoch}
        extra = {"eval_return": returns,
                 "normalized_score": envs.normalized_score(cfg.env, returns)}
        check_finite(ctx, {"eval_return": returns}, f"the evaluation at online epoch {epoch}")
        if epoch == oc.epochs:   # the final evaluation, after the last epoch's training
            for row in per_seed_rows(base, {}, ctx.seeds, extra):
                ctx.run_dir.log(row)
            break
        # Collect: one batched policy call per env step for all seeds; train after every
        # `chunk` env steps (`online.train_every`; 0: once, after the epoch's collection).
        key, k_collect, k_auc, k_train = split_each(key, 4)
        # The step keys stay on device: one call splits them into the epoch's per-step keys.
        step_keys = _per_step_keys(k_collect, oc.env_steps_per_epoch)
        chunk = train_chunk(oc)
        num_chunks = oc.env_steps_per_epoch // chunk
        train = online.make_train_epoch(oc.updates_per_epoch // num_chunks, step_cfg,
                                        seed_axis=True)
        # The first epoch runs `first_epoch_multiplier` calls after each chunk.
        calls = oc.first_epoch_multiplier if epoch == 0 else 1
        chunk_keys = _per_step_keys(k_train, num_chunks) if num_chunks > 1 else [k_train]
        if pending is not None:   # the replay slot of this epoch's first transition
            first_slot = int(np.asarray(distributed.to_host(
                state.replay.online.insert_pos)).reshape(-1)[0])
            capacity = state.replay.online.capacity
        epoch_new, infos = [], []
        for c in range(num_chunks):
            steps = []
            for t in range(c * chunk, (c + 1) * chunk):
                action = act(state.agent, jnp.asarray(env.obs[:, None]), step_keys[t])
                transition, _ = env.step(distributed.to_host(action)[:, 0])
                steps.append(transition)
                for s in np.flatnonzero(env.episode_length == 0):   # episodes that just ended
                    recent[s] = (recent[s] + [float(env.last_returns[s])])[-10:]
                ended = env.episode_length == 0
                if pending is not None:
                    pending.add((first_slot + t) % capacity, transition["rewards"], ended)
                if episode_end is not None and ended.any():
                    state = state.replace(agent=episode_end(
                        state.agent, jnp.asarray(env.last_returns, jnp.float32),
                        jnp.asarray(env.last_lengths, jnp.float32), jnp.asarray(ended)))
            new = {k: np.stack([t[k] for t in steps], axis=1) for k in TRANSITION_KEYS}
            epoch_new.append(new)
            new = {k: jnp.asarray(v) for k, v in new.items()}
            if pending is not None:
                new[mc_returns.KEY] = jnp.full(new["rewards"].shape, mc_returns.UNKNOWN)
            state = state.replace(replay=_add_online(oc.replay)(state.replay, new))
            writes = (pending.take_writes(pad_slot=2 ** 30, bucket=oc.env_steps_per_epoch)
                      if pending is not None else None)
            if writes is not None:
                state = state.replace(replay=_write_mc_returns()(
                    state.replay, jnp.asarray(writes[0]), jnp.asarray(writes[1])))
            if c == 0 and num_chunks > 1:   # (train donates the state: a copy)
                scorer = jax.tree_util.tree_map(jnp.copy, state.agent)
            if c == num_chunks - 1:
                # The AUROC of Q on all the epoch's new transitions, by the agent as it was
                # before the epoch's first training call.
                auroc = distributed.to_host(q_auroc(
                    state.agent if num_chunks == 1 else scorer,
                    jnp.asarray(np.concatenate([n["observations"] for n in epoch_new], axis=1)),
                    jnp.asarray(np.concatenate([n["actions"] for n in epoch_new], axis=1)),
                    k_auc))
            for k in (split_each(chunk_keys[c], calls) if calls > 1 else [chunk_keys[c]]):
                state, info = train(state, ctx.data, k)
                infos.append(info)
        info = distributed.to_host_tree(
            {k: (infos[0][k] if k.endswith(online.FIRST_BATCH_SUFFIX)   # the epoch's first
                 else functools.reduce(jnp.maximum, [i[k] for i in infos])
                 if k in online.MAX_INFO_KEYS                          # the epoch's largest
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
                           "mc_pending": pending.state() if pending is not None else None,
                           "offline_return": None if offline_return is None
                           else [float(r) for r in offline_return]},
                          extra={"env_state.pkl": pickle.dumps(env.get_state())})
    env.close()
    return state, final
