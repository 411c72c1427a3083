"""Validate an experiment config before any compute; errors name the field and what is allowed."""
from o2o_jax import envs


class ConfigError(ValueError):
    pass


def _get(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _check(cond, field, value, allowed):
    if not cond:
        raise ConfigError(f"config field '{field}' = {value!r} is not allowed: {allowed} "
                          f"(fix it in the config file or with --config.{field}=...)")


def require(cfg, field: str, cond: bool, allowed: str) -> None:
    """ConfigError naming `field`, its value and `allowed` unless `cond` (for the config
    rules of one method, `Algorithm.check`)."""
    _check(cond, field, _get(cfg, field), allowed)


def positive_int(cfg, field):
    v = _get(cfg, field)
    _check(isinstance(v, int) and not isinstance(v, bool) and v > 0, field, v,
           "must be a positive integer")


def non_negative_int(cfg, field):
    v = _get(cfg, field)
    _check(isinstance(v, int) and not isinstance(v, bool) and v >= 0, field, v,
           "must be an integer >= 0")


def positive_float(cfg, field):
    v = _get(cfg, field)
    _check(isinstance(v, (int, float)) and v > 0, field, v, "must be a number > 0")


def non_negative_float(cfg, field):
    v = _get(cfg, field)
    _check(isinstance(v, (int, float)) and v >= 0, field, v, "must be a number >= 0")


def in_range(cfg, field, lo, hi, lo_open=False, hi_open=False):
    v = _get(cfg, field)
    ok = isinstance(v, (int, float)) and (v > lo if lo_open else v >= lo) and (
        v < hi if hi_open else v <= hi)
    _check(ok, field, v, f"must lie in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}")


def one_of(cfg, field, allowed):
    v = _get(cfg, field)
    _check(v in allowed, field, v, f"must be one of {list(allowed)}")


def check_agent(cfg, prefix="agent"):
    positive_int(cfg, f"{prefix}.num_members")
    dims = _get(cfg, f"{prefix}.hidden_dims")
    _check(len(dims) > 0 and all(isinstance(d, int) and d > 0 for d in dims),
           f"{prefix}.hidden_dims", dims, "must be a non-empty list of positive integers")
    from o2o_jax.networks import ACTIVATIONS
    one_of(cfg, f"{prefix}.activation", sorted(ACTIVATIONS))
    for f in ("actor_lr", "critic_lr", "temp_lr", "init_temperature", "cql_lagrange_lr",
              "cql_lagrange_init", "cql_temp"):
        positive_float(cfg, f"{prefix}.{f}")
    in_range(cfg, f"{prefix}.discount", 0.0, 1.0, hi_open=True)
    in_range(cfg, f"{prefix}.tau", 0.0, 1.0, lo_open=True)
    non_negative_float(cfg, f"{prefix}.cql_weight")
    positive_int(cfg, f"{prefix}.cql_n_actions")
    non_negative_int(cfg, f"{prefix}.bc_steps")
    lo, hi = _get(cfg, f"{prefix}.log_std_min"), _get(cfg, f"{prefix}.log_std_max")
    _check(lo < hi, f"{prefix}.log_std_min", lo, f"must be < agent.log_std_max = {hi}")


def check(cfg):
    """Raise ConfigError naming the first bad field of an experiment config."""
    from o2o_jax import algorithm
    one_of(cfg, "env", sorted(envs.ENVS))
    one_of(cfg, "algo", algorithm.names())
    from o2o_jax.data.recipes import KINDS
    one_of(cfg, "dataset.kind", KINDS)
    non_negative_int(cfg, "seed")
    positive_int(cfg, "num_seeds")
    non_negative_int(cfg, "checkpoint.every_offline_steps")
    non_negative_int(cfg, "checkpoint.every_online_epochs")
    positive_int(cfg, "checkpoint.keep")
    positive_int(cfg, "dataset.build_transitions")
    check_agent(cfg)
    non_negative_int(cfg, "offline.steps")
    for f in ("batch_size", "chunk", "eval_interval", "eval_episodes"):
        positive_int(cfg, f"offline.{f}")
    init_from = cfg.offline.get("init_from", "")
    if init_from:
        # With no steps it is still a start: a method's phase after pretraining (e.g.
        # PR-FT's refinement) runs on the members (TD3+BC's, say) as they are.
        post = algorithm.get(cfg.algo).post_offline
        _check(cfg.offline.steps > 0 or (post is not None and _get(cfg, post.steps_field) > 0),
               "offline.init_from", init_from,
               "needs offline.steps > 0 (pretraining goes on from these members)"
               + (f" or {post.steps_field} > 0 (its '{post.label}' phase runs on them)"
                  if post is not None else "")
               + "; to fine-tune them as they are, use online.load_offline_from instead")
        _check(not cfg.get("online", {}).get("load_offline_from", ""), "offline.init_from",
               init_from, "cannot be combined with online.load_offline_from, which skips "
               "pretraining: keep one of the two")
    if "online" in cfg:
        check_online(cfg)
        branch = cfg.online.get("branch_from", "")
        if branch:
            _check(cfg.online.epochs > 0, "online.branch_from", branch,
                   "needs online.epochs > 0 (the branch goes on with the online phase)")
    algo = algorithm.get(cfg.algo)
    if algo.check is not None:
        algo.check(cfg)     # the method's own rules
    if "distributed" in cfg:
        check_distributed(cfg)
    if cfg.get("tensorboard", False):
        try:
            import tensorboard.summary.writer.event_file_writer  # noqa: F401
        except ImportError:
            _check(False, "tensorboard", True, "needs the tensorboard package (pip install "
                   "-e '.[tensorboard]'); or set it False")


def check_train_every(cfg):
    """online.train_every: 0, or a divisor of env_steps_per_epoch that leaves every
    training call the same whole number of updates."""
    oc = cfg.online
    non_negative_int(cfg, "online.train_every")
    every = oc.get("train_every", 0)
    if every:
        require(cfg, "online.train_every", oc.env_steps_per_epoch % every == 0,
                f"must divide online.env_steps_per_epoch = {oc.env_steps_per_epoch} "
                "(0: one training call per epoch)")
        from o2o_jax.online_loop import train_chunk   # the loop's own definition
        calls = oc.env_steps_per_epoch // train_chunk(oc)
        require(cfg, "online.updates_per_epoch", oc.updates_per_epoch % calls == 0,
                f"must be a multiple of the {calls} training calls per epoch that "
                f"online.train_every = {every} makes (env_steps_per_epoch "
                f"{oc.env_steps_per_epoch} / {every}), so every call runs the same number "
                "of updates")


def check_online(cfg):
    non_negative_int(cfg, "online.epochs")
    for f in ("env_steps_per_epoch", "updates_per_epoch", "first_epoch_multiplier",
              "batch_size", "eval_episodes", "fifo_window", "dr_batch_size"):
        positive_int(cfg, f"online.{f}")
    from o2o_jax.replay.modes import REPLAY_MODES
    one_of(cfg, "online.replay", REPLAY_MODES)
    in_range(cfg, "online.offline_ratio", 0.0, 1.0)
    in_range(cfg, "online.seed_fraction", 0.0, 1.0)
    positive_int(cfg, "online.oorb_window")
    in_range(cfg, "online.oorb_online_prob", 0.0, 1.0)
    non_negative_int(cfg, "online.seed_min")
    check_train_every(cfg)
    in_range(cfg, "online.init_online_fraction", 0.0, 1.0, lo_open=True, hi_open=True)
    positive_float(cfg, "online.priority_temperature")
    for f in ("dr_lr", "actor_lr", "critic_lr", "temp_lr"):
        positive_float(cfg, f"online.{f}")
    lam = cfg.online.get("explore_ucb_lambda", 0.0)
    _check(isinstance(lam, (int, float)) and not isinstance(lam, bool) and lam >= 0,
           "online.explore_ucb_lambda", lam, "must be a number >= 0 (0: one sample of pi_E)")
    _check(lam == 0 or cfg.agent.num_members >= 2, "online.explore_ucb_lambda", lam,
           "needs an ensemble (agent.num_members >= 2): it picks among the members' own "
           "samples by their disagreement; set it 0 for one member")
    from o2o_jax import algorithm
    from o2o_jax.agents import ensemble
    _check(lam == 0 or algorithm.get(cfg.algo).act is ensemble.act,
           "online.explore_ucb_lambda", lam,
           f"is read by the ensemble actor-critic's act; algo {cfg.algo!r} acts by its own "
           "rule and would ignore it: set it 0")


def check_distributed(cfg):
    d = cfg.distributed
    positive_int(cfg, "distributed.num_processes")
    non_negative_int(cfg, "distributed.process_id")
    addr = d.coordinator_address
    if addr:
        host, _, port = addr.rpartition(":")
        _check(bool(host) and port.isdigit(), "distributed.coordinator_address", addr,
               "must be 'host:port' of process 0 (e.g. 'node0:12345'), or '' for one "
               "process")
        _check(not d.auto, "distributed.auto", d.auto,
               "must be False when distributed.coordinator_address is given (auto reads "
               "the address from the cluster)")
    else:
        _check(d.num_processes == 1 or d.auto, "distributed.num_processes",
               d.num_processes, "must be 1 without distributed.coordinator_address "
               "(give the address of process 0, or set distributed.auto=True on a cluster)")
    if not d.auto:
        _check(d.process_id < d.num_processes, "distributed.process_id", d.process_id,
               f"must be < distributed.num_processes = {d.num_processes} (0 on the "
               "coordinator's host)")
