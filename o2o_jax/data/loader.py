"""Minari dataset id -> float32 transition arrays; `ensure` = load, else download, else build.

Conventions (spec off2on.md section 5): Gymnasium `terminations` become `dones` (no
bootstrap); `truncations` end an episode but are not terminals; `next_observations` are
the true next observations, including the final observation of an episode (never the
first observation of the next one), because Minari stores T+1 observations per episode.
"""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
from scipy import signal

from o2o_jax import envs
from o2o_jax.data import recipes, store

from o2o_jax.transitions import TRANSITION_KEYS
TRUNCATED_TAILS = ("zero", "repeat_last")


class DatasetNotFoundError(FileNotFoundError):
    """The dataset id is not in the local Minari root."""


class DatasetError(ValueError):
    """A dataset that exists but cannot be used (incomplete, corrupt, empty, mismatched)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset: flat float32 arrays over N transitions, in episode order.

    `arrays`: `observations [N, obs_dim]`, `actions [N, act_dim]`, `rewards [N]`,
    `next_observations [N, obs_dim]`, `dones [N]` (1 = termination), `truncations [N]`
    (1 at the last step of an episode that ended without termination: a time limit, or
    the data stop mid-episode), `episode_starts [N]` / `episode_ends [N]` (1 at the first
    / last step of each episode). `metadata`: Minari's metadata (spaces as gymnasium
    spaces) plus, for our datasets, the recipe, behaviour return and reference scores.
    """
    dataset_id: str
    arrays: Dict[str, np.ndarray]
    metadata: Dict[str, Any]

    @property
    def num_transitions(self) -> int:
        return int(self.arrays["rewards"].shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.arrays["observations"].shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.arrays["actions"].shape[1])

    @property
    def num_episodes(self) -> int:
        return int(self.arrays["episode_starts"].sum())

    def transitions(self) -> Dict[str, np.ndarray]:
        """The five arrays a replay buffer / agent update takes (no copies)."""
        return {k: self.arrays[k] for k in TRANSITION_KEYS}

    def episode_bounds(self) -> Tuple[np.ndarray, np.ndarray]:
        """(first index, one past the last index) of every episode."""
        starts = np.flatnonzero(self.arrays["episode_starts"])
        ends = np.flatnonzero(self.arrays["episode_ends"]) + 1
        return starts, ends

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of every episode (float64), including cut-short ones."""
        starts, _ = self.episode_bounds()
        return np.add.reduceat(self.arrays["rewards"].astype(np.float64), starts)

    def returns_to_go(self, discount: float, truncated_tail: str = "zero") -> np.ndarray:
        """Discounted Monte-Carlo return from every transition to its episode's end, [N] f32.

        G_t = r_t + discount * G_{t+1} within an episode. After a termination nothing
        follows (G = r at the last step). After a truncation (time limit or the data
        stopping mid-episode) the future is unknown; `truncated_tail` says what stands in:
        * "zero" (default, the Cal-QL reference's convention): nothing, i.e. the tail is
          cut off. For non-negative rewards this is a lower bound of the true return.
        * "repeat_last": the last reward forever, G_last = r_last / (1 - discount).
        Episodes are grouped by length and filtered together (no per-step Python loop).
        """
        if truncated_tail not in TRUNCATED_TAILS:
            raise ValueError(f"truncated_tail must be one of {TRUNCATED_TAILS}, "
                             f"got {truncated_tail!r}")
        if not 0.0 <= discount <= 1.0 or (truncated_tail == "repeat_last" and discount >= 1.0):
            raise ValueError(f"discount must be in [0, 1] ([0, 1) with 'repeat_last'), "
                             f"got {discount!r}")
        rewards = self.arrays["rewards"].astype(np.float64)
        starts, ends = self.episode_bounds()
        lengths = ends - starts
        out = np.empty_like(rewards)
        for length in np.unique(lengths):
            idx = starts[lengths == length][:, None] + np.arange(length)[None, :]
            rev = rewards[idx][:, ::-1]
            out[idx] = signal.lfilter([1.0], [1.0, -discount], rev, axis=1)[:, ::-1]
        if truncated_tail == "repeat_last":
            last = ends - 1
            tail = np.where(self.arrays["dones"][last] > 0, 0.0,
                            rewards[last] / (1.0 - discount))
            episode = np.cumsum(self.arrays["episode_starts"]).astype(np.int64) - 1
            steps_to_end = last[episode] - np.arange(len(rewards))
            out += discount ** (steps_to_end + 1.0) * tail[episode]
        return out.astype(np.float32)


# --------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------

def _guess_env_kind(dataset_id: str):
    parsed = recipes.parse_id(dataset_id)
    if parsed:
        return parsed
    parts = dataset_id.split("/")
    if len(parts) == 3 and parts[1] in envs.ENVS:
        kind = parts[2].rsplit("-v", 1)[0]
        if kind in recipes.KINDS:
            return parts[1], kind
    return None


def _build_hint(dataset_id: str, force: bool = False) -> str:
    guess = _guess_env_kind(dataset_id)
    cmd = (recipes.build_command(*guess) if guess else
           "python -m experiments.make_dataset --env=<env> --kind=<kind>")
    return cmd + (" --force" if force else "")


def missing_message(dataset_id: str) -> str:
    root = store.dataset_root()
    where = (f"dataset {dataset_id!r} is not in the local Minari root {root} "
             "(MINARI_DATASETS_PATH selects another)")
    if recipes.parse_id(dataset_id) or dataset_id.startswith(recipes.NAMESPACE + "/"):
        return (f"{where}. Build it locally with: {_build_hint(dataset_id)} "
                "(--transitions and --train_steps make a smaller, faster one).")
    guess = _guess_env_kind(dataset_id)
    ours = f" ({recipes.default_id(*guess)})" if guess else ""
    return (f"{where}. Download it with `minari download {dataset_id}` (needs network), or "
            f"build our D4RL-style equivalent{ours} locally with: {_build_hint(dataset_id)}")


def _fix(dataset_id: str) -> str:
    path = store.dataset_dir(dataset_id)
    if dataset_id.startswith(recipes.NAMESPACE + "/"):
        return f"Rebuild it: {_build_hint(dataset_id, force=True)} (or delete {path})."
    return (f"Delete it (rm -rf {path}) and download it again "
            f"(`minari download {dataset_id}`).")


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------

def _spaces(dataset_id: str, raw: Dict[str, Any]):
    from minari.serialization import deserialize_space
    import gymnasium as gym
    try:
        obs_space = deserialize_space(raw["observation_space"])
        act_space = deserialize_space(raw["action_space"])
    except Exception as e:
        raise DatasetError(f"dataset {dataset_id!r}: unreadable spaces in its metadata "
                           f"({e}). {_fix(dataset_id)}") from e
    for name, space in (("observation", obs_space), ("action", act_space)):
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise DatasetError(f"dataset {dataset_id!r}: {name} space {space} is not a flat "
                               "Box; only vector observations and actions are supported")
    return obs_space, act_space


def recorded_env_id(raw: Dict[str, Any]) -> Optional[str]:
    spec = raw.get("env_spec")
    if not spec:
        return None
    try:
        return json.loads(spec).get("id")
    except (TypeError, ValueError):
        return None


def check_env(dataset_id: str, obs_dim: int, act_dim: int, raw: Dict[str, Any],
              env_name: str) -> None:
    """Raise DatasetError if the dataset's spaces (or recorded env) do not fit `env_name`."""
    info = envs.env_info(env_name)
    env_obs, env_act = envs.env_dims(env_name)
    recorded = recorded_env_id(raw)
    fix = (f"Fix: use a dataset recorded in {info.gym_id} (e.g. "
           f"{recipes.default_id(env_name, 'medium')}; config.dataset.id = '' picks ours) "
           "or set config.env to the dataset's env.")
    if (obs_dim, act_dim) != (env_obs, env_act):
        raise DatasetError(
            f"dataset {dataset_id!r} does not match env {env_name!r} ({info.gym_id}): "
            f"its observations are {obs_dim}-dim and actions {act_dim}-dim (recorded env "
            f"{recorded}), the env's are {env_obs}-dim and {env_act}-dim. {fix}")
    if recorded is not None:
        base = recorded.split(":")[-1].rsplit("-v", 1)[0]
        if base != info.gym_id.rsplit("-v", 1)[0]:
            raise DatasetError(f"dataset {dataset_id!r} was recorded in {recorded}, not in "
                               f"{info.gym_id} (env {env_name!r}). {fix}")


def _verify(flat: Dict[str, np.ndarray], raw: Dict[str, Any], obs_dim: int,
            act_dim: int) -> str:
    """'' if the flat arrays are consistent with the metadata, else what is wrong."""
    lengths = flat["episode_lengths"]
    n, e = int(lengths.sum()), len(lengths)
    if (n, e) != (int(raw["total_steps"]), int(raw["total_episodes"])):
        return (f"the file holds {n} steps in {e} episodes, the metadata says "
                f"{raw['total_steps']} in {raw['total_episodes']}")
    shapes = {"observations": (n + e, obs_dim), "actions": (n, act_dim), "rewards": (n,),
              "terminations": (n,), "truncations": (n,)}
    for k, shape in shapes.items():
        if flat[k].shape != shape:
            return f"{k} has shape {flat[k].shape}, expected {shape}"
    if store.CHECKSUM_KEY in raw:
        ok, why = store.checksums_match(raw[store.CHECKSUM_KEY], store.checksum_of_flat(flat))
        if not ok:
            return f"contents differ from the checksum written at build time ({why})"
    for k in ("observations", "actions", "rewards"):
        if not np.all(np.isfinite(flat[k])):
            return f"{k} contain NaN or inf"
    return ""


# Larger values are refused: float32 training on them overflows (squared TD errors and
# Q-values of rewards near 1e19 are inf) long before the data themselves do.
MAX_MAGNITUDE = 1e6


def check_values(dataset_id: str, arrays: Dict[str, np.ndarray]) -> None:
    """DatasetError if the float32 training arrays hold NaN/inf (also values finite only in
    float64, e.g. a reward of 1e39) or magnitudes beyond MAX_MAGNITUDE."""
    for k in ("observations", "actions", "rewards", "next_observations"):
        x = arrays[k]
        if not np.all(np.isfinite(x)):
            bad = int(np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).any(axis=1))[0])
            raise DatasetError(
                f"dataset {dataset_id!r}: {k} of transition {bad} is not finite in float32 "
                f"(NaN, inf, or beyond float32's range of 3.4e38), which training uses. "
                "Fix or drop those transitions, or rescale the data")
        big = float(np.max(np.abs(x))) if x.size else 0.0
        if big > MAX_MAGNITUDE:
            raise DatasetError(
                f"dataset {dataset_id!r}: {k} reach {big:.3g} in magnitude (limit "
                f"{MAX_MAGNITUDE:.0e}): float32 losses on such values overflow. Rescale "
                f"(or clip) the {k} before training")


def flat_to_arrays(flat: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Minari-layout flat arrays (T+1 observations per episode) -> float32 transitions."""
    lengths = flat["episode_lengths"].astype(np.int64)
    n, e = int(lengths.sum()), len(lengths)
    first = np.cumsum(lengths) - lengths                       # first transition index
    step = np.arange(n) - np.repeat(first, lengths)            # step within the episode
    obs_row = np.repeat(first + np.arange(e), lengths) + step  # +1 row per earlier episode
    obs = flat["observations"]
    starts = np.zeros(n, np.float32)
    starts[first] = 1.0
    ends = np.zeros(n, np.float32)
    ends[first + lengths - 1] = 1.0
    terms = flat["terminations"].astype(bool)
    truncs = flat["truncations"].astype(bool) | ((ends > 0) & ~terms)
    with np.errstate(over="ignore"):   # values beyond float32: refused by check_values
        return {"observations": obs[obs_row].astype(np.float32),
                "actions": flat["actions"].astype(np.float32),
                "rewards": flat["rewards"].astype(np.float32),
                "next_observations": obs[obs_row + 1].astype(np.float32),
                "dones": terms.astype(np.float32),
                "truncations": truncs.astype(np.float32),
                "episode_starts": starts, "episode_ends": ends}


def load(dataset_id: str, env_name: Optional[str] = None) -> Dataset:
    """Load a local Minari dataset; check it against `env_name`'s spaces if given.

    Raises DatasetNotFoundError (not local; the message names the download / build
    command) or DatasetError (incomplete build, corrupt or truncated file, empty dataset,
    spaces that do not fit the env), each naming the dataset and the fix.
    """
    if not dataset_id:
        raise ValueError("empty dataset id")
    if not store.exists_locally(dataset_id):
        raise DatasetNotFoundError(missing_message(dataset_id))
    try:
        raw = store.read_raw_metadata(dataset_id)
    except (OSError, ValueError) as e:
        raise DatasetError(f"dataset {dataset_id!r} at {store.dataset_dir(dataset_id)} has "
                           f"no readable metadata ({e}). {_fix(dataset_id)}") from e
    ours = dataset_id.startswith(recipes.NAMESPACE + "/")
    if ours and not raw.get(store.COMPLETE_KEY):
        raise DatasetError(f"dataset {dataset_id!r} at {store.dataset_dir(dataset_id)} is an "
                           f"incomplete build (no completion marker). {_fix(dataset_id)}")
    if int(raw.get("total_steps", 0)) == 0 or int(raw.get("total_episodes", 0)) == 0:
        raise DatasetError(f"dataset {dataset_id!r} is empty (0 transitions). "
                           f"{_fix(dataset_id)}")
    obs_space, act_space = _spaces(dataset_id, raw)
    obs_dim, act_dim = int(obs_space.shape[0]), int(act_space.shape[0])
    if env_name is not None:
        check_env(dataset_id, obs_dim, act_dim, raw, env_name)

    flat, problem = store.read_cache(dataset_id), ""
    if flat is not None:
        problem = _verify(flat, raw, obs_dim, act_dim)
    if flat is None or problem:
        try:
            flat = store.read_flat(dataset_id, int(raw["total_episodes"]),
                                   raw.get("data_format", "hdf5"))
        except Exception as e:
            raise DatasetError(f"dataset {dataset_id!r}: its data file is corrupt or "
                               f"truncated ({type(e).__name__}: {e}). {_fix(dataset_id)}"
                               ) from e
        problem = _verify(flat, raw, obs_dim, act_dim)
        if problem:
            raise DatasetError(f"dataset {dataset_id!r} is corrupt: {problem}. "
                               f"{_fix(dataset_id)}")
        store.write_cache(dataset_id, flat)
    metadata = {**raw, "observation_space": obs_space, "action_space": act_space}
    arrays = flat_to_arrays(flat)
    check_values(dataset_id, arrays)
    return Dataset(dataset_id=dataset_id, arrays=arrays, metadata=metadata)


# --------------------------------------------------------------------------------------
# ensure: load, else download once, else build
# --------------------------------------------------------------------------------------

DOWNLOAD_CODE = "import sys, minari; minari.download_dataset(sys.argv[1])"


def try_download(dataset_id: str, timeout_s: float = 10.0) -> Tuple[bool, str]:
    """One `minari.download_dataset` attempt in a subprocess killed after `timeout_s`.

    Returns (success, reason). A failed attempt leaves nothing behind.
    """
    path = store.dataset_dir(dataset_id)
    existed = path.exists()
    try:
        proc = subprocess.run([sys.executable, "-c", DOWNLOAD_CODE, dataset_id],
                              capture_output=True, text=True, timeout=timeout_s,
                              env=os.environ.copy())
        ok = proc.returncode == 0 and store.exists_locally(dataset_id)
        lines = (proc.stderr or proc.stdout or "").strip().splitlines()
        reason = "" if ok else (lines[-1] if lines else f"exit code {proc.returncode}")
    except subprocess.TimeoutExpired:
        ok, reason = False, f"no answer within {timeout_s:g} s (no network?)"
    if not ok and not existed and path.exists():
        shutil.rmtree(path, ignore_errors=True)
    return ok, reason


def ensure(env_name: str, kind: str, dataset_id: str = "", build_transitions: int = 1_000_000,
           seed: int = 0, download_timeout_s: float = 10.0,
           log: Optional[Callable[[str], None]] = None, **budget) -> Dataset:
    """The dataset for (env, kind): local, else downloaded (once), else built and cached.

    `dataset_id` defaults to our recipe's `o2o/<env>/<kind>-v0`. An id of another
    namespace (e.g. Minari's `mujoco/hopper/medium-v0`) is tried locally, then with one
    download attempt (at most `download_timeout_s`); if that fails, our recipe's id is used
    instead (loaded if local, else built). Our ids are never downloaded (no server has
    them). Building announces what, how big and how long; `budget` takes `recipes.Budget`
    fields (train_steps, target_return, hidden_dims, ...). `seed` is the build seed.
    """
    log = log or (lambda s: print(s, flush=True))
    recipes.check_env_kind(env_name, kind)
    ours = recipes.default_id(env_name, kind)
    dataset_id = dataset_id or ours

    def local_ours():   # our recipe's local dataset, said so if of another size
        dataset = load(ours, env_name)
        size = recipes.built_size(kind, build_transitions)
        if size is not None and dataset.num_transitions != size:
            log(f"[data] WARNING: the local {ours} holds {dataset.num_transitions:,} "
                f"transitions, not the {size:,} this run would build "
                "(dataset.build_transitions); it is used as it is. To use "
                f"{size:,}, rebuild it (python -m experiments.make_dataset --env={env_name} "
                f"--kind={kind} --transitions={size} --force) or point MINARI_DATASETS_PATH "
                "at another folder, where it is built at that size.")
        return dataset

    if store.exists_locally(dataset_id):
        return local_ours() if dataset_id == ours else load(dataset_id, env_name)
    if not dataset_id.startswith(recipes.NAMESPACE + "/"):
        log(f"[data] {dataset_id} is not local; trying to download it "
            f"(at most {download_timeout_s:g} s)")
        ok, reason = try_download(dataset_id, download_timeout_s)
        if ok:
            return load(dataset_id, env_name)
        log(f"[data] could not download {dataset_id}: {reason}. Using our recipe's {ours} "
            "instead.")
        dataset_id = ours
        if store.exists_locally(dataset_id):
            return local_ours()
    elif dataset_id != ours:
        raise DatasetNotFoundError(missing_message(dataset_id))
    log(f"[data] {dataset_id} is not local: building it with our recipe "
        f"(python -m experiments.make_dataset builds it by hand).")
    recipes.build(env_name, kind, log=log,
                  **{"transitions": build_transitions, "seed": seed, **budget})
    return load(dataset_id, env_name)
