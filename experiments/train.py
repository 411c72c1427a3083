"""Train: offline CQL-ensemble pretraining then online fine-tuning.

  python -m experiments.train --config=configs/hopper_medium.py
  python -m experiments.train --config=configs/hopper_medium.py:quick --config.agent.num_members=3
"""
import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file",
                                          lock_config=True)


def main(argv):
    del argv
    from absl import logging
    logging.set_verbosity(logging.WARNING)   # orbax logs every save at INFO
    from o2o_jax import pipeline
    pipeline.run(_CONFIG.value)


if __name__ == "__main__":
    from experiments import cli
    cli.run(main, "train")
