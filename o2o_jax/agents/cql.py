"""Conservative Q-learning, CQL(H) with importance sampling, as a penalty on SAC's critic.

Per critic j (spec section 1):
  alpha_cql * ( mean_s cql_temp * logsumexp_k [(Q_j(s, a_k) - log q(a_k)) / cql_temp]
                - mean Q_j(s, a_data) )
over 3 x n sampled actions per state: n uniform in [-1, 1]^A (log q = -A log 2), n from
pi(.|s) (log q = log pi), n from pi(.|s') scored at s (log q = log pi(a'|s')). Sampled
actions and their log-probs carry no gradient; the data action is not in the logsumexp.
Lagrange variant: the penalty becomes alpha' (penalty - target_action_gap) with alpha'
trained to keep the gap at `cql_target_action_gap`.
"""
import math

import jax
import jax.numpy as jnp

from o2o_jax import distributions as dist
from o2o_jax.agents import actor_critic as ac
from o2o_jax.agents import sac
from o2o_jax.agents.actor_critic import ActorCritic

ALPHA_PRIME_MAX = 1e6


def sampled_actions(agent: ActorCritic, batch, key: jax.Array):
    """The 3n actions per state and their log-densities: ([B, 3n, A], [B, 3n])."""
    obs, next_obs = batch["observations"], batch["next_observations"]
    n, (b, a_dim) = agent.cql_n_actions, batch["actions"].shape
    k_rand, k_pi, k_next = jax.random.split(key, 3)
    rand = jax.random.uniform(k_rand, (b, n, a_dim), minval=-1.0, maxval=1.0)
    rand_log_q = jnp.full((b, n), -a_dim * math.log(2.0))
    mean, log_std = ac.policy(agent, agent.actor.params, obs)
    pi_a, pi_log_q = dist.sample(k_pi, mean, log_std, (n,))
    mean_n, log_std_n = ac.policy(agent, agent.actor.params, next_obs)
    next_a, next_log_q = dist.sample(k_next, mean_n, log_std_n, (n,))
    actions = jnp.concatenate([rand, jnp.swapaxes(pi_a, 0, 1), jnp.swapaxes(next_a, 0, 1)], 1)
    log_q = jnp.concatenate([rand_log_q, pi_log_q.T, next_log_q.T], 1)
    return jax.lax.stop_gradient(actions), jax.lax.stop_gradient(log_q)


def alpha_prime(agent: ActorCritic) -> jax.Array:
    return jnp.clip(agent.cql_alpha.apply_fn({"params": agent.cql_alpha.params}),
                    0.0, ALPHA_PRIME_MAX)


def penalty(agent: ActorCritic, critic_params, batch, key: jax.Array, q_data: jax.Array):
    """CQL penalty summed over critics (and members); `q_data` is Q(s, a_data)."""
    actions, log_q = sampled_actions(agent, batch, key)
    obs = jnp.broadcast_to(batch["observations"][:, None, :],
                           actions.shape[:2] + batch["observations"].shape[-1:])
    q_ood = ac.q_values(agent, critic_params, obs, actions)            # [.., 2, B, 3n]
    lse = agent.cql_temp * jax.nn.logsumexp((q_ood - log_q) / agent.cql_temp, axis=-1)
    gap = jnp.mean(lse, axis=-1) - jnp.mean(q_data, axis=-1)          # [.., 2]
    per_q = agent.cql_weight * gap
    if agent.cql_lagrange:
        per_q = jax.lax.stop_gradient(alpha_prime(agent)) * (per_q - agent.cql_target_action_gap)
    return jnp.sum(per_q), {"cql_penalty": jnp.sum(per_q), "cql_gap": jnp.mean(gap),
                            "cql_gap_per_q": gap, "q_ood_logsumexp": jnp.mean(lse)}


def lagrange_loss(cql_alpha_params, agent: ActorCritic, gap: jax.Array):
    a_prime = jnp.clip(agent.cql_alpha.apply_fn({"params": cql_alpha_params}),
                       0.0, ALPHA_PRIME_MAX)
    gap = jax.lax.stop_gradient(gap)
    return -0.5 * jnp.sum(a_prime * (agent.cql_weight * gap - agent.cql_target_action_gap))


def update(agent: ActorCritic, batch, key: jax.Array):
    """SAC update with the CQL penalty on the critic (and alpha' step if Lagrange)."""
    new_agent, info = sac.update(agent, batch, key, penalty_fn=penalty)
    gap = info.pop("cql_gap_per_q")
    if agent.cql_lagrange:
        loss, grads = jax.value_and_grad(lagrange_loss)(agent.cql_alpha.params, agent, gap)
        new_agent = new_agent.replace(cql_alpha=new_agent.cql_alpha.apply_gradients(grads=grads))
        info["alpha_prime"] = alpha_prime(agent)
        info["alpha_prime_loss"] = loss
    return new_agent, info


# ---------------------------------------------------------------------------------------
# CQL-ft: the CQL penalty kept online (with the paper's N-ensemble).
# ---------------------------------------------------------------------------------------

def _cql(cfg):
    return update


def _register():
    from o2o_jax import algorithm
    from o2o_jax.agents import ensemble
    algorithm.register(algorithm.Algorithm(
        name="cql_ft", summary="CQL-ft: CQL members, the CQL penalty kept online (alpha_cql "
                               "= online.cql_weight), uniform replay",
        create_members=ensemble.members_from_config, offline_update=_cql,
        to_online=ensemble.to_online, online_update=_cql, act=ensemble.act,
        act_eval=ensemble.act_eval, q_value=ensemble.q_ens,
        members_act_eval=ensemble.members_policy_ensemble,
        preset={"online.replay": "uniform", "online.cql_weight": 5.0,
                "online.backup_entropy": False}))


_register()
