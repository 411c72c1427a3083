"""E2O / ENOTO, ensemble-based offline-to-online RL: the Q-ensemble's own pessimism replaces
CQL's online, then a looser target and optimistic ensemble exploration.

Spec: shared/spec/methods.md C2 (paper notes; code not located: constants marked "ours"
are config fields).

* Offline, CQL-N: one agent with N = `e2o.num_qs` critics (10), the CQL penalty on each,
  the target's and the actor's Q the min over all N (`cql.create(..., num_qs=N)`).
* Online, SAC-N without the CQL term, with
  - the WeightedMinPair target: the mean over all pairs {i, j} of min(Qbar_i, Qbar_j) at
    (s', a'), in closed form the N values sorted ascending with the k-th smallest weighted
    (N - k) / C(N, 2) (`pair_min`), minus alpha log pi(a'|s');
  - SUNRISE's Bellman weights on each TD error, w = sigmoid(-T std_i Qbar_i(s', a')) + 0.5
    (T = `bellman_temperature`, ours 10);
  - SUNRISE's UCB acting: K = `ucb_candidates` (ours 10) samples of pi, the one with the
    largest mean_i Q_i + lambda std_i Q_i (online critics, lambda = `ucb_lambda`, ours 1).
  The actor keeps SAC-N's min over the N critics (the spec names no other).
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections
from flax import struct

from o2o_jax import distributions as dist
from o2o_jax.agents import actor_critic as ac
from o2o_jax.agents import cql, ensemble, sac, stacking
from o2o_jax.agents.actor_critic import ActorCritic


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.num_qs = 10                # N critics (CQL-N / SAC-N)
    c.ucb_candidates = 10        # K (ours)
    c.ucb_lambda = 1.0           # lambda (ours)
    c.bellman_temperature = 10.0  # T (ours)
    return c


class E2O(struct.PyTreeNode):
    """The online agent: the ensemble actor-critic and E2O's static knobs."""
    ac: ActorCritic
    ucb_candidates: int = struct.field(pytree_node=False, default=10)
    ucb_lambda: float = struct.field(pytree_node=False, default=1.0)
    bellman_temperature: float = struct.field(pytree_node=False, default=10.0)


def pair_min_weights(n: int) -> jax.Array:
    """Weights of the ascending-sorted values: (n - k) / C(n, 2), k = 1..n (sum 1)."""
    return (n - jnp.arange(1, n + 1, dtype=jnp.float32)) / (n * (n - 1) / 2.0)


def pair_min(q: jax.Array, axis: int) -> jax.Array:
    """The mean over all pairs {i, j} of min(q_i, q_j) along `axis`."""
    q = jnp.sort(jnp.moveaxis(q, axis, 0), axis=0)
    w = pair_min_weights(q.shape[0]).reshape((q.shape[0],) + (1,) * (q.ndim - 1))
    return jnp.sum(q * w, axis=0)


def loose_target(agent: ActorCritic, batch, key, temperature: float):
    """(y, w): the WeightedMinPair backup and SUNRISE's Bellman weights (no gradient)."""
    q, log_p = sac.next_q_values(agent, batch, key)
    axis = ac.twin_axis(agent)
    y = sac.backup(agent, batch, pair_min(q, axis), log_p)
    w = jax.nn.sigmoid(-temperature * jnp.std(q, axis=axis)) + 0.5
    return y, jax.lax.stop_gradient(w)


@functools.lru_cache(maxsize=None)
def _online_update(temperature: float):
    target = functools.partial(loose_target, temperature=float(temperature))

    def update(state: E2O, batch, key):
        new_ac, info = sac.update(state.ac, batch, key, target_fn=target)
        return state.replace(ac=new_ac), info
    return update


def ucb_act(state: E2O, observations, key):
    """argmax over K samples a_k ~ pi(.|s) of mean_i Q_i(s, a_k) + lambda std_i Q_i."""
    agent = state.ac
    mean, log_std = ac.policy(agent, agent.actor.params, observations)
    cands, _ = dist.sample(key, mean, log_std, (state.ucb_candidates,))      # [K, *b, A]
    obs_k = jnp.broadcast_to(observations, cands.shape[:-1] + observations.shape[-1:])
    q = ac.q_values(agent, agent.critic.params, obs_k, cands)              # [.., Nq, K, *b]
    q = q.reshape((-1,) + q.shape[-(observations.ndim):])                  # [M Nq, K, *b]
    score = jnp.mean(q, 0) + state.ucb_lambda * jnp.std(q, 0)              # [K, *b]
    best = jnp.argmax(score, axis=0)                                       # [*b]
    return jnp.take_along_axis(cands, best[None, ..., None], axis=0)[0]


def act_eval(state: E2O, observations):
    return ac.act(state.ac, observations)


def q_value(state: E2O, observations, actions):
    return ensemble.q_ens(state.ac, observations, actions)


def _members(key, obs_dim, act_dim, cfg):
    return stacking.create(lambda k: cql.create(k, obs_dim, act_dim, cfg.agent,
                                                num_qs=int(cfg.e2o.num_qs)),
                           key, cfg.agent.num_members)


def _to_online(members, cfg) -> E2O:
    e = cfg.e2o
    return E2O(ac=cql.to_ensemble_agent(members, cfg), ucb_candidates=int(e.ucb_candidates),
               ucb_lambda=float(e.ucb_lambda),
               bellman_temperature=float(e.bellman_temperature))


def _check(cfg):
    from o2o_jax import config_checks as cc
    from o2o_jax.agents import off2on
    cc.require(cfg, "e2o.num_qs", isinstance(cfg.e2o.num_qs, int) and cfg.e2o.num_qs >= 2,
               "must be an integer >= 2 (pairs of critics)")
    cc.positive_int(cfg, "e2o.ucb_candidates")
    cc.non_negative_float(cfg, "e2o.ucb_lambda")
    cc.non_negative_float(cfg, "e2o.bellman_temperature")
    off2on.check_sac_online(cfg)


def _register():
    from o2o_jax import algorithm
    algorithm.register(algorithm.Algorithm(
        name="e2o", summary="E2O: CQL-N offline; online SAC-N with the WeightedMinPair "
                            "target, SUNRISE Bellman weights and UCB acting",
        create_members=_members, offline_update=lambda cfg: cql.update,
        to_online=_to_online,
        online_update=lambda cfg: _online_update(float(cfg.e2o.bellman_temperature)),
        act=ucb_act, act_eval=act_eval, q_value=q_value,
        members_act_eval=cql.members_act_eval, config_section=("e2o", default_config),
        preset={"agent.num_members": 1, "online.replay": "uniform"}, check=_check))


_register()
