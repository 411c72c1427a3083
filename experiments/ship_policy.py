"""Copy a behaviour policy of our dataset recipe into the package, with its provenance, so
that fresh machines roll datasets out from it instead of training SAC (issue 14).

    python -m experiments.make_dataset --env=hopper --kind=expert     # trains medium, expert
    python -m experiments.ship_policy --env=hopper --role=medium
    python -m experiments.ship_policy --env=hopper --role=expert

Reads <Minari root>/o2o/<env>/policies/sac-seed0/<role>.{msgpack,json} (seed 0: the
shipped lineage) and writes o2o_jax/data/policies/<env>/<role>.{msgpack,json}: the actor
parameters and the build's record (SAC env steps, stochastic and deterministic evaluation
returns, target, agent config) plus the command that made it, the library versions, the
machine and the date. The actor of a 2x256 policy is ~300 KB.
"""
import datetime
import importlib.metadata
import json
import shutil

from absl import app, flags

from o2o_jax import envs
from o2o_jax.data import recipes

LIBRARIES = ("jax", "flax", "optax", "gymnasium", "mujoco", "minari", "numpy")


def versions():
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            out[lib] = None
    return out


def ship(env_name: str, role: str, dest_dir=None):
    """Copy the seed-0 `role` policy of `env_name` into `dest_dir` (default: the
    package's shipped folder); returns the written json's path."""
    src = recipes.policy_dir(env_name, 0) / role
    if not src.with_suffix(".json").exists():
        raise app.UsageError(
            f"no {role} policy of {env_name} at {src}.json: build it first with "
            f"{recipes.build_command(env_name, role)} (seed 0, default budget)")
    dest = (dest_dir or recipes.SHIPPED_DIR) / env_name
    dest.mkdir(parents=True, exist_ok=True)
    info = json.loads(src.with_suffix(".json").read_text())
    info.update({"command": recipes.build_command(env_name, role), "library_versions":
                 versions(), "machine": recipes.machine(),
                 "shipped_on": datetime.date.today().isoformat()})
    info.pop("file", None)
    shutil.copyfile(src.with_suffix(".msgpack"), (dest / role).with_suffix(".msgpack"))
    out = (dest / role).with_suffix(".json")
    out.write_text(json.dumps(info, indent=1))
    return out


def main(argv):
    del argv
    out = ship(flags.FLAGS.env, flags.FLAGS.role)
    print(f"shipped {out} (and its .msgpack); commit both")


if __name__ == "__main__":
    # Defined here, not at import: `env` is also make_dataset's flag (one process may
    # import both, as the tests do).
    flags.DEFINE_enum("env", "hopper", sorted(envs.ENVS), "Environment.")
    flags.DEFINE_enum("role", "medium", ["medium", "expert"], "Which policy.")
    from experiments import cli
    cli.run(main, "ship_policy")
