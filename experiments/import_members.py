"""Import CQL members pretrained by the Off2OnRL authors' rlkit code as a members checkpoint.

    pip install -e ".[reference]"        # torch (CPU build) to read the .pt files
    python -m experiments.import_members --source=<folder> --env=halfcheetah --out=<dir>
    python -m experiments.train --config=configs/halfcheetah_medium.py:reference \\
        --config.online.load_offline_from=<dir>

`<folder>` holds one `<name>_seed<k>/` folder per member with `{actor,critic1,critic2}_<steps>.pt`
(see o2o_jax/rlkit_import.py). The networks are checked against `--config` (default: the
env's task config with the `reference` variant: N = 5, 2 x 256). `--members=0` takes a subset
(e.g. the N = 1 control; set --config.agent.num_members to match). The checkpoint holds one
seed's members; a run with num_seeds = S gives them to every seed. With --eval_episodes > 0
the imported ensemble policy and member 0 are rolled out deterministically first.
"""
import json
import os
import sys

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from o2o_jax import envs  # noqa: E402

_SOURCE = flags.DEFINE_string("source", None, "Folder of <name>_seed<k>/ member folders.")
_ENV = flags.DEFINE_enum("env", None, sorted(envs.ENVS), "Environment the members act in.")
_OUT = flags.DEFINE_string("out", None, "Output folder (a members checkpoint).")
_MEMBERS = flags.DEFINE_list("members", None, "Indices of the members to take, in seed "
                             "order (default: all).")
_STEPS = flags.DEFINE_integer("steps", None, "The <steps> of the file names (default: the "
                              "largest every member has).")
_EVAL = flags.DEFINE_integer("eval_episodes", 3, "Deterministic evaluation episodes of the "
                             "imported policies (0: none).")
_FORCE = flags.DEFINE_boolean("force", False, "Replace an existing --out checkpoint.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config whose networks the files must fit (default: "
    "configs/<env>_medium.py:reference).", lock_config=False)


def fail(msg: str):
    print(f"import_members: {msg}", file=sys.stderr)
    sys.exit(2)


def main(argv):
    del argv
    from absl import logging
    logging.set_verbosity(logging.WARNING)   # orbax logs every save at INFO
    import jax
    import numpy as np
    from configs import variants
    from o2o_jax import algorithm, checkpoints, offline_loop, rlkit_import

    for name, flag in (("--source", _SOURCE), ("--env", _ENV), ("--out", _OUT)):
        if flag.value is None:
            fail(f"{name} is required (see --help)")
    cfg = _CONFIG.value
    if cfg is None:
        cfg = variants.task(_ENV.value, "medium", "reference")
    elif cfg.env != _ENV.value:
        fail(f"--env={_ENV.value} but the config's env is {cfg.env!r}; make them agree")
    ids = None if _MEMBERS.value is None else [int(i) for i in _MEMBERS.value]
    if ids is not None:
        cfg.agent.num_members = len(ids)
    if os.path.exists(os.path.join(_OUT.value, "meta.json")) and not _FORCE.value:
        fail(f"{_OUT.value!r} already holds a checkpoint; pass --force to replace it")
    obs_dim, act_dim = envs.env_dims(cfg.env)
    try:
        rlkit_import.check_config(cfg.agent)
        fresh = algorithm.get(cfg.algo).create_members(jax.random.PRNGKey(cfg.seed), obs_dim, act_dim,
                                              cfg)
        members, provenance = rlkit_import.import_members(
            _SOURCE.value, fresh, obs_dim, act_dim, tuple(cfg.agent.hidden_dims), ids,
            _STEPS.value)
    except rlkit_import.MemberFileError as e:
        fail(str(e))
    print(f"read {len(provenance['member_seeds'])} members (seeds "
          f"{provenance['member_seeds']}, step {provenance['steps']:,}) from {_SOURCE.value}")
    cfg.num_seeds = 1
    meta = {**checkpoints.members_meta(cfg, obs_dim, act_dim), "imported": provenance}
    seeded = jax.tree_util.tree_map(lambda x: x[None], members)   # one seed
    checkpoints.save(_OUT.value, seeded, meta)
    print(f"wrote {_OUT.value} (fine-tune with --config.online.load_offline_from="
          f"{_OUT.value} and agent.num_members={cfg.agent.num_members})")
    if _EVAL.value > 0:
        policy = jax.jit(algorithm.get(cfg.algo).members_act_eval)
        first = jax.tree_util.tree_map(lambda x: x[:1], members)
        results = {}
        for label, m in (("ensemble (mean-action moment-matched policy)", members),
                         ("member 0", first)):
            r = envs.evaluate(lambda o, m=m: np.asarray(policy(m, o)), cfg.env, _EVAL.value,
                              seed=offline_loop.OFFLINE_EVAL_SEED)
            results[label] = [float(x) for x in r]
            print(f"{label}: returns {np.round(r, 1).tolist()}, mean {np.mean(r):.1f} "
                  f"(normalised {float(envs.normalized_score(cfg.env, np.mean(r))):.1f})")
        with open(os.path.join(_OUT.value, "import_eval.json"), "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    from experiments import cli
    cli.run(main, "import_members")
