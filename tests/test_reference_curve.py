"""experiments.reference_curve against a hand-made rlkit progress.csv and run directory:
the table, the first-batch diagnostics and the issue's target checks."""
import csv
import os
import subprocess
import sys

import numpy as np

from experiments import reference_curve
from tests.helpers import ROOT


def write_reference(path, returns):
    cols = ["Epoch", "evaluation/Average Returns", "trainer/Alpha",
            "trainer/Q1 Predictions Mean", "trainer/Offline Weights Mean",
            "trainer/Online Weights Mean"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for e, r in enumerate(returns):
            w.writerow([e, r, 0.5, -100.0 + e, 1.0, 2.0])


def write_run(path, returns_per_seed, q1_first=None):
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write('{"env": "halfcheetah", "algo": "off2on", "num_seeds": 2}')
    rows = []
    for e in range(len(returns_per_seed[0])):
        for s, rets in enumerate(returns_per_seed):
            r = {"phase": "online", "epoch": e, "step": e, "env_steps": 1000 * e, "seed": s,
                 "eval_return": rets[e], "normalized_score": rets[e] / 100.0,
                 "alpha": 0.3, "q1_data": 5.0, "entropy": 4.0}
            if q1_first is not None:
                r["q1_data_first_batch"] = q1_first[e]
            rows.append(r)
    with open(os.path.join(path, "metrics.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_targets_and_table(tmp_path):
    ref = 1000.0 + 10.0 * np.arange(251)                      # 1000 -> 3500
    write_reference(tmp_path / "progress.csv", ref)
    good = [ref * 1.05, ref * 0.95]                           # mean = the reference
    bad = [ref.copy(), ref.copy()]
    bad[1][3] = ref[0] - 600                                   # a drop of 6 points at epoch 3
    bad[0][50:] *= 0.8; bad[1][50:] *= 0.8                     # 20% low from epoch 50
    write_run(str(tmp_path / "good"), good, q1_first=np.arange(251) * 2.0)
    write_run(str(tmp_path / "bad"), bad)
    runs = reference_curve.rundir.load_runs([str(tmp_path / "good"), str(tmp_path / "bad")],
                                            verbose=False)
    ref_cols = reference_curve.read_reference(str(tmp_path / "progress.csv"))
    good_lines = reference_curve.check_targets(reference_curve.run_curves(runs[0]), ref_cols)
    # rlkit's Log Pis Mean is set beside minus our entropy column.
    np.testing.assert_array_equal(reference_curve.run_curves(runs[0])["log_pi"], -4.0)
    bad_lines = reference_curve.check_targets(reference_curve.run_curves(runs[1]), ref_cols)
    assert "[target <= 5: met]" in good_lines[0]
    assert all("+0.0%" in line and "met" in line for line in good_lines[1:])
    assert "NOT met" in bad_lines[0] and "6.0" in bad_lines[0]
    assert all("-20.0%" in line and "NOT met" in line for line in bad_lines[1:])

    out = subprocess.run(
        [sys.executable, "-m", "experiments.reference_curve",
         f"--reference={tmp_path / 'progress.csv'}", "--runs", str(tmp_path / "good"),
         "--label=good", f"--out={tmp_path / 'fig'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "   50 |      1500 |" in out.stdout and "1500 (1575/1425)" in out.stdout
    # Q1 diagnostics come from the first-batch column (2 x epoch), not the epoch mean (5).
    assert "epoch  50: reference   -50.000 |   100.000" in out.stdout
    assert os.path.exists(tmp_path / "fig" / "reference_curve.png")
    with open(tmp_path / "fig" / "reference_table.csv") as f:
        table = list(csv.DictReader(f))
    assert float(table[0]["reference"]) == 1000.0 and float(table[0]["good"]) == 1000.0
    # --max_epoch cuts the reference and the runs alike: nothing after epoch 50.
    out = subprocess.run(
        [sys.executable, "-m", "experiments.reference_curve",
         f"--reference={tmp_path / 'progress.csv'}", "--runs", str(tmp_path / "good"),
         "--label=good", f"--out={tmp_path / 'cut'}", "--max_epoch=50"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "epoch 50: ours 1500 vs reference 1500" in out.stdout
    assert "epoch 100: beyond --max_epoch=50" in out.stdout
    with open(tmp_path / "cut" / "reference_table.csv") as f:
        assert max(int(r["epoch"]) for r in csv.DictReader(f)) == 50
    short = reference_curve.main([f"--reference={tmp_path / 'progress.csv'}", "--runs",
                                  str(tmp_path / "good"), f"--out={tmp_path / 'cut2'}",
                                  "--max_epoch=7"])
    assert short == 0
    with open(tmp_path / "cut2" / "reference_table.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 5]
    # A run that has not logged an online row yet (just started: empty metrics.csv) is
    # skipped with a note, the others drawn as before.
    os.makedirs(tmp_path / "started")
    (tmp_path / "started" / "metrics.csv").write_text("")
    out = subprocess.run(
        [sys.executable, "-m", "experiments.reference_curve",
         f"--reference={tmp_path / 'progress.csv'}", "--runs", str(tmp_path / "started"),
         str(tmp_path / "good"), "--label=started", "--label=good", f"--out={tmp_path / 's'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "skipping" in out.stderr and "no online rows yet" in out.stderr
    assert "1500 (1575/1425)" in out.stdout
    # A file that is not an rlkit progress.csv is one clear error.
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    out = subprocess.run(
        [sys.executable, "-m", "experiments.reference_curve",
         f"--reference={tmp_path / 'bad.csv'}", "--runs", str(tmp_path / "good")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "not an rlkit progress.csv" in out.stderr
