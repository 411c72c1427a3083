"""Implicit Q-learning, IQL (Kostrikov et al. 2022), offline and fine-tuned online.

Spec: shared/spec/methods.md A1; source: ikostrikov/implicit_q_learning (`learner.py`,
`critic.py`, `actor.py`, `configs/mujoco_config.py`, `train_finetune.py`).

State `IQL` (one member; N members are stacked on a leading axis and `jax.vmap`ped):
an actor (`networks.GaussianActor`: an unsquashed Gaussian, tanh on the mean, a
state-independent log-std clipped to [-5, 2]), twin critics and their Polyak targets, an
expectile value net V(s), and the scale applied to every reward (`reward_scale`, a leaf:
it rides in checkpoints).

One step, in the code's order (each later loss sees the *updated* V):
  1. V:     L_V = mean_b L2_tau(min_j Qbar_j(s, a) - V(s)),  L2_tau(u) = |tau - 1(u < 0)| u^2
            (tau = `expectile`; Qbar the *target* critics);
  2. actor: L_pi = -mean_b [min(exp(beta (min_j Qbar_j(s, a) - V'(s))), max_weight)
                            log pi(a|s)]   (weights without gradient; V' the new V);
  3. Q:     L_Q = mean_b sum_j (Q_j(s, a) - y)^2,  y = scale r + gamma (1 - d) V'(s')
            (no target V);
  4. Polyak on the critics from the new critics (rate tau).
The step draws nothing (no dropout): its key is unused.

Rewards: scaled at use by `reward_scale`, set by `from_data` to 1000 / (R_max - R_min),
R the dataset's episode returns (the code's `normalize` for locomotion), or to
`iql.reward_scale` when that is set. The same scale applies to online rewards; the
authors' `train_finetune.py` leaves online locomotion rewards raw (it was only run on
antmaze, whose -1 shift it applies to every batch): ours keeps offline and online
rewards on one scale.

Online (`train_finetune.py`): the same update on one uniform buffer of offline + online
data (preset `online.replay = "uniform"`), acting with a sample of pi clipped to [-1, 1],
evaluating with its mean. The offline actor lr's cosine decay (`iql.actor_lr_cosine_steps`
> 0, the code's offline default over 1M steps) would leave the online actor lr ~0: the
antmaze fine-tune config turns it off and so does our default (0); `check` refuses it
with an online phase.

N members (the Lee et al. ensemble baseline rule): offline each member trains on its own
minibatches; online all take the step on the shared batch, and act through the
moment-matched Gaussian of their policies (mean of means; variance = mean of variances +
variance of means), which is the member's own policy at N = 1 (the paper's IQL).
"""
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from flax.training.train_state import TrainState

from o2o_jax import distributions as dist
from o2o_jax import networks, optim
from o2o_jax.agents import stacking

Params = Any


def default_config() -> ml_collections.ConfigDict:
    """IQL's knobs, the values of the authors' `configs/mujoco_config.py`."""
    c = ml_collections.ConfigDict()
    c.expectile = 0.7            # tau of the expectile loss (antmaze: 0.9)
    c.beta = 3.0                 # inverse temperature of the AWR weights (antmaze: 10)
    c.max_weight = 100.0         # clip of exp(beta A)
    c.hidden_dims = (256, 256)
    c.activation = "relu"
    c.init = "orthogonal"        # the code's default_init: orthogonal(sqrt 2)
    c.log_std_min = -5.0
    c.log_std_max = 2.0
    c.actor_lr = 3e-4
    c.critic_lr = 3e-4
    c.value_lr = 3e-4
    c.actor_lr_cosine_steps = 0  # > 0: cosine decay of the actor lr (code offline: 1M); 0 off
    c.discount = 0.99
    c.tau = 5e-3                 # Polyak rate of the target critics
    # None: 1000 / (R_max - R_min) of the dataset's episode returns (code, locomotion);
    # a number: that scale (1.0: raw rewards).
    c.reward_scale = ml_collections.config_dict.placeholder(float)
    return c


class IQL(struct.PyTreeNode):
    actor: TrainState
    critic: TrainState
    target_critic_params: Params
    value: TrainState
    reward_scale: jax.Array                    # [] (a leaf: checkpointed, per member)
    expectile: float = struct.field(pytree_node=False, default=0.7)
    beta: float = struct.field(pytree_node=False, default=3.0)
    max_weight: float = struct.field(pytree_node=False, default=100.0)
    discount: float = struct.field(pytree_node=False, default=0.99)
    tau: float = struct.field(pytree_node=False, default=5e-3)


def actor_optimizer(lr: float, cosine_steps: int) -> optax.GradientTransformation:
    """Adam at `lr`, or (cosine_steps > 0) the code's Adam with a cosine-decayed lr."""
    if cosine_steps <= 0:
        return optim.adam(lr)
    return _cosine_adam(float(lr), int(cosine_steps))


@functools.lru_cache(maxsize=None)
def _cosine_adam(lr: float, steps: int):
    return optax.chain(optax.scale_by_adam(),
                       optax.scale_by_schedule(optax.cosine_decay_schedule(-lr, steps)))


def network_defs(act_dim: int, cfg):
    """(actor, twin critic, value) modules of the `iql` config section."""
    hidden, init = tuple(cfg.hidden_dims), str(cfg.init)
    return (networks.make(networks.GaussianActor, action_dim=act_dim, hidden_dims=hidden,
                          activation=cfg.activation, log_std_min=float(cfg.log_std_min),
                          log_std_max=float(cfg.log_std_max), initializer=init),
            networks.make(networks.TwinCritic, hidden_dims=hidden, activation=cfg.activation,
                          num_qs=2, initializer=init),
            networks.make(networks.ValueNet, hidden_dims=hidden, activation=cfg.activation,
                          initializer=init))


def create(key: jax.Array, obs_dim: int, act_dim: int, cfg,
           actor_input_dim: Optional[int] = None) -> IQL:
    """One IQL agent from the `iql` config section. `actor_input_dim`: the actor's input
    size when it sees more than the observation (FamO2O's encoded balance coefficient)."""
    k_actor, k_critic, k_value = jax.random.split(key, 3)
    actor_def, critic_def, value_def = network_defs(act_dim, cfg)
    obs = jnp.zeros((1, obs_dim), jnp.float32)
    act = jnp.zeros((1, act_dim), jnp.float32)
    actor_in = jnp.zeros((1, actor_input_dim or obs_dim), jnp.float32)
    critic_params = critic_def.init(k_critic, obs, act)["params"]
    return IQL(
        actor=TrainState.create(apply_fn=actor_def.apply,
                                params=actor_def.init(k_actor, actor_in)["params"],
                                tx=actor_optimizer(cfg.actor_lr, cfg.actor_lr_cosine_steps)),
        critic=TrainState.create(apply_fn=critic_def.apply, params=critic_params,
                                 tx=optim.adam(cfg.critic_lr)),
        target_critic_params=jax.tree_util.tree_map(jnp.copy, critic_params),
        value=TrainState.create(apply_fn=value_def.apply,
                                params=value_def.init(k_value, obs)["params"],
                                tx=optim.adam(cfg.value_lr)),
        reward_scale=jnp.ones((), jnp.float32),
        expectile=float(cfg.expectile), beta=float(cfg.beta),
        max_weight=float(cfg.max_weight), discount=float(cfg.discount), tau=float(cfg.tau))


def create_members(key: jax.Array, obs_dim: int, act_dim: int, cfg, num_members: int):
    return stacking.create(lambda k: create(k, obs_dim, act_dim, cfg), key, num_members)


# ---------------------------------------------------------------------------------------
# Losses (one member)
# ---------------------------------------------------------------------------------------

def expectile_loss(diff: jax.Array, expectile: float) -> jax.Array:
    """L2_tau(u) = |tau - 1(u < 0)| u^2, elementwise (the code's `critic.loss`)."""
    return jnp.where(diff > 0, expectile, 1.0 - expectile) * diff ** 2


def target_q(state: IQL, observations, actions) -> jax.Array:
    """min_j Qbar_j(s, a) of the target critics, [*batch]."""
    q = state.critic.apply_fn({"params": state.target_critic_params}, observations, actions)
    return jnp.min(q, axis=0)


def value(state: IQL, value_params, observations) -> jax.Array:
    return state.value.apply_fn({"params": value_params}, observations)


def policy(state: IQL, actor_params, observations):
    """(mean, log_std) of the unsquashed Gaussian policy, [*batch, A] each."""
    return state.actor.apply_fn({"params": actor_params}, observations)


def value_loss(value_params, state: IQL, batch):
    q = jax.lax.stop_gradient(target_q(state, batch["observations"], batch["actions"]))
    v = value(state, value_params, batch["observations"])
    loss = jnp.mean(expectile_loss(q - v, state.expectile))
    return loss, {"value_loss": loss, "v": jnp.mean(v)}


def awr_weights(state: IQL, value_params, batch, beta: float):
    """(min(exp(beta (min Qbar(s, a) - V(s))), max_weight) [B], advantages [B]); no
    gradient."""
    q = target_q(state, batch["observations"], batch["actions"])
    adv = jax.lax.stop_gradient(q - value(state, value_params, batch["observations"]))
    return jnp.minimum(jnp.exp(beta * adv), state.max_weight), adv


def actor_loss(actor_params, state: IQL, value_params, batch):
    """AWR on the data actions with the new V; aux info holds the weights [B]."""
    weights, adv = awr_weights(state, value_params, batch, state.beta)
    mean, log_std = policy(state, actor_params, batch["observations"])
    log_probs = dist.gaussian_log_prob(batch["actions"], mean, log_std)
    loss = -jnp.mean(weights * log_probs)
    return loss, {"actor_loss": loss, "advantage": jnp.mean(adv),
                  "awr_weight": jnp.mean(weights),
                  "awr_clip_fraction": jnp.mean((weights >= state.max_weight)
                                                .astype(jnp.float32)),
                  "log_prob_data": jnp.mean(log_probs), "weights": weights}


def critic_loss(critic_params, state: IQL, value_params, batch):
    """sum over twins of mean_b (Q_j(s, a) - y)^2, y = scale r + gamma (1 - d) V(s')."""
    next_v = value(state, value_params, batch["next_observations"])
    y = jax.lax.stop_gradient(state.reward_scale * batch["rewards"]
                              + state.discount * (1.0 - batch["dones"]) * next_v)
    q = state.critic.apply_fn({"params": critic_params}, batch["observations"],
                              batch["actions"])
    loss = jnp.sum(jnp.mean((q - y) ** 2, axis=-1))
    return loss, {"critic_loss": loss, "q_data": jnp.mean(jnp.min(q, axis=0)),
                  "q1_data": jnp.mean(q[0]), "q_target": jnp.mean(y)}


def value_step(state: IQL, batch):
    """V's step (from the target critics): (state with the new V, info)."""
    (_, info), grads = jax.value_and_grad(value_loss, has_aux=True)(
        state.value.params, state, batch)
    return state.replace(value=state.value.apply_gradients(grads=grads)), info


def actor_step(state: IQL, batch):
    """The AWR actor's step with the state's V and target critics: (state, info)."""
    (_, info), grads = jax.value_and_grad(actor_loss, has_aux=True)(
        state.actor.params, state, state.value.params, batch)
    info.pop("weights")
    return state.replace(actor=state.actor.apply_gradients(grads=grads)), info


def critic_step(state: IQL, batch):
    """Q's step with the state's V, then Polyak on the critics: (state, info)."""
    (_, info), grads = jax.value_and_grad(critic_loss, has_aux=True)(
        state.critic.params, state, state.value.params, batch)
    critic = state.critic.apply_gradients(grads=grads)
    return state.replace(critic=critic, target_critic_params=optax.incremental_update(
        critic.params, state.target_critic_params, state.tau)), info


def update(state: IQL, batch, key: jax.Array = None):
    """One IQL step: V, then the actor and Q with the new V, then Polyak (module doc)."""
    del key   # no dropout: the step draws nothing
    state, v_info = value_step(state, batch)
    state, a_info = actor_step(state, batch)
    state, c_info = critic_step(state, batch)
    return state, {**v_info, **a_info, **c_info}


def members_update(members: IQL, batch, key: jax.Array):
    """All stacked members take the step on one shared batch (the online rule)."""
    return jax.vmap(update, in_axes=(0, None, None))(members, batch, key)


# ---------------------------------------------------------------------------------------
# Acting (stacked members [N, ...])
# ---------------------------------------------------------------------------------------

def ensemble_policy(members: IQL, observations):
    """The moment-matched Gaussian of the N members' policies: (mean, log_std) [*batch, A]
    (N = 1: the member's own)."""
    apply = members.actor.apply_fn
    means, log_stds = jax.vmap(lambda p: apply({"params": p}, observations))(
        members.actor.params)
    return dist.ensemble_moments(means, log_stds)


def clipped_sample(mean, log_std, key: jax.Array):
    """mean + std * noise clipped to [-1, 1]: IQL's acting (a Gaussian without tanh)."""
    noise = jax.random.normal(key, mean.shape, mean.dtype)
    return jnp.clip(mean + jnp.exp(log_std) * noise, -1.0, 1.0)


def act(members: IQL, observations, key: jax.Array):
    """A sample of the ensemble Gaussian, clipped to [-1, 1] (the code's acting)."""
    return clipped_sample(*ensemble_policy(members, observations), key)


def act_eval(members: IQL, observations):
    """The ensemble mean (the code evaluates at temperature 0: the mean)."""
    return ensemble_policy(members, observations)[0]


def q_ens(members: IQL, observations, actions):
    """mean over members of min(Q1, Q2)(s, a) of the online critics, [*batch]."""
    apply = members.critic.apply_fn
    q = jax.vmap(lambda p: apply({"params": p}, observations, actions))(members.critic.params)
    return jnp.mean(jnp.min(q, axis=1), axis=0)


# ---------------------------------------------------------------------------------------
# Data: the reward scale
# ---------------------------------------------------------------------------------------

def dataset_reward_scale(episode_returns) -> float:
    """1000 / (R_max - R_min) over the dataset's episode returns (the code's `normalize`)."""
    returns = np.asarray(episode_returns, np.float64)
    spread = float(returns.max() - returns.min()) if returns.size else 0.0
    if not spread > 0:
        raise ValueError(
            f"IQL's reward scale 1000 / (R_max - R_min) needs episodes with different "
            f"returns; this dataset has {returns.size} episode(s) with a spread of {spread}. "
            "Set --config.iql.reward_scale=<number> (1.0: raw rewards)")
    return 1000.0 / spread


def from_data(members: IQL, dataset, cfg) -> IQL:
    scale = cfg.iql.reward_scale
    if scale is None:
        scale = dataset_reward_scale(dataset.episode_returns())
        print(f"IQL reward scale 1000 / (R_max - R_min) of {dataset.dataset_id}: {scale:.6g}")
    return members.replace(reward_scale=jnp.full_like(members.reward_scale, float(scale)))


# ---------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------

def _members(key, obs_dim, act_dim, cfg):
    return create_members(key, obs_dim, act_dim, cfg.iql, cfg.agent.num_members)


def _update(cfg):
    return update


def _members_update(cfg):
    return members_update


def check_config(cfg):
    """The `iql` section's rules (also PEX's and FamO2O's, which build on IQL)."""
    from o2o_jax import config_checks as cc
    cc.in_range(cfg, "iql.expectile", 0.0, 1.0, lo_open=True, hi_open=True)
    for f in ("iql.beta", "iql.max_weight", "iql.actor_lr", "iql.critic_lr", "iql.value_lr"):
        cc.positive_float(cfg, f)
    cc.in_range(cfg, "iql.tau", 0.0, 1.0, lo_open=True)
    cc.in_range(cfg, "iql.discount", 0.0, 1.0)
    cc.one_of(cfg, "iql.init", ("lecun", "orthogonal"))
    cc.non_negative_int(cfg, "iql.actor_lr_cosine_steps")
    if cfg.iql.reward_scale is not None:
        cc.positive_float(cfg, "iql.reward_scale")
    if "online" in cfg and cfg.online.epochs > 0:
        cc.require(cfg, "iql.actor_lr_cosine_steps", cfg.iql.actor_lr_cosine_steps == 0,
                   "must be 0 with an online phase: the decay would leave the online actor "
                   "lr ~0 (the authors' fine-tune config turns it off)")


def _register():
    from o2o_jax import algorithm
    algorithm.register(algorithm.Algorithm(
        name="iql", summary="IQL offline and online (expectile V, AWR actor), online data "
                            "appended to one uniform buffer",
        create_members=_members, offline_update=_update,
        to_online=lambda members, cfg: members, online_update=_members_update,
        act=act, act_eval=act_eval, q_value=q_ens, members_act_eval=act_eval,
        from_data=from_data, config_section=("iql", default_config),
        preset={"agent.num_members": 1, "online.replay": "uniform"},
        check=check_config, progress_keys=("critic_loss", "value_loss", "q_data")))


_register()
