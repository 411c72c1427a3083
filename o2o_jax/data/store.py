"""Minari datasets on disk: atomic writing of episodes and fast reading into flat arrays.

Datasets live in Minari's standard local root (`$MINARI_DATASETS_PATH`, else
`~/.minari/datasets`), one folder per id, so `minari.load_dataset(id)` and `minari list
local` see them like any other Minari dataset.

An *episode* here is a dict of NumPy arrays, Minari's layout:
`observations [T+1, obs_dim]` (the reset observation, then every next observation; the
last one is the true final observation), `actions [T, act_dim]`, `rewards [T]`,
`terminations [T]`, `truncations [T]` (bool; only the last step may be set).

Atomicity: `write_dataset` builds the whole dataset in a hidden temporary folder under
the root (`.o2o_tmp/`, which Minari ignores) and renames it into place only once every
episode and the metadata are on disk, with a completion marker (`o2o_complete`) and a
content checksum in the metadata. An interrupted build leaves at most a hidden
temporary folder (removed by the next build), never a dataset that loads.

Speed: HDF5 costs ~0.3 ms per array per episode to open, so a 1M-transition dataset of
short episodes (hopper random: ~50k episodes) takes a minute to read episode by episode.
Next to `data/` we therefore keep `o2o_flat.npz`, the same arrays concatenated, written
with the dataset (or after the first slow read of a downloaded one). It is used only if
it was made from the current data files (their sizes and mtimes) and its contents match
the checksum in the metadata; otherwise the HDF5 file is read again.
"""
import hashlib
import json
import os
import pathlib
import shutil
import time
import uuid
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple

import numpy as np

COMPLETE_KEY = "o2o_complete"
CHECKSUM_KEY = "o2o_checksum"
TMP_DIRNAME = ".o2o_tmp"
CACHE_NAME = "o2o_flat.npz"
EPISODE_KEYS = ("observations", "actions", "rewards", "terminations", "truncations")


def dataset_root() -> pathlib.Path:
    """Minari's local dataset root (respects MINARI_DATASETS_PATH); created if missing."""
    from minari.storage.datasets_root_dir import get_dataset_path
    return pathlib.Path(get_dataset_path())


def dataset_dir(dataset_id: str) -> pathlib.Path:
    """Folder of a dataset id (`<root>/<namespace>/<name>-v<k>`)."""
    return dataset_root() / dataset_id


def data_path(dataset_id: str) -> pathlib.Path:
    return dataset_dir(dataset_id) / "data"


def exists_locally(dataset_id: str) -> bool:
    """True if a folder for this id is in the root (complete or not; `load` checks)."""
    return data_path(dataset_id).is_dir()


def read_raw_metadata(dataset_id: str) -> Dict[str, Any]:
    """Minari's metadata.json of a local dataset, as stored (spaces still serialised)."""
    with open(data_path(dataset_id) / "metadata.json") as f:
        return json.load(f)


# --------------------------------------------------------------------------------------
# Flat arrays, checksums and the flat cache
# --------------------------------------------------------------------------------------

def flatten(episodes) -> Dict[str, np.ndarray]:
    """Concatenate Minari-layout episodes; adds `episode_lengths [E]` (see `read_flat`)."""
    parts = {k: [np.asarray(ep[k]) for ep in episodes] for k in EPISODE_KEYS}
    lengths = np.array([len(r) for r in parts["rewards"]], np.int64)
    flat = {k: np.concatenate(v) for k, v in parts.items()}
    flat["episode_lengths"] = lengths
    return flat


def checksum_of_flat(flat: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """Counts and float64 sums of every array: cheap, catches truncated or altered data."""
    return {"num_transitions": int(len(flat["rewards"])),
            "num_episodes": int(len(flat["episode_lengths"])),
            **{k: float(np.sum(flat[k], dtype=np.float64)) for k in EPISODE_KEYS}}


def checksums_match(stored: Dict[str, Any], actual: Dict[str, Any]) -> Tuple[bool, str]:
    """(ok, what differs). Counts and flag sums must be equal, float sums close."""
    for k in ("num_transitions", "num_episodes", "terminations", "truncations"):
        if int(round(float(stored[k]))) != int(round(float(actual[k]))):
            return False, f"{k}: expected {stored[k]}, found {actual[k]}"
    n = max(1, int(stored["num_transitions"]))
    for k in ("observations", "actions", "rewards"):
        a, b = float(stored[k]), float(actual[k])
        if not np.isclose(a, b, rtol=1e-7, atol=1e-9 * n):
            return False, f"sum of {k}: expected {a!r}, found {b!r}"
    return True, ""


def _content_hash(path: pathlib.Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 24)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _signature(data_dir: pathlib.Path) -> Dict[str, list]:
    """Size and content hash of the stored data files, taken when the cache is written from
    a verified read: the flat cache is valid only for these very bytes (a size and mtime
    alone trusted a corrupted copy whose mtime was restored). Hashing reads the files once
    (~0.4 s for a 1M-transition dataset)."""
    sig = {}
    for p in sorted(data_dir.iterdir()):
        if p.is_file() and p.name != "metadata.json":
            sig[p.name] = [int(p.stat().st_size), _content_hash(p)]
    return sig


def cache_path(dataset_id: str) -> pathlib.Path:
    return dataset_dir(dataset_id) / CACHE_NAME


def _save_cache(path: pathlib.Path, flat: Dict[str, np.ndarray], signature) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **flat, _signature=np.array(json.dumps(signature)))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_cache(dataset_id: str, flat: Dict[str, np.ndarray]) -> None:
    """Best effort: store `flat` next to the dataset for fast loading (ignored if read-only)."""
    try:
        _save_cache(cache_path(dataset_id), flat, _signature(data_path(dataset_id)))
    except OSError:
        pass


def read_cache(dataset_id: str) -> Optional[Dict[str, np.ndarray]]:
    """The flat cache if present, readable and made from the current data files."""
    path = cache_path(dataset_id)
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            if json.loads(str(z["_signature"])) != _signature(data_path(dataset_id)):
                return None
            return {k: z[k] for k in (*EPISODE_KEYS, "episode_lengths")}
    except Exception:  # a damaged cache is just a cache miss
        return None


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------

def validate_episode(episode: Dict[str, np.ndarray], obs_dim: int, act_dim: int) -> None:
    """Raise ValueError unless `episode` has Minari's layout (see module docstring)."""
    missing = [k for k in EPISODE_KEYS if k not in episode]
    if missing:
        raise ValueError(f"episode is missing {missing}")
    t = len(episode["rewards"])
    if t == 0:
        raise ValueError("episode has no steps")
    shapes = {"observations": (t + 1, obs_dim), "actions": (t, act_dim), "rewards": (t,),
              "terminations": (t,), "truncations": (t,)}
    for k, shape in shapes.items():
        if np.shape(episode[k]) != shape:
            raise ValueError(f"episode {k} has shape {np.shape(episode[k])}, expected {shape}")
    ends = np.asarray(episode["terminations"], bool) | np.asarray(episode["truncations"], bool)
    if ends[:-1].any():
        raise ValueError("an episode may only terminate or truncate at its last step")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(root: Optional[pathlib.Path] = None) -> None:
    """Remove temporary build folders whose building process is gone."""
    tmp_root = (root or dataset_root()) / TMP_DIRNAME
    if not tmp_root.is_dir():
        return
    for d in tmp_root.iterdir():
        try:
            pid = int(d.name.rsplit("-", 2)[-2])
        except (ValueError, IndexError):
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)


def _ensure_namespaces(dataset_id: str) -> None:
    """Best effort: register the id's namespaces so `minari list local` shows them tidily."""
    try:
        from minari.dataset.minari_dataset import parse_dataset_id
        from minari.namespace import create_namespace, list_local_namespaces
        namespace = parse_dataset_id(dataset_id)[0]
        if namespace is not None and namespace not in list_local_namespaces():
            create_namespace(namespace)
    except Exception:  # a concurrent build created it, or an older Minari: harmless
        pass


def write_dataset(dataset_id: str, episodes: Iterable[Dict[str, np.ndarray]], *, env,
                  metadata: Dict[str, Any], force: bool = False,
                  started: Optional[float] = None,
                  log: Optional[Callable[[str], None]] = None) -> pathlib.Path:
    """Write `episodes` as the Minari dataset `dataset_id`, atomically; returns its folder.

    `env` is the Gymnasium env the data came from (its spec and spaces are recorded).
    `metadata` is merged into Minari's metadata (JSON-serialisable values). The episode
    iterable is consumed once, so it may be a generator. With `force`, an existing
    dataset of that id is replaced (only after the new one is complete). If `started`
    (a `time.time()` value) is given, `o2o_build_seconds` records the time from then to
    the end of writing. With `log`, progress lines (episodes written, ETA) are printed.
    """
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer
    from minari.dataset.minari_storage import MinariStorage

    root = dataset_root()
    final = root / dataset_id
    if final.exists() and not force:
        raise FileExistsError(f"dataset {dataset_id!r} already exists at {final}; "
                              "pass force=True (--force) to replace it")
    clean_stale_tmp(root)
    safe = dataset_id.replace("/", "__")
    tmp = root / TMP_DIRNAME / f"{safe}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    obs_space, act_space = env.observation_space, env.action_space
    obs_dim, act_dim = int(np.prod(obs_space.shape)), int(np.prod(act_space.shape))
    written = []
    progress = None
    if log is not None:
        from o2o_jax.progress import Progress
        total = len(episodes) if hasattr(episodes, "__len__") else 0
        progress = Progress(f"{dataset_id} write", total, "episodes", log=log)

    def buffers() -> Iterator[EpisodeBuffer]:
        for ep in episodes:
            if progress is not None:
                progress.update(len(written))
            validate_episode(ep, obs_dim, act_dim)
            ep = {"observations": np.asarray(ep["observations"], obs_space.dtype),
                  "actions": np.asarray(ep["actions"], act_space.dtype),
                  "rewards": np.asarray(ep["rewards"], np.float64),
                  "terminations": np.asarray(ep["terminations"], bool),
                  "truncations": np.asarray(ep["truncations"], bool)}
            written.append(ep)
            yield EpisodeBuffer(observations=ep["observations"], actions=ep["actions"],
                                rewards=ep["rewards"], terminations=ep["terminations"],
                                truncations=ep["truncations"])

    try:
        storage = MinariStorage.new(tmp / "data", observation_space=obs_space,
                                    action_space=act_space, env_spec=env.spec,
                                    data_format="hdf5")
        storage.update_metadata({"dataset_id": dataset_id, "minari_version": minari.__version__,
                                 **metadata})
        storage.update_episodes(buffers())
        if not written:
            raise ValueError(f"refusing to write dataset {dataset_id!r} with no transitions")
        flat = flatten(written)
        del written[:]
        checksum = checksum_of_flat(flat)
        storage.update_metadata({CHECKSUM_KEY: checksum,
                                 "o2o_num_transitions": checksum["num_transitions"],
                                 "o2o_num_episodes": checksum["num_episodes"],
                                 "dataset_size": storage.get_size(),
                                 **({} if started is None else
                                    {"o2o_build_seconds": round(time.time() - started, 1)}),
                                 COMPLETE_KEY: True})
        _save_cache(tmp / CACHE_NAME, flat, _signature(tmp / "data"))
        final.parent.mkdir(parents=True, exist_ok=True)
        _ensure_namespaces(dataset_id)
        trash = None
        if final.exists() and not force:
            # Another process finished the same dataset meanwhile: keep theirs.
            shutil.rmtree(tmp, ignore_errors=True)
            return final
        if final.exists():  # force: swap the old one out only now that the new one is done
            trash = root / TMP_DIRNAME / f"{safe}-old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(final, trash)
        os.rename(tmp, final)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------

def read_flat(dataset_id: str, total_episodes: int, data_format: str = "hdf5"
              ) -> Dict[str, np.ndarray]:
    """All episodes of a local dataset, concatenated (float64/bool, as stored).

    Returns `observations [N + E, obs_dim]` (per episode T+1 rows, Minari layout), `actions
    [N, act_dim]`, `rewards`, `terminations`, `truncations` [N] and `episode_lengths [E]`.
    Reads the HDF5 file directly (one read per array per episode); other formats go
    through Minari's episode iterator.
    """
    episodes = []
    if data_format == "hdf5":
        import h5py
        with h5py.File(data_path(dataset_id) / "main_data.hdf5", "r") as f:
            for i in range(total_episodes):
                g = f[f"episode_{i}"]
                episodes.append({k: g[k][()] for k in EPISODE_KEYS})
    else:
        from minari.dataset.minari_storage import MinariStorage
        storage = MinariStorage.read(data_path(dataset_id))
        for ep in storage.get_episodes(range(total_episodes)):
            episodes.append({k: np.asarray(ep[k]) for k in EPISODE_KEYS})
    if not episodes:
        raise ValueError("no episodes")
    return flatten(episodes)


def episodes_from_flat(flat: Dict[str, np.ndarray]) -> Iterator[Dict[str, np.ndarray]]:
    """Split flat arrays (`read_flat` / `read_cache` layout) back into episodes."""
    ends = np.cumsum(flat["episode_lengths"])
    starts = ends - flat["episode_lengths"]
    for e, (s, t) in enumerate(zip(starts, ends)):
        o = s + e  # each earlier episode holds one extra observation row
        yield {"observations": flat["observations"][o:t + e + 1],
               **{k: flat[k][s:t] for k in ("actions", "rewards", "terminations",
                                            "truncations")}}


def read_episodes(dataset_id: str) -> Iterator[Dict[str, np.ndarray]]:
    """The episodes of a complete local dataset (from the flat cache when it is valid)."""
    flat = read_cache(dataset_id)
    if flat is None:
        meta = read_raw_metadata(dataset_id)
        flat = read_flat(dataset_id, int(meta["total_episodes"]),
                         meta.get("data_format", "hdf5"))
    return episodes_from_flat(flat)
