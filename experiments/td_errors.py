"""Where a critic's TD error sits, at a run's online checkpoints: per member, offline vs
online data, and how concentrated it is in the transitions the replay samples.

    python -m experiments.td_errors RUN_DIR [--epochs=75,80,85] [--seed_index=0] \
        [--offline_stride=1] [--csv=OUT.csv]

For every leaf of the balanced replay (each offline transition, each online one) at the
online checkpoint of each epoch, the squared TD error of every member's critics under the
SAC / Off2OnRL backup (`sac.td_targets`: member i's own target twin-minimum at a' ~ pi_E,
minus alpha log pi_E; one a' per transition, drawn with a fixed key), and the leaf's
replay priority. Reported per member:

  loss_expected  sum over twins of the priority-weighted mean squared TD error: what that
                 member adds to `critic_loss` on average under the replay's sampling
                 distribution as it stands at the checkpoint (the next epoch's updates
                 also sample the 1,000-odd transitions it collects first, which enter at
                 the running max priority and are not in the checkpoint; the logged epoch
                 mean is printed beside it for comparison, not as a check)
  online_share   the share of loss_expected from online transitions (the rest: offline)
  top_0.1%       the share of loss_expected from the 0.1% of leaves with the largest
                 priority x squared error (how few transitions carry the loss); only with
                 every leaf evaluated (--offline_stride=1), else empty
  sq_max         the largest squared TD error of any leaf (either twin)

A divergence that starts in a few transitions shows a large top share; one member running
away shows in its row alone. The TD error is the SAC backup's: for a method with its own
target (e.g. a penalised or a max backup) it is not that method's training loss. With
`--offline_stride=k` only every k-th offline leaf is evaluated and counted k times (an
estimate of the offline part, k times cheaper; the total priority mass stays exact).
"""
import argparse
import glob
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

TOP_SHARE = 0.001


def squared_td_errors(agent, batch, key):
    """Squared TD errors [N, num_qs, B] (ensemble) or [num_qs, B] of the SAC backup, with
    the targets drawn from `key` exactly as `sac.critic_loss` draws them from its
    `k_target` (so summing over members and twins of the batch mean gives its TD loss)."""
    import jax.numpy as jnp
    from o2o_jax.agents import actor_critic as ac
    from o2o_jax.agents import sac
    y = sac.td_targets(agent, batch, key)
    q = ac.q_values(agent, agent.critic.params, batch["observations"], batch["actions"])
    return (q - jnp.expand_dims(y, ac.twin_axis(agent))) ** 2


def summarize(sq: np.ndarray, priorities: np.ndarray, online: np.ndarray,
              counts: Optional[np.ndarray] = None, top: float = TOP_SHARE,
              total_mass: Optional[float] = None) -> List[Dict]:
    """Per-member rows from squared errors `sq` [N, T, L] (members, twins, leaves), leaf
    `priorities` [L], `online` [L] (bool) and `counts` [L] (how many leaves each evaluated
    one stands for; 1 by default; with counts the top share is not defined: NaN).
    `total_mass`: the replay's whole priority mass (default: that of the leaves given).
    See the module docstring for the columns."""
    sq = np.asarray(sq, np.float64)
    p = np.asarray(priorities, np.float64) * (1.0 if counts is None else np.asarray(counts))
    online = np.asarray(online, bool)
    sampled = counts is None or bool(np.all(np.asarray(counts) == 1))
    weight = p / (p.sum() if total_mass is None else total_mass)   # the sampling distribution
    rows = []
    for i in range(sq.shape[0]):
        per_leaf = weight * sq[i].sum(axis=0)      # [L]: this member's expected loss parts
        total = per_leaf.sum()
        k = max(1, int(np.ceil(top * per_leaf.size)))
        largest = np.partition(per_leaf, per_leaf.size - k)[-k:]
        rows.append({"member": i, "loss_expected": total,
                     "online_share": per_leaf[online].sum() / total,
                     "top_share": largest.sum() / total if sampled else float("nan"),
                     "sq_max": float(sq[i].max())})
    return rows


def _restore_agent(run_dir: str, ckpt: str, seed_index: int):
    """(config dict, the online agent of seed `seed_index`, the raw replay state) of an
    online checkpoint, the agent built as the run built it and given the saved params."""
    import flax.serialization
    import jax
    import orbax.checkpoint as ocp
    from o2o_jax import algorithm, envs
    cfg = run_config(run_dir)
    tree = ocp.StandardCheckpointer().restore(os.path.join(ckpt, "state"))
    state = tree.get("state", {})
    if "agent" not in state or "replay" not in state or "tree" not in state["replay"]:
        raise ValueError(f"{ckpt} holds no online state with a balanced replay (a sum tree of "
                         "priorities); run td_errors on an online checkpoint of a run with "
                         "online.replay=balanced")
    obs_dim, act_dim = envs.env_dims(cfg.env)
    algo = algorithm.get(cfg.algo)
    members = algo.create_members(jax.random.PRNGKey(0), obs_dim, act_dim, cfg)
    agent = algo.to_online(members, cfg)
    raw = jax.tree_util.tree_map(lambda x: np.asarray(x)[seed_index], state["agent"])
    agent = agent.replace(
        actor=agent.actor.replace(params=flax.serialization.from_state_dict(
            agent.actor.params, raw["actor"]["params"])),
        critic=agent.critic.replace(params=flax.serialization.from_state_dict(
            agent.critic.params, raw["critic"]["params"])),
        target_critic_params=flax.serialization.from_state_dict(
            agent.target_critic_params, raw["target_critic_params"]),
        temp=agent.temp.replace(params=flax.serialization.from_state_dict(
            agent.temp.params, raw["temp"]["params"])))
    replay = jax.tree_util.tree_map(lambda x: np.asarray(x)[seed_index], state["replay"])
    return cfg, agent, replay


def leaf_priorities(replay, num_offline: int) -> np.ndarray:
    """The priorities of the M offline leaves and the online ring's valid slots, in leaf
    order, read by `sum_tree.leaves` from the raw replay state (ValueError when its tree
    does not fit M offline transitions plus the ring's capacity)."""
    from o2o_jax.replay import sum_tree
    nodes = np.asarray(replay["tree"]["nodes"])
    capacity = int(np.asarray(replay["online"]["data"]["rewards"]).shape[0])
    tree = sum_tree.SumTreeState(nodes=nodes, capacity=num_offline + capacity)
    if 2 * tree.num_leaves_pow2 != nodes.shape[0]:
        raise ValueError(f"the replay's sum tree has {nodes.shape[0] // 2} leaf slots, which "
                         f"does not fit {num_offline} offline transitions + {capacity} online "
                         "slots; is the dataset the run's?")
    return np.asarray(sum_tree.leaves(tree))[:num_offline + int(replay["online"]["size"])]


def run_config(run_dir: str):
    """The run's config (its config.json) as a ConfigDict."""
    import ml_collections
    with open(os.path.join(run_dir, "config.json")) as f:
        return ml_collections.ConfigDict(json.load(f))


def measure(run_dir: str, ckpt: str, seed_index: int = 0, offline_stride: int = 1,
            chunk: int = 65_536, dataset=None, key_seed: int = 0):
    """(per-member rows, meta) at one online checkpoint; see the module docstring."""
    import jax
    import jax.numpy as jnp
    from o2o_jax import pipeline, envs
    from o2o_jax.transitions import TRANSITION_KEYS
    cfg, agent, replay = _restore_agent(run_dir, ckpt, seed_index)
    if dataset is None:
        obs_dim, act_dim = envs.env_dims(cfg.env)
        dataset = pipeline.load_dataset(cfg, obs_dim, act_dim)
    offline = {k: np.asarray(dataset.arrays[k], np.float32) for k in TRANSITION_KEYS}
    m = offline["rewards"].shape[0]
    try:
        prio = leaf_priorities(replay, m)
    except ValueError as e:
        raise ValueError(f"{ckpt}: {e}") from None
    total_mass = float(np.sum(prio, dtype=np.float64))
    size = prio.shape[0] - m
    on = {k: np.asarray(replay["online"]["data"][k])[:size] for k in TRANSITION_KEYS}
    off_idx = np.arange(0, m, offline_stride)
    data = {k: np.concatenate([offline[k][off_idx], on[k]]) for k in TRANSITION_KEYS}
    prio = np.concatenate([prio[off_idx], prio[m:]])
    counts = np.concatenate([np.full(off_idx.size, float(offline_stride)), np.ones(size)])
    online = np.concatenate([np.zeros(off_idx.size, bool), np.ones(size, bool)])
    fn = jax.jit(squared_td_errors)
    key = jax.random.PRNGKey(key_seed)
    parts = []
    n = prio.shape[0]
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        batch = {k: jnp.asarray(np.resize(v[start:stop], (chunk,) + v.shape[1:]))
                 for k, v in data.items()}            # fixed shape: one compilation
        parts.append(np.asarray(fn(agent, batch, jax.random.fold_in(key, start)))
                     [..., :stop - start])
    sq = np.concatenate(parts, axis=-1)
    if sq.ndim == 2:                                   # a single agent: one "member"
        sq = sq[None]
    rows = summarize(sq, prio, online, None if offline_stride == 1 else counts,
                     total_mass=total_mass)
    meta = {"offline": m, "online": size, "offline_stride": offline_stride,
            "alpha": float(np.asarray(agent.alpha)),
            "offline_priority_share": float((prio * counts)[~online].sum()
                                            / (prio * counts).sum())}
    return rows, meta


def online_checkpoints(run_dir: str) -> Dict[int, str]:
    """{epoch: checkpoint dir} of the run's online checkpoints."""
    out = {}
    for meta_path in sorted(glob.glob(os.path.join(run_dir, "checkpoints", "*", "meta.json"))):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("phase") == "online":
            out[int(meta["epoch"])] = os.path.dirname(meta_path)
    return out


def logged_critic_loss(run_dir: str, epoch: int, seed_index: int) -> Optional[float]:
    """The logged `critic_loss` of the epoch that starts at the checkpoint (its mean over
    that epoch's updates), if the run got there."""
    from o2o_jax import rundir
    rows = [r for r in rundir.read_metrics_rows(os.path.join(run_dir, "metrics.csv"))
            if r.get("phase") == "online" and r.get("critic_loss", "") != ""
            and int(float(r["epoch"])) == epoch]
    return float(rows[seed_index]["critic_loss"]) if len(rows) > seed_index else None


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.td_errors",
                                description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--epochs", default="",
                   help="comma-separated epochs of online checkpoints (default: all)")
    p.add_argument("--seed_index", type=int, default=0)
    p.add_argument("--offline_stride", type=int, default=1)
    p.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.offline_stride < 1:
        print("td_errors: --offline_stride must be >= 1", file=sys.stderr)
        return 2
    found = online_checkpoints(args.run_dir)
    if not found:
        print(f"td_errors: no online checkpoint under {args.run_dir}/checkpoints (keep them "
              "with --config.checkpoint.every_online_epochs and a large "
              "--config.checkpoint.keep)", file=sys.stderr)
        return 2
    epochs = [int(e) for e in args.epochs.split(",") if e] or sorted(found)
    missing = [e for e in epochs if e not in found]
    if missing:
        print(f"td_errors: no online checkpoint at epoch(s) {missing}; there are "
              f"{sorted(found)}", file=sys.stderr)
        return 2
    out, dataset = [], None
    for epoch in epochs:
        if dataset is None:   # once for all epochs
            from o2o_jax import envs, pipeline
            cfg = run_config(args.run_dir)
            dataset = pipeline.load_dataset(cfg, *envs.env_dims(cfg.env))
        rows, meta = measure(args.run_dir, found[epoch], args.seed_index,
                             args.offline_stride, dataset=dataset)
        logged = logged_critic_loss(args.run_dir, epoch, args.seed_index)
        total = sum(r["loss_expected"] for r in rows)
        print(f"epoch {epoch} ({found[epoch]}): {meta['offline']} offline + {meta['online']} "
              f"online leaves, alpha {meta['alpha']:.3f}, offline share of the priority mass "
              f"{meta['offline_priority_share']:.3f}; critic_loss under the checkpoint's "
              f"sampling {total:.1f}"
              + (f" (logged mean of epoch {epoch}: {logged:.1f})" if logged is not None
                 else ""))
        print(f"  {'member':>6} {'loss_expected':>14} {'online_share':>12} "
              f"{'top_0.1%':>9} {'sq_max':>12}")
        for r in rows:
            print(f"  {r['member']:>6} {r['loss_expected']:>14.2f} {r['online_share']:>12.3f} "
                  f"{r['top_share']:>9.3f} {r['sq_max']:>12.1f}")
            out.append({"epoch": epoch, **r, "logged_critic_loss": logged, **meta})
    if args.csv:
        import csv
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, list(out[0]))
            w.writeheader()
            w.writerows(out)
        print(args.csv)
    return 0


if __name__ == "__main__":
    from experiments import cli
    cli.run_argparse(main, "td_errors")
