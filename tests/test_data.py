"""Datasets: Minari round trip of scripted episodes, returns-to-go, bad input, atomicity.

Every test points Minari's root at a fresh tmp folder (MINARI_DATASETS_PATH).
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import minari
import numpy as np
import pytest

from o2o_jax import envs
from o2o_jax.data import loader, recipes, store
from o2o_jax.data.loader import Dataset, DatasetError, DatasetNotFoundError

OBS, ACT = 11, 3   # hopper
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


from tests.helpers import scripted_episode  # noqa: E402


EPISODES = [(1, 3, "terminal"), (2, 4, "truncated"), (3, 1, "terminal"), (4, 2, "cut")]


def write_scripted(dataset_id="o2o/hopper/scripted-v0", env_name="hopper", specs=EPISODES,
                   obs_dim=OBS, act_dim=ACT):
    eps = [scripted_episode(*s, obs_dim=obs_dim, act_dim=act_dim) for s in specs]
    env = envs.make_env(env_name)
    store.write_dataset(dataset_id, eps, env=env, metadata={"note": "scripted"})
    env.close()
    return eps


def test_scripted_round_trip_through_minari_and_loader(root):
    eps = write_scripted()
    # 1. Minari itself reads back exactly what we wrote.
    mds = minari.load_dataset("o2o/hopper/scripted-v0")
    assert mds.total_episodes == 4 and mds.total_steps == 10
    for ep, got in zip(eps, mds.iterate_episodes()):
        np.testing.assert_array_equal(got.observations, ep["observations"])
        np.testing.assert_array_equal(got.actions, ep["actions"].astype(np.float32))
        np.testing.assert_array_equal(got.rewards, ep["rewards"])
        np.testing.assert_array_equal(got.terminations, ep["terminations"])
        np.testing.assert_array_equal(got.truncations, ep["truncations"])
    # 2. Our loader: the expected flat arrays, written out step by step.
    exp = {k: [] for k in ("observations", "next_observations", "actions", "rewards", "dones",
                           "truncations", "episode_starts", "episode_ends")}
    for (e, length, end), ep in zip(EPISODES, eps):
        for t in range(length):
            last = t == length - 1
            exp["observations"].append(100.0 * e + t + 0.25 * np.arange(OBS))
            exp["next_observations"].append(100.0 * e + t + 1 + 0.25 * np.arange(OBS))
            exp["actions"].append(-(e + 0.125 * t) * np.ones(ACT) / 8)
            exp["rewards"].append(e + 0.5 * t)
            exp["dones"].append(float(last and end == "terminal"))
            exp["truncations"].append(float(last and end != "terminal"))
            exp["episode_starts"].append(float(t == 0))
            exp["episode_ends"].append(float(last))
    for load_path in ("cache", "hdf5"):
        if load_path == "hdf5":
            store.cache_path("o2o/hopper/scripted-v0").unlink()
        ds = loader.load("o2o/hopper/scripted-v0", env_name="hopper")
        assert (ds.num_transitions, ds.num_episodes, ds.obs_dim, ds.act_dim) == (10, 4, OBS, ACT)
        for k, v in exp.items():
            assert ds.arrays[k].dtype == np.float32, k
            np.testing.assert_array_equal(ds.arrays[k], np.asarray(v, np.float32), err_msg=k)
        # The final observation of an episode is its own, not the next episode's first.
        assert ds.arrays["next_observations"][2, 0] == 100.0 + 3
        assert ds.arrays["observations"][3, 0] == 200.0
        assert ds.metadata["note"] == "scripted" and ds.metadata["o2o_complete"]
    assert store.cache_path("o2o/hopper/scripted-v0").is_file()  # rewritten after hdf5 read
    np.testing.assert_allclose(ds.episode_returns(), [1 + 1.5 + 2, 2 * 4 + 3, 3, 4 * 2 + 0.5])


def test_returns_to_go_by_hand(root):
    write_scripted()
    ds = loader.load("o2o/hopper/scripted-v0")
    g = 0.5
    # rewards: ep1 [1, 1.5, 2] terminal; ep2 [2, 2.5, 3, 3.5] truncated; ep3 [3] terminal;
    # ep4 [4, 4.5] cut (truncated).
    zero = [1 + g * 1.5 + g * g * 2, 1.5 + g * 2, 2,
            2 + g * 2.5 + g ** 2 * 3 + g ** 3 * 3.5, 2.5 + g * 3 + g ** 2 * 3.5, 3 + g * 3.5,
            3.5, 3, 4 + g * 4.5, 4.5]
    np.testing.assert_allclose(ds.returns_to_go(g), zero, rtol=1e-6)
    # repeat_last: a truncated episode's last reward continues forever: r / (1 - g).
    tail2, tail4 = 3.5 / (1 - g), 4.5 / (1 - g)
    rep = list(zero)
    for i, k in zip(range(3, 7), (4, 3, 2, 1)):
        rep[i] = zero[i] - g ** (k - 1) * 3.5 + g ** (k - 1) * tail2
    rep[8], rep[9] = 4 + g * tail4, tail4
    np.testing.assert_allclose(ds.returns_to_go(g, "repeat_last"), rep, rtol=1e-6)
    with pytest.raises(ValueError, match="truncated_tail"):
        ds.returns_to_go(g, "bootstrap")
    with pytest.raises(ValueError, match="discount"):
        ds.returns_to_go(1.0, "repeat_last")


def test_returns_to_go_matches_sequential_reference():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 30, size=200)
    n = int(lengths.sum())
    ends = np.cumsum(lengths) - 1
    starts = ends - lengths + 1
    dones = np.zeros(n, np.float32)
    dones[ends[rng.random(len(ends)) < 0.5]] = 1.0
    st = np.zeros(n, np.float32)
    st[starts] = 1
    en = np.zeros(n, np.float32)
    en[ends] = 1
    arrays = {"rewards": rng.normal(size=n).astype(np.float32), "dones": dones,
              "episode_starts": st, "episode_ends": en}
    ds = Dataset("synthetic", arrays, {})
    for tail in ("zero", "repeat_last"):
        ref = np.zeros(n)
        for s, e in zip(starts, ends):   # plain backwards loop, one step at a time
            r = arrays["rewards"].astype(np.float64)
            nxt = 0.0 if (dones[e] or tail == "zero") else r[e] / (1 - 0.99)
            for t in range(e, s - 1, -1):
                nxt = r[t] + 0.99 * nxt
                ref[t] = nxt
        np.testing.assert_allclose(ds.returns_to_go(0.99, tail), ref, rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------

def test_unknown_env_or_kind(root):
    with pytest.raises(ValueError, match="unknown env 'ant'"):
        recipes.default_id("ant", "medium")
    with pytest.raises(ValueError, match="unknown dataset kind 'meduim'.*medium-replay"):
        loader.ensure("hopper", "meduim")
    with pytest.raises(ValueError, match="unknown build settings"):
        recipes.build("hopper", "random", transitons=10)


def test_missing_dataset_names_the_build_command(root):
    with pytest.raises(DatasetNotFoundError,
                       match=r"o2o/hopper/medium-v0.*make_dataset --env=hopper --kind=medium"):
        loader.load("o2o/hopper/medium-v0")
    with pytest.raises(DatasetNotFoundError,
                       match=r"minari download mujoco/walker2d/expert-v0.*--env=walker2d "
                             r"--kind=expert"):
        loader.load("mujoco/walker2d/expert-v0")


def test_corrupt_and_truncated_files(root):
    write_scripted()
    h5 = store.data_path("o2o/hopper/scripted-v0") / "main_data.hdf5"
    data = h5.read_bytes()
    h5.write_bytes(data[: len(data) // 2])   # truncated (the flat cache no longer applies)
    with pytest.raises(DatasetError, match=r"'o2o/hopper/scripted-v0'.*corrupt or truncated.*"
                                           r"--force"):
        loader.load("o2o/hopper/scripted-v0")
    # Same size, altered contents: the checksum written at build time catches it.
    write_scripted("o2o/hopper/scripted-v1")
    import h5py
    with h5py.File(store.data_path("o2o/hopper/scripted-v1") / "main_data.hdf5", "a") as f:
        f["episode_1/rewards"][2] += 1.0
    with pytest.raises(DatasetError, match="checksum.*sum of rewards"):
        loader.load("o2o/hopper/scripted-v1")
    # A damaged flat cache is only a cache miss.
    write_scripted("o2o/hopper/scripted-v2")
    cache = store.cache_path("o2o/hopper/scripted-v2")
    cache.write_bytes(cache.read_bytes()[:100])
    assert loader.load("o2o/hopper/scripted-v2").num_transitions == 10


def test_spaces_must_match_env(root):
    write_scripted()
    with pytest.raises(DatasetError, match=r"'o2o/hopper/scripted-v0' does not match env "
                                           r"'halfcheetah'.*11-dim.*17-dim"):
        loader.load("o2o/hopper/scripted-v0", env_name="halfcheetah")
    # walker2d and halfcheetah share dims (17, 6): the recorded env id tells them apart.
    write_scripted("o2o/walker2d/scripted-v0", "walker2d", obs_dim=17, act_dim=6)
    assert loader.load("o2o/walker2d/scripted-v0", env_name="walker2d").obs_dim == 17
    with pytest.raises(DatasetError, match="recorded in Walker2d-v5, not in HalfCheetah-v5"):
        loader.load("o2o/walker2d/scripted-v0", env_name="halfcheetah")


def test_empty_dataset(root):
    env = envs.make_env("hopper")
    with pytest.raises(ValueError, match="no transitions"):
        store.write_dataset("o2o/hopper/empty-v0", [], env=env, metadata={})
    assert not store.exists_locally("o2o/hopper/empty-v0")
    # An empty dataset made by other means (plain Minari) is refused at load time.
    minari.create_dataset_from_buffers("other/hopper/empty-v0", [], env=env,
                                       eval_env="Hopper-v5", algorithm_name="x", author="x",
                                       author_email="x", code_permalink="x", description="x")
    env.close()
    with pytest.raises(DatasetError, match="'other/hopper/empty-v0' is empty"):
        loader.load("other/hopper/empty-v0")


def test_bad_episodes_are_refused(root):
    env = envs.make_env("hopper")
    bad = scripted_episode(1, 3, "terminal")
    bad["terminations"][0] = True
    with pytest.raises(ValueError, match="only terminate or truncate at its last step"):
        store.write_dataset("o2o/hopper/bad-v0", [bad], env=env, metadata={})
    short = scripted_episode(1, 3, "terminal")
    short["observations"] = short["observations"][:-1]   # final observation missing
    with pytest.raises(ValueError, match=r"observations has shape \(3, 11\)"):
        store.write_dataset("o2o/hopper/bad-v0", [short], env=env, metadata={})
    env.close()
    assert not store.exists_locally("o2o/hopper/bad-v0")


# --------------------------------------------------------------------------------------
# Atomicity
# --------------------------------------------------------------------------------------

def test_interrupted_write_leaves_nothing_that_loads(root):
    def episodes():
        yield scripted_episode(1, 3, "terminal")
        yield scripted_episode(2, 3, "terminal")
        raise KeyboardInterrupt

    env = envs.make_env("hopper")
    with pytest.raises(KeyboardInterrupt):
        store.write_dataset("o2o/hopper/random-v0", episodes(), env=env, metadata={})
    env.close()
    assert not store.exists_locally("o2o/hopper/random-v0")
    assert "o2o/hopper/random-v0" not in minari.list_local_datasets()
    assert not any((root / store.TMP_DIRNAME).iterdir())
    with pytest.raises(DatasetNotFoundError):
        loader.load("o2o/hopper/random-v0")


def test_killed_build_leaves_nothing_that_loads(root):
    """SIGKILL mid-write (no cleanup runs): only a hidden temp folder remains, and the
    next build removes it."""
    marker = root.parent / "started"
    code = f"""
import time, numpy as np
from o2o_jax import envs
from o2o_jax.data import store
from tests.helpers import scripted_episode
def eps():
    for e in range(1000):
        if e == 2:
            open({str(marker)!r}, "w").close()
            time.sleep(60)
        yield scripted_episode(e, 3, "terminal")
store.write_dataset("o2o/hopper/random-v0", eps(), env=envs.make_env("hopper"), metadata={{}})
"""
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert marker.exists(), "the writer never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not store.exists_locally("o2o/hopper/random-v0")
    assert "o2o/hopper/random-v0" not in minari.list_local_datasets()
    with pytest.raises(DatasetNotFoundError):
        loader.load("o2o/hopper/random-v0")
    leftovers = list((root / store.TMP_DIRNAME).iterdir())
    assert len(leftovers) == 1
    write_scripted()   # the next build cleans up after the dead one
    assert not leftovers[0].exists()


def test_dataset_without_completion_marker_is_refused(root):
    write_scripted()
    meta_path = store.data_path("o2o/hopper/scripted-v0") / "metadata.json"
    meta = json.loads(meta_path.read_text())
    del meta["o2o_complete"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="incomplete build.*--force"):
        loader.load("o2o/hopper/scripted-v0")


def test_force_replaces_only_when_complete(root):
    write_scripted()
    env = envs.make_env("hopper")
    with pytest.raises(FileExistsError, match="--force"):
        store.write_dataset("o2o/hopper/scripted-v0", [scripted_episode(9, 2, "terminal")],
                            env=env, metadata={})

    def failing():
        yield scripted_episode(9, 2, "terminal")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        store.write_dataset("o2o/hopper/scripted-v0", failing(), env=env, metadata={},
                            force=True)
    assert loader.load("o2o/hopper/scripted-v0").num_transitions == 10   # old one intact
    store.write_dataset("o2o/hopper/scripted-v0", [scripted_episode(9, 2, "terminal")],
                        env=env, metadata={}, force=True)
    env.close()
    assert loader.load("o2o/hopper/scripted-v0").num_transitions == 2


def test_progress_eta_counts_only_this_runs_rate(monkeypatch):
    from o2o_jax import progress
    clock = [1000.0]
    monkeypatch.setattr(progress.time, "time", lambda: clock[0])
    lines = []
    p = progress.Progress("sac", 400, "steps", log=lines.append, initial=200, every_s=0)
    clock[0] += 50.0
    p.update(250, lambda: "eval 1.0")     # 50 steps in 50 s -> 150 left take 150 s
    assert lines[-1] == ("[sac] 250/400 steps (62%) 1.0 steps/s elapsed 50s ETA 2m30s "
                         "| eval 1.0")
    assert progress.format_seconds(3725) == "1h02m"
    # Below one unit per second the rate reads as time per unit.
    e = progress.Progress("online", 20, "epochs", log=lines.append, every_s=0)
    clock[0] += 125.0
    e.update(2)                           # 2 epochs in 125 s -> 1m02s per epoch
    assert lines[-1] == "[online] 2/20 epochs (10%) 1m02s/epoch elapsed 2m05s ETA 18m45s"


def test_progress_eta_follows_the_recent_rate_to_a_known_stop():
    """A job of 2000 units: 10 units/s for 60 s, then 2 units/s for 200 s (updates every
    10 s). The ETA is the remaining work over the recent rate (2/s: 1000 left -> 500 s),
    not over the mean since the start (1000 in 260 s -> 260 s)."""
    from o2o_jax import progress
    clock = [0.0]
    lines = []
    p = progress.Progress("job", 2000, "units", log=lines.append, every_s=0,
                          clock=lambda: clock[0])
    count = 0
    for t in range(10, 261, 10):
        clock[0] = float(t)
        count += 100 if t <= 60 else 20
        p.update(count)
    assert count == 1000
    remaining, recent_rate = 2000 - count, 2.0
    assert abs(p.rate() - recent_rate) < 1e-9
    assert lines[-1] == (f"[job] 1,000/2,000 units (50%) 2.0 units/s elapsed 4m20s ETA "
                         f"{progress.format_seconds(remaining / recent_rate)}")   # 8m20s
    # Early in the slow phase the window still spans part of the fast one.
    q = progress.Progress("job", 2000, "units", log=lines.append, every_s=0,
                          clock=lambda: clock[0], window_s=30.0)
    clock[0] = 0.0
    q.start, q._samples = 0.0, [(0.0, 0)]
    for t, c in ((10, 100), (20, 200), (30, 300), (40, 320), (50, 340)):
        clock[0] = float(t)
        q.update(c)
    # Window of 30 s before t = 50: from the update at t = 20 (count 200): 140 in 30 s.
    assert abs(q.rate() - 140 / 30) < 1e-9
    # The interval before the first update (start-up, compilation) is left out once a
    # second update exists: 1 unit/s after a 100 s start.
    r = progress.Progress("job", 100, "units", log=lines.append, every_s=0,
                          clock=lambda: clock[0])
    r.start, r._samples = 0.0, [(0.0, 0)]
    clock[0] = 100.0
    r.update(1)
    clock[0] = 110.0
    r.update(11)
    assert abs(r.rate() - 1.0) < 1e-9
    # A clock that moves on between the update and the line it prints (as a real one
    # does): the rate is still measured up to the update.
    times = iter([0.0, 200.0, 200.5, 201.0, 201.5])
    t = progress.Progress("job", 10, "epochs", log=lines.append, every_s=0,
                          clock=lambda: next(times))
    t.update(1)                                   # 1 epoch in 200 s; printed at 200.5 s
    assert "3m20s/epoch" in lines[-1] and "ETA 30m00s" in lines[-1], lines[-1]
    # A rollout updating every 4 ms for 250 s: the window keeps ~120 samples, and the
    # rate is still exact (16 units per 4 ms).
    clock[0] = 0.0
    u = progress.Progress("roll", 10 ** 6, "t", log=lines.append, every_s=1e9,
                          clock=lambda: clock[0])
    for i in range(1, 62_501):
        clock[0] = i * 0.004
        u.update(16 * i)
    assert len(u._samples) <= 130 and abs(u.rate() - 4000.0) < 1e-6
    clock[0] = 110.0
    # A job that may stop early reads its ETA as an upper bound.
    s = progress.Progress("sac", 1000, "env steps", log=lines.append, every_s=0,
                          clock=lambda: clock[0], stops_early="at the medium point")
    clock[0] = 120.0                # created at 110: 100 in 10 s, 900 left at 10/s
    s.update(100)
    assert lines[-1].endswith("ETA <= 1m30s (to 1,000; stops earlier at the medium point, "
                              "when is not known in advance)")


def test_progress_eta_waits_for_a_normal_first_unit():
    """The online phase's first epoch has 5x the updates and the compilation (102 s where
    the others take 19 s): extrapolating it would read 250 epochs as 7h05m. With
    `first_unit_differs` the ETA is unknown after it, with the reason, and from the second
    epoch on it is the remaining epochs at the second epoch's time (248 x 19 s)."""
    from o2o_jax import progress
    clock = [0.0]
    lines = []
    p = progress.Progress("online", 250, "epochs", log=lines.append, every_s=0,
                          clock=lambda: clock[0], first_unit_differs="it has 5x the updates")
    clock[0] = 102.0
    p.update(1)
    assert lines[-1] == ("[online] 1/250 epochs (0%) 1m42s/epoch elapsed 1m42s ETA ? (known "
                         "after the next epoch: the first is not like the rest, it has 5x "
                         "the updates)")
    clock[0] = 121.0
    p.update(2)
    assert lines[-1].endswith("ETA " + progress.format_seconds(248 * 19.0)), lines[-1]
    assert progress.format_seconds(248 * 19.0) == "1h18m"
    # Without the note the first epoch is extrapolated (the old, misleading line).
    q = progress.Progress("online", 250, "epochs", log=lines.append, every_s=0,
                          clock=lambda: clock[0])
    clock[0] += 102.0
    q.update(1)
    assert lines[-1].endswith("ETA " + progress.format_seconds(249 * 102.0))


def test_failed_download_leaves_nothing(root, monkeypatch):
    code = ("import os, pathlib, sys; pathlib.Path(os.environ['MINARI_DATASETS_PATH'], "
            "sys.argv[1], 'data').mkdir(parents=True); "
            "sys.exit('ConnectionError: Max retries exceeded')")
    monkeypatch.setattr(loader, "DOWNLOAD_CODE", code)
    ok, reason = loader.try_download("mujoco/hopper/medium-v0", timeout_s=30)
    assert not ok and reason == "ConnectionError: Max retries exceeded"
    assert not store.dataset_dir("mujoco/hopper/medium-v0").exists()


def test_concurrent_builds_keep_the_first_finished(root):
    env = envs.make_env("hopper")

    def slow_episodes():   # while this build runs, another one finishes the same id
        yield scripted_episode(1, 3, "terminal")
        store.write_dataset("o2o/hopper/scripted-v0", [scripted_episode(7, 5, "terminal")],
                            env=env, metadata={})
        yield scripted_episode(2, 3, "terminal")

    store.write_dataset("o2o/hopper/scripted-v0", slow_episodes(), env=env, metadata={})
    env.close()
    ds = loader.load("o2o/hopper/scripted-v0")
    assert ds.num_transitions == 5 and ds.arrays["rewards"][0] == 7.0
    assert not any((root / store.TMP_DIRNAME).iterdir())


def test_local_dataset_of_another_size_is_used_with_a_warning(minari_root):
    """A local dataset of our recipe is used as it is, but a run that would build another
    size is told so, with both sizes and the ways to get the size it asks for."""
    from o2o_jax.data import loader
    said = []
    ds = loader.ensure("hopper", "random", build_transitions=3000, log=said.append)
    assert ds.num_transitions == 1500                       # the local one (conftest's)
    warning = [s for s in said if "WARNING" in s]
    assert len(warning) == 1
    assert "1,500 transitions, not the 3,000" in warning[0]
    assert "--transitions=3000 --force" in warning[0] and "MINARI_DATASETS_PATH" in warning[0]
    said.clear()
    loader.ensure("hopper", "random", build_transitions=1500, log=said.append)
    assert said == []                                       # the size asked for: silent
    said.clear()       # also when ours stands in for another id it could not download
    loader.ensure("hopper", "random", "mujoco/hopper/random-v0", build_transitions=3000,
                  download_timeout_s=1.0, log=said.append)
    assert sum("1,500 transitions, not the 3,000" in s for s in said) == 1
