"""How do pretrained members see an offline data set at the start of fine-tuning?

    python -m experiments.members_on_data --members=<members checkpoint> \\
        --dataset=o2o/halfcheetah/medium-v0 [--env=halfcheetah] [--variant=reference] \\
        [--states=50000] [--batch=5000]

Hands the members over to the online phase exactly as fine-tuning does (`to_online` of
the config's algo: fresh alpha = `online.init_temperature`, targets = critics) and, on
every k-th transition of the data set (`--states` of them), reports the means of:

  q_data         Q_ens(s, a_data), mean over members of the twin minimum (what the RL
                 batch's critics predict);
  q_pi           Q_ens(s, a~), a~ ~ pi_E(s);  cql_gap = q_data - q_pi (CQL pushes Q at
                 the policy's actions below Q at the data's: large when the data are not
                 the policy's);
  log_pi_data    log pi_E(a_data | s);  log_pi_own = log pi_E(a~ | s) (the data's
                 likelihood under the policy beside the policy's own samples);
  td_residual    y - Q_i(s, a_data) over members and twins, y = r + gamma (1 - d)
                 (min_j Qbar_ij(s', a') - alpha log pi_E(a'|s')), the first online TD
                 target: positive where the first updates will pull Q up.

These predict the first epoch's Q rise and the alpha fall of fine-tuning on that data set
(issue 11 compares them between the members' own data and another behaviour policy's).
"""
import argparse
import sys
from typing import Optional, Sequence

import numpy as np


def measure(agent, arrays, key, batch: int, discount_alpha=None):
    """Means of the quantities in the module docstring over `arrays` (host dict)."""
    import jax
    import jax.numpy as jnp
    from o2o_jax import distributions as dist
    from o2o_jax.agents import actor_critic as ac
    from o2o_jax.agents import sac

    @jax.jit
    def one(agent, b, k):
        k_pi, k_next = jax.random.split(k)
        mean, log_std = ac.policy(agent, agent.actor.params, b["observations"])
        a_pi, log_pi_own = dist.sample(k_pi, mean, log_std)
        q_data_all = ac.q_values(agent, agent.critic.params, b["observations"], b["actions"])
        q_data = ac.conservative_q(agent, q_data_all)
        q_pi = ac.conservative_q(agent, ac.q_values(agent, agent.critic.params,
                                                    b["observations"], a_pi))
        y = sac.td_targets(agent, b, k_next)                      # [N, B]
        resid = jnp.expand_dims(y, ac.twin_axis(agent)) - q_data_all
        return {"q_data": q_data, "q_pi": q_pi, "cql_gap": q_data - q_pi,
                "log_pi_data": dist.log_prob(mean, log_std, b["actions"]),
                "log_pi_own": log_pi_own,
                "td_residual": jnp.mean(resid.reshape(-1, resid.shape[-1]), axis=0)}

    n = len(arrays["rewards"])
    sums, count = {}, 0
    for i, start in enumerate(range(0, n, batch)):
        b = {k: jnp.asarray(v[start:start + batch]) for k, v in arrays.items()}
        out = one(agent, b, jax.random.fold_in(key, i))
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(np.sum(np.asarray(v, np.float64)))
        count += len(b["rewards"])
    return {k: v / count for k, v in sums.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", required=True, help="members checkpoint folder")
    p.add_argument("--dataset", required=True, action="append",
                   help="Minari dataset id (repeat the flag for several)")
    p.add_argument("--env", default="halfcheetah")
    p.add_argument("--variant", default="reference", help="config variant of the task")
    p.add_argument("--states", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=5_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import jax
    from configs import variants
    from o2o_jax import algorithm, checkpoints, data, envs
    from o2o_jax.transitions import TRANSITION_KEYS

    cfg = variants.task(args.env, "medium", args.variant)
    cfg.online.load_offline_from = args.members
    obs_dim, act_dim = envs.env_dims(cfg.env)
    meta = checkpoints.read_meta(args.members)
    cfg.agent.num_members = int(meta.get("num_members", cfg.agent.num_members))
    cfg.num_seeds = 1
    algo = algorithm.get(cfg.algo)
    template = jax.tree_util.tree_map(
        lambda x: x[None], algo.create_members(jax.random.PRNGKey(0), obs_dim, act_dim, cfg))
    try:
        members = checkpoints.load_members(cfg, template, obs_dim, act_dim)
    except checkpoints.CheckpointError as e:
        print(f"members_on_data: {e}", file=sys.stderr)
        return 2
    agent = algo.to_online(jax.tree_util.tree_map(lambda x: x[0], members), cfg)
    print(f"members {args.members} (N = {cfg.agent.num_members}), handed over with alpha "
          f"{float(agent.alpha):.3g}; {args.states} states per data set")
    names = ["q_data", "q_pi", "cql_gap", "log_pi_data", "log_pi_own", "td_residual"]
    print("| data set | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for dataset_id in args.dataset:
        ds = data.load(dataset_id, cfg.env)
        step = max(1, ds.num_transitions // args.states)
        arrays = {k: np.asarray(ds.arrays[k][::step][:args.states], np.float32)
                  for k in TRANSITION_KEYS}
        m = measure(agent, arrays, jax.random.PRNGKey(args.seed), args.batch)
        print(f"| {dataset_id} | " + " | ".join(f"{m[k]:.2f}" for k in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
