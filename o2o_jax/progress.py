"""Progress lines with elapsed time and ETA for anything long (training, builds, rollouts)."""
import sys
import time
from typing import Callable, Optional


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
