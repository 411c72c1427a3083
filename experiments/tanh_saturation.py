"""How saturated is a fine-tuned ensemble policy's tanh? On the newest online checkpoint of a
run: the fraction of pre-tanh samples z of pi_E with |z| > 7.25 (beyond which rlkit-style
log(1 - tanh(z)^2 + 1e-6) and the exact log(1 - tanh(z)^2) differ by more than 1e-6 per
dimension), and the mean log pi_E under both formulas, on the newest online states.

    python -m experiments.tanh_saturation RUN_DIR [--states=20000] [--seed_index=0] \
        [--dataset=o2o/halfcheetah/authors-members-v0]

Tells whether the log-prob formula can matter for a run (it cannot where no sample
saturates). With `--dataset`, also the mean log pi_E on that data set's states (every
k-th, `--states` of them): beside the online states' value, it shows where the policy is
more certain, which sets the level alpha must take to hold the RL batch's mean log pi at
minus the target entropy.
"""
import argparse
import glob
import json
import os
import sys

import numpy as np

SATURATED = 7.25    # 1 - tanh(7.25)^2 < 1e-6


def log_pis(mean, log_std, noise):
    """(exact, with 1e-6 inside the log, fraction |z| > SATURATED) of samples z."""
    z = mean + np.exp(log_std) * noise
    gauss = np.sum(-0.5 * noise ** 2 - log_std - 0.5 * np.log(2 * np.pi), -1)
    exact = gauss - np.sum(2 * (np.log(2) + -z - np.logaddexp(0, -2 * z)), -1)
    eps = gauss - np.sum(np.log(1 - np.tanh(z) ** 2 + 1e-6), -1)
    return exact, eps, float(np.mean(np.abs(z) > SATURATED))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--states", type=int, default=20_000)
    p.add_argument("--seed_index", type=int, default=0)
    p.add_argument("--dataset", default=None, help="also measure on this offline data set")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    import jax
    import jax.numpy as jnp
    import ml_collections
    import orbax.checkpoint as ocp
    from o2o_jax import envs
    from o2o_jax.agents import actor_critic
    paths = sorted(glob.glob(os.path.join(args.run_dir, "checkpoints", "*", "state")))
    if not paths:
        print(f"tanh_saturation: no checkpoint under {args.run_dir}/checkpoints",
              file=sys.stderr)
        return 2
    with open(os.path.join(args.run_dir, "config.json")) as f:
        cfg = json.load(f)
    tree = ocp.StandardCheckpointer().restore(paths[-1])
    if "state" not in tree or "agent" not in tree["state"]:
        print(f"tanh_saturation: {paths[-1]} is not an online checkpoint (no online state); "
              "run it on a run that reached the online phase", file=sys.stderr)
        return 2
    s = args.seed_index
    actor = jax.tree_util.tree_map(lambda x: jnp.asarray(x[s]),
                                   tree["state"]["agent"]["actor"]["params"])   # [N, ...]
    online = tree["state"]["replay"]["online"]
    size = int(np.asarray(online["size"])[s])
    obs = jnp.asarray(np.asarray(online["data"]["observations"][s][:size])[-args.states:])
    # The run's actor network, built as the run built it (its agent config section).
    agent_cfg = ml_collections.ConfigDict(cfg["agent"])
    agent_cfg.hidden_dims = tuple(agent_cfg.hidden_dims)
    obs_dim, act_dim = envs.env_dims(cfg["env"])
    one = actor_critic.create(jax.random.PRNGKey(0), obs_dim, act_dim, agent_cfg)
    from o2o_jax import distributions as dist

    def measure(states):
        means, log_stds = actor_critic.member_policies(one, actor, states)
        mean, log_std = dist.ensemble_moments(means, log_stds)
        noise = np.asarray(jax.random.normal(jax.random.PRNGKey(0), mean.shape))
        exact, eps, frac = log_pis(np.asarray(mean, np.float64),
                                   np.asarray(log_std, np.float64), noise)
        return mean, log_std, exact, eps, frac

    mean, log_std, exact, eps, frac = measure(obs)
    print(f"{paths[-1]}: {obs.shape[0]} newest online states, seed index {s}")
    print(f"  mean |mu_E| {float(jnp.mean(jnp.abs(mean))):.3f}, mean sigma_E "
          f"{float(jnp.mean(jnp.exp(log_std))):.3f}")
    print(f"  fraction of sampled |z| > {SATURATED}: {frac:.2e}")
    print(f"  mean log pi_E: exact {exact.mean():.5f}, with 1e-6 in the log {eps.mean():.5f} "
          f"(difference {abs(exact.mean() - eps.mean()):.1e})")
    if args.dataset:
        from o2o_jax.data import loader
        off = loader.load(args.dataset, cfg["env"]).arrays["observations"]
        off = jnp.asarray(off[::max(1, off.shape[0] // args.states)][:args.states])
        _, off_log_std, off_exact, _, off_frac = measure(off)
        print(f"  on {off.shape[0]} states of {args.dataset}: mean log pi_E "
              f"{off_exact.mean():.3f} (online states: {exact.mean():.3f}), mean sigma_E "
              f"{float(jnp.mean(jnp.exp(off_log_std))):.3f}, saturated {off_frac:.2e}")
    return 0


if __name__ == "__main__":
    from experiments import cli
    cli.run_argparse(main, "tanh_saturation")
