"""Variants shared by the task configs: `quick`, `reference`, and each registered method's
paper settings (`Algorithm.preset`, in o2o_jax/agents/<method>.py)."""
from o2o_jax import algorithm


def quick(c):
    """A ~4 minute hopper run on a 2-core CPU: smaller networks and budgets, same algorithm."""
    c.agent.num_members = 2
    c.agent.hidden_dims = (64, 64)
    c.agent.bc_steps = 2_000
    c.offline.steps = 10_000
    c.offline.chunk = 500
    c.offline.eval_interval = 2_500
    c.offline.eval_episodes = 5
    c.online.epochs = 20
    c.online.first_epoch_multiplier = 2
    c.online.eval_episodes = 5
    c.online.dr_hidden_dims = (64, 64)
    c.bcq.vae_hidden_dims = c.bcq.actor_hidden_dims = c.bcq.critic_hidden_dims = (64, 64)
    c.iql.hidden_dims = c.td3.hidden_dims = (64, 64)
    c.checkpoint.every_offline_steps = 10_000
    c.checkpoint.every_online_epochs = 5
    c.dataset.build_transitions = 100_000
    return c


def reference(c):
    """The online settings of the authors' halfcheetah-medium demo and its public rerun
    (rlkit/examples/ours.py with --policy_lr 3e-4 --first_epoch_multiplier 5
    --init_online_fraction 0.75; shared/reference/README.md): N = 5, 2 x 256, first epoch
    5000 updates, then 1000 env steps + 1000 updates per epoch, 250 epochs, online lrs
    3e-4, 5 evaluation episodes per epoch (their 5000 evaluation steps). Fine-tunes the
    authors' members imported by experiments.import_members: set
    --config.online.load_offline_from=<that folder>."""
    c.agent.num_members = 5
    c.agent.hidden_dims = (256, 256)
    c.online.epochs = 250
    c.online.env_steps_per_epoch = 1_000
    c.online.updates_per_epoch = 1_000
    c.online.first_epoch_multiplier = 5
    c.online.init_online_fraction = 0.75
    c.online.actor_lr = c.online.critic_lr = c.online.temp_lr = 3e-4
    c.online.eval_episodes = 5
    c.online.dr_hidden_dims = (256, 256)
    c.checkpoint.every_online_epochs = 5
    return c


def apply(c, variant: str):
    for part in [p.strip() for p in variant.split(",") if p.strip()]:
        if part == "paper":
            continue
        if part == "quick":
            quick(c)
        elif part == "reference":
            reference(c)
        elif part in algorithm.names():
            algorithm.get(part).apply_preset(c)
        else:
            raise ValueError(f"unknown config variant {part!r}; allowed: 'paper', 'quick', "
                             f"'reference', or a method: {algorithm.names()}")
    return c


def task(env: str, kind: str, variant: str = ""):
    """The base config for one env and dataset kind, with `variant` applied."""
    from configs import base
    c = base.get_config()
    c.env = env
    c.dataset.kind = kind
    return apply(c, variant)
