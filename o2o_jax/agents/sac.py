"""Soft actor-critic losses and the update that applies them.

Written once for a single agent and for an ensemble agent (see `actor_critic.py`):
* critic: y = r + gamma (1 - d) (min_j Qbar_j(s', a') - alpha log pi(a'|s')), a' ~ pi(.|s')
  (entropy term only if `backup_entropy`); loss = sum over critics of mean_b (Q - y)^2.
  For an ensemble, a' is drawn once from pi_E and shared, and each member bootstraps from
  its own target pair (spec section 3).
* actor: mean_b [alpha log pi(a~|s) - Q(s, a~)], a~ reparameterised, Q = conservative_q
  (min of twins; ensemble: mean over members of each member's min). During the first
  `bc_steps` updates (an argument: CQL's warm start) the actor does behaviour cloning:
  alpha log pi(a~|s) - log pi(a_data|s).
* temperature: -log(alpha) * mean(log pi + target_entropy).

All three gradients are taken at the pre-update parameters, then applied together.
"""
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from o2o_jax import distributions as dist
from o2o_jax.agents import actor_critic as ac
from o2o_jax.agents.actor_critic import ActorCritic

# penalty_fn(agent, critic_params, batch, key, q_data) -> (penalty, info)
PenaltyFn = Callable


def next_q_values(agent: ActorCritic, batch, key: jax.Array):
    """(target Q-values of every critic at (s', a'), log pi(a'|s')), a' ~ pi(.|s') drawn
    with `key` (ensemble: from pi_E, shared by the members): [num_qs, B] / [N, num_qs, B]
    and [B]."""
    mean, log_std = ac.policy(agent, agent.actor.params, batch["next_observations"])
    next_actions, next_log_probs = dist.sample(key, mean, log_std)
    q = ac.q_values(agent, agent.target_critic_params, batch["next_observations"],
                    next_actions)
    return q, next_log_probs


def backup(agent: ActorCritic, batch, next_q: jax.Array, next_log_probs: jax.Array):
    """y = r + gamma (1 - d) (next_q - alpha log pi(a'|s') if backup_entropy), no
    gradient; `next_q` [B] or [N, B]."""
    if agent.backup_entropy:
        next_q = next_q - agent.alpha * next_log_probs
    y = batch["rewards"] + agent.discount * (1.0 - batch["dones"]) * next_q
    return jax.lax.stop_gradient(y)


def td_targets(agent: ActorCritic, batch, key: jax.Array) -> jax.Array:
    """Bootstrapped targets y, shape [B] (single) or [N, B] (ensemble), each member from
    its own target pair's minimum. No gradient."""
    q, next_log_probs = next_q_values(agent, batch, key)
    return backup(agent, batch, ac.member_twin_min(agent, q), next_log_probs)


def critic_loss(critic_params, agent: ActorCritic, batch, key: jax.Array,
                penalty_fn: Optional[PenaltyFn] = None, target_fn: Optional[Callable] = None):
    """`target_fn(agent, batch, key) -> y` replaces `td_targets` (e.g. Cal-QL's max-target
    backup); it may return (y, w), w [B] per-sample weights of the squared TD errors."""
    k_target, k_penalty = jax.random.split(key)
    y = (target_fn or td_targets)(agent, batch, k_target)
    y, weights = y if isinstance(y, tuple) else (y, None)   # optional per-sample weights
    q = ac.q_values(agent, critic_params, batch["observations"], batch["actions"])
    y_b = jnp.expand_dims(y, ac.twin_axis(agent))
    sq = (q - y_b) ** 2
    if weights is not None:
        weights = jnp.broadcast_to(weights, y.shape)          # [B] or per member [N, B]
        sq = sq * jax.lax.stop_gradient(jnp.expand_dims(weights, ac.twin_axis(agent)))
    td_loss = jnp.sum(jnp.mean(sq, axis=-1))
    info = {"critic_loss": td_loss, "q_data": jnp.mean(q), "q_target": jnp.mean(y),
            # the first twin alone (all members): rlkit's "Q1 Predictions Mean"
            "q1_data": jnp.mean(jnp.take(q, 0, axis=ac.twin_axis(agent)))}
    loss = td_loss
    if penalty_fn is not None:
        penalty, penalty_info = penalty_fn(agent, critic_params, batch, k_penalty, q)
        loss = loss + penalty
        info.update(penalty_info)
    return loss, info


def actor_loss(actor_params, agent: ActorCritic, batch, key: jax.Array,
               bc_steps: int = 0, extra_fn: Optional[Callable] = None):
    """SAC's actor loss; `extra_fn(agent, batch, mean, log_std) -> (loss, info)` adds a
    method's term on the policy's pre-tanh moments (e.g. BAQ's gated BC)."""
    mean, log_std = ac.policy(agent, actor_params, batch["observations"])
    actions, log_probs = dist.sample(key, mean, log_std)
    q = ac.conservative_q(agent, ac.q_values(agent, agent.critic.params,
                                             batch["observations"], actions))
    alpha = jax.lax.stop_gradient(agent.alpha)
    per_sample = alpha * log_probs - q
    if bc_steps > 0:
        bc = alpha * log_probs - dist.log_prob(mean, log_std, batch["actions"])
        per_sample = jnp.where(agent.critic.step < bc_steps, bc, per_sample)
    loss = jnp.mean(per_sample)
    info = {"entropy": -jnp.mean(log_probs), "q_pi": jnp.mean(q), "log_probs": log_probs}
    if extra_fn is not None:
        extra, extra_info = extra_fn(agent, batch, mean, log_std)
        loss = loss + extra
        info.update(extra_info)
    return loss, {"actor_loss": loss, **info}


def temperature_loss(temp_params, agent: ActorCritic, log_probs: jax.Array):
    log_alpha = temp_params["log_value"]
    return -log_alpha * jnp.mean(jax.lax.stop_gradient(log_probs) + agent.target_entropy)


def update(agent: ActorCritic, batch, key: jax.Array,
           penalty_fn: Optional[PenaltyFn] = None, bc_steps: int = 0,
           target_fn: Optional[Callable] = None, actor_extra: Optional[Callable] = None):
    """One SAC(-family) gradient step: (agent, batch, key) -> (agent, info).

    `penalty_fn` is added to the critic loss (CQL's); during the first `bc_steps` updates
    (counted by the critic's step) the actor clones the data actions instead (CQL's warm
    start); `target_fn` replaces the TD target (`td_targets`); `actor_extra` adds a term
    to the actor loss (`actor_loss`'s `extra_fn`). All static."""
    k_critic, k_actor = jax.random.split(key)
    loss_fn = functools.partial(critic_loss, penalty_fn=penalty_fn, target_fn=target_fn)
    (_, critic_info), critic_grads = jax.value_and_grad(loss_fn, has_aux=True)(
        agent.critic.params, agent, batch, k_critic)
    (_, actor_info), actor_grads = jax.value_and_grad(actor_loss, has_aux=True)(
        agent.actor.params, agent, batch, k_actor, bc_steps, actor_extra)
    log_probs = actor_info.pop("log_probs")
    temp_loss, temp_grads = jax.value_and_grad(temperature_loss)(agent.temp.params, agent,
                                                                 log_probs)
    new_agent = agent.replace(
        critic=agent.critic.apply_gradients(grads=critic_grads),
        actor=agent.actor.apply_gradients(grads=actor_grads),
        temp=agent.temp.apply_gradients(grads=temp_grads),
    )
    new_agent = ac.soft_update(new_agent)
    info = {**critic_info, **actor_info, "temperature_loss": temp_loss, "alpha": agent.alpha}
    return new_agent, info


# ---------------------------------------------------------------------------------------
# SAC from scratch (SAC-ft, CQL members fine-tuned by SAC, is agents/sac_ft.py).
# ---------------------------------------------------------------------------------------

def _check_sac(cfg) -> None:
    from o2o_jax import config_checks
    from o2o_jax.agents import off2on
    config_checks.require(cfg, "offline.steps", cfg.offline.steps == 0,
                          "must be 0 for algo 'sac' (SAC from scratch has no offline phase)")
    config_checks.require(cfg, "online.replay", cfg.online.replay == "online_only",
                          "must be 'online_only' for algo 'sac' (no offline data)")
    off2on.check_sac_online(cfg)


def _sac(cfg):
    return update


def _register():
    from o2o_jax import algorithm
    from o2o_jax.agents import ensemble
    algorithm.register(algorithm.Algorithm(
        name="sac", summary="SAC from scratch: no offline phase, no offline data",
        create_members=ensemble.members_from_config, offline_update=_sac,
        to_online=ensemble.to_online, online_update=_sac, act=ensemble.act,
        act_eval=ensemble.act_eval, q_value=ensemble.q_ens,
        members_act_eval=ensemble.members_policy_ensemble,
        preset={"offline.steps": 0, "online.replay": "online_only", "agent.num_members": 1},
        check=_check_sac))


_register()
