"""Advantage-weighted actor-critic, AWAC (Nair et al. 2020), on the shared `ActorCritic` state.

Written once for a single agent and for an ensemble agent (`ac.policy` / `ac.q_values`), so
the paper's N-ensemble (Lee et al. section 6: every baseline but SAC-ft gets it) applies
without extra code. The same objective is used offline and online.

* critic: the SAC TD loss (`sac.critic_loss`) with a deterministic backup,
  y = r + gamma (1 - d) min_j Qbar_j(s', a'), a' ~ pi(.|s'). The agent must have
  `backup_entropy=False` (checked when the update is traced).
* actor: advantage-weighted regression on the data actions,
    A(s, a) = Q(s, a) - V(s),  V(s) = mean_k Q(s, a_k),  a_k ~ pi(.|s), k = 1..n_samples,
    w = min(exp(A / lambda), max_weight)   (no gradient),
    loss = -mean_b [w log pi(a|s)],
  with Q = `ac.conservative_q` (min of twins; ensemble: mean over members of each member's
  min) at the pre-update critic. No entropy term and no temperature update: alpha stays
  whatever the state holds and is unused.

Key derivation (the tests regenerate the draws): `update` splits its key into
(k_critic, k_actor); `sac.critic_loss` gets k_critic; `actor_loss` draws the V-samples as
`distributions.sample(k_actor, mean, log_std, (n_samples,))`.

Static knobs (lambda, max weight, n_samples) are closed over by `make_update`; nothing is
added to `ActorCritic`.

Source values: CORL `algorithms/offline/awac.py` (awac_lambda = 1.0, exp_adv_max = 100.0,
one policy sample for V, min of twin critics, no entropy in the backup, lr 3e-4).
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections

from o2o_jax import distributions as dist
from o2o_jax.agents import actor_critic as ac
from o2o_jax.agents import sac
from o2o_jax.agents.actor_critic import ActorCritic


def default_config() -> ml_collections.ConfigDict:
    """AWAC's own knobs; networks, learning rates, gamma and tau come from the agent config."""
    c = ml_collections.ConfigDict()
    c.awac_lambda = 1.0      # lambda (temperature of exp(A / lambda)); CORL default 1.0
    c.max_weight = 100.0     # clip of the weights; CORL exp_adv_max = 100.0
    c.n_samples = 1          # policy samples for V(s); CORL uses 1
    return c


def advantage_weights(actor_params, agent: ActorCritic, batch, key: jax.Array,
                      awac_lambda: float, max_weight: float, n_samples: int = 1):
    """(weights [B], advantages [B]) at the pre-update critic; no gradient."""
    obs = batch["observations"]
    mean, log_std = ac.policy(agent, actor_params, obs)
    pi_actions, _ = dist.sample(key, mean, log_std, (n_samples,))           # [n, B, A]
    obs_n = jnp.broadcast_to(obs[None], (n_samples,) + obs.shape)
    q_pi = ac.conservative_q(agent, ac.q_values(agent, agent.critic.params, obs_n,
                                                pi_actions))                # [n, B]
    v = jnp.mean(q_pi, axis=0)
    q_data = ac.conservative_q(agent, ac.q_values(agent, agent.critic.params, obs,
                                                  batch["actions"]))
    adv = jax.lax.stop_gradient(q_data - v)
    weights = jnp.minimum(jnp.exp(adv / awac_lambda), max_weight)
    return jax.lax.stop_gradient(weights), adv


def actor_loss(actor_params, agent: ActorCritic, batch, key: jax.Array,
               awac_lambda: float, max_weight: float, n_samples: int = 1):
    """-mean_b [w log pi(a_data|s)]; aux info holds the per-sample `weights` [B]."""
    weights, adv = advantage_weights(jax.lax.stop_gradient(actor_params), agent, batch, key,
                                     awac_lambda, max_weight, n_samples)
    mean, log_std = ac.policy(agent, actor_params, batch["observations"])
    log_probs = dist.log_prob(mean, log_std, batch["actions"])
    loss = -jnp.mean(weights * log_probs)
    info = {"actor_loss": loss, "advantage": jnp.mean(adv), "awac_weight": jnp.mean(weights),
            "awac_weight_max": jnp.max(weights),
            "awac_clip_fraction": jnp.mean((weights >= max_weight).astype(jnp.float32)),
            "log_prob_data": jnp.mean(log_probs), "weights": weights}
    return loss, info


def update(agent: ActorCritic, batch, key: jax.Array, *, awac_lambda: float,
           max_weight: float, n_samples: int = 1):
    """One AWAC step (critic and actor from the pre-update parameters, then Polyak)."""
    if agent.backup_entropy:
        raise ValueError("AWAC uses a backup without entropy: build the agent with "
                         "backup_entropy=False (agent config or to_ensemble(..., "
                         "backup_entropy=False))")
    k_critic, k_actor = jax.random.split(key)
    (_, critic_info), critic_grads = jax.value_and_grad(sac.critic_loss, has_aux=True)(
        agent.critic.params, agent, batch, k_critic)
    (_, actor_info), actor_grads = jax.value_and_grad(actor_loss, has_aux=True)(
        agent.actor.params, agent, batch, k_actor, awac_lambda, max_weight, n_samples)
    actor_info.pop("weights")
    new_agent = agent.replace(critic=agent.critic.apply_gradients(grads=critic_grads),
                              actor=agent.actor.apply_gradients(grads=actor_grads))
    return ac.soft_update(new_agent), {**critic_info, **actor_info}


@functools.lru_cache(maxsize=None)
def make_update(awac_lambda: float = 1.0, max_weight: float = 100.0, n_samples: int = 1):
    """`update_fn(agent, batch, key) -> (agent, info)` for `offline.make_train_chunk`.

    Cached: the same knobs give the same function object, so the (also cached) compiled
    train chunks and epochs are reused.
    """
    if awac_lambda <= 0 or max_weight <= 0 or n_samples < 1:
        raise ValueError(f"AWAC needs awac_lambda > 0, max_weight > 0, n_samples >= 1; got "
                         f"{awac_lambda}, {max_weight}, {n_samples}")
    return functools.partial(update, awac_lambda=float(awac_lambda),
                             max_weight=float(max_weight), n_samples=int(n_samples))


# ---------------------------------------------------------------------------------------
# Registration: AWAC offline and online (same objective), with the N-ensemble.
# ---------------------------------------------------------------------------------------

def _update(cfg):
    a = cfg.awac
    return make_update(float(a.awac_lambda), float(a.max_weight), int(a.n_samples))


def _to_online(members, cfg):
    from o2o_jax.agents import ensemble
    return ensemble.to_online(members, cfg, backup_entropy=False)


def _check(cfg):
    from o2o_jax import config_checks
    for f in ("agent.backup_entropy", "online.backup_entropy"):
        config_checks.require(cfg, f, not config_checks._get(cfg, f),
                              "must be False for algo 'awac' (AWAC's backup has no entropy "
                              "term)")


def _register():
    from o2o_jax import algorithm
    from o2o_jax.agents import ensemble
    algorithm.register(algorithm.Algorithm(
        name="awac", summary="AWAC offline and online (advantage-weighted regression), "
                             "online data appended",
        create_members=ensemble.members_from_config, offline_update=_update,
        to_online=_to_online, online_update=_update, act=ensemble.act,
        act_eval=ensemble.act_eval, q_value=ensemble.q_ens,
        members_act_eval=ensemble.members_policy_ensemble,
        config_section=("awac", default_config),
        preset={"online.replay": "uniform", "online.backup_entropy": False,
                "agent.backup_entropy": False, "agent.bc_steps": 0},
        check=_check))


_register()
