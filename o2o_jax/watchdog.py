"""The stall watchdog: says so when a run has made no progress for a long time while its
process used (almost) no CPU, i.e. it looks stuck rather than slow.

Every `progress.Progress` update is a heartbeat (`beat`). A daemon thread (`start`, called
by every entry point through `experiments.cli`) checks every `after_s / 4` seconds: with
no heartbeat for `after_s` seconds and less than `idle_fraction` of one core used by this
process over that time, it prints one paragraph to stderr (once per stall) and writes the
Python stacks of every thread to a file it names. It never stops the run: a stalled
compiled program cannot be interrupted from inside, and a run that is only slow must go on.
A busy process (compiling, a long evaluation) is never reported, however long it takes.

What it cannot see: a hang inside native code that holds Python's GIL (the check is a
Python thread); and on a GPU a single device program running longer than `after_s`
between progress updates would look idle to the host and be reported (the chunks of this
project's loops take seconds).

`O2O_STALL_MINUTES` sets `after_s` (default 10 minutes; 0 turns the watchdog off).

Why it exists: a compiled program that never completes (jaxlib 0.10's batched CPU LAPACK
kernels deadlocking XLA's thread pool, see `networks.orthogonal`) left a run silent, with no
CPU use, for as long as nobody looked.
"""
import faulthandler
import math
import os
import sys
import tempfile
import threading
import time
from typing import Callable, Optional

_last = {"t": time.monotonic(), "what": "start-up"}
_lock = threading.Lock()


def beat(what: str) -> None:
    """A heartbeat: `what` made progress now."""
    with _lock:
        _last["t"], _last["what"] = time.monotonic(), what


def last_beat():
    """(monotonic time, what) of the newest heartbeat."""
    with _lock:
        return _last["t"], _last["what"]


def process_cpu_seconds() -> float:
    """User + system CPU time of this process (all threads)."""
    t = os.times()
    return t.user + t.system


def after_seconds_from_env(default_minutes: float = 10.0) -> float:
    """`O2O_STALL_MINUTES` in seconds (0: off); a value that is not a number is refused."""
    raw = os.environ.get("O2O_STALL_MINUTES", "").strip()
    if not raw:
        return 60.0 * default_minutes
    fix = "set it to e.g. 10, or 0 to turn the stall watchdog off"
    try:
        minutes = float(raw)
    except ValueError:
        raise ValueError(f"O2O_STALL_MINUTES={raw!r} is not a number of minutes: {fix}") from None
    if not (math.isfinite(minutes) and minutes >= 0):
        raise ValueError(f"O2O_STALL_MINUTES={raw!r} must be a finite number of minutes "
                         f">= 0: {fix}")
    return 60.0 * minutes


class Watchdog:
    """`check()` is the whole decision (tested with a fake clock and CPU meter); `start()`
    runs it in a daemon thread."""

    def __init__(self, after_s: float, log: Optional[Callable[[str], None]] = None,
                 clock: Callable[[], float] = time.monotonic,
                 cpu: Callable[[], float] = process_cpu_seconds,
                 heartbeat: Callable[[], tuple] = last_beat, idle_fraction: float = 0.1,
                 stacks_dir: Optional[str] = None):
        self.after_s, self.idle_fraction = float(after_s), float(idle_fraction)
        self.log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        self.clock, self.cpu, self.heartbeat = clock, cpu, heartbeat
        self.stacks_dir = stacks_dir or tempfile.gettempdir()
        self._cpu_marks = [(clock(), cpu())]       # (time, cpu seconds), oldest first
        self._reported_beat = None                 # the heartbeat a report was made for
        self._stop = threading.Event()

    def _window_start(self, now: float, cpu_now: float):
        """Records (now, cpu_now) and returns the baseline mark: the newest one at least
        `after_s` old (None if there is none yet); older marks are dropped."""
        self._cpu_marks.append((now, cpu_now))
        old = [i for i, m in enumerate(self._cpu_marks) if now - m[0] >= self.after_s]
        if not old:
            return None
        del self._cpu_marks[:old[-1]]
        return self._cpu_marks[0]

    def check(self) -> Optional[str]:
        """The report if the run is stalled now and was not reported for this stall."""
        now, cpu_now = self.clock(), self.cpu()
        base = self._window_start(now, cpu_now)
        beat_t, what = self.heartbeat()
        silent = now - beat_t
        if base is None or silent < self.after_s or self._reported_beat == beat_t:
            return None
        t0, used = base[0], cpu_now - base[1]
        if used > self.idle_fraction * (now - t0):
            return None
        self._reported_beat = beat_t
        path = self._dump_stacks()
        from o2o_jax.progress import format_seconds   # progress imports this module
        return (f"stall watchdog: no progress for {format_seconds(silent)} (last: {what}), "
                f"and this process used {100 * used / max(now - t0, 1e-9):.0f}% of one core "
                f"over the last {format_seconds(now - t0)}: it looks stuck, not slow. The "
                f"Python stacks of every thread are in {path}. Interrupt it and run the same "
                "command again: it resumes from the last checkpoint. If it stops at the same "
                "point again, report it with that file (O2O_STALL_MINUTES sets this warning's "
                "delay, 0 turns it off)")

    def _dump_stacks(self) -> str:
        try:
            fd, path = tempfile.mkstemp(prefix=f"o2o_stall_{os.getpid()}_", suffix=".txt",
                                        dir=self.stacks_dir)
            with os.fdopen(fd, "w") as f:
                faulthandler.dump_traceback(file=f, all_threads=True)
        except OSError as exc:
            return f"(not written: {exc})"
        return path

    def start(self) -> threading.Thread:
        """Check every after_s / 4 seconds in a daemon thread, until `stop()`."""
        def loop():
            while not self._stop.wait(max(self.after_s / 4, 0.05)):
                try:
                    msg = self.check()
                    if msg:
                        self.log(msg)
                except Exception:  # noqa: BLE001 - a diagnostic must never disturb the run
                    return

        thread = threading.Thread(target=loop, name="o2o-stall-watchdog", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()


def start_from_env() -> Optional[Watchdog]:
    """The watchdog of an entry point: started unless O2O_STALL_MINUTES=0."""
    after_s = after_seconds_from_env()
    if after_s <= 0:
        return None
    dog = Watchdog(after_s)
    dog.start()
    return dog
