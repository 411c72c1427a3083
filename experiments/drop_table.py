"""The table and figure of the ensemble-size sweep (`experiments/drop_sweep.sh`, issue 11):
for each N, off2on fine-tuning and the continued-CQL control from the same members, scored
before any update and after every 250 updates.

    python -m experiments.drop_table --sweep_dir=runs/drop_sweep [--sizes=2,5,10] \\
        [--at=250,2000] [--out=docs/figures/drop_sweep]

Reads <sweep_dir>/off2on_n<N>/ (online rows: evaluation at each epoch's start, i.e. after
the previous epochs' updates) and <sweep_dir>/cql_n<N>/ (offline rows of a run with
`offline.init_from`: step 0 scores the loaded members). Prints a markdown table (mean over
seeds, per-seed values in brackets) of the normalised score at the start and after each
`--at` count, the drop start - score there, and the lowest score up to the last count;
writes `drop_table.csv` (one row per N, arm and seed) and `drop_curves.png`.
"""
import argparse
import csv
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

from o2o_jax import rundir

ARMS = (("off2on", "off2on fine-tuning"), ("cql", "continued offline CQL"))


def online_updates(run: rundir.Run, epochs: np.ndarray) -> np.ndarray:
    """Updates done before the evaluation at the start of each epoch in `epochs`."""
    upe = int(run.get("online.updates_per_epoch"))
    mult = int(run.get("online.first_epoch_multiplier"))
    e = np.asarray(epochs, dtype=np.int64)
    return np.where(e > 0, (e + mult - 1) * upe, 0)


def arm_curve(run: rundir.Run, arm: str):
    """(updates [T], normalised score [S, T]) of one arm's run."""
    if arm == "off2on":
        xs, ys = rundir.learning_curve(run, "normalized_score", "online", x="epoch")
        return online_updates(run, xs), ys
    if not run.get("offline.init_from"):
        raise ValueError(f"{run.path} is not a continued-pretraining run (its "
                         "offline.init_from is empty): it has no step-0 score")
    xs, ys = rundir.learning_curve(run, "normalized_score", "offline", x="step")
    return xs.astype(np.int64), ys


def value_at(xs: np.ndarray, ys: np.ndarray, x: int) -> np.ndarray:
    hit = np.flatnonzero(xs == x)
    if hit.size == 0:
        raise ValueError(f"no evaluation after {x} updates (evaluated at {xs.tolist()})")
    return ys[:, hit[0]]


def summarize(xs: np.ndarray, ys: np.ndarray, at: Sequence[int]) -> Dict[str, np.ndarray]:
    """Per seed: the start score, the score after each count in `at`, the drop there
    (start - score) and the lowest score after the first update up to max(at)."""
    out = {"start": value_at(xs, ys, 0)}
    for x in at:
        out[f"at_{x}"] = value_at(xs, ys, x)
        out[f"drop_{x}"] = out["start"] - out[f"at_{x}"]
    window = (xs > 0) & (xs <= max(at))
    out["min"] = np.nanmin(ys[:, window], axis=1)
    return out


def fmt(v: np.ndarray) -> str:
    mean = f"{np.nanmean(v):.1f}"
    return mean if v.size == 1 else f"{mean} ({', '.join(f'{x:.1f}' for x in v)})"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep_dir", required=True)
    p.add_argument("--sizes", default="2,5,10")
    p.add_argument("--at", default="250,2000")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    at = [int(s) for s in args.at.split(",") if s]
    out_dir = args.out or os.path.join(args.sweep_dir, "figures")
    curves, rows, stats = {}, [], {}
    for n in sizes:
        for arm, _ in ARMS:
            path = os.path.join(args.sweep_dir, f"{arm}_n{n}")
            if not rundir.is_run_dir(path):
                print(f"missing: {path}", file=sys.stderr)
                continue
            run = rundir.load_run(path)
            xs, ys = arm_curve(run, arm)
            curves[n, arm] = (xs, ys)
            s = summarize(xs, ys, at)
            stats[n, arm] = s
            for i, seed in enumerate(rundir.seeds(run)):
                rows.append({"num_members": n, "arm": arm, "seed": int(seed),
                             **{k: float(v[i]) for k, v in s.items()}})
    if not stats:
        print(f"no runs under {args.sweep_dir}", file=sys.stderr)
        return 1
    head = (["N", "arm", "start"] + [f"after {x}" for x in at]
            + [f"drop at {x}" for x in at] + [f"lowest (1..{max(at)})"])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for (n, arm), s in stats.items():
        cells = ([str(n), arm, fmt(s["start"])] + [fmt(s[f"at_{x}"]) for x in at]
                 + [fmt(s[f"drop_{x}"]) for x in at] + [fmt(s["min"])])
        print("| " + " | ".join(cells) + " |")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "drop_table.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(curves, sizes, os.path.join(out_dir, "drop_curves.png"))
    print(f"wrote {out_dir}/drop_table.csv and drop_curves.png")
    return 0


def plot(curves, sizes: List[int], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.4), sharey=True,
                             squeeze=False)
    for ax, n in zip(axes[0], sizes):
        for (arm, label), color in zip(ARMS, ("C0", "C1")):
            if (n, arm) not in curves:
                continue
            xs, ys = curves[n, arm]
            for y in ys:
                ax.plot(xs, y, color=color, alpha=0.3, lw=0.8)
            ax.plot(xs, np.nanmean(ys, axis=0), color=color, lw=2,
                    label=f"{label} (mean of {ys.shape[0]})")
        ax.set_title(f"N = {n}")
        ax.set_xlabel("updates from the same members")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("normalised score")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
