"""What happens when things go wrong: non-finite values, a run directory in use, a failed
resume, bad input, and the entry points' one-paragraph errors (checked in subprocesses)."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from o2o_jax import checkpoints, envs, pipeline
from o2o_jax.data import loader, store
from o2o_jax.rundir import RunDirLock, RunDirLockedError
from tests.helpers import scripted_episode
from tests.helpers import ROOT, tiny_config

TRAIN = [sys.executable, "-m", "experiments.train", "--config=configs/hopper_medium.py:quick"]
TINY = [f"--config.{k}={v}" for k, v in (
    ("dataset.kind", "random"), ("dataset.build_transitions", 1500),
    ("agent.hidden_dims", "(8, 8)"), ("agent.num_members", 2), ("agent.bc_steps", 5),
    ("offline.steps", 40), ("offline.chunk", 20), ("offline.eval_interval", 20),
    ("offline.eval_episodes", 1), ("offline.batch_size", 32),
    ("online.epochs", 2), ("online.env_steps_per_epoch", 40),
    ("online.updates_per_epoch", 10), ("online.first_epoch_multiplier", 1),
    ("online.eval_episodes", 1), ("online.batch_size", 32), ("online.dr_batch_size", 32),
    ("online.dr_hidden_dims", "(8, 8)"), ("checkpoint.every_offline_steps", 20),
    ("checkpoint.every_online_epochs", 1))]


def train(args, minari_root, timeout=600):
    env = {**os.environ, "MINARI_DATASETS_PATH": minari_root}
    env.pop("O2O_VERBOSE", None)
    return subprocess.run(TRAIN + TINY + args, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def one_paragraph(stderr: str) -> str:
    """The error paragraph: the last non-empty line, and no traceback anywhere."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1]


def write_overflowing_dataset(dataset_id):
    """Rewards of 1e39: finite in float64 (the file), infinite in float32 (training)."""
    eps = [scripted_episode(e, 30, "truncated") for e in range(1, 6)]
    eps[2]["rewards"][7] = 1e39
    env = envs.make_env("hopper")
    store.write_dataset(dataset_id, eps, env=env, metadata={"note": "overflow"})
    env.close()


def test_reward_overflow_is_refused_before_any_compute(minari_root, tmp_path):
    write_overflowing_dataset("o2o/hopper/overflow-v0")
    with pytest.raises(loader.DatasetError, match="rewards of transition 67 is not finite "
                                                  "in float32"):
        loader.load("o2o/hopper/overflow-v0")
    r = train(["--config.dataset.id=o2o/hopper/overflow-v0",
               f"--config.run_dir={tmp_path}", "--config.run_name=overflow"], minari_root)
    assert r.returncode == 2
    assert "not finite in float32" in one_paragraph(r.stderr)
    assert not os.path.exists(tmp_path / "overflow")      # nothing written


def test_diverging_run_stops_without_writing_nan(minari_root, tmp_path):
    """Critics blown up by a huge learning rate: the run stops at the first log point with
    exit 1, the message names the quantity and step, and no NaN reaches a file."""
    r = train(["--config.agent.critic_lr=1e30", f"--config.run_dir={tmp_path}",
               "--config.run_name=nan"], minari_root)
    assert r.returncode == 1, r.stderr[-2000:]
    msg = one_paragraph(r.stderr)
    assert "at offline step 20" in msg and "the run stopped" in msg and "likely causes" in msg
    run = tmp_path / "nan"
    with open(run / "metrics.csv") as f:
        text = f.read()
    assert "nan" not in text.lower() and "inf" not in text.lower()
    assert not os.path.exists(run / "summary.json")


def test_summary_json_is_strict_json(tmp_path):
    from o2o_jax.rundir import RunDir
    d = RunDir(str(tmp_path / "run"))
    d.write_summary({"final": {"per_seed_return": [1.0, float("nan")], "x": np.float32("inf")}})
    d.close()
    with open(tmp_path / "run" / "summary.json") as f:
        text = f.read()
    assert json.loads(text)["final"] == {"per_seed_return": [1.0, None], "x": None}
    assert "NaN" not in text and "Infinity" not in text


def test_a_locked_run_directory_is_refused(minari_root, tmp_path):
    """A second process on a run directory in use is refused at once, naming the holder."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from o2o_jax.rundir import RunDirLock; "
         "l = RunDirLock(sys.argv[1]); l.acquire(); print('locked', flush=True); "
         "time.sleep(120)", str(tmp_path / "busy")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        os.makedirs(tmp_path / "busy", exist_ok=True)
        assert holder.stdout.readline().strip() == "locked"
        r = train([f"--config.run_dir={tmp_path}", "--config.run_name=busy"], minari_root)
        assert r.returncode == 2
        msg = one_paragraph(r.stderr)
        assert f"pid {holder.pid} on host" in msg and "in use by another process" in msg
        assert sorted(os.listdir(tmp_path / "busy")) == [".lock"]   # nothing touched
    finally:
        holder.kill()
        holder.wait()
    # The OS released the dead holder's lock: the directory can be taken now.
    lock = RunDirLock(str(tmp_path / "busy"))
    lock.acquire()
    with pytest.raises(RunDirLockedError, match=f"pid {os.getpid()}"):
        RunDirLock(str(tmp_path / "busy")).acquire()
    lock.release()


def test_failed_resume_keeps_every_row(minari_root, tmp_path, monkeypatch):
    """An online checkpoint without env_state.pkl: the resume fails, and metrics.csv (rows
    logged after that checkpoint included) is exactly as it was."""
    cfg = tiny_config(tmp_path, "run")
    cfg.online.epochs = 3
    pipeline.run(cfg)
    run = tmp_path / "run"
    done = pipeline.CheckpointManager(str(run / "checkpoints"), 2, {}).complete()
    latest = done[-1]
    assert checkpoints.read_meta(latest)["phase"] == "online"
    os.remove(os.path.join(latest, "env_state.pkl"))
    before = (run / "metrics.csv").read_bytes()
    assert checkpoints.read_meta(latest)["csv_rows"] < len(before.splitlines()) - 1
    with pytest.raises(checkpoints.CheckpointError, match="env_state.pkl"):
        pipeline.run(tiny_config(tmp_path, "run", **{"online.epochs": 3}))
    assert (run / "metrics.csv").read_bytes() == before


def test_bad_input_leaves_no_run_directory(minari_root, tmp_path):
    # A missing members checkpoint.
    cfg = tiny_config(tmp_path, "nomembers",
                      **{"online.load_offline_from": str(tmp_path / "missing")})
    with pytest.raises(checkpoints.CheckpointError, match="no complete checkpoint"):
        pipeline.run(cfg)
    # A dataset that is not there (and is not ours to build).
    cfg = tiny_config(tmp_path, "nodata", **{"dataset.id": "someone/hopper/absent-v0",
                                             "dataset.build_if_missing": False})
    with pytest.raises((loader.DatasetError, loader.DatasetNotFoundError)):
        pipeline.run(cfg)
    # A dataset of the wrong shape (walker2d data for hopper).
    env = envs.make_env("walker2d")
    store.write_dataset("o2o/walker2d/scripted-v0",
                        [scripted_episode(1, 5, "terminal", obs_dim=17, act_dim=6)],
                        env=env, metadata={})
    env.close()
    cfg = tiny_config(tmp_path, "wrongshape", **{"dataset.id": "o2o/walker2d/scripted-v0"})
    with pytest.raises(loader.DatasetError):
        pipeline.run(cfg)
    assert not any(os.path.exists(tmp_path / n) for n in ("nomembers", "nodata",
                                                          "wrongshape"))


def test_cli_errors_are_one_paragraph(minari_root, tmp_path):
    r = train(["--config.agent.num_memebers=3"], minari_root)
    assert r.returncode == 2
    msg = one_paragraph(r.stderr)
    assert "num_memebers" in msg and 'Did you mean "num_members"' in msg
    assert len(r.stderr.strip().splitlines()) <= 3, r.stderr
    # A bad value, a missing members checkpoint, an unwritable run_dir (under a file;
    # permissions do not stop root).
    (tmp_path / "afile").write_text("")
    for args, needle in (
            (["--config.online.replay=sometimes"], "online.replay"),
            ([f"--config.online.load_offline_from={tmp_path}/none"], "no complete checkpoint"),
            ([f"--config.run_dir={tmp_path}/afile/runs"], "cannot write")):
        r = train(args + ["--config.run_name=x"], minari_root)
        assert r.returncode == 2, (args, r.stderr[-1500:])
        assert needle in one_paragraph(r.stderr), (args, r.stderr)
    # --verbose adds the traceback.
    r = train(["--config.online.replay=sometimes", "--verbose"], minari_root)
    assert r.returncode == 2 and "Traceback" in r.stderr
    # The other entry points.
    env = {**os.environ, "MINARI_DATASETS_PATH": minari_root}
    for cmd in ([sys.executable, "-m", "experiments.make_dataset", "--env=hopper",
                 "--kind=medium", "--members=/nonexistent", "--dataset_id=o2o/hopper/x-v0"],
                [sys.executable, "-m", "experiments.plot", str(tmp_path / "norun")],
                [sys.executable, "-m", "experiments.compare",
                 "--config.agent.num_memebers=3"],
                [sys.executable, "-m", "experiments.bench", "--sizes=nonsense"]):
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 2, (cmd, r.stderr[-1500:])
        one_paragraph(r.stderr)


def test_corrupted_flat_cache_with_restored_mtime_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    eps = [scripted_episode(e, 6, "truncated") for e in range(1, 4)]
    env = envs.make_env("hopper")
    store.write_dataset("o2o/hopper/cached-v0", eps, env=env, metadata={})
    env.close()
    assert loader.load("o2o/hopper/cached-v0").num_transitions == 18   # writes the cache
    assert store.cache_path("o2o/hopper/cached-v0").exists()
    h5 = store.data_path("o2o/hopper/cached-v0") / "main_data.hdf5"
    st = os.stat(h5)
    data = bytearray(h5.read_bytes())
    import h5py
    with h5py.File(h5, "a") as f:          # same size, other contents
        f["episode_1/rewards"][2] += 1.0
    assert os.path.getsize(h5) == st.st_size and bytes(h5.read_bytes()) != bytes(data)
    os.utime(h5, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(loader.DatasetError, match="checksum"):
        loader.load("o2o/hopper/cached-v0")


def test_metrics_rows_of_a_good_run_are_finite(minari_root, tmp_path):
    """The finite checks pass a normal run (no false alarm), rows stay as logged."""
    pipeline.run(tiny_config(tmp_path, "ok"))
    with open(tmp_path / "ok" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(np.isfinite(float(r["eval_return"])) for r in rows
                        if r.get("eval_return"))


@pytest.mark.parametrize("how", ["resume", "branch"])
def test_wall_time_goes_on_across_processes(tmp_path, monkeypatch, how):
    """metrics.csv's wall_time counts the run's time over all its processes: after a resume
    (rows cut back to the checkpoint's) or a branch (another run's rows copied in), the next
    row's time is the last kept row's plus the time since, not the new process's age."""
    from o2o_jax import rundir
    from o2o_jax.rundir import RunDir
    clock = [1000.0]
    monkeypatch.setattr(rundir.time, "time", lambda: clock[0])
    first = RunDir(str(tmp_path / "run"))
    for t in (10.0, 20.0, 30.0):          # rows at 10, 20, 30 s into the run
        clock[0] = 1000.0 + t
        first.log({"phase": "offline", "step": int(t)})
    first.close()
    kept = [dict(r) for r in first.metrics.rows[:2]]   # the checkpoint counted 2 rows

    clock[0] = 5000.0                      # a later process; 7 s of setup, then the cut
    second = RunDir(str(tmp_path / ("run" if how == "resume" else "branch")))
    clock[0] += 7.0
    if how == "resume":
        second.truncate(2)
    else:
        second.truncate(0)
        second.copy_rows(kept)
    clock[0] += 4.0                        # 4 s after the cut: the next row
    second.log({"phase": "offline", "step": 25})
    second.close()
    with open(tmp_path / ("run" if how == "resume" else "branch") / "metrics.csv") as f:
        times = [float(r["wall_time"]) for r in csv.DictReader(f)]
    assert times == [10.0, 20.0, 20.0 + 4.0]
