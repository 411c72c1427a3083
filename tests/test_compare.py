"""experiments.compare on tiny runs: its table agrees with each run's own summary, and
methods with the same offline phase pretrain once."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT

TINY = ["--config.dataset.kind=random", "--config.dataset.build_transitions=1500",
        "--config.agent.hidden_dims=(8,8)", "--config.agent.num_members=2",
        "--config.agent.bc_steps=5", "--config.offline.steps=40", "--config.offline.chunk=20",
        "--config.offline.eval_interval=20", "--config.offline.eval_episodes=1",
        "--config.offline.batch_size=32", "--config.online.epochs=2",
        "--config.online.env_steps_per_epoch=40", "--config.online.updates_per_epoch=10",
        "--config.online.first_epoch_multiplier=2", "--config.online.eval_episodes=1",
        "--config.online.batch_size=32", "--config.online.dr_batch_size=32",
        "--config.online.dr_hidden_dims=(8,8)"]


def test_compare_writes_table_consistent_with_runs(minari_root, tmp_path):
    out = str(tmp_path / "cmp")
    env = {**os.environ, "MINARI_DATASETS_PATH": minari_root, "PYTHONPATH": ROOT}
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.compare", "--config=configs/hopper_medium.py:quick",
         "--methods=off2on,sac_ft,cql_ft", "--seeds=2", f"--out={out}", *TINY],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(out, "comparison.csv")) as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"off2on", "sac_ft", "cql_ft"}
    for method, row in rows.items():
        with open(os.path.join(out, method, "summary.json")) as f:
            summary = json.load(f)
        per_seed = summary["final"]["per_seed_normalized"]
        assert len(per_seed) == 2
        np.testing.assert_allclose(float(row["mean"]), np.mean(per_seed), rtol=1e-6)
        np.testing.assert_allclose(float(row["std"]), np.std(per_seed), rtol=1e-6, atol=1e-9)
    configs = {}
    for method in rows:
        with open(os.path.join(out, method, "config.json")) as f:
            configs[method] = json.load(f)
    assert configs["sac_ft"]["agent"]["num_members"] == 1      # sac_ft preset applied
    # cql_ft pretrains exactly as off2on does: it fine-tunes off2on's members instead of
    # pretraining again; sac_ft (N = 1) pretrains itself. The table's offline column of
    # cql_ft is off2on's.
    assert configs["cql_ft"]["online"]["load_offline_from"] == os.path.join(
        out, "off2on", "offline_members")
    assert not configs["sac_ft"]["online"]["load_offline_from"]
    with open(os.path.join(out, "cql_ft", "metrics.csv")) as f:
        assert {r["phase"] for r in csv.DictReader(f)} == {"online"}
    with open(os.path.join(out, "off2on", "summary.json")) as f:
        off2on_offline = json.load(f)["offline"]["per_seed_normalized"]
    np.testing.assert_allclose(float(rows["cql_ft"]["offline_mean"]), np.mean(off2on_offline),
                               rtol=1e-6)
    assert float(rows["off2on"]["offline_mean"]) == float(rows["cql_ft"]["offline_mean"])
    md = open(os.path.join(out, "comparison.md")).read()
    assert "| off2on |" in md and "| sac_ft |" in md
    total = sum(json.load(open(os.path.join(out, m, "summary.json")))[k]
                for m in rows for k in ("offline_time_s", "online_time_s"))
    assert f"from their summaries) {total:.0f} s." in md
    assert os.path.getsize(os.path.join(out, "online_normalized_score.png")) > 5000
    # start -> end and the largest drop below the start, from metrics.csv by hand
    for method, row in rows.items():
        with open(os.path.join(out, method, "metrics.csv")) as f:
            online = [r for r in csv.DictReader(f) if r["phase"] == "online"
                      and r["normalized_score"] not in ("", "nan")]
        for i, seed in enumerate(sorted({float(r["seed"]) for r in online})):
            by_epoch = {int(float(r["epoch"])): float(r["normalized_score"])
                        for r in online if float(r["seed"]) == seed}
            start = by_epoch[0]
            drop = max(start - by_epoch[e] for e in by_epoch if e <= 10)
            assert float(row["per_seed_start"].split()[i]) == pytest.approx(start, abs=5e-3)
            assert float(row["per_seed_drop"].split()[i]) == pytest.approx(drop, abs=5e-3)
            assert drop >= 0
    # run again: every method has finished with this config, so none runs again
    mtimes = {m: os.path.getmtime(os.path.join(out, m, "metrics.csv")) for m in rows}
    again = subprocess.run(
        [sys.executable, "-m", "experiments.compare", "--config=configs/hopper_medium.py:quick",
         "--methods=off2on,sac_ft,cql_ft", "--seeds=2", f"--out={out}", *TINY],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("not run again") == 3, again.stdout[-3000:]
    with open(os.path.join(out, "comparison.md")) as f:
        assert f"from their summaries) {total:.0f} s." in f.read()      # not this call's
    assert mtimes == {m: os.path.getmtime(os.path.join(out, m, "metrics.csv")) for m in rows}
    with open(os.path.join(out, "comparison.csv")) as f:
        assert {r["method"]: r["per_seed"] for r in csv.DictReader(f)} == {
            m: r["per_seed"] for m, r in rows.items()}
    # another config in the same --out: stopped before anything runs, naming the keys
    other = subprocess.run(
        [sys.executable, "-m", "experiments.compare", "--config=configs/hopper_medium.py:quick",
         "--methods=off2on,sac_ft,cql_ft", "--seeds=2", f"--out={out}", *TINY,
         "--config.online.epochs=3"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=900)
    assert other.returncode != 0
    assert "finished with another config" in other.stderr + other.stdout
    assert "online.epochs" in other.stderr + other.stdout
    assert mtimes == {m: os.path.getmtime(os.path.join(out, m, "metrics.csv")) for m in rows}


def test_finished_needs_summary_and_names_config_differences(tmp_path):
    """pipeline.finished: a run directory counts as finished only with its summary.json,
    and says in which config keys it differs (none up to the fields a resume may change)."""
    import ml_collections
    from o2o_jax import pipeline
    from configs import hopper_medium
    cfg = hopper_medium.get_config("quick")
    cfg.run_dir, cfg.run_name = str(tmp_path), "m"
    path = tmp_path / "m"
    path.mkdir()
    assert pipeline.finished(cfg) is None                     # nothing there
    (path / "config.json").write_text(cfg.to_json_best_effort(indent=2))
    assert pipeline.finished(cfg) is None                     # no summary.json yet
    (path / "summary.json").write_text("{}")
    assert pipeline.finished(cfg) == (str(path), [])
    other = ml_collections.ConfigDict(cfg.to_dict())
    other.tensorboard = not cfg.tensorboard                   # not part of a run's result
    assert pipeline.finished(other) == (str(path), [])
    other.online.epochs = cfg.online.epochs + 1               # another experiment
    other.agent.num_members = 7
    assert pipeline.finished(other) == (str(path), ["agent.num_members", "online.epochs"])
    # A run saved before online.train_every existed did what 0 does: still finished ...
    saved = json.loads(cfg.to_json_best_effort())
    del saved["online"]["train_every"]
    (path / "config.json").write_text(json.dumps(saved))
    assert pipeline.finished(cfg) == (str(path), [])
    other = ml_collections.ConfigDict(cfg.to_dict())
    other.online.train_every = 1                              # ... but not for another value
    assert pipeline.finished(other) == (str(path), ["online.train_every"])
    (path / "summary.json").write_text("{trunc")              # a torn write: not finished
    assert pipeline.finished(cfg) is None
    cfg.run_name = ""                                         # a timestamped new run
    assert pipeline.finished(cfg) is None


def test_offline_signature_shares_pretraining_across_online_only_sections():
    """UPQ's section (β) is read online only (`offline_section_keys=()`): it pretrains as
    off2on does, whatever β; a change to the pretraining config, or a method whose section
    is read offline, is not shared."""
    from experiments import compare
    from configs import hopper_medium
    base = hopper_medium.get_config("quick")
    sig = {m: compare.offline_signature(compare.method_config(base, m, 2, "/tmp/x"))
           for m in ("off2on", "upq", "calql")}
    assert sig["off2on"] == sig["upq"]
    other_beta = compare.method_config(base, "upq", 2, "/tmp/x")
    other_beta.upq.beta = 0.5
    assert compare.offline_signature(other_beta) == sig["off2on"]
    more_steps = compare.method_config(base, "upq", 2, "/tmp/x")
    more_steps.offline.steps += 1
    assert compare.offline_signature(more_steps) != sig["off2on"]
    assert sig["calql"] != sig["off2on"]


def test_a_method_that_began_its_own_pretraining_is_not_redirected(tmp_path):
    """share_offline: a method that an earlier compare began with its own pretraining (its
    run directory's config.json loads no members) goes on so; otherwise it is pointed at
    the first method's members with the same pretraining."""
    from experiments import compare
    from configs import hopper_medium
    base, out = hopper_medium.get_config("quick"), str(tmp_path)
    methods = ["off2on", "upq"]

    def shared():
        cfgs = [compare.method_config(base, m, 2, out) for m in methods]
        return compare.share_offline(cfgs, methods, out), cfgs

    source, cfgs = shared()
    assert source == {"upq": "off2on"}
    assert cfgs[1].online.load_offline_from == os.path.join(out, "off2on", "offline_members")
    os.makedirs(tmp_path / "upq")
    (tmp_path / "upq" / "config.json").write_text(json.dumps({"online": {
        "load_offline_from": ""}}))
    source, cfgs = shared()
    assert source == {} and cfgs[1].online.load_offline_from == ""
