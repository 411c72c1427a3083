"""SAC-ft (the paper's baseline): one CQL-pretrained agent fine-tuned with plain SAC (no
CQL penalty online) on uniform replay over offline + online data. Its losses are CQL's
(`agents/cql.py`) offline and SAC's (`agents/sac.py`) online; this file is its
registration."""
from o2o_jax import algorithm
from o2o_jax.agents import cql, ensemble, off2on, sac


def _cql(cfg):
    return cql.update


def _sac(cfg):
    return sac.update


SAC_FT = algorithm.register(algorithm.Algorithm(
    name="sac_ft", summary="SAC-ft: one CQL-pretrained agent, plain SAC online on uniform "
                           "replay over offline + online data",
    create_members=cql.members_from_config, offline_update=_cql,
    to_online=cql.to_ensemble_agent, online_update=_sac, act=ensemble.act,
    act_eval=ensemble.act_eval, q_value=ensemble.q_ens,
    members_act_eval=cql.members_act_eval,
    preset={"agent.num_members": 1, "online.replay": "uniform"},
    check=off2on.check_sac_online))
