"""Bad config values stop a run before any compute, naming the field and what is allowed."""
import os

import pytest

from configs import hopper_medium
from o2o_jax import algorithm, config_checks, pipeline
from o2o_jax.config_checks import ConfigError


@pytest.mark.parametrize("variant", ["", "quick"] + algorithm.names()
                         + [f"quick,{m}" for m in algorithm.names()])
def test_shipped_configs_pass(variant):
    config_checks.check(hopper_medium.get_config(variant))


@pytest.mark.parametrize("task", ["hopper_medium", "halfcheetah_medium", "walker2d_medium"])
@pytest.mark.parametrize("variant", ["", "quick", "quick,sac_ft"])
def test_every_task_config_passes_and_names_its_env(task, variant):
    import importlib
    c = importlib.import_module(f"configs.{task}").get_config(variant)
    config_checks.check(c)
    assert (c.env, c.dataset.kind) == tuple(task.split("_"))


BAD = [
    ("env", "pong", "must be one of"),
    ("algo", "dqn", "must be one of"),
    ("dataset.kind", "expert-replay", "must be one of"),
    ("agent.num_members", 0, "positive integer"),
    ("agent.hidden_dims", (64, -1), "positive integers"),
    ("agent.discount", 1.0, r"must lie in \[0.0, 1.0\)"),
    ("agent.log_std_min", 5.0, "must be < agent.log_std_max"),
    ("offline.batch_size", -256, "positive integer"),
    ("online.replay", "prioritised", "must be one of"),
    ("online.init_online_fraction", 1.0, r"must lie in \(0.0, 1.0\)"),
    ("online.explore_ucb_lambda", -1.0, ">= 0"),
    ("online.train_every", -1, "integer >= 0"),
    # 1000 env steps do not split into chunks of 300.
    ("online.train_every", 300, "must divide online.env_steps_per_epoch = 1000"),
    ("num_seeds", 0, "positive integer"),
    # The method fine-tunes with SAC: a CQL weight online would be silently unused.
    ("online.cql_weight", 5.0, "algo=cql_ft"),
    ("distributed.coordinator_address", "node0", "host:port"),
    ("distributed.num_processes", 2, "must be 1 without distributed.coordinator_address"),
]


@pytest.mark.parametrize("field,value,allowed", BAD, ids=[b[0] for b in BAD])
def test_bad_value_is_refused_naming_field_and_fix(field, value, allowed):
    c = hopper_medium.get_config("quick")
    node = c
    *path, last = field.split(".")
    for p in path:
        node = node[p]
    node[last] = value
    with pytest.raises(ConfigError, match=allowed) as e:
        config_checks.check(c)
    assert f"'{field}'" in str(e.value) and f"--config.{field}=" in str(e.value)


def test_bad_config_stops_run_before_anything_is_written(tmp_path):
    c = hopper_medium.get_config("quick")
    c.agent.num_members = -2
    c.run_dir, c.run_name = str(tmp_path), "bad"
    with pytest.raises(ConfigError, match="agent.num_members"):
        pipeline.run(c)
    assert not os.path.exists(os.path.join(tmp_path, "bad"))


def test_train_every_needs_updates_that_split_evenly_over_its_calls():
    c = hopper_medium.get_config("quick")     # 1000 env steps, 1000 updates per epoch
    c.online.train_every, c.online.updates_per_epoch = 1, 500   # 1000 calls, 0.5 each
    with pytest.raises(ConfigError, match="'online.updates_per_epoch'.*must be a multiple "
                                          "of the 1000 training calls per epoch"):
        config_checks.check(c)
    c.online.train_every = 2                  # 500 calls of 1 update
    config_checks.check(c)


def test_distributed_process_id_must_be_below_process_count():
    c = hopper_medium.get_config("quick")
    c.distributed.update(coordinator_address="localhost:1234", num_processes=2,
                         process_id=2)
    with pytest.raises(ConfigError, match="'distributed.process_id'.*must be < "
                                          "distributed.num_processes = 2"):
        config_checks.check(c)
    c.distributed.process_id = 1
    config_checks.check(c)


def test_distributed_auto_outside_a_cluster_says_what_to_set():
    """JAX's own error ('coordinator_address should be defined') names no config field."""
    import subprocess
    import sys
    code = ("from configs import hopper_medium\nfrom o2o_jax import distributed\n"
            "c = hopper_medium.get_config('quick')\nc.distributed.auto = True\n"
            "distributed.initialize(c.distributed)\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "OMPI_", "PMI_"))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode != 0
    assert "distributed.coordinator_address" in proc.stderr
    assert "found no cluster" in proc.stderr


def test_ucb_exploration_needs_an_ensemble():
    c = hopper_medium.get_config("quick")
    c.online.explore_ucb_lambda = 100.0
    config_checks.check(c)                   # N = 2: allowed
    c.agent.num_members = 1
    with pytest.raises(ConfigError, match="agent.num_members >= 2"):
        config_checks.check(c)
    c = hopper_medium.get_config("quick,bcq_ft")      # acts by its own rule
    c.online.explore_ucb_lambda = 100.0
    with pytest.raises(ConfigError, match="would ignore it"):
        config_checks.check(c)
