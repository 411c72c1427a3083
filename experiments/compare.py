"""Compare methods on one dataset at one budget: methods x seeds, one table, one figure.

  python -m experiments.compare --config=configs/hopper_medium.py:quick \
      --methods=off2on,sac_ft,cql_ft,awac,bcq_ft,sac --seeds=3 --out=runs/compare

Each method runs through the same pipeline (`experiments.train`) with its paper preset
(`Algorithm.preset`, o2o_jax/agents/<method>.py) applied on top of the given config, with `--seeds` vmapped seeds.
Budget overrides on the command line (--config.offline.steps=...) apply to every method.
Writes <out>/<method>/ run directories, <out>/comparison.md and .csv, and figures. The
table gives each method's final score, its start -> end (online epoch 0, the members it
fine-tunes, to the last epoch) and the no-collapse measure: the largest drop below the start
in the first 10 online epochs. Run again with the same arguments (the same --out), it skips
the methods that finished (summary.json and the same config), resumes an interrupted one,
and stops before running anything if a method there finished with another config.

Methods whose offline phase is the same computation (same pretraining losses and the same
config apart from the online phase, e.g. off2on and cql_ft) pretrain once: the later ones
fine-tune the first one's saved members (`online.load_offline_from`), which gives the same
online run as pretraining again. `--noshare_offline` pretrains every method itself.
"""
import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import copy  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402

from experiments import cli  # noqa: E402

with cli.flag_definitions("compare"):   # the default file is parsed here, with overrides
    _CONFIG = config_flags.DEFINE_config_file("config", "configs/hopper_medium.py:quick",
                                              "base experiment config", lock_config=False)
_METHODS = flags.DEFINE_list("methods", ["off2on", "sac_ft", "cql_ft", "awac", "bcq_ft",
                                         "sac"], "methods to compare (registered names)")
_SEEDS = flags.DEFINE_integer("seeds", 3, "seeds per method (vmapped in one program)")
_OUT = flags.DEFINE_string("out", "", "output folder (default runs/compare-<time>)")
_SHARE = flags.DEFINE_bool("share_offline", True, "pretrain once for methods whose offline "
                           "phase is identical (they fine-tune the same saved members)")


def method_config(base, method: str, seeds: int, out: str):
    from o2o_jax import algorithm
    cfg = copy.deepcopy(base)
    algorithm.get(method).apply_preset(cfg)
    cfg.num_seeds = seeds
    cfg.run_dir, cfg.run_name = out, method
    return cfg


def offline_signature(cfg):
    """What determines the offline phase's result, or None if it cannot be shared (no
    pretraining, members loaded anyway, or a method with a phase after pretraining, e.g.
    FQE-init, whose saved members are those after it)."""
    from o2o_jax import algorithm, checkpoints
    algo = algorithm.get(cfg.algo)
    if (cfg.offline.steps == 0 or cfg.online.load_offline_from or algo.post_offline
            or not cfg.offline.save_members):
        return None
    d = checkpoints.comparable_config(cfg)
    for k in ["online", "algo"] + [a.config_section[0] for a in algorithm.all_algorithms()
                                   if a.config_section and a is not algo]:
        d.pop(k, None)     # other methods' sections cannot change this offline phase
    if algo.config_section and algo.offline_section_keys is not None:   # nor its online keys
        own = d.pop(algo.config_section[0], {})
        kept = {k: own[k] for k in algo.offline_section_keys if k in own}
        if kept:
            d[algo.config_section[0]] = kept
    return (algo.offline_update(cfg), algo.create_members, json.dumps(d, sort_keys=True))


def pretrained_itself(run_dir: str) -> bool:
    """Whether the run in `run_dir` (if any) began with its own pretraining."""
    from o2o_jax import rundir
    saved = rundir.saved_json(run_dir, rundir.CONFIG_FILE)
    return saved is not None and not saved.get("online", {}).get("load_offline_from")


def share_offline(cfgs, methods, out):
    """Point each method at the saved members of the first method with its offline
    signature; returns {method: method whose pretraining it uses}."""
    first, source = {}, {}
    for method, cfg in zip(methods, cfgs):
        sig = offline_signature(cfg)
        if sig is None:
            continue
        # (a run an earlier compare began with its own pretraining goes on so)
        if sig in first and not pretrained_itself(os.path.join(out, method)):
            source[method] = first[sig]
            cfg.online.load_offline_from = os.path.join(out, first[sig], "offline_members")
        elif sig not in first:
            first[sig] = method
    return source


def start_end_drop(run, within: int = 10):
    """Per seed: the normalised score at online epoch 0 (the members fine-tuning starts
    from), at the last epoch, and the largest drop below the start in epochs 1..`within`
    (`stats.largest_drop`); NaN where the run has no such rows."""
    from o2o_jax import rundir, stats
    by_epoch = rundir.epoch_grid(run, "normalized_score", "online")
    start = by_epoch[:, 0] if by_epoch.shape[1] else np.full(by_epoch.shape[0], np.nan)
    return start, rundir.final_values(run, "normalized_score", "online"), \
        stats.largest_drop(by_epoch, start=0, within=within)


def offline_scores(run) -> np.ndarray:
    """Per seed, the normalised score of the members the offline stage handed over (the
    summary's: after a method's phase after pretraining, e.g. PR-FT's refinement); empty
    if the run has none."""
    from o2o_jax import rundir
    offline = (run.summary or {}).get("offline") or {}
    if offline.get("per_seed_normalized") is not None:
        return np.asarray(offline["per_seed_normalized"], dtype=np.float64)
    return (rundir.final_values(run, "normalized_score", "offline")
            if rundir.has_metric(run, "normalized_score", "offline") else np.array([]))


def run_time(runs) -> float:
    """Seconds the runs took, offline + online, as their summaries record (so a table
    written again after skipping finished methods still says how long they took)."""
    return float(sum((r.summary or {}).get(k) or 0.0 for r in runs
                     for k in ("offline_time_s", "online_time_s")))


def table(out: str, methods, runs, offline_runs=None) -> str:
    from o2o_jax import rundir, stats
    lines = ["| method | final normalised score (mean ± std over seeds) | IQM | 95% CI of mean "
             "| start → end (mean) | largest drop below start, epochs 1–10 (mean; worst "
             "seed) | after offline | seeds |", "|---|---|---|---|---|---|---|---|"]
    rows = []
    for method, run, off_run in zip(methods, runs, offline_runs or runs):
        start, final, drop = start_end_drop(run)
        off = offline_scores(off_run)
        s = stats.summarize(final)
        off_txt = f"{np.nanmean(off):.1f}" if off.size else "—"
        if off_run is not run and off.size:
            off_txt += f" ({os.path.basename(off_run.path)}'s pretraining)"
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN: shown as nan
            start_mean, drop_mean, drop_worst = (np.nanmean(start), np.nanmean(drop),
                                                 np.nanmax(drop))
        lines.append(f"| {method} | {s['mean']:.1f} ± {np.nanstd(final):.1f} | {s['iqm']:.1f} "
                     f"| [{s['ci_low']:.1f}, {s['ci_high']:.1f}] "
                     f"| {start_mean:.1f} → {s['mean']:.1f} | {drop_mean:.1f}; {drop_worst:.1f} "
                     f"| {off_txt} | {s['n']} |")
        rows.append({"method": method, "mean": s["mean"], "std": float(np.nanstd(final)),
                     "iqm": s["iqm"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
                     "start_mean": float(start_mean), "drop_mean": float(drop_mean),
                     "drop_worst": float(drop_worst),
                     "offline_mean": float(np.nanmean(off)) if off.size else "",
                     "per_seed": " ".join(f"{v:.2f}" for v in final),
                     "per_seed_start": " ".join(f"{v:.2f}" for v in start),
                     "per_seed_drop": " ".join(f"{v:.2f}" for v in drop)})
    with open(os.path.join(out, "comparison.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return "\n".join(lines)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from experiments import plot
    from o2o_jax import pipeline, rundir
    base = _CONFIG.value
    out = _OUT.value or os.path.join(base.run_dir, f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(out, exist_ok=True)
    methods = list(_METHODS.value)
    cfgs = [method_config(base, m, _SEEDS.value, out) for m in methods]   # validate all first
    from o2o_jax import config_checks
    for cfg in cfgs:
        config_checks.check(cfg)
    source = share_offline(cfgs, methods, out) if _SHARE.value else {}
    for cfg in cfgs:   # before anything runs: a finished run of another config stops it
        done = pipeline.finished(cfg)
        if done and done[1]:
            from o2o_jax import checkpoints
            raise checkpoints.CheckpointError(
                f"{done[0]} finished with another config (it differs in "
                f"{', '.join(done[1][:8])}); use another --out, or delete that run "
                "directory to run it again with this one")
    t0 = time.time()
    for i, cfg in enumerate(cfgs):
        shared = (f"; fine-tunes the members pretrained for {source[methods[i]]}"
                  if methods[i] in source else "")
        print(f"[compare] {i + 1}/{len(cfgs)}: {cfg.algo} ({_SEEDS.value} seeds){shared}; "
              f"elapsed {time.time() - t0:.0f} s", flush=True)
        if pipeline.finished(cfg):
            print(f"[compare] {cfg.algo}: finished in {pipeline.run_path(cfg)} with this "
                  "config; not run again (delete its summary.json to rerun it)", flush=True)
            continue
        pipeline.run(cfg)
    runs = [rundir.load_run(os.path.join(out, m)) for m in methods]
    offline_runs = [runs[methods.index(source[m])] if m in source else run
                    for m, run in zip(methods, runs)]
    md = table(out, methods, runs, offline_runs)
    figures = plot.make_plots(runs, out, labels=methods)
    header = (f"Dataset {runs[0].config['dataset']['kind']} ({runs[0].config['env']}), "
              f"{_SEEDS.value} seeds per method, offline steps {base.offline.steps}, "
              f"online env steps {base.online.epochs * base.online.env_steps_per_epoch}; "
              f"time of the methods' runs (offline + online, from their summaries) "
              f"{run_time(runs):.0f} s.\n\n")
    with open(os.path.join(out, "comparison.md"), "w") as f:
        f.write(header + md + "\n")
    print(header + md)
    print("figures:", *figures, sep="\n  ")


if __name__ == "__main__":
    cli.run(main, "compare")
