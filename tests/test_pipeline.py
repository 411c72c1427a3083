"""End-to-end runs of experiments.train on a tiny dataset: replay modes, vmapped seeds,
kill-and-resume, refused checkpoints, sharding. Tiny networks and few steps throughout."""
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from o2o_jax import checkpoints, config_checks, pipeline

from tests.helpers import (ROOT, numeric_rows, read_rows, resumed_rows_match,  # noqa: E402
                           run_to_first_online_checkpoint, tiny_config,
                           two_cpu_devices_env)


@pytest.mark.parametrize("replay", ["balanced", "uniform", "online_only"])
def test_smoke_offline_then_online_each_replay_mode(minari_root, tmp_path, replay):
    cfg = tiny_config(tmp_path, "run", **{"online.replay": replay})
    summary = pipeline.run(cfg)
    run = os.path.join(tmp_path, "run")
    assert {"config.json", "metrics.csv", "summary.json", "offline_members"} <= set(
        os.listdir(run))
    assert np.isfinite(summary["final"]["per_seed_normalized"][0])
    rows = read_rows(run)
    online_rows = [r for r in rows if r["phase"] == "online" and r["offline_fraction"]]
    assert len(online_rows) == 3
    frac = [float(r["offline_fraction"]) for r in online_rows]
    if replay == "online_only":
        assert frac == [0.0, 0.0, 0.0]
    else:
        assert all(0.0 < f < 1.0 for f in frac)
    if replay == "balanced":
        assert all(r["w_offline"] and r["w_online"] for r in online_rows)
    # The eval score in the CSV is the normalised form of the eval return.
    r = next(r for r in rows if r["eval_return"])
    np.testing.assert_allclose(float(r["normalized_score"]),
                               100 * (float(r["eval_return"]) + 20.272305) / (3234.3 + 20.272305))


def check_tensorboard_matches_csv(run, rows, seeds):
    """TensorBoard's own reader finds, per seed, the CSV's values at the CSV's steps."""
    from tensorboard.backend.event_processing import event_accumulator
    for seed in seeds:
        acc = event_accumulator.EventAccumulator(os.path.join(run, "tensorboard", f"seed{seed}"))
        acc.Reload()
        mine = [r for r in rows if int(float(r["seed"])) == seed]
        assert not any(t.endswith("wall_time") for t in acc.Tags()["scalars"])
        for phase, key, step_col in [("offline", "critic_loss", "step"),
                                     ("online", "normalized_score", "env_steps"),
                                     ("online", "offline_fraction", "env_steps")]:
            want = [(int(float(r[step_col])), float(r[key])) for r in mine
                    if r["phase"] == phase and r.get(key)]
            got = [(e.step, e.value) for e in acc.Scalars(f"{phase}/{key}")]
            assert want and len(got) == len(want)
            for (s1, v1), (s2, v2) in zip(got, want):
                assert s1 == s2
                np.testing.assert_allclose(v1, v2, rtol=1e-6)


def test_vmapped_seeds_equal_separate_runs(minari_root, tmp_path):
    both = pipeline.run(tiny_config(tmp_path, "both", num_seeds=2, seed=3, tensorboard=True))
    rows_both = read_rows(os.path.join(tmp_path, "both"))
    check_tensorboard_matches_csv(os.path.join(tmp_path, "both"), rows_both, seeds=[3, 4])
    for s, seed in enumerate([3, 4]):
        one = pipeline.run(tiny_config(tmp_path, f"one{seed}", seed=seed))
        assert one["final"]["per_seed_return"][0] == pytest.approx(
            both["final"]["per_seed_return"][s], rel=1e-4)
        rows_one = read_rows(os.path.join(tmp_path, f"one{seed}"))
        mine = [r for r in rows_both if int(float(r["seed"])) == seed]
        assert len(mine) == len(rows_one)
        for a, b in zip(mine, rows_one):
            for k in ("critic_loss", "q_data", "eval_return", "offline_fraction"):
                if a.get(k) and b.get(k):
                    # Tolerance: vmapping can reorder float32 reductions; a few ulps of
                    # drift per update over ~60 updates stays far below 1e-3.
                    np.testing.assert_allclose(float(a[k]), float(b[k]), rtol=1e-3, atol=1e-5)
    a, b = both["final"]["per_seed_return"]
    assert a != b   # different seeds really differ


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def reference_run(minari_root, tmp_path_factory):
    """An uninterrupted run of the tiny config: (summary, run dir)."""
    root = tmp_path_factory.mktemp("reference")
    return pipeline.run(tiny_config(root, "ref")), os.path.join(root, "ref")


def test_finetune_only_from_saved_members_repeats_the_online_phase(reference_run, tmp_path):
    """online.load_offline_from skips pretraining; the online phase's keys do not depend on
    it, so fine-tuning the reference run's saved members repeats its online rows exactly."""
    ref, ref_dir = reference_run
    cfg = tiny_config(tmp_path, "ft", **{
        "online.load_offline_from": os.path.join(ref_dir, "offline_members")})
    summary = pipeline.run(cfg)
    rows = read_rows(os.path.join(tmp_path, "ft"))
    assert rows and all(r["phase"] == "online" for r in rows)
    ref_online = [r for r in read_rows(ref_dir) if r["phase"] == "online"]
    # The reference CSV also has offline-only columns (empty in its online rows).
    assert len(rows) == len(ref_online)
    for mine, ref_row in zip(rows, ref_online):
        assert {k: v for k, v in mine.items() if k != "wall_time"} == {
            k: ref_row[k] for k in mine if k != "wall_time"}
    assert summary["final"]["per_seed_return"] == ref["final"]["per_seed_return"]
    # Members of another architecture are refused, naming the mismatch.
    bad = tiny_config(tmp_path, "bad", **{
        "online.load_offline_from": os.path.join(ref_dir, "offline_members"),
        "agent.hidden_dims": (4, 4)})
    with pytest.raises(checkpoints.CheckpointError, match="hidden_dims"):
        pipeline.run(bad)


def test_members_out_of_lockstep_are_refused(reference_run, tmp_path):
    """Members whose step counters differ (put together from other runs or steps) are
    refused on loading, naming the counter: the updates branch on the first member's
    counter for all (stacking.lockstep). The reference run's own members load."""
    from o2o_jax import algorithm
    _, ref_dir = reference_run
    source = os.path.join(ref_dir, "offline_members")
    cfg = tiny_config(tmp_path, "ft", **{"online.load_offline_from": source})
    template = algorithm.get(cfg.algo).create_members(jax.random.PRNGKey(0), 11, 3, cfg)
    template = jax.tree_util.tree_map(lambda x: np.asarray(x)[None], template)  # [S=1, N]
    members = checkpoints.load_members(cfg, template, 11, 3)
    critic = members.ac.critic
    steps = np.asarray(critic.step)
    assert steps.shape == (1, 2) and steps[0, 0] == steps[0, 1] > 0
    mixed = members.replace(ac=members.ac.replace(critic=critic.replace(
        step=steps + np.array([[0, 1]]))))
    out = str(tmp_path / "mixed_members")
    checkpoints.save(out, mixed, checkpoints.read_meta(source))
    cfg.online.load_offline_from = out
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"online.load_offline_from: .*\.ac\.critic\.step: "
                             f"{steps[0, 0]}, {steps[0, 0] + 1}"):
        pipeline.run(cfg)


def test_pretraining_goes_on_from_saved_members(reference_run, tmp_path):
    """offline.init_from: pretraining starts from a members checkpoint. Its step-0 row scores
    the loaded members on the offline evaluation's own episodes, so it repeats the source
    run's last offline evaluation exactly (fresh members would score otherwise)."""
    ref, ref_dir = reference_run
    members = os.path.join(ref_dir, "offline_members")
    cfg = tiny_config(tmp_path, "more", **{"offline.init_from": members, "offline.steps": 20,
                                           "online.epochs": 0})
    summary = pipeline.run(cfg)
    rows = [r for r in read_rows(os.path.join(tmp_path, "more")) if r["eval_return"]]
    assert [int(float(r["step"])) for r in rows] == [0, 20]
    ref_offline = [r for r in read_rows(ref_dir) if r["phase"] == "offline" and r["eval_return"]]
    assert float(rows[0]["eval_return"]) == float(ref_offline[-1]["eval_return"])
    assert summary["offline"]["per_seed_return"] == [float(rows[1]["eval_return"])]
    # The two ways of starting from members exclude each other; init_from needs steps.
    both = tiny_config(tmp_path, "both", **{"offline.init_from": members,
                                            "online.load_offline_from": members})
    with pytest.raises(config_checks.ConfigError, match="load_offline_from"):
        pipeline.run(both)
    none = tiny_config(tmp_path, "none", **{"offline.init_from": members, "offline.steps": 0})
    with pytest.raises(config_checks.ConfigError, match="offline.steps > 0"):
        pipeline.run(none)


def test_resume_of_init_from_run_needs_no_source(reference_run, tmp_path):
    """A run that started from offline.init_from and has a checkpoint of its own resumes
    from that checkpoint: the source members may be gone by then (it used to refuse)."""
    import shutil
    _, ref_dir = reference_run
    source = str(tmp_path / "source_members")
    shutil.copytree(os.path.join(ref_dir, "offline_members"), source)
    cfg = tiny_config(tmp_path, "more", **{"offline.init_from": source, "offline.steps": 20,
                                           "checkpoint.every_offline_steps": 10,
                                           "online.epochs": 0})
    first = pipeline.run(cfg)       # ends with its step-10 checkpoint (none at the end)
    shutil.rmtree(source)
    again = pipeline.run(cfg)       # resumes at step 10: the same run, no source read
    assert again["offline"]["per_seed_return"] == first["offline"]["per_seed_return"]
    assert first["dataset_transitions"] == 1500     # conftest's dataset, as it was used
    # With no checkpoint of its own, a missing source is still refused before any write.
    fresh = tiny_config(tmp_path, "fresh", **{"offline.init_from": source,
                                              "offline.steps": 20, "online.epochs": 0})
    with pytest.raises(checkpoints.CheckpointError, match="offline.init_from"):
        pipeline.run(fresh)
    assert not os.path.exists(os.path.join(tmp_path, "fresh"))


def test_branch_from_an_online_checkpoint(reference_run, tmp_path):
    """online.branch_from starts a new run at another run's online checkpoint. With the
    source's own config it repeats the source's rows from there exactly (state, keys, env
    and metrics all carried over); with a changed setting it shares the rows up to the
    checkpoint and differs after. Settings the state depends on are refused by name."""
    ref, ref_dir = reference_run
    ckpts = pipeline.CheckpointManager(os.path.join(ref_dir, "checkpoints"), 2,
                                       None).complete()
    metas = {p: checkpoints.read_meta(p) for p in ckpts}
    online = [p for p in ckpts if metas[p]["phase"] == "online" and metas[p]["epoch"] < 3]
    assert online, metas
    src = online[-1]
    cut = metas[src]["csv_rows"]
    ref_rows = read_rows(ref_dir)
    assert 0 < cut < len(ref_rows)
    same = pipeline.run(tiny_config(tmp_path, "same", **{"online.branch_from": src}))
    rows = read_rows(os.path.join(tmp_path, "same"))
    assert numeric_rows(rows) == numeric_rows(ref_rows)
    # The copied rows keep the source's wall time.
    assert [r["wall_time"] for r in rows[:cut]] == [r["wall_time"] for r in ref_rows[:cut]]
    assert same["final"]["per_seed_return"] == ref["final"]["per_seed_return"]
    # Its summary counts its own time, not the source's (which the checkpoint records).
    assert same["offline_time_s"] == 0.0 < metas[src]["phase_seconds"]["offline"]

    changed = pipeline.run(tiny_config(tmp_path, "lr", **{"online.branch_from": src,
                                                          "online.critic_lr": 3e-2}))
    rows = read_rows(os.path.join(tmp_path, "lr"))
    assert numeric_rows(rows[:cut]) == numeric_rows(ref_rows[:cut])
    after = [(r["critic_loss"], ref_r["critic_loss"]) for r, ref_r in
             zip(rows[cut:], ref_rows[cut:]) if r["critic_loss"]]
    assert after and any(a != b for a, b in after)
    assert np.isfinite(changed["final"]["per_seed_return"][0])

    # The algo may change to one with the same online state (UPQ: Off2OnRL's state, its
    # own target); to one with another state it is refused by name.
    upq = pipeline.run(tiny_config(tmp_path, "upq", **{"online.branch_from": src,
                                                       "algo": "upq", "upq.beta": 0.5}))
    rows = read_rows(os.path.join(tmp_path, "upq"))
    assert numeric_rows(rows[:cut]) == numeric_rows(ref_rows[:cut])
    after = [(r["critic_loss"], ref_r["critic_loss"]) for r, ref_r in
             zip(rows[cut:], ref_rows[cut:]) if r["critic_loss"]]
    assert after and all(a != b for a, b in after)
    assert np.isfinite(upq["final"]["per_seed_return"][0])
    with pytest.raises(checkpoints.CheckpointError, match="does not fit the online state of algo 'td3_bc'"):
        pipeline.run(tiny_config(tmp_path, "td3bc", **{"online.branch_from": src,
                                                       "algo": "td3_bc"}))

    with pytest.raises(checkpoints.CheckpointError, match="agent.num_members"):
        pipeline.run(tiny_config(tmp_path, "n3", **{"online.branch_from": src,
                                                    "agent.num_members": 3}))
    offline = [p for p in ckpts if metas[p]["phase"] != "online"] or [
        os.path.join(ref_dir, "offline_members")]
    with pytest.raises(checkpoints.CheckpointError, match="starts from an online one"):
        pipeline.run(tiny_config(tmp_path, "off", **{"online.branch_from": offline[0]}))
    assert not os.path.exists(os.path.join(tmp_path, "n3"))
    # A setting that acts only when the online phase starts would change nothing here.
    with pytest.raises(checkpoints.CheckpointError, match="init_online_fraction"):
        pipeline.run(tiny_config(tmp_path, "f", **{"online.branch_from": src,
                                                   "online.init_online_fraction": 0.1}))


def test_a_branch_resumes_from_its_own_checkpoints(reference_run, tmp_path, monkeypatch):
    """Killed after its first own checkpoint, a branch resumes from it even when the
    source checkpoint is gone, and ends as the source run did."""
    import shutil
    ref, ref_dir = reference_run
    ckpts = pipeline.CheckpointManager(os.path.join(ref_dir, "checkpoints"), 2,
                                       None).complete()
    src = [p for p in ckpts if checkpoints.read_meta(p)["phase"] == "online"
           and checkpoints.read_meta(p)["epoch"] == 1][0]   # the branch saves at epoch 2
    copy = os.path.join(tmp_path, "source", "checkpoints", os.path.basename(src))
    shutil.copytree(src, copy)
    shutil.copy(os.path.join(ref_dir, "metrics.csv"), os.path.join(tmp_path, "source"))
    original = pipeline.CheckpointManager.save

    def save_then_die(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise Interrupt()
    monkeypatch.setattr(pipeline.CheckpointManager, "save", save_then_die)
    cfg = lambda: tiny_config(tmp_path, "b", **{"online.branch_from": copy,
                                                 "online.epochs": 3})
    with pytest.raises(Interrupt):
        pipeline.run(cfg())
    monkeypatch.setattr(pipeline.CheckpointManager, "save", original)
    shutil.rmtree(copy)
    resumed = pipeline.run(cfg())
    assert resumed["final"]["per_seed_return"] == ref["final"]["per_seed_return"]
    assert numeric_rows(read_rows(os.path.join(tmp_path, "b"))) == numeric_rows(
        read_rows(ref_dir))


def test_epoch_maximum_spans_the_first_epochs_calls(minari_root, tmp_path, monkeypatch):
    """The first online epoch runs `first_epoch_multiplier` compiled calls: its row's
    critic_loss is their mean and critic_loss_max their largest (recorded per call)."""
    from o2o_jax import online
    calls = []
    real = online.make_train_epoch

    def recording(*args, **kwargs):
        fn = real(*args, **kwargs)

        def wrapped(*a):
            state, info = fn(*a)
            calls.append({k: np.asarray(v) for k, v in info.items()})
            return state, info
        return wrapped
    monkeypatch.setattr(online, "make_train_epoch", recording)
    pipeline.run(tiny_config(tmp_path, "m", **{"online.epochs": 1,
                                               "online.first_epoch_multiplier": 3}))
    assert len(calls) == 3
    row = [r for r in read_rows(os.path.join(tmp_path, "m"))
           if r["phase"] == "online" and r["critic_loss"]][0]
    per_call_max = [float(c["critic_loss_max"][0]) for c in calls]
    per_call_mean = [float(c["critic_loss"][0]) for c in calls]
    np.testing.assert_allclose(float(row["critic_loss_max"]), max(per_call_max), rtol=1e-6)
    np.testing.assert_allclose(float(row["critic_loss"]), np.mean(per_call_mean), rtol=1e-5)
    assert len(set(per_call_max)) > 1       # the calls differ, so max != mean is tested


@pytest.mark.parametrize("stop_after", [1, 2])   # 1: offline phase; 2: online phase
def test_kill_and_resume_matches_uninterrupted_run(reference_run, tmp_path, monkeypatch,
                                                   stop_after):
    ref, ref_dir = reference_run
    original, original_log = pipeline.CheckpointManager.save, pipeline.RunDir.log
    saves = []

    def save_and_count(self, *args, **kwargs):
        original(self, *args, **kwargs)
        saves.append(args[0])

    def log_then_die(self, row):   # killed after logging one row past the checkpoint
        original_log(self, row)
        if len(saves) == stop_after:
            raise Interrupt()

    monkeypatch.setattr(pipeline.CheckpointManager, "save", save_and_count)
    monkeypatch.setattr(pipeline.RunDir, "log", log_then_die)
    with pytest.raises(Interrupt):
        pipeline.run(tiny_config(tmp_path, "cut", tensorboard=True))
    monkeypatch.setattr(pipeline.CheckpointManager, "save", original)
    monkeypatch.setattr(pipeline.RunDir, "log", original_log)
    assert len(read_rows(os.path.join(tmp_path, "cut"))) > checkpoints.read_meta(
        pipeline.CheckpointManager(os.path.join(tmp_path, "cut", "checkpoints"), 2,
                                   None).complete()[-1])["csv_rows"]
    latest = pipeline.CheckpointManager(os.path.join(tmp_path, "cut", "checkpoints"), 2,
                                        None).complete()[-1]
    assert checkpoints.read_meta(latest)["phase"] == ("offline" if stop_after == 1 else "online")
    resumed = pipeline.run(tiny_config(tmp_path, "cut", tensorboard=True))
    assert resumed["final"]["per_seed_return"] == ref["final"]["per_seed_return"]
    # Resumed online, the summary still reports the pretrained members' score.
    assert resumed["offline"]["per_seed_return"] == ref["offline"]["per_seed_return"]
    rows = read_rows(os.path.join(tmp_path, "cut"))
    assert numeric_rows(rows) == numeric_rows(read_rows(ref_dir))
    # TensorBoard holds each logged point once (not again for the rows redone after the
    # checkpoint).
    check_tensorboard_matches_csv(os.path.join(tmp_path, "cut"), rows, seeds=[0])


def test_corrupt_and_mismatched_checkpoints_are_refused(minari_root, tmp_path, monkeypatch):
    original = pipeline.CheckpointManager.save

    def save_then_die(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise Interrupt()

    monkeypatch.setattr(pipeline.CheckpointManager, "save", save_then_die)
    with pytest.raises(Interrupt):
        pipeline.run(tiny_config(tmp_path, "r"))
    monkeypatch.setattr(pipeline.CheckpointManager, "save", original)
    run = os.path.join(tmp_path, "r")
    before = sorted(os.listdir(run))
    rows_before = read_rows(run)

    # A different config is refused, naming the differing field.
    with pytest.raises(checkpoints.CheckpointError, match="agent.num_members"):
        pipeline.run(tiny_config(tmp_path, "r", **{"agent.num_members": 3}))
    assert sorted(os.listdir(run)) == before and read_rows(run) == rows_before

    # A truncated array file is refused.
    ckpt = pipeline.CheckpointManager(os.path.join(run, "checkpoints"), 2, None).complete()[-1]
    victims = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(ckpt, "state"))
               for f in fs if os.path.getsize(os.path.join(d, f)) > 1000]
    for v in victims:
        with open(v, "r+b") as f:
            f.truncate(100)
    with pytest.raises(checkpoints.CheckpointError, match="corrupt"):
        pipeline.run(tiny_config(tmp_path, "r"))
    assert sorted(os.listdir(run)) == before and read_rows(run) == rows_before

    # A save that died before meta.json is not a checkpoint: resume uses the previous one.
    os.remove(os.path.join(ckpt, "meta.json"))
    summary = pipeline.run(tiny_config(tmp_path, "r"))
    assert np.isfinite(summary["final"]["per_seed_return"][0])


def test_dataset_is_held_once_for_all_seeds(minari_root, tmp_path):
    cfg = tiny_config(tmp_path, "x", num_seeds=3)
    obs_dim, act_dim = 11, 3
    dataset = pipeline.load_dataset(cfg, obs_dim, act_dim)
    data = pipeline.device_arrays(dataset)
    ctx = pipeline.Context(cfg, None, None, pipeline.Sharder(3), data, obs_dim, act_dim)
    keys = jax.numpy.stack([jax.random.PRNGKey(s) for s in ctx.seeds])
    members = pipeline.create_members(ctx, keys)
    state = pipeline.init_online(ctx, members, keys)
    m = dataset.num_transitions
    assert data["observations"].shape == (m, obs_dim)             # one copy, no seed axis
    online_slots = cfg.online.epochs * cfg.online.env_steps_per_epoch
    assert state.replay.online.data["observations"].shape == (3, online_slots, obs_dim)
    assert state.replay.tree.nodes.shape[0] == 3                  # per-seed priorities
    for leaf in jax.tree_util.tree_leaves(state):
        assert leaf.size < m * obs_dim or leaf.shape[0] == 3 and leaf.shape[1] != m


SHARD_SCRIPT = r"""
import json, os, sys
sys.path.insert(0, {root!r})
os.environ["MINARI_DATASETS_PATH"] = {minari!r}
import jax
from tests.helpers import tiny_config
from o2o_jax import pipeline
out = {{"devices": len(jax.devices())}}
for name, seeds, shard in (("True", 2, True), ("False", 2, False),
                           ("members", 1, True), ("members_off", 1, False)):
    cfg = tiny_config({out_dir!r}, f"run{{name}}", num_seeds=seeds, shard_seeds=shard)
    state_sharding = []
    original = pipeline.Sharder.seeds
    def spy(self, tree, *args, original=original):
        placed = original(self, tree, *args)
        state_sharding.append(" ".join(sorted({{str(x.sharding)
                                                for x in jax.tree_util.tree_leaves(placed)}})))
        return placed
    pipeline.Sharder.seeds = spy
    s = pipeline.run(cfg)
    pipeline.Sharder.seeds = original
    out[name] = {{"final": s["final"]["per_seed_return"],
                       "offline": s["offline"]["per_seed_return"],
                       "sharding": state_sharding[-1],        # online state
                       "first_sharding": state_sharding[0]}}  # offline members
print("RESULT", json.dumps(out))
"""


def test_sharded_run_equals_unsharded(minari_root, tmp_path):
    script = SHARD_SCRIPT.format(root=ROOT, minari=minari_root, out_dir=str(tmp_path))
    env = two_cpu_devices_env()
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT"))
    res = json.loads(line[len("RESULT"):])
    assert res["devices"] == 2
    assert "P('seed'" in res["True"]["sharding"]               # really spread over 2 devices
    assert "P('seed'" in res["True"]["first_sharding"]
    assert "NamedSharding" not in res["False"]["sharding"]
    results = {True: res["True"], False: res["False"]}
    np.testing.assert_allclose(results[True]["final"], results[False]["final"], rtol=1e-4)
    np.testing.assert_allclose(results[True]["offline"], results[False]["offline"], rtol=1e-4)
    # One seed: its 2 ensemble members are split over the 2 devices instead.
    assert "P(None, 'member')" in res["members"]["sharding"]   # split, not replicated
    assert "P(None, 'member')" in res["members"]["first_sharding"]
    assert "NamedSharding" not in res["members_off"]["sharding"]
    for k in ("final", "offline"):
        np.testing.assert_allclose(res["members"][k], res["members_off"][k], rtol=1e-4)


def test_a_run_that_starts_again_removes_its_old_summary(reference_run, monkeypatch):
    """While a run goes on (resumed, or started again), its directory holds no summary.json
    of an earlier run: an interrupted rerun is not taken for a finished one."""
    ref, ref_dir = reference_run
    import shutil
    copy = ref_dir + "_again"
    shutil.copytree(ref_dir, copy)
    cfg = tiny_config(os.path.dirname(copy), os.path.basename(copy))   # the reference's
    assert pipeline.finished(cfg) == (copy, [])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(cfg)
    assert not os.path.exists(os.path.join(copy, "summary.json"))
    assert pipeline.finished(cfg) is None


def test_resume_refuses_a_dataset_rebuilt_since_the_checkpoint(minari_root, tmp_path):
    """Checkpoints record the offline data (id, size, checksum of the observations); a
    resume on other data (the dataset rebuilt in between) is refused by name."""
    from o2o_jax import data
    cfg = tiny_config(tmp_path, "r", **{"checkpoint.every_offline_steps": 20,
                                        "offline.steps": 40, "online.epochs": 0})
    pipeline.run(cfg)
    ckpts = pipeline.CheckpointManager(str(tmp_path / "r" / "checkpoints"), 2, None)
    meta_path = os.path.join(ckpts.complete()[-1], "meta.json")
    meta = json.load(open(meta_path))
    ds = data.load("o2o/hopper/random-v0", "hopper")
    assert meta["dataset"] == {"id": "o2o/hopper/random-v0", "transitions": 1500,
                               "checksum": repr(float(np.asarray(
                                   ds.arrays["observations"], np.float64).sum()))}
    pipeline.run(cfg)                               # the same data: resumes
    meta["dataset"]["checksum"] = "1.0"             # as if made on other data
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(checkpoints.CheckpointError, match="rebuilt or replaced"):
        pipeline.run(cfg)


@pytest.mark.parametrize("cut_phase", ["offline", "online"])
def test_summary_times_count_the_processes_before_a_resume(minari_root, tmp_path, monkeypatch,
                                                            cut_phase):
    """A run killed after its first checkpoint of `cut_phase` and resumed reports the
    whole run's phase times: the checkpoint's recorded seconds plus the resumed
    process's (before, a resume in the online phase reported ~0 s offline)."""
    from o2o_jax import pipeline

    class Interrupt(Exception):
        pass

    original_save = pipeline.CheckpointManager.save
    recorded = {}

    def save_then_die(self, step, *args, **kwargs):
        original_save(self, step, *args, **kwargs)
        if args and args[1].get("phase") == cut_phase:
            recorded.update(checkpoints.read_meta(self.complete()[-1])["phase_seconds"])
            raise Interrupt()

    cfg = tiny_config(tmp_path, "cut")
    monkeypatch.setattr(pipeline.CheckpointManager, "save", save_then_die)
    with pytest.raises(Interrupt):
        pipeline.run(cfg)
    monkeypatch.setattr(pipeline.CheckpointManager, "save", original_save)
    assert recorded["offline"] > 0 and ("online" in recorded) == (cut_phase == "online")
    t0 = time.time()
    summary = pipeline.run(tiny_config(tmp_path, "cut"))
    resumed_for = time.time() - t0
    if cut_phase == "online":   # offline was over before the cut: exactly its count
        assert summary["offline_time_s"] == recorded["offline"]
        assert 0 < summary["online_time_s"] - recorded["online"] <= resumed_for
    else:
        assert 0 < summary["offline_time_s"] - recorded["offline"] <= resumed_for


def _record_train_calls(monkeypatch, record):
    """Patch online.make_train_epoch so that every training call first passes
    (num_steps, state) to `record`."""
    from o2o_jax import online
    real = online.make_train_epoch

    def recording(num_steps, *args, **kwargs):
        fn = real(num_steps, *args, **kwargs)

        def wrapped(state, *a):
            record(num_steps, state)
            return fn(state, *a)
        return wrapped
    monkeypatch.setattr(online, "make_train_epoch", recording)


def _first(x):
    return np.asarray(x).reshape(-1)[0]


def test_train_every_trains_after_each_chunk_of_env_steps(minari_root, tmp_path,
                                                          monkeypatch):
    """`online.train_every` = 10 of 40 env steps: four training calls per epoch, each after
    10 more transitions reached the (empty at the start) online buffer and each running
    a quarter of the epoch's updates (the first epoch: `first_epoch_multiplier` calls
    per chunk)."""
    seen = []
    _record_train_calls(monkeypatch, lambda n, st: seen.append(
        (n, int(_first(st.replay.online.size)), int(_first(st.agent.critic.step)))))
    pipeline.run(tiny_config(tmp_path, "chunks", **{
        "online.epochs": 2, "online.train_every": 10, "online.updates_per_epoch": 20,
        "online.replay": "online_only"}))
    assert [n for n, _, _ in seen] == [5] * 12
    assert [s for _, s, _ in seen] == [10, 10, 20, 20, 30, 30, 40, 40, 50, 60, 70, 80]
    np.testing.assert_array_equal(np.diff([c for _, _, c in seen]), [5] * 11)


def test_chunks_after_the_first_are_collected_by_the_trained_policy(minari_root, tmp_path,
                                                                    monkeypatch):
    """With train_every = 20 of 40 the first 20 transitions are those of the loop without
    it (same policy, same step keys) and the last 20 are not (the policy was trained in
    between); the epoch's updates are the same in number."""
    actions = {}
    for every in (0, 20):
        calls = []
        _record_train_calls(monkeypatch, lambda n, st: calls.append(
            (n, np.array(st.replay.online.data["actions"][0, :40]))))
        pipeline.run(tiny_config(tmp_path, f"every{every}", **{
            "online.epochs": 1, "online.train_every": every, "online.updates_per_epoch": 20,
            "online.first_epoch_multiplier": 1, "online.replay": "online_only"}))
        monkeypatch.undo()
        assert sum(n for n, _ in calls) == 20
        actions[every] = calls[-1][1]
    np.testing.assert_array_equal(actions[0][:20], actions[20][:20])
    assert not np.any(np.all(actions[0][20:] == actions[20][20:], axis=-1))


def test_monte_carlo_returns_with_train_every(minari_root, tmp_path, monkeypatch):
    """Cal-QL trained every 10 env steps: at the last call, every finished online episode
    in the buffer carries its discounted return-to-go (NumPy, from the stored rewards
    and terminals), an unfinished one the unknown marker."""
    from o2o_jax import algorithm, mc_returns
    last = {}
    _record_train_calls(monkeypatch, lambda n, st: last.update(
        {k: np.array(v[0]) for k, v in st.replay.online.data.items()},
        size=int(_first(st.replay.online.size))))
    cfg = tiny_config(tmp_path, "calql", **{"online.epochs": 2, "online.train_every": 10,
                                            "online.updates_per_epoch": 20})
    algorithm.get("calql").apply_preset(cfg)
    cfg.online.train_every, cfg.online.updates_per_epoch = 10, 20
    pipeline.run(cfg)
    n = last["size"]
    assert n == 80
    rewards, dones, mc = last["rewards"][:n], last["dones"][:n], last[mc_returns.KEY][:n]
    ends = np.flatnonzero(dones == 1)     # hopper at random: every episode ends falling
    assert len(ends) >= 2
    start = 0
    for end in ends:
        np.testing.assert_allclose(mc[start:end + 1], mc_returns.returns_to_go(
            rewards[start:end + 1], cfg.agent.discount), rtol=1e-5)
        start = end + 1
    assert np.all(mc[start:] == mc_returns.UNKNOWN)


def test_a_run_saved_before_train_every_resumes(reference_run, tmp_path, monkeypatch):
    """Checkpoints whose saved config lacks online.train_every (made before it existed)
    resume as train_every = 0, to the uninterrupted run's rows."""
    ref, ref_dir = reference_run
    run_to_first_online_checkpoint(monkeypatch, tiny_config(tmp_path, "old"))
    ckpts = os.path.join(tmp_path, "old", "checkpoints")
    edited = []
    for meta_path in [os.path.join(ckpts, d, "meta.json") for d in os.listdir(ckpts)]:
        if os.path.exists(meta_path):
            meta = json.load(open(meta_path))
            del meta["config"]["online"]["train_every"]
            json.dump(meta, open(meta_path, "w"))
            edited.append(meta["phase"])
    assert "online" in edited      # the checkpoint it resumes from lost the key
    config = json.load(open(os.path.join(tmp_path, "old", "config.json")))
    del config["online"]["train_every"]
    json.dump(config, open(os.path.join(tmp_path, "old", "config.json"), "w"))
    pipeline.run(tiny_config(tmp_path, "old"))
    assert (numeric_rows(read_rows(os.path.join(tmp_path, "old")))
            == numeric_rows(read_rows(ref_dir)))


def test_a_run_training_every_few_env_steps_resumes_exactly(minari_root, tmp_path,
                                                            monkeypatch):
    def configure(c):
        c.online.train_every = 20
    rows = resumed_rows_match(tmp_path, monkeypatch, configure)
    assert any(r["phase"] == "online" and r["critic_loss"] for r in rows)


def test_q_auroc_is_scored_before_the_epochs_first_training_call(minari_root, tmp_path,
                                                                 monkeypatch):
    """With train_every = 10 of 40 the epoch's AUROC of Q is scored on all 40 of its new
    transitions by the agent as it was before the epoch's first training call, not by one
    that some of the epoch's calls trained: a stand-in `online.q_auroc` reports the critic's
    update count x 1000 + the number of transitions it was given."""
    import jax.numpy as jnp
    from o2o_jax import online
    monkeypatch.setattr(online, "q_auroc", lambda agent, obs, act, key, q_fn=None: (
        jnp.ravel(agent.critic.step)[0] * 1000 + obs.shape[0]).astype(jnp.float32))
    steps = []
    _record_train_calls(monkeypatch, lambda n, st: steps.append(
        int(_first(st.agent.critic.step))))
    pipeline.run(tiny_config(tmp_path, "auroc", **{
        "online.epochs": 2, "online.train_every": 10, "online.updates_per_epoch": 20,
        "online.first_epoch_multiplier": 1}))
    scored = [float(r["q_auroc"]) for r in read_rows(os.path.join(tmp_path, "auroc"))
              if r["phase"] == "online" and r["q_auroc"] != ""]
    assert len(steps) == 8 and len(set(steps[:4])) == 4    # the epoch's calls train
    assert scored == [steps[0] * 1000 + 40, steps[4] * 1000 + 40]
