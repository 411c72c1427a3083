"""Run directories: resolved config, metrics CSV, summary, and a progress line with ETA."""
import csv
import json
import math
import os
import sys
import time
from typing import Dict, Optional

import numpy as np


def to_scalar(value):
    arr = np.asarray(value)
    return float(arr.mean()) if arr.size else float("nan")


class MetricsCSV:
    """Append rows to a CSV whose columns may grow (the file is rewritten when they do)."""

    def __init__(self, path: str):
        self.path = path
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
        if new_cols or not os.path.exists(self.path):
            self.columns += new_cols
            tmp = self.path + ".tmp"
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, self.columns, restval="")
                w.writeheader()
                w.writerows(self.rows)
            os.replace(tmp, self.path)
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, self.columns, restval="").writerow(row)


class Progress:
    """A one-line progress report with rate and ETA, printed at most every `every` s."""

    def __init__(self, total: int, desc: str, every: float = 2.0, stream=sys.stderr,
                 initial: int = 0):
        """`initial`: work already done before this process (resume); excluded from rate."""
        self.total, self.desc, self.every, self.stream = total, desc, every, stream
        self.initial = initial
        self.start = time.time()
        self.last = 0.0
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def update(self, done: int, extra: str = "", force: bool = False):
        now = time.time()
        if not force and now - self.last < self.every and done < self.total:
            return
        self.last = now
        elapsed = now - self.start
        rate = (done - self.initial) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else math.inf
        frac = done / max(self.total, 1)
        bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
        line = (f"{self.desc} [{bar}] {done}/{self.total} {100 * frac:5.1f}% "
                f"{rate:8.1f}/s elapsed {format_seconds(elapsed)} ETA {format_seconds(eta)}"
                + (f" | {extra}" if extra else ""))
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        if self.tty and done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def format_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class RunDir:
    """<run_dir>/: config.json, metrics.csv, summary.json."""

    def __init__(self, path: str, config_json: Optional[str] = None):
        self.path = path
        os.makedirs(path, exist_ok=True)
        if config_json is not None:
            with open(os.path.join(path, "config.json"), "w") as f:
                f.write(config_json)
        self.metrics = MetricsCSV(os.path.join(path, "metrics.csv"))
        self.start = time.time()

    def log(self, row: Dict[str, float]):
        self.metrics.write({"wall_time": time.time() - self.start, **row})

    def write_summary(self, summary: Dict):
        tmp = os.path.join(self.path, "summary.json.tmp")
        with open(tmp, "w") as f:
            json.dump(summary, f, indent=2, default=float)
        os.replace(tmp, os.path.join(self.path, "summary.json"))
