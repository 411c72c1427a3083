"""Off2OnRL (Lee et al., CoRL 2021), the method this project is built around.

Offline: N independent CQL members (`agents/cql.py`). Online: the members become one
ensemble agent (`ensemble.to_online`: moment-matched policy pi_E of paper eq. 5, each member
bootstrapping from its own targets, Q_ens = mean of the members' twin minima) trained with
SAC (`agents/sac.py`) on balanced replay (`online.replay = "balanced"`, the density-ratio
prioritized buffer of `o2o_jax/replay/` and `density_ratio.py`). The reference behaviour is
written out in shared/spec/off2on.md.
"""
from o2o_jax import algorithm, config_checks
from o2o_jax.agents import cql, ensemble, sac


def check_sac_online(cfg) -> None:
    """Methods that fine-tune with plain SAC: a CQL weight online would be silently
    unused (the CQL penalty online is algo cql_ft)."""
    if "online" in cfg:
        config_checks.require(
            cfg, "online.cql_weight", float(cfg.online.cql_weight) == 0.0,
            f"must be 0 for algo {cfg.algo!r}, which fine-tunes with SAC; keep the CQL "
            "penalty online with --config.algo=cql_ft")


def _cql(cfg):
    return cql.update


def _sac(cfg):
    return sac.update


OFF2ON = algorithm.register(algorithm.Algorithm(
    name="off2on",
    summary="N CQL members; online, the moment-matched ensemble with SAC on balanced replay",
    create_members=cql.members_from_config,
    offline_update=_cql,
    to_online=cql.to_ensemble_agent,
    online_update=_sac,
    act=ensemble.act,
    act_eval=ensemble.act_eval,
    q_value=ensemble.q_ens,
    members_act_eval=cql.members_act_eval,
    preset={},            # the base config is the method's paper setting
    check=check_sac_online,
))
