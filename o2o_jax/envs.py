"""Environments: the supported MuJoCo tasks, D4RL reference scores, batched evaluation.

One table (`ENVS`) maps our short names to Gymnasium v5 ids and D4RL's random/expert
reference returns (spec section 7), used for the normalised score
100 (R - R_random) / (R_expert - R_random).
"""
import dataclasses
from typing import Callable, Sequence

import gymnasium as gym
import mujoco
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

    def __init__(self, name: str, num_envs: int, seed: int, seeds: Sequence[int] = None):
        """Env i is reset with seed `seeds[i]` if given, else `seed + i`."""
        seeds = [seed + i for i in range(num_envs)] if seeds is None else list(seeds)
        self.envs = [make_env(name) for _ in range(num_envs)]
        self.obs = np.stack([e.reset(seed=int(seeds[i]))[0] for i, e in enumerate(self.envs)]
                            ).astype(np.float32)
        self.episode_return = np.zeros(num_envs)
        self.episode_length = np.zeros(num_envs, np.int64)
        self.last_returns = np.full(num_envs, np.nan)   # return of each env's last episode
        self.last_lengths = np.zeros(num_envs, np.int64)   # and its length

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
                self.last_returns[i] = self.episode_return[i]
                self.last_lengths[i] = self.episode_length[i]
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

    # --- checkpointing: enough to continue every episode exactly where it was ---
    def get_state(self) -> dict:
        per_env = []
        for env in self.envs:
            u = env.unwrapped
            sim = np.empty(mujoco.mj_stateSize(u.model, mujoco.mjtState.mjSTATE_INTEGRATION))
            mujoco.mj_getState(u.model, u.data, sim, mujoco.mjtState.mjSTATE_INTEGRATION)
            per_env.append({"sim": sim, "elapsed": _time_limit(env)._elapsed_steps,
                            "np_random": u.np_random.bit_generator.state})
        return {"envs": per_env, "obs": self.obs.copy(),
                "episode_return": self.episode_return.copy(),
                "episode_length": self.episode_length.copy(),
                "last_returns": self.last_returns.copy(),
                "last_lengths": self.last_lengths.copy()}

    def set_state(self, state: dict) -> None:
        if len(state["envs"]) != self.num_envs:
            raise ValueError(f"env state holds {len(state['envs'])} envs, expected "
                             f"{self.num_envs}")
        for env, st in zip(self.envs, state["envs"]):
            u = env.unwrapped
            mujoco.mj_setState(u.model, u.data, st["sim"], mujoco.mjtState.mjSTATE_INTEGRATION)
            mujoco.mj_forward(u.model, u.data)
            _time_limit(env)._elapsed_steps = st["elapsed"]
            u.np_random.bit_generator.state = st["np_random"]
        self.obs = state["obs"].copy()
        self.episode_return = state["episode_return"].copy()
        self.episode_length = state["episode_length"].copy()
        self.last_returns = state["last_returns"].copy()
        # (checkpoints written before the field existed: unknown, zero)
        self.last_lengths = np.asarray(state.get("last_lengths", np.zeros(self.num_envs,
                                                                          np.int64))).copy()


def _time_limit(env):
    w = env
    while not isinstance(w, gym.wrappers.TimeLimit):
        w = w.env
    return w


def evaluate_seeds(policy_fn: Callable[[np.ndarray], np.ndarray], name: str,
                   num_episodes: int, seeds: Sequence[int]) -> np.ndarray:
    """Returns [S, E] of E complete episodes per seed, all S*E episodes side by side.

    `policy_fn` maps [S, E, obs_dim] to [S, E, act_dim] (one batched call per env step;
    finished episodes keep their last observation and their actions are ignored).
    Episode e of seed s is reset with seed `seeds[s] + e`.
    """
    num_seeds = len(seeds)
    envs = [[make_env(name) for _ in range(num_episodes)] for _ in range(num_seeds)]
    obs = np.stack([np.stack([e.reset(seed=int(seeds[s]) + i)[0] for i, e in enumerate(row)])
                    for s, row in enumerate(envs)]).astype(np.float32)
    returns = np.zeros((num_seeds, num_episodes))
    active = np.ones((num_seeds, num_episodes), bool)
    while active.any():
        actions = np.asarray(policy_fn(obs))
        for s, i in zip(*np.nonzero(active)):
            o, r, term, trunc, _ = envs[s][i].step(actions[s, i])
            obs[s, i] = o
            returns[s, i] += r
            if term or trunc:
                active[s, i] = False
    for row in envs:
        for e in row:
            e.close()
    return returns


def evaluate(policy_fn: Callable[[np.ndarray], np.ndarray], name: str, num_episodes: int,
             seed: int) -> np.ndarray:
    """Raw returns of `num_episodes` complete episodes, all run side by side.

    `policy_fn` maps a [num_episodes, obs_dim] batch to actions (finished episodes keep
    being fed their last observation; their actions are ignored). Episode i is reset with
    seed `seed + i`, so evaluations are reproducible.
    """
    return evaluate_seeds(lambda o: np.asarray(policy_fn(o[0]))[None], name, num_episodes,
                          [seed])[0]
