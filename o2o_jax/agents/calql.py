"""Calibrated Q-learning, Cal-QL (Nakamoto et al. 2023): CQL whose push-down is floored
by the Monte-Carlo return of the data, so that Q stays conservative but never below a
real policy's value.

Spec: shared/spec/methods.md A2; source: nakamotoo/Cal-QL (JaxCQL fork,
`JaxCQL/conservative_sac.py`).

Per critic j, CQL(H) (`agents/cql.py`) with two changes:
* the penalty's 2n *policy* samples (from pi(.|s) and pi(.|s'), scored at s) enter the
  logsumexp as max(Q_j(s, a_pi), V^mu(s)) - log pi; the n uniform samples are not floored.
  V^mu is the transition's discounted return-to-go (`batch["mc_returns"]`,
  `o2o_jax/mc_returns.py`: offline from the dataset with the tail after a truncation cut
  off; online written when the episode ends, -inf until then, which floors nothing).
  Info `cql_floor_rate` is the bound rate (share of policy samples lifted);
* the max-target backup: a'_k ~ pi(.|s'), k = 1..`backup_samples`, and
  y = r + gamma (1 - d) max_k min_j Qbar_j(s', a'_k), without an entropy term.
The actor and alpha are SAC's with target entropy -|A|, as in CQL.

Online (the code): the same update with the penalty kept at `online.cql_weight` (preset
5, the offline weight), the same agent continued (its alpha value and the actor's and
critics' Adam states kept: preset `online.reset_temperature` and `online.fresh_optimizers`
False; alpha's own optimizer starts fresh; policy lr 1e-4, Q lr
3e-4), every batch half offline, half online (`online.replay = "mixed"`, the scripts'
`mixing_ratio` 0.5).

Where we differ (documented, no knob): the code initialises networks orthogonally and
offsets the policy's log-std by -1; our CQL networks are used as they are. The code
collects one whole trajectory per epoch and then updates; our loop's epochs are
`online.env_steps_per_epoch` env steps, and an online transition's floor is unknown
(-inf) until its episode ends.

Locomotion defaults are ours (the paper has none): CQL's (w 5, 2x256, no reward shaping).
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections

from o2o_jax import distributions as dist
from o2o_jax import mc_returns
from o2o_jax.agents import actor_critic as ac
from o2o_jax.agents import cql


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.backup_samples = 10        # a'_k of the max-target backup (the code: 10)
    return c


def max_target(agent, batch, key: jax.Array, n: int) -> jax.Array:
    """y = r + gamma (1 - d) max_k min_j Qbar_j(s', a'_k), a'_k ~ pi(.|s'): [B] (single)
    or [N, B] (ensemble, a'_k from pi_E shared by the members). No gradient."""
    next_obs = batch["next_observations"]
    mean, log_std = ac.policy(agent, agent.actor.params, next_obs)
    actions, _ = dist.sample(key, mean, log_std, (n,))                 # [n, B, A]
    obs_n = jnp.broadcast_to(next_obs[None], (n,) + next_obs.shape)
    q = ac.member_twin_min(agent, ac.q_values(agent, agent.target_critic_params, obs_n,
                                              actions))                # [.., n, B]
    y = batch["rewards"] + agent.discount * (1.0 - batch["dones"]) * jnp.max(q, axis=-2)
    return jax.lax.stop_gradient(y)


@functools.lru_cache(maxsize=None)
def make_update(backup_samples: int = 10):
    """`update(state, batch, key) -> (state, info)`: CQL with the floor and the max-target
    backup. Cached: the same knobs give the same function object."""
    if backup_samples < 1:
        raise ValueError(f"calql.backup_samples must be >= 1, got {backup_samples}")
    return functools.partial(cql.update, floor_key=mc_returns.KEY,
                             target_fn=functools.partial(max_target, n=int(backup_samples)))


def _update(cfg):
    return make_update(int(cfg.calql.backup_samples))


def _check(cfg):
    from o2o_jax import config_checks as cc
    cc.positive_int(cfg, "calql.backup_samples")
    cc.require(cfg, "agent.cql_weight", float(cfg.agent.cql_weight) > 0,
               "must be > 0 for algo 'calql' (its calibration floors the CQL penalty)")


def _register():
    from o2o_jax import algorithm
    algorithm.register(algorithm.Algorithm(
        name="calql", summary="Cal-QL: CQL with the policy samples' Q floored by the "
                              "Monte-Carlo return, max-target backup, kept online",
        create_members=cql.members_from_config, offline_update=_update,
        to_online=cql.to_online_penalized, online_update=_update, act=cql.act,
        act_eval=cql.act_eval, q_value=cql.q_ens, members_act_eval=cql.members_act_eval,
        mc_returns=True, config_section=("calql", default_config),
        preset={"agent.num_members": 1, "online.replay": "mixed",
                "online.offline_ratio": 0.5, "online.cql_weight": 5.0,
                "online.reset_temperature": False, "online.fresh_optimizers": False,
                "online.actor_lr": 1e-4, "online.temp_lr": 1e-4, "online.critic_lr": 3e-4},
        check=_check, progress_keys=("critic_loss", "q_data", "cql_floor_rate")))


_register()
