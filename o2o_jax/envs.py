"""Environments: the supported MuJoCo tasks, D4RL reference scores, batched evaluation.

One table (`ENVS`) maps our short names to Gymnasium v5 ids and D4RL's random/expert
reference returns (spec section 7), used for the normalised score
100 (R - R_random) / (R_expert - R_random).
"""
import dataclasses
from typing import Callable, Sequence

import gymnasium as gym
import numpy as np


@dataclasses.dataclass(frozen=True)
class EnvInfo:
    gym_id: str
    random_score: float
    expert_score: float


ENVS = {
    "hopper": EnvInfo("Hopper-v5", -20.272305, 3234.3),
    "halfcheetah": EnvInfo("HalfCheetah-v5", -280.178953, 12135.0),
    "walker2d": EnvInfo("Walker2d-v5", 1.629008, 4592.3),
}


def env_info(name: str) -> EnvInfo:
    if name not in ENVS:
        raise ValueError(f"unknown env {name!r}; allowed: {sorted(ENVS)} "
                         "(set --config.env to one of these)")
    return ENVS[name]


def make_env(name: str, **kwargs) -> gym.Env:
    return gym.make(env_info(name).gym_id, **kwargs)


def normalized_score(name: str, raw_return):
    info = env_info(name)
    return 100.0 * (np.asarray(raw_return) - info.random_score) / (
        info.expert_score - info.random_score)


def env_dims(name: str):
    """(obs_dim, act_dim) of an env, checking the action space is [-1, 1]^A."""
    env = make_env(name)
    try:
        obs_dim = int(np.prod(env.observation_space.shape))
        space = env.action_space
        if not (np.allclose(space.low, -1.0) and np.allclose(space.high, 1.0)):
            raise ValueError(f"{name}: action space must be [-1, 1]^A, got "
                             f"[{space.low}, {space.high}]")
        return obs_dim, int(np.prod(space.shape))
    finally:
        env.close()


class BatchedEnvs:
    """A list of Gymnasium envs stepped together with one batched policy call per step.

    Episodes that end are reset automatically (`step` returns the true final observation
    as `next_obs` and the reset observation in `obs` for the next step), so callers can
    store (obs, action, reward, next_obs, terminated) transitions directly.
    """

    def __init__(self, name: str, num_envs: int, seed: int):
        self.envs = [make_env(name) for _ in range(num_envs)]
        self.obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(self.envs)]
                            ).astype(np.float32)
        self.episode_return = np.zeros(num_envs)
        self.episode_length = np.zeros(num_envs, np.int64)

    @property
    def num_envs(self) -> int:
        return len(self.envs)

    def step(self, actions: np.ndarray):
        """Returns (transition dict, finished episode returns list)."""
        obs = self.obs
        next_obs = np.empty_like(obs)
        rewards = np.empty(self.num_envs, np.float32)
        terminated = np.empty(self.num_envs, np.float32)
        truncated = np.empty(self.num_envs, bool)
        finished = []
        for i, env in enumerate(self.envs):
            o, r, term, trunc, _ = env.step(actions[i])
            next_obs[i], rewards[i], terminated[i], truncated[i] = o, r, term, trunc
            self.episode_return[i] += r
            self.episode_length[i] += 1
        self.obs = next_obs.copy()
        for i, env in enumerate(self.envs):
            if terminated[i] or truncated[i]:
                finished.append(float(self.episode_return[i]))
                self.episode_return[i] = 0.0
                self.episode_length[i] = 0
                self.obs[i] = env.reset()[0]
        transition = dict(observations=obs, actions=np.asarray(actions, np.float32),
                          rewards=rewards, next_observations=next_obs, dones=terminated,
                          truncations=truncated.astype(np.float32))
        return transition, finished

    def close(self):
        for e in self.envs:
            e.close()


def evaluate(policy_fn: Callable[[np.ndarray], np.ndarray], name: str, num_episodes: int,
             seed: int) -> np.ndarray:
    """Raw returns of `num_episodes` complete episodes, all run side by side.

    `policy_fn` maps a [num_episodes, obs_dim] batch to actions (finished episodes keep
    being fed their last observation; their actions are ignored). Episode i is reset with
    seed `seed + i`, so evaluations are reproducible.
    """
    envs = [make_env(name) for _ in range(num_episodes)]
    obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)]).astype(np.float32)
    returns = np.zeros(num_episodes)
    active = np.ones(num_episodes, bool)
    while active.any():
        actions = np.asarray(policy_fn(obs))
        for i in np.flatnonzero(active):
            o, r, term, trunc, _ = envs[i].step(actions[i])
            obs[i] = o
            returns[i] += r
            if term or trunc:
                active[i] = False
    for e in envs:
        e.close()
    return returns
