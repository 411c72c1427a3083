"""Learning curves of run directories to PNG.

  python -m experiments.plot RUN_DIR [RUN_DIR ...] [--out=DIR] [--metric=normalized_score]
                             [--band=ci|minmax|none] [--analysis=offline_fraction,q_auroc]
                             [--log_scale=critic_loss,critic_loss_max]

Writes, one line per run (mean over its seeds, with a shaded band across seeds):
  online_<metric>.png      the metric vs online env steps
  <analysis metric>.png    each analysis curve vs online env steps (by default the offline
                           fraction of the RL batches and the AUROC of Q_ens at telling
                           online from offline samples)
  offline_<metric>.png     the metric vs offline gradient step, when runs have offline evals
and prints the paths written. The default --out is RUN_DIR/plots for one run, ./plots for
several. Metrics named in --log_scale get a logarithmic y axis (a loss that grows by orders
of magnitude, e.g. a critic divergence), or a symmetric-log one when some of their values
are not positive. Online analysis rows are logged at the env_steps of the epoch's start (the row
holds the evaluation made there and the statistics of that epoch's collection/training).

The drawing helpers (`draw_curves`, `curve_band`) draw on a given Axes and are reused by
notebooks/ablations.ipynb; this module never touches pyplot's global state, so importing
it does not change the matplotlib backend.
"""
import argparse
import os
import sys
import warnings
from typing import List, Optional, Sequence, Tuple

import numpy as np

from o2o_jax import rundir, stats

METRIC_LABELS = {
    "normalized_score": "normalised score",
    "eval_return": "evaluation return",
    "offline_fraction": "offline fraction of RL batches",
    "q_auroc": "AUROC of Q_ens (taken vs uniform actions)",
    "w_offline": "mean density-ratio weight, offline",
    "w_online": "mean density-ratio weight, online",
}
DEFAULT_ANALYSIS = ("offline_fraction", "q_auroc")

Curve = Tuple[str, np.ndarray, np.ndarray]   # (label, xs [T], values [S, T])


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def curve_band(ys: np.ndarray, band: str = "ci", confidence: float = 0.95,
               num_resamples: int = 2000, seed: int = 0):
    """(mean [T], low [T], high [T]) across seeds (rows) ignoring NaNs. band: "ci" (the
    percentile-bootstrap CI of the mean over seeds), "minmax", or "none" (low=high=mean)."""
    ys = np.atleast_2d(np.asarray(ys, float))
    T = ys.shape[1]
    mean, low, high = np.full(T, np.nan), np.full(T, np.nan), np.full(T, np.nan)
    for t in range(T):
        col = ys[:, t][np.isfinite(ys[:, t])]
        if col.size == 0:
            continue
        mean[t] = col.mean()
        if band == "ci":
            low[t], high[t] = stats.bootstrap_ci(col, np.mean, confidence, num_resamples,
                                                 seed + t)
        elif band == "minmax":
            low[t], high[t] = col.min(), col.max()
        elif band == "none":
            low[t] = high[t] = mean[t]
        else:
            raise ValueError(f"band must be ci, minmax or none, got {band!r}")
    return mean, low, high


def draw_curves(ax, curves: Sequence[Curve], band: str = "ci", confidence: float = 0.95,
                xlabel: str = "online env steps", ylabel: str = "", title: str = "",
                num_resamples: int = 2000, colors: Optional[dict] = None) -> None:
    """Mean line + shaded band per (label, xs, values[S, T]) on `ax`, legend with seeds.
    `colors` ({label: color}) keeps a label's colour fixed across panels."""
    for label, xs, ys in curves:
        ys = np.atleast_2d(ys)
        if xs.size == 0:
            continue
        mean, low, high = curve_band(ys, band, confidence, num_resamples)
        n_seeds = int(np.isfinite(ys).any(axis=1).sum())
        ok = np.isfinite(mean)
        marker = "o" if ok.sum() <= 25 else None
        (line,) = ax.plot(xs[ok], mean[ok], marker=marker, markersize=3,
                          color=(colors or {}).get(label),
                          label=f"{label} ({n_seeds} seed{'s' if n_seeds != 1 else ''})")
        if band != "none" and n_seeds > 1:
            ax.fill_between(xs[ok], low[ok], high[ok], color=line.get_color(), alpha=0.2,
                            linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def band_description(band: str, confidence: float, max_seeds: int = 2) -> str:
    """The title's account of the shaded band; with one seed per curve there is none."""
    if max_seeds < 2:
        return "one seed per curve: no band"
    return {"ci": f"mean over seeds, {100 * confidence:g}% bootstrap CI",
            "minmax": "mean over seeds, min-max", "none": "mean over seeds"}[band]


def y_scale(curves: Sequence[Curve]) -> str:
    """The y scale of a --log_scale figure: 'log' when every finite value of the curves is
    positive, else 'symlog'."""
    values = np.concatenate([np.ravel(np.asarray(ys, float)) for _, _, ys in curves])
    values = values[np.isfinite(values)]
    return "log" if values.size and (values > 0).all() else "symlog"


def _figure(curves: List[Curve], path: str, band: str, confidence: float, xlabel: str,
            metric: str, title: str, dpi: int, log: bool = False) -> str:
    from matplotlib.figure import Figure   # no pyplot: no global backend/state changes
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    max_seeds = max(np.atleast_2d(ys).shape[0] for _, _, ys in curves)
    draw_curves(ax, curves, band, confidence, xlabel=xlabel, ylabel=metric_label(metric),
                title=f"{title}\n({band_description(band, confidence, max_seeds)})")
    if metric == "q_auroc":
        ax.axhline(0.5, color="gray", linestyle=":", linewidth=1)
    if log:   # (no fixed linear limits then: they would hide a log axis's curves)
        ax.set_yscale(y_scale(curves))
    elif metric == "offline_fraction":
        ax.set_ylim(-0.02, 1.02)
    fig.savefig(path, dpi=dpi)
    return path


def _curves(runs, labels, metric: str, phase: str) -> List[Curve]:
    return [(lab, *rundir.learning_curve(r, metric, phase))
            for r, lab in zip(runs, labels) if rundir.has_metric(r, metric, phase)]


def make_plots(runs: Sequence[rundir.Run], out_dir: str, metric: str = "normalized_score",
               analysis: Sequence[str] = DEFAULT_ANALYSIS, band: str = "ci",
               confidence: float = 0.95, dpi: int = 120,
               labels: Optional[Sequence[str]] = None,
               log_scale: Sequence[str] = ()) -> List[str]:
    """Draw every figure that some run has data for; returns the PNG paths written.
    Metrics in `log_scale` get a log (or, with values <= 0, symmetric-log) y axis."""
    os.makedirs(out_dir, exist_ok=True)
    labels = list(labels) if labels is not None else rundir.run_labels(runs)
    written = []
    figures = [(f"online_{metric}.png", metric, "online", "online env steps",
                f"{metric_label(metric)} during online fine-tuning")]
    figures += [(f"{m}.png", m, "online", "online env steps", metric_label(m))
                for m in analysis if m != metric]
    figures += [(f"offline_{metric}.png", metric, "offline", "offline gradient steps",
                 f"{metric_label(metric)} during offline pretraining")]
    for filename, m, phase, xlabel, title in figures:
        curves = _curves(runs, labels, m, phase)
        if not curves:
            print(f"note: no run has {phase} {m!r} values; skipping {filename}",
                  file=sys.stderr)
            continue
        written.append(_figure(curves, os.path.join(out_dir, filename), band, confidence,
                               xlabel, m, title, dpi, log=m in log_scale))
    return written


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.plot",
                                description="Learning curves of run directories to PNG.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directories (each with config.json and metrics.csv)")
    p.add_argument("--out", default=None,
                   help="output directory (default: RUN_DIR/plots for one run, else ./plots)")
    p.add_argument("--metric", default="normalized_score",
                   help="metric column for the main curves (default: normalized_score)")
    p.add_argument("--band", choices=("ci", "minmax", "none"), default="ci",
                   help="shaded spread across seeds: bootstrap CI of the mean (default), "
                        "min-max, or none")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--analysis", default=",".join(DEFAULT_ANALYSIS),
                   help="comma-separated analysis metrics, one PNG each ('' for none)")
    p.add_argument("--log_scale", default="",
                   help="comma-separated metrics drawn on a log y axis (symmetric-log where "
                        "some values are <= 0), e.g. critic_loss,critic_loss_max")
    p.add_argument("--dpi", type=int, default=120)
    p.add_argument("--verbose", action="store_true", help="on an error, also print the "
                   "traceback")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        runs = [rundir.load_run(d) for d in args.run_dirs]
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or (os.path.join(args.run_dirs[0], "plots") if len(runs) == 1 else "plots")
    analysis = [m for m in args.analysis.split(",") if m]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        written = make_plots(runs, out, args.metric, analysis, args.band, args.confidence,
                             args.dpi, log_scale=[m for m in args.log_scale.split(",") if m])
    if not written:
        print(f"error: none of the runs has any {args.metric!r} values to plot",
              file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    from experiments import cli
    cli.run_argparse(main, "plot")
