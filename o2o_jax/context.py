"""What the loops of a run share: its config, run directory, checkpoints, sharding, the
device-resident dataset, and the check that stops a run on a
non-finite value."""
import dataclasses
import time
from typing import Dict, Optional

from o2o_jax import checkpoints, distributed, finite, seeds
from o2o_jax.rundir import RunDir
from o2o_jax.sharding import Sharder


@dataclasses.dataclass
class PhaseTimes:
    """Seconds each phase ("offline", "online") has run over all the processes of a run,
    each counted up to its last checkpoint: checkpoints carry the counts (`meta()`), a
    resume goes on from them (`resumed`), so the summary's times are the whole run's, not
    the last process's. A branch (a new run from another run's checkpoint) counts its own
    time only."""
    before: Dict[str, float] = dataclasses.field(default_factory=dict)
    started: Dict[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def resumed(cls, checkpoint_meta: Optional[dict]) -> "PhaseTimes":
        """From a checkpoint's meta (nothing before: a new run, or a checkpoint older than
        this record, whose earlier processes' time is then not counted)."""
        return cls(before=dict((checkpoint_meta or {}).get("phase_seconds") or {}))

    def start(self, phase: str) -> None:
        self.started[phase] = time.time()

    def stop(self, phase: str) -> None:
        self.before[phase] = self.seconds(phase)
        self.started.pop(phase, None)

    def seconds(self, phase: str) -> float:
        running = time.time() - self.started[phase] if phase in self.started else 0.0
        return float(self.before.get(phase, 0.0)) + running

    def meta(self) -> dict:
        """What every checkpoint records (`CheckpointManager.stamp`)."""
        return {"phase_seconds": {p: self.seconds(p)
                                  for p in sorted(set(self.before) | set(self.started))}}


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
