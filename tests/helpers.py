"""Small data makers, tiny run configs and statistics shared by the tests."""
import csv
import os

import jax.numpy as jnp
import numpy as np
from scipy import stats

from configs import hopper_medium

OBS, ACT = 11, 3   # hopper


def random_batch(seed: int, b: int, obs_dim: int, act_dim: int, dones: str = "random"):
    """A transition batch of float32 arrays; `dones` "random" or "alternate" (0, 1, 0, ...)."""
    rng = np.random.default_rng(seed)
    done = (rng.integers(0, 2, size=b) if dones == "random"
            else np.array([0, 1] * (b // 2) + [0] * (b % 2)))
    return {
        "observations": jnp.asarray(rng.normal(size=(b, obs_dim)), jnp.float32),
        "actions": jnp.asarray(rng.uniform(-0.9, 0.9, size=(b, act_dim)), jnp.float32),
        "rewards": jnp.asarray(rng.normal(size=b), jnp.float32),
        "next_observations": jnp.asarray(rng.normal(size=(b, obs_dim)), jnp.float32),
        "dones": jnp.asarray(done, jnp.float32),
    }


def pooled_chisquare(counts: np.ndarray, probs: np.ndarray, min_expected: float = 5.0):
    """Chi-square GOF, pooling every bin with expected count < min_expected into one bin."""
    expected = probs * counts.sum()
    small = expected < min_expected
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return stats.chisquare(obs, exp)


# ------------------------------------------------------------------ tiny runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def two_cpu_devices_env() -> dict:
    """The environment of a subprocess that sees two CPU devices (the suite's XLA_FLAGS kept)."""
    return {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")
            + " --xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}


def tiny_config(run_dir, name, **overrides):
    c = hopper_medium.get_config("quick")
    c.dataset.kind = "random"
    c.dataset.build_transitions = 1500
    c.agent.hidden_dims = (8, 8)
    c.agent.num_members = 2
    c.agent.bc_steps = 5
    c.offline.update(steps=40, chunk=20, eval_interval=20, eval_episodes=1, batch_size=32)
    c.online.update(epochs=3, env_steps_per_epoch=40, updates_per_epoch=10,
                    first_epoch_multiplier=2, eval_episodes=1, batch_size=32,
                    dr_batch_size=32, dr_hidden_dims=(8, 8))
    c.checkpoint.update(every_offline_steps=20, every_online_epochs=1, keep=2)
    c.run_dir, c.run_name = str(run_dir), name
    for k, v in overrides.items():
        node = c
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return c


def run_to_first_online_checkpoint(monkeypatch, cfg):
    """Run `cfg`, killed right after its first online checkpoint is saved."""
    from o2o_jax import pipeline

    class Interrupt(Exception):
        pass

    original_save = pipeline.CheckpointManager.save

    def save_then_die(self, step, *args, **kwargs):
        original_save(self, step, *args, **kwargs)
        if args and args[1].get("phase") == "online":
            raise Interrupt()

    monkeypatch.setattr(pipeline.CheckpointManager, "save", save_then_die)
    try:
        pipeline.run(cfg)
        raise AssertionError("the run was not interrupted")
    except Interrupt:
        pass
    finally:
        monkeypatch.setattr(pipeline.CheckpointManager, "save", original_save)


def resumed_rows_match(tmp_path, monkeypatch, configure):
    """Run a tiny config (`configure(cfg)` sets the method) whole, and again killed right
    after its first online checkpoint and resumed; assert both logged the same rows (but
    the wall time) and return them."""
    from o2o_jax import pipeline

    def cfg(name):
        c = tiny_config(tmp_path, name)
        configure(c)
        return c

    pipeline.run(cfg("whole"))
    run_to_first_online_checkpoint(monkeypatch, cfg("cut"))
    pipeline.run(cfg("cut"))
    whole, cut = (numeric_rows(read_rows(os.path.join(tmp_path, n))) for n in ("whole", "cut"))
    assert cut == whole
    return whole


def read_rows(path):
    with open(os.path.join(path, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def numeric_rows(rows, drop=("wall_time",)):
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


# ------------------------------------------------------------------ scripted episodes

def scripted_episode(e: int, length: int, end: str, obs_dim=OBS, act_dim=ACT):
    """Episode `e`: every value encodes (episode, step), exactly representable in float32.

    observations[t] = 100 e + t + 0.25 j (j = feature), actions = -(e + 0.125 t), rewards
    = e + 0.5 t; `end` is 'terminal', 'truncated' or 'cut' (truncated by the data budget).
    """
    t = np.arange(length + 1, dtype=np.float64)
    obs = 100.0 * e + t[:, None] + 0.25 * np.arange(obs_dim)[None, :]
    acts = -(e + 0.125 * np.arange(length, dtype=np.float64))[:, None] * np.ones(act_dim) / 8
    rews = e + 0.5 * np.arange(length, dtype=np.float64)
    terms = np.zeros(length, bool)
    truncs = np.zeros(length, bool)
    (terms if end == "terminal" else truncs)[-1] = True
    return {"observations": obs, "actions": acts, "rewards": rews, "terminations": terms,
            "truncations": truncs}
