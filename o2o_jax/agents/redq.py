"""Randomized ensembled double Q-learning, REDQ (Chen et al. 2021): SAC with `num_qs`
critics, a target min over a random subset of them, and a high update-to-data ratio.

Spec: shared/spec/methods.md B5; source: watchernyu/REDQ (`redq/algos/redq_sac.py`).

On the shared `ActorCritic` (`actor_critic.create(..., num_qs=N, actor_q="mean")`):
* target: y = r + gamma (1 - d) (min_{i in M} Qbar_i(s', a') - alpha log pi(a'|s')),
  a' ~ pi(.|s'), M a random subset of `subset` of the N target critics, redrawn at every
  critic update (`subset_target`);
* critics: all N regress to y (`sac.critic_loss`), Polyak after every critic update;
* actor: E[alpha log pi(a~|s) - mean_i Q_i(s, a~)] and alpha (auto, SAC's loss), once per
  G critic updates, on the last of them, from the pre-update parameters (the code
  computes the policy loss before the critic optimizers step).
UTD G: one call of `update` takes a batch of G x B transitions (`online.batch_size` =
G x the minibatch, set by the preset) and runs G updates on its G minibatches in one
`lax.scan`: G - 1 critic-only updates, then a full SAC update (critics, actor, alpha).

Target entropy (the code: MBPO's): hopper -1, halfcheetah -3, walker2d -3
(`redq.target_entropy` None); other envs -|A| / 2 (ours).

Used from scratch (the preset: no offline phase, online replay only, one agent), with one
call (G updates) after every env step as in the code (the preset's `online.train_every`
= 1, and no extra updates in the first epoch: with the epoch's G x 1000 updates run
after its 1000 env steps, Q diverged at UTD 20, with 2 x 64 and 2 x 256 networks,
RESULTS.md). The code's 5k random-action start steps, before which it does not train,
are not reproduced: training starts after the first env step, on the initial policy's
data.
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections

from o2o_jax.agents import actor_critic as ac
from o2o_jax.agents import sac, stacking

MBPO_TARGET_ENTROPY = {"hopper": -1.0, "halfcheetah": -3.0, "walker2d": -3.0}


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.num_qs = 10                # N critics
    c.subset = 2                 # M: the target's min is over M random target critics
    c.utd = 20                   # G updates per call (online.batch_size = G x minibatch)
    c.target_entropy = ml_collections.config_dict.placeholder(float)   # None: MBPO's
    return c


def subset_target(agent, batch, key: jax.Array, subset: int) -> jax.Array:
    """y [B] ([members, B] for an ensemble agent) with the min over a random subset of
    `subset` target critics (the same subset for every member; no gradient)."""
    k_sub, k_a = jax.random.split(key)
    q, log_p = sac.next_q_values(agent, batch, k_a)
    axis = ac.twin_axis(agent)                   # [N_q, B], or [members, N_q, B]
    idx = jax.random.choice(k_sub, q.shape[axis], (subset,), replace=False)
    return sac.backup(agent, batch, jnp.min(jnp.take(q, idx, axis=axis), axis=axis), log_p)


def critic_step(agent, batch, key: jax.Array, subset: int):
    """One critic update of all N critics and Polyak: (agent, info)."""
    loss_fn = functools.partial(sac.critic_loss, target_fn=functools.partial(
        subset_target, subset=subset))
    (_, info), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        agent.critic.params, agent, batch, key)
    agent = agent.replace(critic=agent.critic.apply_gradients(grads=grads))
    return ac.soft_update(agent), info


def update(agent, batch, key: jax.Array, *, utd: int, subset: int):
    """G = `utd` updates on the G minibatches of `batch` [G x B]: G - 1 critic updates
    (lax.scan), then one SAC update (critics, actor, alpha) on the last minibatch."""
    size = batch["rewards"].shape[0]
    if size % utd:
        raise ValueError(f"REDQ's batch of {size} transitions does not split into "
                         f"redq.utd = {utd} minibatches; set online.batch_size to a multiple")
    minis = jax.tree_util.tree_map(lambda x: x.reshape((utd, size // utd) + x.shape[1:]),
                                   batch)
    keys = jax.random.split(key, utd)
    head = jax.tree_util.tree_map(lambda x: x[:-1], minis)
    last = jax.tree_util.tree_map(lambda x: x[-1], minis)

    def body(a, xs):
        mini, k = xs
        return critic_step(a, mini, k, subset)

    agent, infos = jax.lax.scan(body, agent, (head, keys[:-1]))
    agent, info = sac.update(agent, last, keys[-1], target_fn=functools.partial(
        subset_target, subset=subset))
    return agent, info


@functools.lru_cache(maxsize=None)
def make_update(utd: int = 20, subset: int = 2):
    return functools.partial(update, utd=int(utd), subset=int(subset))


def create_members(key, obs_dim, act_dim, cfg):
    r = cfg.redq
    agent_cfg = cfg.agent.copy_and_resolve_references()
    if agent_cfg.target_entropy is None:
        agent_cfg.target_entropy = (r.target_entropy if r.target_entropy is not None else
                                    MBPO_TARGET_ENTROPY.get(cfg.env, -act_dim / 2.0))
    agent_cfg.backup_entropy = True
    return stacking.create(
        lambda k: ac.create(k, obs_dim, act_dim, agent_cfg, num_qs=int(r.num_qs),
                            actor_q="mean"), key, cfg.agent.num_members)


def _update(cfg):
    return make_update(int(cfg.redq.utd), int(cfg.redq.subset))


def _check(cfg):
    from o2o_jax import config_checks as cc
    cc.positive_int(cfg, "redq.num_qs")
    cc.positive_int(cfg, "redq.utd")
    cc.require(cfg, "redq.subset", 1 <= cfg.redq.subset <= cfg.redq.num_qs,
               f"must lie in [1, redq.num_qs = {cfg.redq.num_qs}]")
    cc.require(cfg, "agent.num_members", cfg.agent.num_members == 1,
               "must be 1 for algo 'redq' (its ensemble is the redq.num_qs critics)")
    cc.require(cfg, "online.batch_size", cfg.online.batch_size % cfg.redq.utd == 0,
               f"must be a multiple of redq.utd = {cfg.redq.utd} (one call runs redq.utd "
               "updates on its minibatches)")
    if cfg.offline.steps > 0:
        cc.require(cfg, "offline.batch_size", cfg.offline.batch_size % cfg.redq.utd == 0,
                   f"must be a multiple of redq.utd = {cfg.redq.utd}")


def _register():
    from o2o_jax import algorithm
    from o2o_jax.agents import ensemble
    algorithm.register(algorithm.Algorithm(
        name="redq", summary="REDQ: SAC with N critics, a target min over a random subset, "
                             "UTD G in one scanned call",
        create_members=create_members, offline_update=_update, to_online=ensemble.to_online,
        online_update=_update, act=ensemble.act, act_eval=ensemble.act_eval,
        q_value=ensemble.q_ens, members_act_eval=ensemble.members_policy_ensemble,
        config_section=("redq", default_config),
        preset={"offline.steps": 0, "online.replay": "online_only", "agent.num_members": 1,
                "online.batch_size": 256 * 20, "online.backup_entropy": True,
                "online.train_every": 1, "online.first_epoch_multiplier": 1},
        check=_check))


_register()
