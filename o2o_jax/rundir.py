"""Run directories, written and read back: one module for both sides of the format.

A run directory (`<run_dir>/<run_name>/`, written by `python -m experiments.train`) holds
`config.json`, `metrics.csv` (one row per seed per log point), `summary.json` when
finished, optionally `tensorboard/`, and `.lock` (held by the writing process).

Writing: `RunDir` (with its `RunDirLock`), `MetricsCSV`, `TensorBoard`.
Reading: `load_run` / `load_runs` and the curve helpers, numpy + csv only (no pandas, no
jax). Metrics are held column-wise: `run.metrics[column]` is a float array with NaN for
empty cells, except for text columns (`phase`), which are str arrays. Online rows are
indexed by `env_steps` (online env steps so far; the row's evaluation happened at that
point), offline rows by `step` (offline gradient steps). A `seed` column, when present,
splits the rows of a multi-seed (vmapped) run; without it (or where it is empty) the seed
is 0.
"""
import csv
import fcntl
import glob
import json
import math
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from o2o_jax import finite

METRICS_FILE, CONFIG_FILE, SUMMARY_FILE = "metrics.csv", "config.json", "summary.json"

# Config fields read with a default when absent (older or hand-written configs).
CONFIG_DEFAULTS = {"num_seeds": 1, "seed": 0}

# The index ("x") column of each phase.
PHASE_X = {"online": "env_steps", "offline": "step"}

_MISSING = object()


# ======================================================================= writing


class RunDirLockedError(RuntimeError):
    """Another live process holds the run directory."""


class RunDirLock:
    """An exclusive OS lock (flock) on <run>/.lock, held while a process writes the run
    directory; the OS releases it when the process dies, so a killed run never leaves a
    stale lock. The file names the holder (PID and host) for the refusal message."""

    def __init__(self, path: str):
        self.path = os.path.join(path, ".lock")
        self.fd = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirLockedError(
                f"run directory {os.path.dirname(self.path)} is in use by another process "
                f"({holder}); wait for it to finish or stop it, or give this run another "
                "--config.run_name") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}".encode())
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def to_scalar(value):
    arr = np.asarray(value)
    return float(arr.mean()) if arr.size else float("nan")


class MetricsCSV:
    """Append rows to a CSV whose columns may grow (the file is rewritten when they do).
    With `write=False` (processes other than a distributed run's primary) rows are only
    kept in memory."""

    def __init__(self, path: str, write: bool = True):
        self.path, self.writes = path, write
        self.columns = []
        self.rows = []
        if os.path.exists(path):  # resume: keep what is there
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or [])
                self.rows = list(reader)

    def truncate(self, num_rows: int):
        """Keep the first `num_rows` rows (resume: drop rows logged after the checkpoint)."""
        self.rows = self.rows[:num_rows]
        if not self.writes:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, self.columns, restval="")
            if self.columns:
                w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.path)

    def write(self, row: Dict[str, float]):
        row = {k: (v if isinstance(v, str) else to_scalar(v)) for k, v in row.items()}
        new_cols = [k for k in row if k not in self.columns]
        self.rows.append(row)
        self.columns += new_cols
        if not self.writes:
            return
        if new_cols or not os.path.exists(self.path):
            tmp = self.path + ".tmp"
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, self.columns, restval="")
                w.writeheader()
                w.writerows(self.rows)
            os.replace(tmp, self.path)
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, self.columns, restval="").writerow(row)


def _number_or_text(value):
    """A CSV cell read back: a float if it is one, else the text ('' stays '')."""
    if not isinstance(value, str):
        return value
    try:
        return float(value)
    except ValueError:
        return value


class TensorBoard:
    """Scalars of the metrics rows as TensorBoard event files, one run per seed:
    <dir>/seed<seed>/, tags `<phase>/<column>`, step = gradient step offline and env step
    online. Uses the `tensorboard` package's own writer (no TensorFlow needed). A resumed
    run rewrites the event files from the CSV rows it keeps (`RunDir.truncate`), so no
    point is logged twice."""

    def __init__(self, directory: str):
        try:
            from tensorboard.compat.proto import event_pb2, summary_pb2
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError as e:
            raise ImportError(
                "tensorboard=True needs the tensorboard package: pip install tensorboard "
                "(or pip install -e '.[tensorboard]'), or run with --config.tensorboard=False"
            ) from e
        self._event, self._summary, self._writer_cls = event_pb2, summary_pb2, EventFileWriter
        self.directory = directory
        self.writers = {}

    def write(self, row: Dict, wall_time: float):
        seed = row.get("seed", 0)
        key = int(seed) if not isinstance(seed, str) else seed
        if key not in self.writers:
            self.writers[key] = self._writer_cls(os.path.join(self.directory, f"seed{key}"))
        phase = row.get("phase", "train")
        step = int(row["env_steps"] if phase == "online" else row.get("step", 0))
        values = [self._summary.Summary.Value(tag=f"{phase}/{k}", simple_value=float(v))
                  for k, v in row.items()
                  if k not in ("phase", "seed", "step", "env_steps", "epoch", "wall_time")
                  and not isinstance(v, str) and np.isfinite(v)]
        if values:
            self.writers[key].add_event(self._event.Event(
                wall_time=wall_time, step=step, summary=self._summary.Summary(value=values)))

    def flush(self):
        for w in self.writers.values():
            w.flush()

    def close(self):
        for w in self.writers.values():
            w.close()


class RunDir:
    """<run_dir>/: config.json, metrics.csv, summary.json, optionally tensorboard/.

    metrics.csv's `wall_time`: seconds the run has run when the row was logged, over all its
    processes: a resume (`truncate`) or a branch (`copy_rows`) goes on from the last kept
    row's time (the time between processes is not counted).

    `write=False`: a reader of the directory that writes nothing (the non-primary
    processes of a distributed run; the primary writes)."""

    def __init__(self, path: str, config_json: Optional[str] = None,
                 tensorboard: bool = False, write: bool = True):
        """A writer first takes the directory's lock (RunDirLockedError if another live
        process holds it); `close` releases it."""
        self.path, self.writes = path, write
        self.lock = None
        if write:
            os.makedirs(path, exist_ok=True)
            self.lock = RunDirLock(path)
            self.lock.acquire()
        if config_json is not None:
            self.write_config(config_json)
        self.metrics = MetricsCSV(os.path.join(path, METRICS_FILE), write=write)
        self.tensorboard = (TensorBoard(os.path.join(path, "tensorboard"))
                            if tensorboard and write else None)
        self.start = time.time()

    def write_config(self, config_json: str):
        if not self.writes:
            return
        tmp = os.path.join(self.path, "config.json.tmp")
        with open(tmp, "w") as f:
            f.write(config_json)
        os.replace(tmp, os.path.join(self.path, CONFIG_FILE))

    def truncate(self, num_rows: int):
        """Keep the first `num_rows` metrics rows (a resume drops what was logged after its
        checkpoint). TensorBoard event files cannot be cut, so they are rewritten from the
        kept rows (their wall times become the time of the rewrite)."""
        self.metrics.truncate(num_rows)
        self._continue_clock()
        if self.tensorboard is None:
            return
        self.tensorboard.close()
        shutil.rmtree(self.tensorboard.directory, ignore_errors=True)
        self.tensorboard = TensorBoard(self.tensorboard.directory)
        now = time.time()
        for row in self.metrics.rows:
            self.tensorboard.write({k: _number_or_text(v) for k, v in row.items()}, now)
        self.tensorboard.flush()

    def copy_rows(self, rows: List[Dict[str, str]]):
        """Append rows as another run wrote them (a branch's history: wall_time kept)."""
        for row in rows:
            self.metrics.write(dict(row))
            if self.tensorboard is not None:
                self.tensorboard.write({k: _number_or_text(v) for k, v in row.items()
                                        if v != ""}, time.time())
        self._continue_clock()

    def _continue_clock(self):
        """The next row's wall_time goes on from the last row's that has a finite time (a
        new run's starts at 0)."""
        last = 0.0
        for row in reversed(self.metrics.rows):
            try:
                t = float(row.get("wall_time"))
            except (TypeError, ValueError):   # a row without a time
                continue
            if math.isfinite(t):
                last = t
                break
        self.start = time.time() - last

    def log(self, row: Dict[str, float]):
        self.metrics.write({"wall_time": time.time() - self.start, **row})
        if self.tensorboard is not None:
            self.tensorboard.write(
                {k: (v if isinstance(v, str) else to_scalar(v)) for k, v in row.items()},
                time.time())

    def flush(self):
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def close_tensorboard(self):
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    def close(self):
        """Flush and close the TensorBoard writers and release the directory's lock (safe
        to call more than once)."""
        self.close_tensorboard()
        if self.lock is not None:
            self.lock.release()

    def write_summary(self, summary: Dict):
        """summary.json, strict JSON: NaN/inf are written as null."""
        self.close_tensorboard()
        if not self.writes:
            return
        tmp = os.path.join(self.path, "summary.json.tmp")
        with open(tmp, "w") as f:
            json.dump(finite.json_safe(summary), f, indent=2, default=float, allow_nan=False)
        os.replace(tmp, os.path.join(self.path, SUMMARY_FILE))


# ======================================================================= reading





@dataclass
class Run:
    """One run directory read back."""
    path: str
    config: Dict[str, Any]
    metrics: Dict[str, np.ndarray]
    summary: Dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.path))

    @property
    def num_rows(self) -> int:
        return len(next(iter(self.metrics.values()))) if self.metrics else 0

    def get(self, key: str, default: Any = _MISSING) -> Any:
        """Config value by dotted key, e.g. run.get("online.replay"); absent keys give
        `default` if given, else CONFIG_DEFAULTS' value (num_seeds 1, seed 0), else None."""
        return config_value(self.config, key, default)

    def __repr__(self):
        return (f"Run({self.name!r}, algo={self.get('algo')!r}, "
                f"replay={self.get('online.replay')!r}, N={self.get('agent.num_members')!r}, "
                f"rows={self.num_rows})")


def config_value(config: Dict[str, Any], key: str, default: Any = _MISSING) -> Any:
    """Dotted lookup in a nested config dict ("agent.num_members"); `default` if absent
    (falling back to CONFIG_DEFAULTS, then None)."""
    node = config
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            if default is not _MISSING:
                return default
            return CONFIG_DEFAULTS.get(key)
    return node


def _column(values: List[str]) -> np.ndarray:
    """Float array (NaN for empty cells) if every non-empty cell parses, else str array."""
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        v = v.strip()
        if v == "":
            continue
        try:
            out[i] = float(v)
        except ValueError:
            return np.array([s.strip() for s in values], dtype=str)
    return out


def read_metrics_rows(path: str) -> List[Dict[str, str]]:
    """metrics.csv's rows as written (text cells); [] if there is no file."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f, restval=""))


def read_metrics_csv(path: str) -> Dict[str, np.ndarray]:
    """metrics.csv -> {column: array}; rows shorter than the header are padded empty."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return {}
        rows = [r for r in reader if r]
    cols = {}
    for j, name in enumerate(header):
        cols[name] = _column([r[j] if j < len(r) else "" for r in rows])
    return cols


def is_run_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, METRICS_FILE))


def saved_json(run_dir: str, name: str, warn: bool = False) -> Optional[Dict[str, Any]]:
    """A run directory's `name` (CONFIG_FILE, SUMMARY_FILE) as a dict; None when it is
    missing or unreadable (not written yet, or cut short). With `warn`, a file that is
    there but does not parse is named on stderr (a reader then goes on without it)."""
    path = os.path.join(run_dir, name)
    try:
        with open(path) as f:
            return json.load(f)
    except OSError:
        return None
    except ValueError as e:
        if warn:
            print(f"WARNING: {path} is not valid JSON ({e}; cut short by a kill?): read "
                  "without it", file=sys.stderr)
        return None


def load_run(run_dir: str) -> Run:
    """Read a run directory; FileNotFoundError (with a hint) if it has no metrics.csv."""
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"{run_dir}: no such directory")
    if not is_run_dir(run_dir):
        hint = ""
        subs = sorted(d for d in glob.glob(os.path.join(run_dir, "*")) if is_run_dir(d))
        if subs:
            shown = ", ".join(subs[:5]) + (", ..." if len(subs) > 5 else "")
            hint = f"; it contains run directories: {shown}"
        raise FileNotFoundError(
            f"{run_dir}: no {METRICS_FILE} here, so this is not a run directory written "
            f"by experiments.train{hint}")
    return Run(path=run_dir, config=saved_json(run_dir, CONFIG_FILE, warn=True) or {},
               metrics=read_metrics_csv(os.path.join(run_dir, METRICS_FILE)),
               summary=saved_json(run_dir, SUMMARY_FILE, warn=True) or {})


def expand_run_dirs(patterns: Union[str, Sequence[str]]) -> List[str]:
    """Globs (or plain paths; a str may hold several separated by os.pathsep) -> the
    sorted, de-duplicated directories that match."""
    if isinstance(patterns, str):
        patterns = [p for p in patterns.split(os.pathsep) if p]
    dirs = []
    for p in patterns:
        p = os.path.expanduser(p)
        dirs += [d for d in (sorted(glob.glob(p)) or []) if os.path.isdir(d)]
    seen, out = set(), []
    for d in dirs:
        key = os.path.realpath(d)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def load_runs(patterns: Union[str, Sequence[str]], verbose: bool = True) -> List[Run]:
    """Every run directory matching the globs; directories without metrics.csv are
    skipped (with a note on stderr when verbose)."""
    runs = []
    for d in expand_run_dirs(patterns):
        if is_run_dir(d):
            runs.append(load_run(d))
        elif verbose:
            print(f"skipping {d}: no {METRICS_FILE}", file=sys.stderr)
    return runs


# --------------------------------------------------------------------------- curves

def _seed_column(run: Run) -> np.ndarray:
    seed = run.metrics.get("seed")
    if seed is None or seed.dtype.kind not in "fiu":
        return np.zeros(run.num_rows)
    return np.where(np.isnan(seed), 0.0, seed)


def seeds(run: Run) -> np.ndarray:
    """The run's seed ids, sorted (the row order of learning_curve's values)."""
    return np.unique(_seed_column(run)).astype(int) if run.num_rows else np.zeros(0, int)


def has_metric(run: Run, metric: str, phase: Optional[str] = "online") -> bool:
    """Whether any row of `phase` has a finite value of `metric`."""
    col = run.metrics.get(metric)
    if col is None or col.dtype.kind != "f":
        return False
    return bool(np.isfinite(col[_phase_mask(run, phase)]).any())


def _phase_mask(run: Run, phase: Optional[str]) -> np.ndarray:
    if phase is None:
        return np.ones(run.num_rows, bool)
    ph = run.metrics.get("phase")
    if ph is None:
        raise KeyError(f"{run.path}: metrics.csv has no 'phase' column")
    return ph == phase


def learning_curve(run: Run, metric: str = "normalized_score", phase: Optional[str] = "online",
                   x: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(xs [T], values [S, T]) of `metric` over the rows of `phase`.

    xs are the sorted distinct x values (env_steps online, step offline; `x` overrides)
    of rows where the metric is present; values[s, t] is seed s's value there (seeds in
    increasing order, see `seeds`), NaN where that seed has none. If a (seed, x) pair
    occurs twice (a resumed run), the later row wins.
    """
    if metric not in run.metrics:
        raise KeyError(f"{run.path}: metric {metric!r} not in metrics.csv "
                       f"(columns: {', '.join(run.metrics)})")
    x = x or PHASE_X.get(phase, "step")
    if x not in run.metrics:
        raise KeyError(f"{run.path}: x column {x!r} not in metrics.csv")
    vals = run.metrics[metric]
    if vals.dtype.kind != "f":
        raise TypeError(f"{run.path}: metric {metric!r} is not numeric")
    seed_col = _seed_column(run)
    seed_ids = seeds(run)
    mask = _phase_mask(run, phase) & np.isfinite(vals) & np.isfinite(run.metrics[x])
    xs = np.unique(run.metrics[x][mask])
    out = np.full((len(seed_ids), len(xs)), np.nan)
    rows = np.nonzero(mask)[0]
    si = np.searchsorted(seed_ids, seed_col[rows])
    ti = np.searchsorted(xs, run.metrics[x][rows])
    for s, t, v in zip(si, ti, vals[rows]):   # in row order, so a later row wins
        out[s, t] = v
    return xs, out


def stack_curves(curves: Iterable[Tuple[np.ndarray, np.ndarray]]
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """Put several (xs, values[S_i, T_i]) on the union of their xs: (xs, values[sum S_i, T]),
    NaN where a curve has no point. Used to pool the seeds of several runs."""
    curves = [(np.asarray(x, float), np.atleast_2d(np.asarray(y, float))) for x, y in curves]
    if not curves:
        return np.zeros(0), np.zeros((0, 0))
    xs = np.unique(np.concatenate([x for x, _ in curves]))
    blocks = []
    for x, y in curves:
        block = np.full((y.shape[0], len(xs)), np.nan)
        block[:, np.searchsorted(xs, x)] = y
        blocks.append(block)
    return xs, np.concatenate(blocks, axis=0)


def group_curve(runs: Sequence[Run], metric: str = "normalized_score",
                phase: Optional[str] = "online") -> Tuple[np.ndarray, np.ndarray]:
    """The seeds of all `runs` that have `metric` pooled into one (xs, values[S, T])."""
    return stack_curves(learning_curve(r, metric, phase) for r in runs
                        if has_metric(r, metric, phase))


def epoch_grid(run: Run, metric: str = "normalized_score",
               phase: Optional[str] = "online") -> np.ndarray:
    """values [S, E + 1]: column e is epoch e (0 to the phase's last epoch), row s seed s
    (as `seeds`); NaN where a seed has no finite value there (`learning_curve` over
    x="epoch", laid out so that a missing epoch keeps its column). All NaN where the run
    has no such metric; no columns where its rows of `phase` have no epoch."""
    epoch = run.metrics.get("epoch")
    in_phase = _phase_mask(run, phase)
    known = (in_phase & np.isfinite(epoch) if epoch is not None and epoch.dtype.kind == "f"
             else np.zeros(run.num_rows, bool))
    grid = np.full((len(seeds(run)), int(epoch[known].max()) + 1 if known.any() else 0),
                   np.nan)
    if known.any() and has_metric(run, metric, phase):
        xs, ys = learning_curve(run, metric, phase, x="epoch")
        grid[:, xs.astype(int)] = ys
    return grid


def final_values(run: Run, metric: str = "normalized_score",
                 phase: Optional[str] = "online") -> np.ndarray:
    """Per seed, the metric's value at the last x where that seed has one (NaN if none)."""
    _, ys = learning_curve(run, metric, phase)
    out = np.full(ys.shape[0], np.nan)
    for s, row in enumerate(ys):
        finite = np.nonzero(np.isfinite(row))[0]
        if finite.size:
            out[s] = row[finite[-1]]
    return out


# --------------------------------------------------------------------------- grouping

def _sort_key(value):
    return (value is None, str(type(value).__name__), value if value is not None else 0)


def group_runs(runs: Iterable[Run], key: Union[str, Sequence[str]]) -> Dict[Any, List[Run]]:
    """{config value: runs} for a dotted config key (or tuple of values for several keys),
    ordered by value. Values that are lists (e.g. hidden_dims) become tuples."""
    keys = [key] if isinstance(key, str) else list(key)
    groups: Dict[Any, List[Run]] = {}
    for r in runs:
        vals = tuple(_hashable(r.get(k)) for k in keys)
        groups.setdefault(vals[0] if isinstance(key, str) else vals, []).append(r)
    try:
        return dict(sorted(groups.items(), key=lambda kv: _sort_key(kv[0])))
    except TypeError:
        return groups


def _hashable(v):
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


def filter_runs(runs: Iterable[Run], where: Dict[str, Any]) -> List[Run]:
    """The runs whose config matches every {dotted key: value} in `where`."""
    return [r for r in runs if all(_hashable(r.get(k)) == _hashable(v) for k, v in where.items())]


LABEL_FIELDS = ("env", "dataset.kind", "algo", "online.replay", "agent.num_members")
_SHORT = {"agent.num_members": "N", "online.replay": "", "algo": "", "env": "",
          "dataset.kind": ""}


def varying_fields(runs: Sequence[Run], candidates: Sequence[str] = LABEL_FIELDS) -> List[str]:
    """The candidate config keys whose value differs between the runs."""
    return [k for k in candidates if len({repr(r.get(k)) for r in runs}) > 1]


def run_label(run: Run, fields: Optional[Sequence[str]] = None) -> str:
    """A short label from config fields, e.g. "off2on balanced N=5"; the directory name
    if the config has none of them."""
    fields = ("algo", "online.replay", "agent.num_members") if fields is None else fields
    parts = []
    for k in fields:
        v = run.get(k)
        if v is None or v == "":
            continue
        short = _SHORT.get(k, k.split(".")[-1])
        parts.append(f"{short}={v}" if short else str(v))
    return " ".join(parts) or run.name


def run_labels(runs: Sequence[Run]) -> List[str]:
    """Labels that tell the runs apart: the config fields that vary between them (or
    algo/replay/N when none do), with the directory name added where still ambiguous."""
    fields = varying_fields(runs) if len(runs) > 1 else None
    labels = [run_label(r, fields or None) for r in runs]
    counts = {lab: labels.count(lab) for lab in labels}
    return [f"{lab} ({r.name})" if counts[lab] > 1 and lab != r.name else lab
            for lab, r in zip(labels, runs)]
