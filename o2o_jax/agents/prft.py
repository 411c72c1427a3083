"""TD3-BC with policy refinement and fine-tuning, PR-FT (Beeson & Montana 2022).

Spec: shared/spec/methods.md B4 (known from the paper and a third-party re-implementation,
maxdoesch/td3_bc; the authors' code was not found). On the TD3 pieces of `agents/td3.py`:

1. Offline: TD3+BC (`td3.update`, objective "td3_bc", dataset state normalisation).
2. Policy refinement (a phase after pretraining, `prft.pr_steps` updates): the actor
   alone, the critics frozen, with L = -mean Q1(s, mu(s)) / mean|Q1(s, mu(s))| +
   alpha' mean (mu(s) - a)^2 (objective "normalized_bc"), alpha' = `prft.alpha_pr`
   (the re-implementation's 0.4 / 5).
3. Online (the target actor reset to the refined actor): the TD3 step with the same
   normalised objective, alpha decayed every update:
   alpha <- kappa alpha, kappa = exp(log(alpha_end / alpha_start) / N), so that
   alpha_t = alpha_start (alpha_end / alpha_start)^(t / N); alpha_start = alpha',
   alpha_end = `prft.alpha_end_ratio` alpha_start (ours: 1/2), N = the run's online
   updates ((epochs - 1 + first_epoch_multiplier) x updates_per_epoch).

Defaults marked "ours" in the spec are config fields: `pr_steps` (the seed gives none;
ours 100k) and `alpha_end_ratio`.
"""
import math

import jax.numpy as jnp
import ml_collections

from o2o_jax.agents import td3


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.pr_steps = 100_000         # policy-refinement actor updates (ours)
    c.alpha_pr = 0.08            # alpha' (re-implementation: 0.4 / scaling_factor_lambda 5)
    c.alpha_end_ratio = 0.5      # alpha_end / alpha_start online (ours)
    return c


def online_updates(cfg) -> int:
    """N: every online update of the run (`online.total_updates`)."""
    from o2o_jax import online
    return online.total_updates(cfg.online)


def decay_factor(alpha_end_ratio: float, num_updates: int) -> float:
    """kappa = exp(log(alpha_end / alpha_start) / N) (1 with no online updates)."""
    if num_updates <= 0:
        return 1.0
    return math.exp(math.log(alpha_end_ratio) / num_updates)


def _refine(members: td3.TD3, key, cfg) -> td3.TD3:
    """Before refinement: the normalised objective at alpha'."""
    del key
    return members.replace(objective="normalized_bc",
                           bc_alpha=jnp.full_like(members.bc_alpha, cfg.prft.alpha_pr))


def _to_online(members: td3.TD3, cfg) -> td3.TD3:
    """The refined members, their target actors reset to the refined actors (refinement
    moved the actor only; the re-implementation copies actor_target = actor between
    stages), the normalised objective and alpha's decay."""
    import jax
    return members.replace(
        objective="normalized_bc",
        target_actor_params=jax.tree_util.tree_map(jnp.copy, members.actor.params),
        bc_alpha_decay=decay_factor(float(cfg.prft.alpha_end_ratio), online_updates(cfg)))


def _check(cfg):
    from o2o_jax import config_checks as cc
    cc.non_negative_int(cfg, "prft.pr_steps")
    cc.positive_float(cfg, "prft.alpha_pr")
    cc.in_range(cfg, "prft.alpha_end_ratio", 0.0, 1.0, lo_open=True)
    td3.check_config(cfg)


def _register():
    from o2o_jax import algorithm
    import functools
    algorithm.register(algorithm.Algorithm(
        name="prft", summary="TD3-BC PR-FT: TD3+BC, an actor-only refinement with a "
                             "normalised BC loss, then fine-tuning with alpha decayed",
        create_members=functools.partial(td3.members_from_config, objective="td3_bc"),
        offline_update=lambda cfg: td3.update,
        post_offline=algorithm.PostOffline(phase="pr", label="policy refinement",
                                           steps_field="prft.pr_steps", reset=_refine,
                                           update=lambda cfg: td3.actor_only_update),
        to_online=_to_online, online_update=lambda cfg: td3.members_update, act=td3.act,
        act_eval=td3.act_eval, q_value=td3.q_ens, members_act_eval=td3.act_eval,
        from_data=td3.with_normalizer, config_section=("prft", default_config),
        preset={"agent.num_members": 1, "online.replay": "uniform"}, check=_check,
        progress_keys=("critic_loss", "q_data", "bc_alpha")))


_register()
