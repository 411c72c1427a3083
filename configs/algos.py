"""The paper's setting of each method (spec section 6), as config overrides.

`apply(c, name)` sets `c.algo` and the fields the paper uses for that method; anything
can still be overridden on the command line afterwards. Used by the `:name` variants of
the task configs, e.g. `--config=configs/hopper_medium.py:quick,sac_ft`.
"""

PRESETS = {
    # The method: N = 5 CQL members, balanced replay, ensemble SAC online.
    "off2on": {},
    # SAC from scratch: no offline pretraining, no offline data in the replay.
    "sac": {"offline.steps": 0, "online.replay": "online_only", "agent.num_members": 1},
    # CQL-pretrained single agent, plain SAC online, uniform replay over offline + online.
    "sac_ft": {"agent.num_members": 1, "online.replay": "uniform"},
    # CQL kept online (alpha_cql as offline unless overridden), with the N-ensemble.
    "cql_ft": {"online.replay": "uniform", "online.cql_weight": 5.0,
               "online.backup_entropy": False},
    # AWAC offline and online (same objective), online data appended.
    "awac": {"online.replay": "uniform", "online.backup_entropy": False,
             "agent.backup_entropy": False, "agent.bc_steps": 0},
    # BCQ offline and online, online data appended.
    "bcq_ft": {"online.replay": "uniform"},
    # Ablation: FQE-initialised (non-pessimistic) critics instead of CQL's.
    "fqe_init": {},
}


def apply(c, name: str):
    if name not in PRESETS:
        raise ValueError(f"unknown method {name!r}; allowed: {sorted(PRESETS)}")
    c.algo = name
    for dotted, value in PRESETS[name].items():
        node = c
        *path, last = dotted.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c
