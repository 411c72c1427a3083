"""Progress lines with elapsed time and ETA for anything long (training, builds, rollouts)."""
import sys
import time
from typing import Callable, Optional

from o2o_jax import watchdog


def format_seconds(seconds: float) -> str:
    """1h02m, 3m07s, 12s."""
    seconds = max(0.0, float(seconds))
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{seconds:.0f}s"


class Progress:
    """Prints `label count/total (pct) rate elapsed ETA [extra]` lines, rate-limited.

    The rate and the ETA come from the recent rate: the progress made over the last
    `window_s` seconds of updates (at least the last two updates), not the mean since the
    start, which start-up, compilation and a changing speed would skew. The interval
    before the first update (start-up, compilation) counts only until a second update
    exists. `stops_early`: the job may stop before `total` at a point not known in advance
    (e.g. "at the medium point"); the ETA then reads as an upper bound, to `total`.
    `first_unit_differs`: why the first unit is not like the rest (e.g. "it has 5x the
    updates and the compilation"); until a second unit is timed the ETA then reads as
    unknown with that reason, instead of extrapolating the first unit.
    """

    def __init__(self, label: str, total: int, unit: str = "", every_s: float = 10.0,
                 log: Optional[Callable[[str], None]] = None, initial: int = 0,
                 window_s: float = 120.0, stops_early: Optional[str] = None,
                 clock: Callable[[], float] = None,
                 first_unit_differs: Optional[str] = None):
        """`initial`: work already done before this run (a resumed job); the ETA uses the
        rate of this run only. `clock`: seconds (default time.time)."""
        self.label, self.total, self.unit, self.every_s = label, max(int(total), 1), unit, every_s
        self.log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        self.clock = clock or (lambda: time.time())
        self.window_s, self.stops_early = float(window_s), stops_early
        self.first_unit_differs = first_unit_differs
        self.start = self.clock()
        self.initial = self.count = int(initial)
        self._samples = [(self.start, self.count)]      # (time, count) of recent updates
        self._last_print = -float("inf")
        watchdog.beat(label)

    @property
    def elapsed(self) -> float:
        return self.clock() - self.start

    def rate(self) -> float:
        """Units per second over the recent window, up to the newest update (0.0 before
        any progress)."""
        if len(self._samples) < 2:
            return 0.0
        now_t, now_c = self._samples[-1]
        # The start's interval (start-up, compilation) only until a second update exists.
        past = self._samples[1:-1] if len(self._samples) > 2 else self._samples[:1]
        within = [p for p in past if now_t - p[0] <= self.window_s]
        base = within[0] if within else past[-1]   # oldest inside the window, else newest
        dt, dc = now_t - base[0], now_c - base[1]
        return dc / dt if dt > 0 and dc > 0 else 0.0

    def _record(self, now: float) -> None:
        # Updates closer than window_s / 120 to the previous kept one replace the newest
        # sample (a rollout updates every env step): the window holds ~120 samples at most.
        if len(self._samples) > 2 and now - self._samples[-2][0] < self.window_s / 120:
            self._samples[-1] = (now, self.count)
            return
        self._samples.append((now, self.count))
        # Keep the start, the updates inside the window and the last one before it.
        old = [i for i, p in enumerate(self._samples) if i > 0 and now - p[0] > self.window_s]
        if len(old) > 1:
            del self._samples[1:old[-1]]

    def line(self, extra: str = "") -> str:
        frac = min(self.count / self.total, 1.0)
        done_here = self.count - self.initial
        rate = self.rate()
        eta_s = "?"
        if self.first_unit_differs and len(self._samples) <= 2 and self.count < self.total:
            one = self.unit.rstrip("s") or "unit"
            eta_s = (f"? (known after the next {one}: the first is not like the rest, "
                     f"{self.first_unit_differs})")
        elif rate > 0:
            eta_s = format_seconds(max(self.total - self.count, 0) / rate)
            if self.stops_early:
                eta_s = (f"<= {eta_s} (to {self.total:,}; stops earlier "
                         f"{self.stops_early}, when is not known in advance)")
        elif self.stops_early:
            eta_s = f"? (stops {self.stops_early} or at {self.total:,})"
        unit = f" {self.unit}" if self.unit else ""
        # Slow units (epochs) read better as time per unit than as 0.0/s.
        speed = (f"{rate:,.1f}{unit}/s" if rate >= 1 or done_here == 0 or rate == 0 else
                 f"{format_seconds(1 / rate)}/{self.unit.rstrip('s') or 'item'}")
        text = (f"[{self.label}] {self.count:,}/{self.total:,}{unit} ({100 * frac:.0f}%) "
                f"{speed} elapsed {format_seconds(self.elapsed)} ETA {eta_s}")
        return f"{text} | {extra}" if extra else text

    def update(self, count: int, extra="", force: bool = False) -> None:
        """Set the absolute count; print if `every_s` passed since the last line (or force).

        `extra` is a string or a zero-argument callable, called only when a line is printed.
        """
        self.count = int(count)
        now = self.clock()
        self._record(now)
        watchdog.beat(self.label)
        if force or now - self._last_print >= self.every_s:
            self._last_print = now
            self.log(self.line(extra() if callable(extra) else extra))

    def done(self, extra: str = "") -> None:
        unit = f" {self.unit}" if self.unit else ""
        msg = f"[{self.label}] done: {self.count:,}{unit} in {format_seconds(self.elapsed)}"
        self.log(f"{msg} | {extra}" if extra else msg)
