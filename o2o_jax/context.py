"""What the loops of a run share: its config, run directory, checkpoints, sharding, the
device-resident dataset, and the check that stops a run on a non-finite value."""
import dataclasses

from o2o_jax import checkpoints, distributed, finite, seeds
from o2o_jax.rundir import RunDir
from o2o_jax.sharding import Sharder


@dataclasses.dataclass
class Context:
    cfg: object
    run_dir: RunDir
    ckpt: checkpoints.CheckpointManager
    sharder: Sharder
    data: dict
    obs_dim: int
    act_dim: int

    @property
    def seeds(self):
        return seeds.seed_list(self.cfg)


def check_finite(ctx: Context, values: dict, where: str):
    """Stop the run (finite.NonFiniteError) on a NaN/inf in `values`, before it is logged or
    checkpointed, naming the newest checkpoint kept."""
    def newest():   # looked up only when a check fails
        done = ctx.ckpt.complete() if distributed.is_primary() else []
        return done[-1] if done else None

    finite.check(values, where, ctx.seeds, newest)
