"""walker2d-medium. Variants as in configs/hopper_medium.py (comma-separated, in order):
(none) / paper, quick, or a method's paper settings (Algorithm.preset in o2o_jax/agents/<method>.py), e.g.

  python -m experiments.train --config=configs/walker2d_medium.py:quick,cql_ft
"""
from configs import variants


def get_config(variant: str = ""):
    return variants.task("walker2d", "medium", variant)
