"""Offline datasets: Minari ids -> float32 arrays, and our D4RL-style recipe to build them.

    from o2o_jax import data
    ds = data.ensure("hopper", "medium")          # local, else download, else build
    ds = data.load("o2o/hopper/medium-v0", env_name="hopper")
    batch_source = ds.transitions()               # observations, actions, rewards,
                                                  # next_observations, dones (float32)
    g = ds.returns_to_go(0.99)                    # Monte-Carlo returns-to-go [N]

Modules: `loader` (Dataset, load, ensure), `recipes` (the D4RL-style builder; ids
`o2o/<env>/<kind>-v0`), `behavior` (SAC behaviour policies, rollouts, policy files),
`store` (atomic Minari writing, fast reading), `progress` (progress lines with ETA).
"""
from o2o_jax.data.loader import (Dataset, DatasetError, DatasetNotFoundError, ensure, load,
                                 try_download)
from o2o_jax.data.recipes import KINDS, Budget, build, default_id

__all__ = ["Dataset", "DatasetError", "DatasetNotFoundError", "KINDS", "Budget", "build",
           "default_id", "ensure", "load", "try_download"]
