"""halfcheetah-medium. Variants as in configs/hopper_medium.py (comma-separated, in order):
(none) / paper, quick, or a method's paper settings (Algorithm.preset in o2o_jax/agents/<method>.py), e.g.

  python -m experiments.train --config=configs/halfcheetah_medium.py:quick,cql_ft
"""
from configs import variants


def get_config(variant: str = ""):
    return variants.task("halfcheetah", "medium", variant)
