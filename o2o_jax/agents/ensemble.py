"""N-member ensembles: stacked member states, the offline->online hand-over, Q_ens.

Offline, the N CQL members are N independent `ActorCritic` states stacked on a leading
axis (`create_members`) and updated with `jax.vmap`. Online, the same stacked parameters
become one ensemble agent (`to_ensemble`) that acts through the moment-matched policy of
paper eq. 5 and bootstraps each member from its own target pair.
"""
from typing import Optional

import jax
import jax.numpy as jnp
from flax.training.train_state import TrainState

from o2o_jax import distributions as dist
from o2o_jax import optim
from o2o_jax.agents import actor_critic as ac
from o2o_jax.agents import stacking
from o2o_jax.agents.actor_critic import ActorCritic


def create_members(key: jax.Array, obs_dim: int, act_dim: int, cfg, num_members: int):
    """N independent single agents stacked on a leading axis; member i uses key split i."""
    return stacking.create(lambda k: ac.create(k, obs_dim, act_dim, cfg), key, num_members)


def members_from_config(key: jax.Array, obs_dim: int, act_dim: int, cfg):
    """`create_members` with the experiment config's agent section (N = agent.num_members):
    the `create_members` of every actor-critic method."""
    return create_members(key, obs_dim, act_dim, cfg.agent, cfg.agent.num_members)


num_stacked = stacking.num_stacked
member = stacking.member


def _fresh(state: TrainState, params, lr: Optional[float] = None) -> TrainState:
    tx = state.tx if lr is None else optim.adam(lr)
    return TrainState.create(apply_fn=state.apply_fn, params=params, tx=tx)


def _with_lr(state: TrainState, lr: Optional[float]) -> TrainState:
    # Adam's state does not depend on its learning rate: the moments carry over as they are.
    return state if lr is None else state.replace(tx=optim.adam(lr))


def to_ensemble(members: ActorCritic, *, reset_temperature: bool = True,
                init_temperature: float = 1.0, fresh_optimizers: bool = True,
                actor_lr: Optional[float] = None, critic_lr: Optional[float] = None,
                temp_lr: Optional[float] = None, **hparams) -> ActorCritic:
    """One ensemble agent from N stacked offline members (spec sections 2-3).

    Parameters (actors, critics, target critics) are kept. By default (the reference
    behaviour) optimizer states are fresh and a single temperature starts at
    `init_temperature` (log alpha = 0). `actor_lr` / `critic_lr` / `temp_lr` set the
    online optimizers' learning rates (None: the members' own). `hparams` overrides static
    fields for the online phase, e.g. `backup_entropy=True`.
    """
    n = num_stacked(members)
    first = member(members, 0)
    temp = first.temp
    if reset_temperature:
        log_value = jnp.full((), jnp.log(init_temperature), jnp.float32)
        temp = _fresh(temp, {"log_value": log_value}, temp_lr)
    else:
        # No shared alpha exists offline; start from the members' mean log alpha.
        temp = _fresh(temp, {"log_value": jnp.mean(members.temp.params["log_value"])},
                      temp_lr)
    actor, critic = members.actor, members.critic
    if fresh_optimizers:
        actor = _fresh(actor, actor.params, actor_lr)
        critic = _fresh(critic, critic.params, critic_lr)
    else:
        # Keep each member's Adam moments (elementwise, so they stay stacked); the step
        # counters (TrainState.step, Adam's count) are per member: take member 0's, as
        # one optimizer now steps all members together.
        actor = _with_lr(_first_counters(actor), actor_lr)
        critic = _with_lr(_first_counters(critic), critic_lr)
    agent = first.replace(actor=actor, critic=critic,
                          target_critic_params=members.target_critic_params,
                          temp=temp, members=n)
    return agent.replace(**hparams) if hparams else agent


def hand_over(members: ActorCritic, online_cfg, **overrides) -> ActorCritic:
    """The hand-over of every actor-critic method, from a config's `online` section (reset
    alpha, fresh optimizers at the online learning rates, entropy backup as
    online.backup_entropy); `overrides` replace static fields (AWAC:
    backup_entropy=False)."""
    oc = online_cfg
    hparams = dict(backup_entropy=bool(oc.backup_entropy),
                   explore_ucb=float(oc.get("explore_ucb_lambda", 0.0)))
    hparams.update(overrides)
    return to_ensemble(members, reset_temperature=oc.reset_temperature,
                       init_temperature=oc.init_temperature,
                       fresh_optimizers=oc.fresh_optimizers, **online_lrs(oc), **hparams)


def to_online(members: ActorCritic, cfg, **overrides) -> ActorCritic:
    """`hand_over` from the experiment config (the `Algorithm.to_online` shape)."""
    return hand_over(members, cfg.online, **overrides)


def act(agent: ActorCritic, observations: jax.Array, key: jax.Array):
    """A sample of the agent's policy (ensemble: of pi_E; with `explore_ucb` > 0, the
    optimistic pick of `ucb_act`)."""
    if agent.members > 0 and agent.explore_ucb > 0:
        return ucb_act(agent, observations, key, agent.explore_ucb)
    return ac.act(agent, observations, key)


def ucb_act(agent: ActorCritic, observations: jax.Array, key: jax.Array, ucb_lambda: float):
    """The exploration of the public rerun of the authors' code (TaoHuang13/Off2OnRL,
    rlkit/examples/ours.py `get_action`; not the paper's rule): every member's own policy
    proposes one sample; each proposal a_i is scored by the members' *target* first-twin
    critics as mean_j Q1bar_j(s, a_i) + lambda * std_j Q1bar_j(s, a_i) (std with N - 1, as
    torch.std); the best-scoring proposal is taken. The rerun used lambda = 100.

    `observations` [B, obs_dim] -> actions [B, act_dim]."""
    means, log_stds = ac.member_policies(agent, agent.actor.params, observations)  # [N,B,A]
    proposals, _ = dist.sample(key, means, log_stds)                  # [N, B, A]
    obs = jnp.broadcast_to(observations[None], proposals.shape[:-1] + observations.shape[-1:])
    q1 = ac.q_values(agent, agent.target_critic_params, obs, proposals)[:, 0]   # [N_q, N, B]
    score = jnp.mean(q1, axis=0) + ucb_lambda * jnp.std(q1, axis=0, ddof=1)    # [N, B]
    best = jnp.argmax(score, axis=0)                                             # [B]
    return jnp.take_along_axis(proposals, best[None, :, None], axis=0)[0]


def act_eval(agent: ActorCritic, observations: jax.Array):
    """tanh of the policy mean (ensemble: of pi_E), the evaluation action."""
    return ac.act(agent, observations)


def online_lrs(online_cfg) -> dict:
    """The online learning-rate arguments of `to_ensemble` from a config's `online`
    section (fields missing from configs written before them: the members' own)."""
    return {k: (float(online_cfg[k]) if k in online_cfg else None)
            for k in ("actor_lr", "critic_lr", "temp_lr")}


def _first_counters(train_state):
    def first_count(path, x):   # the optimizer state's counters (Adam's count)
        return x[0] if stacking.is_counter(path) else x
    return train_state.replace(
        step=train_state.step[0],
        opt_state=jax.tree_util.tree_map_with_path(first_count, train_state.opt_state))


def ensemble_policy(agent: ActorCritic, observations: jax.Array):
    """(mean_E, log_std_E) of the moment-matched ensemble policy."""
    assert agent.members > 0, "ensemble_policy needs an ensemble agent (to_ensemble)"
    return ac.policy(agent, agent.actor.params, observations)


def q_ens(agent: ActorCritic, observations: jax.Array, actions: jax.Array) -> jax.Array:
    """Q_ens(s, a) = mean_i min(Q1_i, Q2_i)(s, a)."""
    return ac.conservative_q(agent, ac.q_values(agent, agent.critic.params, observations,
                                                actions))


def members_policy_ensemble(members: ActorCritic, observations: jax.Array, key=None):
    """Act with the moment-matched policy of stacked *offline* members (for evaluation)."""
    means, log_stds = jax.vmap(
        lambda p: members.actor.apply_fn({"params": p}, observations))(members.actor.params)
    mean_e, log_std_e = dist.ensemble_moments(means, log_stds)
    if key is None:
        return dist.mode(mean_e)
    return dist.sample(key, mean_e, log_std_e)[0]
