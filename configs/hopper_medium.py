"""hopper-medium. Variants (comma-separated, applied in order):

  (none) / paper   paper scale: N = 5, 2x256, batch 256, 1M CQL steps, 250k online steps
  quick            a ~4 minute 2-core CPU run (hopper; see the README for what it shows)
  reference        the online settings of the authors' halfcheetah demo (configs/variants.py)
  <method>         a registered method's paper settings (its Algorithm.preset, in
                   o2o_jax/agents/): off2on, sac, sac_ft, cql_ft, awac, bcq_ft, fqe_init

e.g. --config=configs/hopper_medium.py:quick,sac_ft
"""
from configs import variants


def get_config(variant: str = ""):
    return variants.task("hopper", "medium", variant)
