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
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct
from flax.training.train_state import TrainState

from o2o_jax import distributions as dist
from o2o_jax import networks, optim
from o2o_jax.agents import actor_critic as ac
from o2o_jax.agents import sac
from o2o_jax.agents.actor_critic import ActorCritic

ALPHA_PRIME_MAX = 1e6


class CQL(struct.PyTreeNode):
    """A CQL agent: the shared actor-critic state plus CQL's own multiplier and knobs."""
    ac: ActorCritic
    lagrange: TrainState          # log alpha' (networks.Temperature), used iff use_lagrange
    weight: float = struct.field(pytree_node=False, default=5.0)      # alpha_cql; 0 = SAC
    n_actions: int = struct.field(pytree_node=False, default=10)
    temp: float = struct.field(pytree_node=False, default=1.0)
    use_lagrange: bool = struct.field(pytree_node=False, default=False)
    target_action_gap: float = struct.field(pytree_node=False, default=10.0)
    bc_steps: int = struct.field(pytree_node=False, default=0)        # policy_eval_start


def create(key: jax.Array, obs_dim: int, act_dim: int, cfg, num_qs: int = 2) -> CQL:
    """One CQL agent from an agent config (configs/base.py `agent`: the actor-critic's
    fields and the cql_* / bc_steps knobs); `num_qs` critics (CQL-N: the penalty on each,
    the target's and the actor's min over all)."""
    lagrange_def = networks.make(networks.Temperature,
                                 initial_value=float(cfg.cql_lagrange_init))
    return CQL(
        ac=ac.create(key, obs_dim, act_dim, cfg, num_qs=num_qs),
        lagrange=TrainState.create(apply_fn=lagrange_def.apply,
                                   params=lagrange_def.init(jax.random.PRNGKey(0))["params"],
                                   tx=optim.adam(cfg.cql_lagrange_lr)),
        weight=float(cfg.cql_weight), n_actions=int(cfg.cql_n_actions),
        temp=float(cfg.cql_temp), use_lagrange=bool(cfg.cql_lagrange),
        target_action_gap=float(cfg.cql_target_action_gap), bc_steps=int(cfg.bc_steps))


def create_members(key: jax.Array, obs_dim: int, act_dim: int, cfg, num_members: int):
    """N independent CQL agents stacked on a leading axis; member i uses key split i."""
    from o2o_jax.agents import stacking
    return stacking.create(lambda k: create(k, obs_dim, act_dim, cfg), key, num_members)


def sampled_actions(state: CQL, agent: ActorCritic, batch, key: jax.Array):
    """The 3n actions per state and their log-densities: ([B, 3n, A], [B, 3n])."""
    obs, next_obs = batch["observations"], batch["next_observations"]
    n, (b, a_dim) = state.n_actions, batch["actions"].shape
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


def alpha_prime(state: CQL) -> jax.Array:
    return jnp.clip(state.lagrange.apply_fn({"params": state.lagrange.params}),
                    0.0, ALPHA_PRIME_MAX)


def penalty(state: CQL, agent: ActorCritic, critic_params, batch, key: jax.Array,
            q_data: jax.Array, floor_key: Optional[str] = None):
    """CQL penalty summed over critics (and members); `q_data` is Q(s, a_data). `agent`
    is the actor-critic being updated (`state.ac`, or an ensemble built from it).

    `floor_key`: the Q-values of the 2n *policy* samples (not the uniform ones) are
    floored by `batch[floor_key]` [B] before the logsumexp, max(Q(s, a_pi), floor(s))
    (Cal-QL's calibration with the Monte-Carlo return); info `cql_floor_rate` is the
    share of policy samples the floor lifts."""
    actions, log_q = sampled_actions(state, agent, batch, key)
    obs = jnp.broadcast_to(batch["observations"][:, None, :],
                           actions.shape[:2] + batch["observations"].shape[-1:])
    q_ood = ac.q_values(agent, critic_params, obs, actions)            # [.., 2, B, 3n]
    info = {}
    if floor_key is not None:
        n = state.n_actions
        floor = batch[floor_key][:, None]                              # [B, 1]
        policy_q = q_ood[..., n:]
        info["cql_floor_rate"] = jnp.mean((policy_q < floor).astype(jnp.float32))
        q_ood = jnp.concatenate([q_ood[..., :n], jnp.maximum(policy_q, floor)], -1)
    lse = state.temp * jax.nn.logsumexp((q_ood - log_q) / state.temp, axis=-1)
    gap = jnp.mean(lse, axis=-1) - jnp.mean(q_data, axis=-1)          # [.., 2]
    per_q = state.weight * gap
    if state.use_lagrange:
        per_q = jax.lax.stop_gradient(alpha_prime(state)) * (per_q - state.target_action_gap)
    return jnp.sum(per_q), {"cql_penalty": jnp.sum(per_q), "cql_gap": jnp.mean(gap),
                            "cql_gap_per_q": gap, "q_ood_logsumexp": jnp.mean(lse), **info}


def penalty_fn(state: CQL, floor_key: Optional[str] = None):
    """`state`'s penalty in the shape `sac.critic_loss` takes:
    (agent, critic_params, batch, key, q_data) -> (penalty, info)."""
    return functools.partial(penalty, state, floor_key=floor_key)


def lagrange_loss(lagrange_params, state: CQL, gap: jax.Array):
    a_prime = jnp.clip(state.lagrange.apply_fn({"params": lagrange_params}),
                       0.0, ALPHA_PRIME_MAX)
    gap = jax.lax.stop_gradient(gap)
    return -0.5 * jnp.sum(a_prime * (state.weight * gap - state.target_action_gap))


def update(state: CQL, batch, key: jax.Array, floor_key: Optional[str] = None,
           target_fn=None):
    """SAC update with the CQL penalty on the critic and the BC warm start of the actor
    (and an alpha' step if Lagrange): (state, batch, key) -> (state, info).
    `floor_key` floors the penalty's policy samples (`penalty`); `target_fn` replaces
    the TD target (`sac.update`); both static."""
    new_ac, info = sac.update(state.ac, batch, key,
                              penalty_fn=penalty_fn(state, floor_key),
                              bc_steps=state.bc_steps, target_fn=target_fn)
    gap = info.pop("cql_gap_per_q")
    new_state = state.replace(ac=new_ac)
    if state.use_lagrange:
        loss, grads = jax.value_and_grad(lagrange_loss)(state.lagrange.params, state, gap)
        new_state = new_state.replace(lagrange=state.lagrange.apply_gradients(grads=grads))
        info["alpha_prime"] = alpha_prime(state)
        info["alpha_prime_loss"] = loss
    return new_state, info


# ---------------------------------------------------------------------------------------
# How the methods built on CQL members use them.
# ---------------------------------------------------------------------------------------

def members_from_config(key: jax.Array, obs_dim: int, act_dim: int, cfg):
    """N = agent.num_members CQL members from the experiment config's agent section."""
    return create_members(key, obs_dim, act_dim, cfg.agent, cfg.agent.num_members)


def to_ensemble_agent(members: CQL, cfg):
    """The ensemble actor-critic of CQL members (`ensemble.to_online`): the online agent of
    off2on, SAC-ft and FQE-init; CQL's own state stays behind."""
    from o2o_jax.agents import ensemble
    return ensemble.to_online(members.ac, cfg)


def members_act_eval(members: CQL, observations: jax.Array):
    from o2o_jax.agents import ensemble
    return ensemble.members_policy_ensemble(members.ac, observations)


# ---------------------------------------------------------------------------------------
# CQL-ft: the CQL penalty kept online (with the paper's N-ensemble).
# ---------------------------------------------------------------------------------------

def _cql(cfg):
    return update


def to_online_penalized(members: CQL, cfg) -> CQL:
    """The online agent of the methods that keep the CQL penalty online (CQL-ft, Cal-QL):
    the ensemble actor-critic with member 0's multiplier and knobs, the penalty weighted
    by online.cql_weight, no BC warm start."""
    from o2o_jax.agents import stacking
    first = stacking.member(members, 0)
    return first.replace(ac=to_ensemble_agent(members, cfg),
                         weight=float(cfg.online.cql_weight), bc_steps=0)


def act(state: CQL, observations, key):
    return ac.act(state.ac, observations, key)


def act_eval(state: CQL, observations):
    return ac.act(state.ac, observations)


def q_ens(state: CQL, observations, actions):
    from o2o_jax.agents import ensemble
    return ensemble.q_ens(state.ac, observations, actions)


def _register():
    from o2o_jax import algorithm
    algorithm.register(algorithm.Algorithm(
        name="cql_ft", summary="CQL-ft: CQL members, the CQL penalty kept online (alpha_cql "
                               "= online.cql_weight), uniform replay",
        create_members=members_from_config, offline_update=_cql, to_online=to_online_penalized,
        online_update=_cql, act=act, act_eval=act_eval, q_value=q_ens,
        members_act_eval=members_act_eval,
        preset={"online.replay": "uniform", "online.cql_weight": 5.0,
                "online.backup_entropy": False}))


_register()
