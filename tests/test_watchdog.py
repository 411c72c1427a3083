"""The stall watchdog: reports a silent, idle process once per stall, never a busy one."""
import os
import time

import pytest

from o2o_jax import progress, watchdog


class Fake:
    """A clock, a CPU meter and a heartbeat the test moves by hand."""

    def __init__(self):
        self.t, self.cpu_s, self.beat_t = 0.0, 0.0, 0.0

    def run(self, seconds, cores):
        self.t += seconds
        self.cpu_s += seconds * cores

    def dog(self, tmp_path, after_s=600.0):
        return watchdog.Watchdog(after_s, clock=lambda: self.t, cpu=lambda: self.cpu_s,
                                 heartbeat=lambda: (self.beat_t, "offline iql"),
                                 stacks_dir=str(tmp_path))


def test_idle_and_silent_is_reported_once_per_stall(tmp_path):
    f = Fake()
    dog = f.dog(tmp_path)
    for _ in range(3):                      # 450 s silent: not yet
        f.run(150, cores=0.0)
        assert dog.check() is None
    f.run(150, cores=0.0)                   # 600 s silent, ~0 CPU
    msg = dog.check()
    assert msg and "no progress for 10m00s (last: offline iql)" in msg
    assert "0% of one core" in msg and "resumes from the last checkpoint" in msg
    (path,) = [p for p in tmp_path.iterdir() if p.name.startswith(f"o2o_stall_{os.getpid()}_")]
    assert str(path) in msg and "test_idle_and_silent" in path.read_text()
    f.run(150, cores=0.0)
    assert dog.check() is None              # the same stall: said once
    f.beat_t = f.t                          # progress, then a second stall
    f.run(600, cores=0.0)
    assert dog.check() is not None


def test_a_busy_process_is_never_reported(tmp_path):
    f = Fake()
    dog = f.dog(tmp_path)
    for _ in range(20):                     # 50 min without a heartbeat, compiling on 2 cores
        f.run(150, cores=2.0)
        assert dog.check() is None


def test_idle_is_measured_over_the_window_not_since_the_start(tmp_path):
    """Busy for an hour, then idle: reported once the idle time fills a window (the CPU of
    the busy hour does not hide the stall)."""
    f = Fake()
    dog = f.dog(tmp_path)
    for _ in range(24):
        f.run(150, cores=2.0)
        assert dog.check() is None
    for _ in range(3):
        f.run(150, cores=0.0)
        assert dog.check() is None          # the window still holds busy time
    f.run(150, cores=0.0)
    f.run(1, cores=0.0)
    assert dog.check() is not None


def test_thread_reports_a_real_idle_stall(tmp_path):
    lines = []
    old = time.monotonic() - 100.0
    dog = watchdog.Watchdog(0.4, log=lines.append, heartbeat=lambda: (old, "a stuck chunk"),
                            idle_fraction=0.5, stacks_dir=str(tmp_path))
    thread = dog.start()
    deadline = time.monotonic() + 10.0
    while not lines and time.monotonic() < deadline:
        time.sleep(0.1)                     # idle: sleeping
    dog.stop()
    thread.join(timeout=5.0)
    assert lines and "last: a stuck chunk" in lines[0]
    assert not thread.is_alive()


def test_progress_updates_are_heartbeats():
    p = progress.Progress("offline test", 10, log=lambda s: None)
    before = watchdog.last_beat()[0]
    time.sleep(0.01)
    p.update(3)
    t, what = watchdog.last_beat()
    assert what == "offline test" and t > before


def test_env_setting(monkeypatch):
    monkeypatch.setenv("O2O_STALL_MINUTES", "0")
    assert watchdog.start_from_env() is None
    monkeypatch.setenv("O2O_STALL_MINUTES", "2.5")
    assert watchdog.after_seconds_from_env() == 150.0
    monkeypatch.setenv("O2O_STALL_MINUTES", "ten")
    with pytest.raises(ValueError, match="O2O_STALL_MINUTES='ten' is not a number"):
        watchdog.after_seconds_from_env()
    for bad in ("inf", "nan", "-1"):
        monkeypatch.setenv("O2O_STALL_MINUTES", bad)
        with pytest.raises(ValueError, match="must be a finite number of minutes >= 0"):
            watchdog.after_seconds_from_env()
    monkeypatch.delenv("O2O_STALL_MINUTES")
    assert watchdog.after_seconds_from_env() == 600.0
