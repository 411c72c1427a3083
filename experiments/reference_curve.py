"""Our fine-tuning curves beside a run of the authors' code (an rlkit `progress.csv`).

    python -m experiments.reference_curve --reference=<progress.csv> \\
        --runs runs/hc_ref_a runs/hc_ref_b [--label=A --label=B] [--out=docs/figures/reference] [--env=halfcheetah]

Prints, at the reference's milestone epochs, the evaluation return of each run (mean over
its seeds, and per seed) beside the reference's, and the online diagnostics the two log in
common (alpha, mean Q on the RL batch, mean density-ratio weights, offline fraction); then
checks the targets of issue 11: no drop of more than 5 normalised points below the epoch-0
score in the first 10 epochs, and within 10% of the reference's return at epochs 50, 100
and 250. Writes `<out>/reference_curve.png` (return vs epoch) and
`<out>/reference_diagnostics.png`, and `<out>/reference_table.csv`.

Columns compared (rlkit's are statistics of the first batch of each epoch, which lean
towards the freshly collected data; ours are shown from our `<key>_first_batch` columns,
the same statistic, where a run logged them, else from the epoch means):
  eval_return       <-> evaluation/Average Returns
  alpha             <-> trainer/Alpha
  q1_data           <-> trainer/Q1 Predictions Mean (first twin, all members)
  w_offline         <-> trainer/Offline Weights Mean
  w_online          <-> trainer/Online Weights Mean
  log_pi            <-> trainer/Log Pis Mean (ours: minus the `entropy` column, the mean
                        log pi_E of the actor loss's samples)
"""
import argparse
import csv
import os
import sys
from typing import Dict, List

import numpy as np

from o2o_jax import rundir, stats

MILESTONES = (0, 1, 5, 10, 25, 50, 75, 100, 150, 200, 250)
FIRST = "_first_batch"   # our columns with the first update's values of each epoch
TARGET_EPOCHS = (50, 100, 250)
PAIRS = (("eval_return", "evaluation/Average Returns"), ("alpha", "trainer/Alpha"),
         ("q1_data", "trainer/Q1 Predictions Mean"),
         ("w_offline", "trainer/Offline Weights Mean"),
         ("w_online", "trainer/Online Weights Mean"),
         ("log_pi", "trainer/Log Pis Mean"))
DERIVED = {"log_pi": ("entropy", -1.0)}   # ours: key -> (our column, factor)


def read_reference(path: str) -> Dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "Epoch" not in rows[0]:
        raise ValueError(f"{path!r} is not an rlkit progress.csv (no Epoch column)")
    out = {}
    for k in rows[0]:
        try:
            out[k] = np.array([float(r[k]) if r[k] != "" else np.nan for r in rows])
        except ValueError:
            continue
    return out


def run_curves(run) -> Dict[str, np.ndarray]:
    """{metric: [S, E+1]} by epoch for one run (NaN where a seed lacks the epoch)."""
    out = {}
    keys = [k for k, _ in PAIRS] + ["offline_fraction", "normalized_score"]
    keys += [k + FIRST for k in keys]
    for key in keys:
        base = key[:-len(FIRST)] if key.endswith(FIRST) else key
        column, factor = DERIVED.get(base, (base, 1.0))
        column += key[len(base):]
        if column in run.metrics:
            out[key] = factor * rundir.epoch_grid(run, column, "online")
    return out


def at(arr: np.ndarray, epoch: int) -> np.ndarray:
    return arr[:, epoch] if epoch < arr.shape[1] else np.full(arr.shape[0], np.nan)


def check_targets(curves, ref, max_epoch=None) -> List[str]:
    lines = []
    score = curves["normalized_score"]
    if score.shape[1] > 1:
        drop = stats.largest_drop(score, start=0, within=10)
        lines.append("largest drop below the epoch-0 score in epochs 0-10 (normalised): "
                     + ", ".join(f"{d:.1f}" for d in drop)
                     + ("  [target <= 5: met]" if np.all(drop <= 5) else
                        "  [target <= 5: NOT met]")
                     + ("" if score.shape[1] > 10 else " (fewer than 10 epochs so far)"))
    ref_ret = ref["evaluation/Average Returns"]
    for e in TARGET_EPOCHS:
        if max_epoch is not None and e > max_epoch:
            lines.append(f"epoch {e}: beyond --max_epoch={max_epoch}")
            continue
        ours = at(curves["eval_return"], e)
        if e >= len(ref_ret) or not np.isfinite(ours).any():
            lines.append(f"epoch {e}: not reached")
            continue
        rel = np.nanmean(ours) / ref_ret[e] - 1
        lines.append(f"epoch {e}: ours {np.nanmean(ours):.0f} vs reference {ref_ret[e]:.0f} "
                     f"({100 * rel:+.1f}%)  [target within 10%: "
                     f"{'met' if abs(rel) <= 0.10 else 'NOT met'}]")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", required=True, help="rlkit progress.csv of the reference")
    p.add_argument("--runs", required=True, nargs="+", help="run directories (globs ok)")
    p.add_argument("--label", action="append", default=[],
                   help="a run's label (repeat, one per run, in order)")
    p.add_argument("--env", default="halfcheetah")
    p.add_argument("--max_epoch", type=int, default=None,
                   help="draw and tabulate epochs 0..max_epoch only (the reference too), "
                        "e.g. 100 beside 100-epoch runs")
    p.add_argument("--out", default="plots")
    p.add_argument("--verbose", action="store_true", help="on an error, also print the "
                   "traceback")
    args = p.parse_args(argv)
    if args.max_epoch is not None and args.max_epoch < 0:
        print(f"reference_curve: --max_epoch={args.max_epoch} must be >= 0", file=sys.stderr)
        return 2
    try:
        ref = read_reference(args.reference)
        runs = rundir.load_runs(args.runs, verbose=False)
    except (OSError, ValueError) as e:
        print(f"reference_curve: {e}", file=sys.stderr)
        return 2
    if not runs:
        print(f"reference_curve: no run directories match {args.runs}", file=sys.stderr)
        return 2
    labels = args.label or [os.path.basename(r.path) for r in runs]
    if len(labels) != len(runs):
        print(f"reference_curve: {len(labels)} labels for {len(runs)} runs", file=sys.stderr)
        return 2
    keep = [i for i, r in enumerate(runs) if "phase" in r.metrics and
            any(p == "online" for p in r.metrics["phase"])]
    for i in sorted(set(range(len(runs))) - set(keep)):
        print(f"reference_curve: skipping {runs[i].path}: no online rows yet", file=sys.stderr)
    if not keep:
        print("reference_curve: no run has online rows yet", file=sys.stderr)
        return 2
    runs, labels = [runs[i] for i in keep], [labels[i] for i in keep]
    os.makedirs(args.out, exist_ok=True)
    all_curves = [run_curves(r) for r in runs]
    if args.max_epoch is not None:
        ref = {k: v[:args.max_epoch + 1] for k, v in ref.items()}
        all_curves = [{k: v[:, :args.max_epoch + 1] for k, v in c.items()}
                      for c in all_curves]
    ref_epochs = ref["Epoch"].astype(int)

    table_rows = []
    print(f"{'epoch':>5} | {'reference':>9} | " + " | ".join(f"{lab[:28]:>28}" for lab in labels))
    for e in MILESTONES:
        if e >= len(ref_epochs):
            continue
        cells = []
        row = {"epoch": e, "reference": ref["evaluation/Average Returns"][e]}
        for lab, c in zip(labels, all_curves):
            v = at(c["eval_return"], e)
            row[lab] = float(np.nanmean(v)) if np.isfinite(v).any() else ""
            cells.append("" if not np.isfinite(v).any() else
                         f"{np.nanmean(v):.0f} ({'/'.join(f'{x:.0f}' for x in v)})")
        table_rows.append(row)
        print(f"{e:>5} | {ref['evaluation/Average Returns'][e]:>9.0f} | "
              + " | ".join(f"{c:>28}" for c in cells))
    with open(os.path.join(args.out, "reference_table.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, ["epoch", "reference"] + labels)
        w.writeheader()
        w.writerows(table_rows)

    print("\ndiagnostics at milestones: the reference logs the first batch of each epoch; ours "
          "show the same (first update of the epoch) where the run logged it, else the "
          "epoch mean, marked *")

    def diag(c, key, e):
        for k, mark in ((key + FIRST, " "), (key, "*")):
            if k in c:
                v = at(c[k], e)
                if np.isfinite(v).any():
                    return f"{np.nanmean(v):9.3f}{mark}"
        return f"{'':9} "

    for ours_key, ref_key in PAIRS[1:]:
        if ref_key not in ref:
            continue
        print(f"  {ours_key} vs {ref_key}:")
        for e in MILESTONES:
            if e >= len(ref_epochs):
                continue
            print(f"    epoch {e:>3}: reference {ref[ref_key][e]:9.3f} | "
                  + " | ".join(diag(c, ours_key, e) for c in all_curves))
    for lab, c in zip(labels, all_curves):
        print(f"\n{lab}:")
        for line in check_targets(c, ref, args.max_epoch):
            print("  " + line)

    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(ref_epochs, ref["evaluation/Average Returns"], color="black", lw=1.5,
            label="authors' code (public rerun)")
    for lab, c in zip(labels, all_curves):
        y = c["eval_return"]
        xs = np.arange(y.shape[1])
        mean = np.nanmean(y, axis=0)
        line, = ax.plot(xs, mean, lw=1.2, label=f"{lab} ({y.shape[0]} seeds)")
        if y.shape[0] > 1:
            ax.fill_between(xs, np.nanmin(y, axis=0), np.nanmax(y, axis=0),
                            color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xlabel("epoch (1000 online env steps)")
    ax.set_ylabel(f"evaluation return ({args.env}, deterministic, 5 episodes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("fine-tuning from the authors' CQL members (band: min-max over seeds)",
                 fontsize=9)
    fig.tight_layout()
    path = os.path.join(args.out, "reference_curve.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"\nwrote {path}")

    fig, axes = plt.subplots(1, len(PAIRS) - 1, figsize=(4 * (len(PAIRS) - 1), 3.6))
    for ax, (ours_key, ref_key) in zip(axes, PAIRS[1:]):
        if ref_key in ref:
            ax.plot(ref_epochs, ref[ref_key], color="black", lw=1.2, label="authors' code")
        for lab, c in zip(labels, all_curves):
            for k, style, tag in ((ours_key + FIRST, "-", "first batch"),
                                  (ours_key, ":", "epoch mean")):
                if k in c:
                    ax.plot(np.arange(c[k].shape[1]), np.nanmean(c[k], axis=0), style, lw=1,
                            label=f"{lab} ({tag})")
        ax.set_title(f"{ours_key} / {ref_key.split('/')[-1]}", fontsize=8)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(args.out, "reference_diagnostics.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    from experiments import cli
    cli.run_argparse(main, "reference_curve")
