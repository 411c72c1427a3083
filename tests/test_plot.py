"""Run directories read back (o2o_jax.rundir), experiments.plot and the ablations notebook,
on small synthetic run directories whose values are known."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from o2o_jax import rundir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "ablations.ipynb")

SEEDS_WRITTEN = [2, 0, 1]          # rows are written in this seed order within each step
EPOCHS = 4                          # online evaluations at epochs 0..EPOCHS
STEPS_PER_EPOCH = 1000
OFFLINE_STEPS = [500, 1000]


def score(k, seed, epoch):
    """Distinct known value per (run, seed, epoch)."""
    return 10.0 * k + 3.0 * seed + 0.5 * epoch + 0.01 * seed * epoch


def offline_score(k, seed, step):
    return 5.0 * k + seed + step / 1000.0


def write_run(path, k, replay, num_members, seeds=SEEDS_WRITTEN, algo="off2on"):
    os.makedirs(path)
    config = {"seed": 0, "env": "hopper", "algo": algo, "num_seeds": len(seeds),
              "dataset": {"kind": "medium"}, "agent": {"num_members": num_members},
              "online": {"replay": replay, "env_steps_per_epoch": STEPS_PER_EPOCH}}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    cols = ["wall_time", "phase", "step", "env_steps", "epoch", "seed", "eval_return",
            "normalized_score", "offline_fraction", "q_auroc", "critic_loss"]
    rows = []
    for step in OFFLINE_STEPS:
        for s in seeds:
            rows.append({"phase": "offline", "step": step, "env_steps": 0, "seed": s,
                         "critic_loss": 1.0 / step,
                         "normalized_score": offline_score(k, s, step)})
    for epoch in range(EPOCHS + 1):
        for s in seeds:
            row = {"phase": "online", "epoch": epoch, "env_steps": epoch * STEPS_PER_EPOCH,
                   "seed": s, "normalized_score": score(k, s, epoch),
                   "eval_return": 100 * score(k, s, epoch)}
            if epoch < EPOCHS:   # the final evaluation row has no training statistics
                row.update(step=epoch + 1, offline_fraction=0.5 - 0.1 * epoch + 0.01 * s,
                           q_auroc=0.5 + 0.05 * epoch, critic_loss=1.0)
            rows.append(row)
    with open(os.path.join(path, "metrics.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, cols, restval="")
        w.writeheader()
        for i, row in enumerate(rows):
            w.writerow({"wall_time": float(i), **row})
    return path


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {
        "balanced5": write_run(str(root / "balanced_n5"), 0, "balanced", 5),
        "uniform5": write_run(str(root / "uniform_n5"), 1, "uniform", 5),
        "balanced2": write_run(str(root / "balanced_n2"), 2, "balanced", 2, seeds=[0]),
        "root": str(root),
    }


# --------------------------------------------------------------------------- results

def test_learning_curve_returns_the_written_values_seed_major(run_dirs):
    run = rundir.load_run(run_dirs["uniform5"])
    assert run.get("online.replay") == "uniform" and run.get("agent.num_members") == 5
    np.testing.assert_array_equal(rundir.seeds(run), [0, 1, 2])
    xs, ys = rundir.learning_curve(run, "normalized_score", "online")
    np.testing.assert_array_equal(xs, np.arange(EPOCHS + 1) * STEPS_PER_EPOCH)
    expected = np.array([[score(1, s, e) for e in range(EPOCHS + 1)] for s in (0, 1, 2)])
    assert ys.shape == (3, EPOCHS + 1)
    np.testing.assert_allclose(ys, expected, rtol=0, atol=1e-12)
    # Analysis metric: empty on the final evaluation row, so one point fewer.
    xs, ys = rundir.learning_curve(run, "offline_fraction")
    np.testing.assert_array_equal(xs, np.arange(EPOCHS) * STEPS_PER_EPOCH)
    np.testing.assert_allclose(ys, [[0.5 - 0.1 * e + 0.01 * s for e in range(EPOCHS)]
                                    for s in (0, 1, 2)])
    # Offline phase: indexed by gradient step.
    xs, ys = rundir.learning_curve(run, "normalized_score", "offline")
    np.testing.assert_array_equal(xs, OFFLINE_STEPS)
    np.testing.assert_allclose(ys, [[offline_score(1, s, t) for t in OFFLINE_STEPS]
                                    for s in (0, 1, 2)])
    np.testing.assert_allclose(rundir.final_values(run), [score(1, s, EPOCHS) for s in (0, 1, 2)])
    with pytest.raises(KeyError, match="not_a_metric"):
        rundir.learning_curve(run, "not_a_metric")


def test_no_seed_column_and_missing_num_seeds(tmp_path):
    d = tmp_path / "single"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"algo": "off2on", "online": {"replay": "balanced"},
                                               "agent": {"num_members": 2}}))
    (d / "metrics.csv").write_text(
        "wall_time,phase,step,env_steps,normalized_score,epoch\n"
        "1,offline,100,0,3.5,\n"
        "2,online,1,0,4.0,0\n"
        "3,online,,100,5.0,1\n"
        "4,online,,100,6.0,1\n")   # a repeated (seed, x): the later row wins
    run = rundir.load_run(str(d))
    assert run.get("num_seeds") == 1 and run.get("seed") == 0
    np.testing.assert_array_equal(rundir.seeds(run), [0])
    xs, ys = rundir.learning_curve(run)
    np.testing.assert_array_equal(xs, [0, 100])
    np.testing.assert_array_equal(ys, [[4.0, 6.0]])


def test_epoch_grid_keeps_a_missing_epoch_in_its_column(tmp_path):
    d = tmp_path / "grid"
    d.mkdir()
    (d / "metrics.csv").write_text(
        "wall_time,phase,step,env_steps,normalized_score,alpha,epoch,seed\n"
        "1,offline,100,0,3.5,,,0\n"
        "2,online,,0,4.0,0.1,0,0\n"
        "2,online,,0,5.0,0.2,0,1\n"
        "3,online,,200,7.0,,2,0\n"      # seed 0 has no epoch 1; seed 1 no epoch 2
        "3,online,,100,8.0,,1,1\n"
        "4,online,,200,9.0,,2,0\n")     # a repeated (seed, epoch): the later row wins
    run = rundir.load_run(str(d))
    np.testing.assert_array_equal(rundir.epoch_grid(run),
                                  [[4.0, np.nan, 9.0], [5.0, 8.0, np.nan]])
    np.testing.assert_array_equal(rundir.epoch_grid(run, "alpha"),
                                  [[0.1, np.nan, np.nan], [0.2, np.nan, np.nan]])
    assert rundir.epoch_grid(run, "normalized_score", "offline").shape == (2, 0)


def test_cut_short_summary_reads_as_empty(tmp_path, capsys):
    """A run killed while writing summary.json still loads: its curve from metrics.csv,
    the summary as {} (a truncated file must not stop plotting a whole sweep)."""
    d = tmp_path / "cut"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"algo": "off2on"}))
    (d / "summary.json").write_text('{"final_normalized_score": 4')
    (d / "metrics.csv").write_text("wall_time,phase,step,env_steps,normalized_score,epoch\n"
                                   "1,online,,0,4.0,0\n2,online,,100,6.0,1\n")
    run = rundir.load_run(str(d))
    assert run.summary == {} and run.config == {"algo": "off2on"}
    assert "summary.json is not valid JSON" in capsys.readouterr().err
    np.testing.assert_array_equal(rundir.learning_curve(run)[1], [[4.0, 6.0]])


def test_grouping_and_pooling(run_dirs):
    runs = rundir.load_runs(os.path.join(run_dirs["root"], "*"))
    assert [r.name for r in runs] == ["balanced_n2", "balanced_n5", "uniform_n5"]
    by_replay = rundir.group_runs(runs, "online.replay")
    assert list(by_replay) == ["balanced", "uniform"]
    assert [r.name for r in by_replay["balanced"]] == ["balanced_n2", "balanced_n5"]
    by_n = rundir.group_runs(runs, "agent.num_members")
    assert list(by_n) == [2, 5]
    assert [r.name for r in rundir.filter_runs(runs, {"online.replay": "balanced",
                                                       "agent.num_members": 5})] == ["balanced_n5"]
    xs, ys = rundir.group_curve(by_replay["balanced"])
    assert ys.shape == (1 + 3, EPOCHS + 1)          # seeds pooled across the two runs
    np.testing.assert_allclose(ys[0], [score(2, 0, e) for e in range(EPOCHS + 1)])
    # Labels tell the runs apart by the config fields that differ.
    assert rundir.run_labels(runs) == ["balanced N=2", "balanced N=5", "uniform N=5"]


# --------------------------------------------------------------------------- plot

def _check_png(path):
    import matplotlib.image as mpimg
    assert os.path.getsize(path) > 5_000, path
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300 and img.shape[2] in (3, 4)
    assert img[..., :3].std() > 0.01       # not a blank canvas


def test_plot_main_writes_valid_pngs(run_dirs, tmp_path, capsys):
    from experiments import plot
    out = tmp_path / "plots"
    rc = plot.main([run_dirs["balanced5"], run_dirs["uniform5"], f"--out={out}",
                    "--metric=normalized_score"])
    assert rc == 0
    printed = capsys.readouterr().out.split()
    names = {os.path.basename(p) for p in printed}
    assert names == {"online_normalized_score.png", "offline_fraction.png", "q_auroc.png",
                     "offline_normalized_score.png"}
    for p in printed:
        assert os.path.dirname(p) == str(out)
        _check_png(p)
    # min-max band variant and a custom metric (no offline values -> no offline figure)
    rc = plot.main([run_dirs["balanced5"], f"--out={out}/mm", "--band=minmax",
                    "--metric=eval_return", "--analysis="])
    assert rc == 0
    printed = capsys.readouterr().out.split()
    assert [os.path.basename(p) for p in printed] == ["online_eval_return.png"]
    _check_png(printed[0])


def test_plot_cli_and_clear_error_without_metrics(run_dirs, tmp_path, capsys):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "experiments.plot", run_dirs["balanced2"],
                           f"--out={out}"], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    paths = proc.stdout.split()
    assert len(paths) == 4 and all(os.path.isfile(p) for p in paths)
    _check_png(paths[0])

    from experiments import plot
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    assert plot.main([str(empty)]) == 2
    err = capsys.readouterr().err
    assert "no metrics.csv" in err and str(empty) in err
    # Pointing at the parent of run directories lists them in the hint.
    assert plot.main([run_dirs["root"]]) == 2
    assert "balanced_n5" in capsys.readouterr().err


# --------------------------------------------------------------------------- notebook

@pytest.fixture
def kernel_name(tmp_path, monkeypatch):
    """A kernelspec in a temp dir that runs *this* interpreter (sys.executable), found via
    JUPYTER_PATH; nothing is registered globally and no other python3 spec can shadow it."""
    name = "o2o-jax-test-python"
    spec_dir = tmp_path / "jupyter" / "kernels" / name
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "o2o_jax test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    # The kernel inherits this environment: make o2o_jax/experiments importable even
    # without `pip install -e`, and let the notebook choose its own (inline) backend.
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.delenv("MPLBACKEND", raising=False)
    return name


def _execute_notebook(kernel_name, runs_glob, monkeypatch, fig_dir=""):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("O2O_RUNS", runs_glob)
    monkeypatch.setenv("O2O_FIGS", fig_dir)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=kernel_name, timeout=180,
                                     resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
    client.execute()   # raises CellExecutionError on any error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    markdown = "".join(o["data"].get("text/markdown", "") for o in outputs if "data" in o)
    return text, pngs, markdown


def test_notebook_executes_on_synthetic_runs(run_dirs, kernel_name, monkeypatch, tmp_path):
    fig_dir = tmp_path / "figs"
    text, pngs, markdown = _execute_notebook(
        kernel_name, os.path.join(run_dirs["root"], "*"), monkeypatch, str(fig_dir))
    assert "3 run(s)" in text
    assert len(pngs) == 2                                  # replay and ensemble figures
    # Missing groups are reported, not fatal.
    assert "no runs for replay=online_only" in text
    assert "no runs for N=1" in text
    assert "no runs for replay=uniform" not in text and "no runs for N=2" not in text
    for name in ("ablation_replay.png", "ablation_ensemble.png"):
        assert os.path.getsize(fig_dir / name) > 5_000
    # The final-score table: one row per (task, algo, replay, N) group.
    assert "IQM" in markdown and "CI" in markdown
    table_rows = [l for l in markdown.splitlines() if l.startswith("| hopper-medium")]
    assert len(table_rows) == 3
    row = next(l for l in table_rows if "| uniform | 5 |" in l)
    finals = [score(1, s, EPOCHS) for s in (0, 1, 2)]
    assert f"| {np.mean(finals):.2f} |" in row


def test_notebook_executes_with_no_runs(kernel_name, monkeypatch, tmp_path):
    text, pngs, _ = _execute_notebook(kernel_name, str(tmp_path / "nothing" / "*"), monkeypatch)
    assert "0 run(s)" in text and "no runs" in text
    assert not pngs


def test_log_scale_axes(run_dirs, tmp_path, monkeypatch):
    """--log_scale: the named metrics' figures get a log y axis (symlog when a value is not
    positive), the others stay linear."""
    from matplotlib.figure import Figure
    from experiments import plot
    scales, lows = {}, {}
    save = Figure.savefig

    def record(fig, path, *args, **kw):
        scales[os.path.basename(str(path))] = fig.axes[0].get_yscale()
        lows[os.path.basename(str(path))] = fig.axes[0].get_ylim()[0]
        return save(fig, path, *args, **kw)

    monkeypatch.setattr(Figure, "savefig", record)
    # Online critic_loss is 1.0 and offline_fraction 0.5 - 0.1 epoch + 0.01 seed >= 0.2
    # (epochs 0-3): all positive, so "log"; q_auroc is not named: linear.
    rc = plot.main([run_dirs["balanced5"], f"--out={tmp_path}",
                    "--analysis=critic_loss,q_auroc,offline_fraction",
                    "--log_scale=critic_loss,offline_fraction"])
    assert rc == 0
    assert scales["critic_loss.png"] == "log"
    assert scales["q_auroc.png"] == "linear"
    assert scales["online_normalized_score.png"] == "linear"
    assert scales["offline_fraction.png"] == "log"
    assert lows["offline_fraction.png"] > 0     # not the linear figure's fixed -0.02
    curves = [("a", np.arange(3.0), np.array([[1.0, 0.0, 2.0]]))]
    assert plot.y_scale(curves) == "symlog"
    assert plot.y_scale([("a", np.arange(2.0), np.array([[1.0, np.nan]]))]) == "log"
