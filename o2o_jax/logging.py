"""Run directories (resolved config, metrics CSV, summary) and progress lines with ETA."""
import csv
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from typing import Callable, Dict, Optional

import numpy as np

from o2o_jax import finite


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


def format_seconds(seconds: float) -> str:
    """1h02m, 3m07s, 12s."""
    seconds = max(0.0, float(seconds))
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{seconds:.0f}s"


class Progress:
    """Prints `label count/total (pct) elapsed ETA [extra]` lines, rate-limited."""

    def __init__(self, label: str, total: int, unit: str = "", every_s: float = 10.0,
                 log: Optional[Callable[[str], None]] = None, initial: int = 0):
        """`initial`: work already done before this run (a resumed job); the ETA uses the
        rate of this run only."""
        self.label, self.total, self.unit, self.every_s = label, max(int(total), 1), unit, every_s
        self.log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        self.start = time.time()
        self.initial = self.count = int(initial)
        self._last_print = -float("inf")

    @property
    def elapsed(self) -> float:
        return time.time() - self.start

    def line(self, extra: str = "") -> str:
        frac = min(self.count / self.total, 1.0)
        done_here = self.count - self.initial
        eta_s = "?"
        if done_here > 0:
            eta_s = format_seconds(self.elapsed * max(self.total - self.count, 0) / done_here)
        unit = f" {self.unit}" if self.unit else ""
        rate = done_here / self.elapsed if self.elapsed > 0 else 0.0
        # Slow units (epochs) read better as time per unit than as 0.0/s.
        speed = (f"{rate:,.1f}{unit}/s" if rate >= 1 or done_here == 0 else
                 f"{format_seconds(1 / rate)}/{self.unit.rstrip('s') or 'item'}")
        text = (f"[{self.label}] {self.count:,}/{self.total:,}{unit} ({100 * frac:.0f}%) "
                f"{speed} elapsed {format_seconds(self.elapsed)} ETA {eta_s}")
        return f"{text} | {extra}" if extra else text

    def update(self, count: int, extra="", force: bool = False) -> None:
        """Set the absolute count; print if `every_s` passed since the last line (or force).

        `extra` is a string or a zero-argument callable, called only when a line is printed.
        """
        self.count = int(count)
        now = time.time()
        if force or now - self._last_print >= self.every_s:
            self._last_print = now
            self.log(self.line(extra() if callable(extra) else extra))

    def done(self, extra: str = "") -> None:
        unit = f" {self.unit}" if self.unit else ""
        msg = f"[{self.label}] done: {self.count:,}{unit} in {format_seconds(self.elapsed)}"
        self.log(f"{msg} | {extra}" if extra else msg)


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
        self.metrics = MetricsCSV(os.path.join(path, "metrics.csv"), write=write)
        self.tensorboard = (TensorBoard(os.path.join(path, "tensorboard"))
                            if tensorboard and write else None)
        self.start = time.time()

    def write_config(self, config_json: str):
        if not self.writes:
            return
        tmp = os.path.join(self.path, "config.json.tmp")
        with open(tmp, "w") as f:
            f.write(config_json)
        os.replace(tmp, os.path.join(self.path, "config.json"))

    def truncate(self, num_rows: int):
        """Keep the first `num_rows` metrics rows (a resume drops what was logged after its
        checkpoint). TensorBoard event files cannot be cut, so they are rewritten from the
        kept rows (their wall times become the time of the rewrite)."""
        self.metrics.truncate(num_rows)
        if self.tensorboard is None:
            return
        self.tensorboard.close()
        shutil.rmtree(self.tensorboard.directory, ignore_errors=True)
        self.tensorboard = TensorBoard(self.tensorboard.directory)
        now = time.time()
        for row in self.metrics.rows:
            self.tensorboard.write({k: _number_or_text(v) for k, v in row.items()}, now)
        self.tensorboard.flush()

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
        os.replace(tmp, os.path.join(self.path, "summary.json"))
