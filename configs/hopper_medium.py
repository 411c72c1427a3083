"""hopper-medium: paper scale by default; `:quick` for a ~10 minute CPU run."""
from configs import base


def get_config(variant: str = ""):
    c = base.get_config()
    c.env = "hopper"
    c.dataset.kind = "medium"
    if variant in ("", "paper"):
        return c
    if variant == "quick":
        c.agent.num_members = 2
        c.offline.steps = 20_000
        c.offline.eval_interval = 5_000
        c.offline.eval_episodes = 5
        c.agent.bc_steps = 2_000
        c.dataset.build_transitions = 100_000
        return c
    raise ValueError(f"unknown variant {variant!r} of configs/hopper_medium.py; "
                     "allowed: '' (paper scale), 'quick'")
