"""Policy expansion, PEX (Zhang et al. 2023), on IQL.

Spec: shared/spec/methods.md A3; source: Haichao-Zhang/PEX (`pex/algorithms/pex.py`,
`main_online.py`).

Offline: IQL (`agents/iql.py`), unchanged. Online, the offline policy pi_off is frozen and
a new policy pi_new (same network, randomly initialised, created with the member so that
each seed draws its own) is added. At each state the two proposals

    a1 = mode of pi_off,   a2 ~ pi_new(.|s)

compete through a softmax over the online critics (min of twins):

    P(i | s) = softmax_i(inv_temperature * min_j Q_j(s, a_i)),   i ~ P  (the env action).

Losses online, per step: IQL's V and then Q with the new V, Polyak (the PEX code's order:
the critics first), then pi_new by AWR on the *composed* action at the batch states,

    a~ = select(s),  A = min_j Qbar_j(s, a~) - V(s),
    L = -mean_b [min(exp(beta A), max_weight) log pi_new(a~|s)],

with the updated critics, targets and V (dataset actions are not used). pi_off never
changes online.

Replay (preset): every batch 128 offline + 128 online (`online.replay = "mixed"`, ratio
0.5). Rewards are not rescaled (the PEX code does not, unlike IQL: `iql.reward_scale`
1.0). IQL's knobs as the online script's defaults: expectile 0.7, beta 10.

Where we differ from the code (documented, no knob):
* evaluation is greedy: pi_new's mode and the argmax of P; the code is epsilon-greedy
  with epsilon 0.1 on both, which needs a random key per evaluation call that our
  `act_eval` has no room for;
* the env action is clipped to [-1, 1] (the loss uses the composed action unclipped);
* training starts after the first epoch's env steps (`online.env_steps_per_epoch`; with
  `online.train_every` = k after the first k), not after 5k;
* V and Q follow our IQL (`iql.update`'s losses: Q regressed on the new V, the twin
  losses summed), where the PEX code's own IQL uses the pre-update V for Q's target and
  averages the twin losses (spec: "IQL V and Q losses continue unchanged").

One member (N = 1): policy expansion is defined for one offline policy; `check` refuses
N > 1.

Key derivation: `update`'s key goes to `select`, which splits it into (k_a2, k_choice):
a2 = mean + std * normal(k_a2, mean.shape), i = categorical(k_choice, logits).
"""
import jax
import jax.numpy as jnp
import ml_collections
from flax import struct
from flax.training.train_state import TrainState

from o2o_jax import distributions as dist
from o2o_jax.agents import iql, stacking


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.inv_temperature = 10.0     # 1 / alpha of the Q-softmax (code default 10)
    return c


class PEX(struct.PyTreeNode):
    iql: iql.IQL                 # critics, V, and pi_off (frozen online)
    new_actor: TrainState        # pi_new: trained online only
    inv_temperature: float = struct.field(pytree_node=False, default=10.0)


def create(key: jax.Array, obs_dim: int, act_dim: int, cfg) -> PEX:
    """One member: an IQL agent from `cfg.iql` and pi_new (same network, its own init)."""
    k_iql, k_new = jax.random.split(key)
    base = iql.create(k_iql, obs_dim, act_dim, cfg.iql)
    actor_def = iql.network_defs(act_dim, cfg.iql)[0]
    params = actor_def.init(k_new, jnp.zeros((1, obs_dim), jnp.float32))["params"]
    new_actor = TrainState.create(apply_fn=base.actor.apply_fn, params=params,
                                  tx=iql.actor_optimizer(cfg.iql.actor_lr, 0))
    return PEX(iql=base, new_actor=new_actor,
               inv_temperature=float(cfg.pex.inv_temperature))


def create_members(key, obs_dim, act_dim, cfg):
    return stacking.create(lambda k: create(k, obs_dim, act_dim, cfg), key,
                           cfg.agent.num_members)


# ---------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------

def online_q(state: PEX, observations, actions) -> jax.Array:
    """min_j Q_j(s, a) of the online critics (the code's `critic.min`), [*batch]."""
    s = state.iql
    return jnp.min(s.critic.apply_fn({"params": s.critic.params}, observations, actions), 0)


def selection_probs(state: PEX, observations, a1, a2) -> jax.Array:
    """P(i | s) = softmax_i(inv_temperature * min Q(s, a_i)), [*batch, 2]."""
    q = jnp.stack([online_q(state, observations, a1), online_q(state, observations, a2)], -1)
    return jax.nn.softmax(state.inv_temperature * q, axis=-1)


def select(state: PEX, observations, key=None):
    """(composed action, choice i in {0: pi_off, 1: pi_new}, P [*batch, 2]); greedy
    (pi_new's mode, argmax P) without a key."""
    a1 = iql.policy(state.iql, state.iql.actor.params, observations)[0]      # pi_off mode
    mean, log_std = iql.policy(state.iql, state.new_actor.params, observations)
    if key is None:
        a2 = mean
    else:
        k_a2, k_choice = jax.random.split(key)
        a2 = mean + jnp.exp(log_std) * jax.random.normal(k_a2, mean.shape, mean.dtype)
    probs = selection_probs(state, observations, a1, a2)
    choice = (jnp.argmax(probs, -1) if key is None else
              jax.random.categorical(k_choice, state.inv_temperature * jnp.stack(
                  [online_q(state, observations, a1), online_q(state, observations, a2)],
                  -1)))
    return jnp.where(choice[..., None] == 1, a2, a1), choice, probs


# ---------------------------------------------------------------------------------------
# Losses and the online step
# ---------------------------------------------------------------------------------------

def new_actor_loss(params, state: PEX, batch, composed):
    """AWR of pi_new on the composed actions, with the state's targets and V."""
    obs = batch["observations"]
    s = state.iql
    adv = jax.lax.stop_gradient(iql.target_q(s, obs, composed)
                                - iql.value(s, s.value.params, obs))
    weights = jnp.minimum(jnp.exp(s.beta * adv), s.max_weight)
    mean, log_std = iql.policy(s, params, obs)
    log_probs = dist.gaussian_log_prob(composed, mean, log_std)
    loss = -jnp.mean(weights * log_probs)
    return loss, {"actor_loss": loss, "advantage": jnp.mean(adv),
                  "awr_weight": jnp.mean(weights), "log_prob_data": jnp.mean(log_probs)}


def update(state: PEX, batch, key: jax.Array):
    """V, Q (+ Polyak) as IQL, then pi_new on composed actions; pi_off untouched."""
    s, v_info = iql.value_step(state.iql, batch)
    s, c_info = iql.critic_step(s, batch)
    state = state.replace(iql=s)
    composed, choice, probs = select(state, batch["observations"], key)
    composed = jax.lax.stop_gradient(composed)
    (_, a_info), grads = jax.value_and_grad(new_actor_loss, has_aux=True)(
        state.new_actor.params, state, batch, composed)
    state = state.replace(new_actor=state.new_actor.apply_gradients(grads=grads))
    return state, {**v_info, **c_info, **a_info,
                   "pex_new_fraction": jnp.mean(choice.astype(jnp.float32)),
                   "pex_p_new": jnp.mean(probs[..., 1])}


def offline_update(state: PEX, batch, key: jax.Array):
    """Offline: IQL on the member's IQL part; pi_new is not trained."""
    s, info = iql.update(state.iql, batch, key)
    return state.replace(iql=s), info


def act(state: PEX, observations, key):
    return jnp.clip(select(state, observations, key)[0], -1.0, 1.0)


def act_eval(state: PEX, observations):
    return jnp.clip(select(state, observations)[0], -1.0, 1.0)


def q_value(state: PEX, observations, actions):
    return online_q(state, observations, actions)


# ---------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------

def _to_online(members: PEX, cfg) -> PEX:
    return stacking.member(members, 0)       # N = 1 (checked)


def _members_act_eval(members: PEX, observations):
    return iql.act_eval(members.iql, observations)


def _from_data(members: PEX, dataset, cfg) -> PEX:
    return members.replace(iql=iql.from_data(members.iql, dataset, cfg))


def _check(cfg):
    from o2o_jax import config_checks as cc
    cc.require(cfg, "agent.num_members", cfg.agent.num_members == 1,
               "must be 1 for algo 'pex' (policy expansion adds one new policy to one "
               "offline policy)")
    cc.positive_float(cfg, "pex.inv_temperature")
    iql.check_config(cfg)


def _register():
    from o2o_jax import algorithm
    algorithm.register(algorithm.Algorithm(
        name="pex", summary="PEX: IQL offline; online a frozen pi_off plus a new policy, "
                            "chosen per state by a softmax over Q",
        create_members=create_members, offline_update=lambda cfg: offline_update,
        to_online=_to_online, online_update=lambda cfg: update, act=act, act_eval=act_eval,
        q_value=q_value, members_act_eval=_members_act_eval, from_data=_from_data,
        config_section=("pex", default_config),
        preset={"agent.num_members": 1, "online.replay": "mixed",
                "online.offline_ratio": 0.5, "iql.reward_scale": 1.0, "iql.beta": 10.0,
                "iql.expectile": 0.7},
        check=_check, progress_keys=("critic_loss", "value_loss", "q_data")))


_register()
