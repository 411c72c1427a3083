"""Which pieces each `cfg.algo` uses: the only place that maps algorithm names to code.

An algorithm is its losses (in `o2o_jax/agents/`); this table says how the shared
pipeline builds members, pretrains them, hands them over to the online phase, updates
online, acts and scores Q for the AUROC analysis.

| algo      | offline              | online update                 |
|-----------|----------------------|-------------------------------|
| off2on    | CQL (N members)      | ensemble SAC (the method)     |
| sac       | none                 | SAC                           |
| sac_ft    | CQL                  | SAC                           |
| cql_ft    | CQL                  | CQL kept online               |
| awac      | AWAC                 | AWAC                          |
| bcq_ft    | BCQ                  | BCQ                           |
| fqe_init  | CQL, then FQE critics| ensemble SAC                  |

Replay mode and ensemble size are separate config fields; `configs/algos.py` holds the
paper's settings of each baseline (e.g. SAC-ft: N = 1, uniform replay).
"""
import dataclasses
import functools
from typing import Callable

import jax

from o2o_jax.agents import actor_critic as ac
from o2o_jax.agents import awac, bcq, cql, ensemble, sac

ALGOS = ("off2on", "sac", "sac_ft", "cql_ft", "awac", "bcq_ft", "fqe_init")


@dataclasses.dataclass(frozen=True)
class Algo:
    name: str
    create_members: Callable      # (key, obs_dim, act_dim, cfg) -> N stacked members
    offline_update: Callable      # (member, batch, key) -> (member, info)
    online_update: Callable       # (online agent, batch, key) -> (agent, info)
    to_online: Callable           # (members, cfg) -> online agent
    act: Callable                 # (online agent, obs, key) -> sampled action
    act_eval: Callable            # (online agent, obs) -> evaluation action
    q_value: Callable             # (online agent, obs, act) -> Q for the AUROC analysis
    members_act_eval: Callable    # (offline members, obs) -> evaluation action


def _ac_members(key, obs_dim, act_dim, cfg):
    return ensemble.create_members(key, obs_dim, act_dim, cfg.agent, cfg.agent.num_members)


def _ac_to_online(members, cfg, backup_entropy=None):
    oc = cfg.online
    return ensemble.to_ensemble(
        members, reset_temperature=oc.reset_temperature, init_temperature=oc.init_temperature,
        fresh_optimizers=oc.fresh_optimizers, **ensemble.online_lrs(oc),
        cql_weight=float(oc.cql_weight),
        backup_entropy=bool(oc.backup_entropy if backup_entropy is None else backup_entropy),
        bc_steps=0)


def _ac_act(agent, obs, key):
    return ac.act(agent, obs, key)


def _ac_act_eval(agent, obs):
    return ac.act(agent, obs)


def _bcq_eval(members, obs):
    # BCQ has no deterministic mode: a fixed key makes evaluation reproducible.
    return bcq.ensemble_act(members, obs, jax.random.PRNGKey(0))


def _sac_online(agent, batch, key):
    return sac.update(agent, batch, key)


@functools.lru_cache(maxsize=None)
def _get(name: str, awac_lambda: float, awac_max_weight: float, awac_n_samples: int) -> Algo:
    common = dict(create_members=_ac_members, to_online=_ac_to_online, act=_ac_act,
                  act_eval=_ac_act_eval, q_value=ensemble.q_ens,
                  members_act_eval=ensemble.members_policy_ensemble)
    if name in ("off2on", "sac", "sac_ft", "fqe_init"):
        return Algo(name, offline_update=cql.update, online_update=_sac_online, **common)
    if name == "cql_ft":
        return Algo(name, offline_update=cql.update, online_update=cql.update, **common)
    if name == "awac":
        update = awac.make_update(awac_lambda, awac_max_weight, awac_n_samples)
        return Algo(name, offline_update=update, online_update=update,
                    **{**common, "to_online": functools.partial(_ac_to_online,
                                                                backup_entropy=False)})
    if name == "bcq_ft":
        return Algo(name,
                    create_members=lambda key, o, a, cfg: bcq.create_members(
                        key, o, a, cfg.bcq, cfg.agent.num_members),
                    offline_update=bcq.update, online_update=bcq.members_update,
                    to_online=lambda members, cfg: members,
                    act=bcq.ensemble_act, act_eval=_bcq_eval, q_value=bcq.q_ens,
                    members_act_eval=_bcq_eval)
    raise ValueError(f"unknown algo {name!r}; allowed: {ALGOS}")


def get(cfg) -> Algo:
    a = cfg.awac
    return _get(cfg.algo, float(a.awac_lambda), float(a.max_weight), int(a.n_samples))

