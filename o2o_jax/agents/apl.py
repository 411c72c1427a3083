"""APL, adaptive policy learning (Zheng et al. 2023): one update rule whose offline
constraint is switched per sample by where the data come from, GCQL variant.

Spec: shared/spec/methods.md C3 (the seed's slides; code not located: the constants
marked "ours" are config fields).

  C_{k+1} <- F(A(C_k) + W(s, a) B(C_k))

* Replay, OORB (`online.replay = "oorb"`, `replay/modes.py`): an online buffer of the
  newest `online.oorb_window` online transitions (ours: 20k) and an offline buffer of the
  dataset plus the online transitions that aged out of it; each RL batch comes wholly from
  the online buffer with probability `online.oorb_online_prob` (ours: 0.5), else from the
  offline buffer, and carries W (`batch["w"]`): 0 from the online buffer, 1 from the
  offline one.
* GCQL: A is each ensemble member's Bellman error (the ensemble SAC critic loss of
  Off2OnRL's online agent), B the CQL(H) penalty (`agents/cql.py`) at
  `online.cql_weight` (CQL's locomotion 5, ours), applied to the W = 1 samples only:
  the penalty of a batch is multiplied by mean_b W_b (exact, since W is constant within
  a batch). Offline: N CQL members, as Off2OnRL.
* GCTD3BC (`apl_td3bc`): the TD3+BC of `agents/td3.py` (offline as TD3+BC), whose online
  actor's BC term is multiplied by mean_b W (`TD3.gate_bc`): on online-buffer batches
  the actor loss is -lambda mean Q1 alone (lambda = alpha / mean|Q1|, TD3's direction at
  another scale), on offline-buffer ones TD3+BC's.
"""
import functools

import jax.numpy as jnp

from o2o_jax.agents import cql, sac

W_KEY = "w"


def gated_penalty(state, agent, critic_params, batch, key, q_data):
    """CQL's penalty times the batch's mean W (0 for online-buffer batches)."""
    penalty, info = cql.penalty(state, agent, critic_params, batch, key, q_data)
    w = jnp.mean(batch[W_KEY])
    info = {**info, "cql_penalty": info["cql_penalty"] * w, "apl_w": w}
    return penalty * w, info


def update(state: cql.CQL, batch, key):
    """One GCQL step on the online agent (the ensemble actor-critic in a CQL state)."""
    new_ac, info = sac.update(state.ac, batch, key,
                              penalty_fn=functools.partial(gated_penalty, state))
    info.pop("cql_gap_per_q", None)
    return state.replace(ac=new_ac), info


def _check(cfg):
    from o2o_jax import config_checks as cc
    cc.require(cfg, "online.replay", cfg.online.replay == "oorb",
               "must be 'oorb' for algo 'apl' (its constraint switch W comes from the "
               "online/offline buffer of each batch)")
    cc.require(cfg, "online.cql_weight", float(cfg.online.cql_weight) > 0,
               "must be > 0 for algo 'apl' (the constraint of its offline-buffer batches)")
    cc.require(cfg, "agent.cql_lagrange", not cfg.agent.cql_lagrange,
               "must be False for algo 'apl' (GCQL gates the fixed-weight penalty)")


def _check_td3bc(cfg):
    from o2o_jax import config_checks as cc
    from o2o_jax.agents import td3
    cc.require(cfg, "online.replay", cfg.online.replay == "oorb",
               "must be 'oorb' for algo 'apl_td3bc' (its BC switch W comes from the "
               "online/offline buffer of each batch)")
    td3.check_config(cfg)


def _register():
    from o2o_jax import algorithm
    algorithm.register(algorithm.Algorithm(
        name="apl", summary="APL (GCQL): CQL members; online the ensemble SAC loss, plus "
                            "the CQL penalty on batches from the offline buffer (OORB)",
        create_members=cql.members_from_config, offline_update=lambda cfg: cql.update,
        to_online=cql.to_online_penalized, online_update=lambda cfg: update,
        act=cql.act, act_eval=cql.act_eval, q_value=cql.q_ens,
        members_act_eval=cql.members_act_eval,
        preset={"online.replay": "oorb", "online.cql_weight": 5.0}, check=_check))
    from o2o_jax.agents import td3
    algorithm.register(algorithm.Algorithm(
        name="apl_td3bc", summary="APL (GCTD3BC): TD3+BC offline; online its BC term only "
                                  "on batches from the offline buffer (OORB)",
        create_members=functools.partial(td3.members_from_config, objective="td3_bc"),
        offline_update=lambda cfg: td3.update,
        to_online=lambda members, cfg: members.replace(gate_bc=True),
        online_update=lambda cfg: td3.members_update, act=td3.act, act_eval=td3.act_eval,
        q_value=td3.q_ens, members_act_eval=td3.act_eval, from_data=td3.with_normalizer,
        preset={"agent.num_members": 1, "online.replay": "oorb"}, check=_check_td3bc,
        progress_keys=("critic_loss", "q_data", "actor_loss")))


_register()
