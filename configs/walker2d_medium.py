"""walker2d-medium. Variants as in configs/hopper_medium.py (comma-separated, in order):
(none) / paper, quick, or a method's paper settings (configs/algos.py), e.g.

  python -m experiments.train --config=configs/walker2d_medium.py:quick,cql_ft
"""
from configs import base, variants


def get_config(variant: str = ""):
    c = base.get_config()
    c.env = "walker2d"
    c.dataset.kind = "medium"
    return variants.apply(c, variant)
