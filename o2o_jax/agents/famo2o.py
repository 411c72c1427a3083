"""FamO2O (Wang et al. 2023), a family of policies over improvement/constraint balances,
on IQL.

Spec: shared/spec/methods.md A4; source: LeapLabTHU/FamO2O `jax_iql/` (`family_learner.py`,
`family_actor.py`, `family_temperature.py`, `family_utils.py`, `family_train_finetune.py`).

One universal policy pi(a | s, enc(beta)) is trained for every balance coefficient beta in
[beta_min, beta_max] (beta is AWR's inverse temperature); a balance model p(beta | s)
picks beta per state to maximise Q.

* enc(beta): d = `encoding_dim` features, sin at even and cos at odd positions of
  beta / base^(2i/d), i = 0..d/2-1 (the code's `sin_cos_skill_func`), concatenated to s.
* Balance model: a 1-D tanh-squashed Gaussian on s with a state-independent log-std
  (`networks.GaussianActor(tanh_mean=False)`, log-std in [-10, 2]); its sample u in
  (-1, 1) maps to beta = beta_min + (u + 1) / 2 (beta_max - beta_min).
* Losses, in the code's order (one step):
  1. V: IQL's expectile loss (`iql.value_step`);
  2. balance model, SAC-like with the *target* critics and the pre-update universal policy
     held fixed: L = mean_b [c log p(u|s) - min_j Qbar_j(s, a~)], u ~ p(.|s),
     a~ ~ pi(.|s, enc(beta(u))), both reparameterised (the gradient flows through u into
     a~); c the pre-update temperature;
  3. c: L_c = c (H - H_target), H = -mean_b log p(u|s) of step 2, H_target = -0.5;
  4. universal actor: L = -mean_b [min(exp(beta (min_j Qbar_j(s, a) - V'(s))), max_weight)
     log pi(a | s, enc(beta))] on the data actions, with the new V; beta per sample is
     Uniform[beta_min, beta_max] offline and a sample of the *pre-update* balance model
     online (no gradient);
  5. Q with the new V, then Polyak (`iql.critic_step`).
  All heads update every step, offline too.
* Acting: beta = the balance model's mode, a ~ pi(.|s, enc(beta)) clipped to [-1, 1];
  evaluation: the universal policy's mean at that beta.
* Rewards: IQL's scale (`iql.reward_scale`), offline and online alike, as the FamO2O
  fine-tune script does.

Where we differ from the code (documented, no knob): the code draws u and a~ with one
key (so their noises are equal); here `balance_loss` splits its key into (k_u, k_a).

N members: each member is a whole FamO2O agent (offline on its own minibatches, online on
the shared batch with its own key split(key, N)[i]); the ensemble acts through the
moment-matched Gaussian of the members' universal policies, each at its own beta (N = 1:
the paper's agent).

Defaults (ours; no locomotion config ships): beta range (1, 5), the learner's default,
around IQL's beta = 3, with IQL's expectile 0.7; the antmaze config uses (8, 14).
"""
import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import struct
from flax.training.train_state import TrainState

from o2o_jax import distributions as dist
from o2o_jax import networks, optim
from o2o_jax.agents import iql, stacking


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.beta_min = 1.0             # the learner's default range (ours for locomotion)
    c.beta_max = 5.0
    c.encoding_dim = 6           # d of the sin/cos encoding
    c.encoding_base = 10_000.0   # n
    c.balance_lr = 3e-4          # the code: Adam at the actor lr
    c.balance_log_std_min = -10.0
    c.balance_log_std_max = 2.0
    c.init_temperature = 1.0     # c at the start
    c.temp_lr = 3e-4
    c.target_entropy = -0.5
    return c


class FamO2O(struct.PyTreeNode):
    iql: iql.IQL                 # the universal actor on [s, enc(beta)], critics, V, scale
    balance: TrainState          # p(beta | s)
    temp: TrainState             # c (networks.Temperature)
    beta_min: float = struct.field(pytree_node=False, default=1.0)
    beta_max: float = struct.field(pytree_node=False, default=5.0)
    encoding_dim: int = struct.field(pytree_node=False, default=6)
    encoding_base: float = struct.field(pytree_node=False, default=10_000.0)
    target_entropy: float = struct.field(pytree_node=False, default=-0.5)
    online: bool = struct.field(pytree_node=False, default=False)   # beta's source


def create(key: jax.Array, obs_dim: int, act_dim: int, cfg) -> FamO2O:
    f = cfg.famo2o
    k_iql, k_bal = jax.random.split(key)
    base = iql.create(k_iql, obs_dim, act_dim, cfg.iql,
                      actor_input_dim=obs_dim + int(f.encoding_dim))
    balance_def = networks.make(
        networks.GaussianActor, action_dim=1, hidden_dims=tuple(cfg.iql.hidden_dims),
        activation=cfg.iql.activation, log_std_min=float(f.balance_log_std_min),
        log_std_max=float(f.balance_log_std_max), initializer=str(cfg.iql.init),
        tanh_mean=False)
    temp_def = networks.make(networks.Temperature, initial_value=float(f.init_temperature))
    return FamO2O(
        iql=base,
        balance=TrainState.create(
            apply_fn=balance_def.apply,
            params=balance_def.init(k_bal, jnp.zeros((1, obs_dim), jnp.float32))["params"],
            tx=optim.adam(f.balance_lr)),
        temp=TrainState.create(apply_fn=temp_def.apply,
                               params=temp_def.init(jax.random.PRNGKey(0))["params"],
                               tx=optim.adam(f.temp_lr)),
        beta_min=float(f.beta_min), beta_max=float(f.beta_max),
        encoding_dim=int(f.encoding_dim), encoding_base=float(f.encoding_base),
        target_entropy=float(f.target_entropy))


def create_members(key, obs_dim, act_dim, cfg):
    return stacking.create(lambda k: create(k, obs_dim, act_dim, cfg), key,
                           cfg.agent.num_members)


# ---------------------------------------------------------------------------------------
# beta: its encoding, the balance model, the universal policy
# ---------------------------------------------------------------------------------------

def encode(beta: jax.Array, d: int, base: float) -> jax.Array:
    """[*batch] -> [*batch, d]: sin(beta / base^(2i/d)) at 2i, cos at 2i + 1."""
    i = jnp.arange(d // 2, dtype=jnp.float32)
    inner = beta[..., None] / base ** (2.0 * i / d)
    return jnp.stack([jnp.sin(inner), jnp.cos(inner)], -1).reshape(beta.shape + (d,))


def to_beta(state: FamO2O, u: jax.Array) -> jax.Array:
    return state.beta_min + (u + 1.0) / 2.0 * (state.beta_max - state.beta_min)


def balance_sample(state: FamO2O, balance_params, observations, key):
    """(beta [*batch], log p(u|s) [*batch]) of a reparameterised draw."""
    mean, log_std = state.balance.apply_fn({"params": balance_params}, observations)
    u, log_p = dist.sample(key, mean, log_std)
    return to_beta(state, u[..., 0]), log_p


def balance_mode(state: FamO2O, observations) -> jax.Array:
    mean, _ = state.balance.apply_fn({"params": state.balance.params}, observations)
    return to_beta(state, jnp.tanh(mean[..., 0]))


def universal_policy(state: FamO2O, actor_params, observations, beta):
    """(mean, log_std) of pi(. | s, enc(beta))."""
    x = jnp.concatenate([observations, encode(beta, state.encoding_dim,
                                              state.encoding_base)], -1)
    return iql.policy(state.iql, actor_params, x)


# ---------------------------------------------------------------------------------------
# Losses and the step
# ---------------------------------------------------------------------------------------

def balance_loss(balance_params, state: FamO2O, batch, key):
    obs = batch["observations"]
    k_u, k_a = jax.random.split(key)
    beta, log_p = balance_sample(state, balance_params, obs, k_u)
    mean, log_std = universal_policy(state, jax.lax.stop_gradient(state.iql.actor.params),
                                     obs, beta)
    a = mean + jnp.exp(log_std) * jax.random.normal(k_a, mean.shape, mean.dtype)
    q = iql.target_q(state.iql, obs, a)
    c = jax.lax.stop_gradient(state.temp.apply_fn({"params": state.temp.params}))
    loss = jnp.mean(c * log_p - q)
    return loss, {"balance_loss": loss, "balance_entropy": -jnp.mean(log_p),
                  "beta_balance": jnp.mean(beta), "q_balance": jnp.mean(q)}


def temp_loss(temp_params, state: FamO2O, entropy):
    c = state.temp.apply_fn({"params": temp_params})
    return c * (jax.lax.stop_gradient(entropy) - state.target_entropy)


def actor_betas(state: FamO2O, batch, key):
    """beta per sample for the universal actor: Uniform offline, the pre-update balance
    model's sample online; no gradient."""
    obs = batch["observations"]
    if state.online:
        beta, _ = balance_sample(state, state.balance.params, obs, key)
    else:
        beta = jax.random.uniform(key, obs.shape[:-1], minval=state.beta_min,
                                  maxval=state.beta_max)
    return jax.lax.stop_gradient(beta)


def actor_loss(actor_params, state: FamO2O, batch, beta):
    """The balance-conditioned AWR loss with the state's V and target critics."""
    s = state.iql
    obs = batch["observations"]
    adv = jax.lax.stop_gradient(iql.target_q(s, obs, batch["actions"])
                                - iql.value(s, s.value.params, obs))
    weights = jnp.minimum(jnp.exp(beta * adv), s.max_weight)
    mean, log_std = universal_policy(state, actor_params, obs, beta)
    log_probs = dist.gaussian_log_prob(batch["actions"], mean, log_std)
    loss = -jnp.mean(weights * log_probs)
    return loss, {"actor_loss": loss, "advantage": jnp.mean(adv),
                  "awr_weight": jnp.mean(weights), "beta_actor": jnp.mean(beta),
                  "log_prob_data": jnp.mean(log_probs)}


def update(state: FamO2O, batch, key: jax.Array):
    """One FamO2O step (module doc, steps 1-5)."""
    k_balance, k_beta = jax.random.split(key)
    s, v_info = iql.value_step(state.iql, batch)
    (_, b_info), b_grads = jax.value_and_grad(balance_loss, has_aux=True)(
        state.balance.params, state, batch, k_balance)
    t_loss, t_grads = jax.value_and_grad(temp_loss)(state.temp.params, state,
                                                    b_info["balance_entropy"])
    beta = actor_betas(state, batch, k_beta)
    after_v = state.replace(iql=s)
    (_, a_info), a_grads = jax.value_and_grad(actor_loss, has_aux=True)(
        s.actor.params, after_v, batch, beta)
    s = s.replace(actor=s.actor.apply_gradients(grads=a_grads))
    s, c_info = iql.critic_step(s, batch)
    new = state.replace(iql=s, balance=state.balance.apply_gradients(grads=b_grads),
                        temp=state.temp.apply_gradients(grads=t_grads))
    c = state.temp.apply_fn({"params": state.temp.params})
    return new, {**v_info, **b_info, **a_info, **c_info, "balance_temp": c,
                 "balance_temp_loss": t_loss}


def members_update(members: FamO2O, batch, key: jax.Array):
    """Online: every member steps on the shared batch, member i with split(key, N)[i]."""
    keys = jax.random.split(key, stacking.num_stacked(members))
    return jax.vmap(update, in_axes=(0, None, 0))(members, batch, keys)


# ---------------------------------------------------------------------------------------
# Acting (stacked members [N, ...])
# ---------------------------------------------------------------------------------------

def ensemble_policy(members: FamO2O, observations):
    """Each member's universal policy at its own balance-model beta, moment-matched."""
    def one(m):
        beta = balance_mode(m, observations)
        return universal_policy(m, m.iql.actor.params, observations, beta)
    means, log_stds = jax.vmap(one)(members)
    return dist.ensemble_moments(means, log_stds)


def act(members: FamO2O, observations, key):
    return iql.clipped_sample(*ensemble_policy(members, observations), key)


def act_eval(members: FamO2O, observations):
    return jnp.clip(ensemble_policy(members, observations)[0], -1.0, 1.0)


def q_value(members: FamO2O, observations, actions):
    return iql.q_ens(members.iql, observations, actions)


# ---------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------

def _from_data(members: FamO2O, dataset, cfg) -> FamO2O:
    return members.replace(iql=iql.from_data(members.iql, dataset, cfg))


def _check(cfg):
    from o2o_jax import config_checks as cc
    cc.positive_float(cfg, "famo2o.beta_min")
    cc.require(cfg, "famo2o.beta_max", cfg.famo2o.beta_max > cfg.famo2o.beta_min,
               f"must be > famo2o.beta_min = {cfg.famo2o.beta_min}")
    d = cfg.famo2o.encoding_dim
    cc.require(cfg, "famo2o.encoding_dim", isinstance(d, int) and d > 0 and d % 2 == 0,
               "must be a positive even integer (sin and cos pairs)")
    for f in ("encoding_base", "balance_lr", "temp_lr", "init_temperature"):
        cc.positive_float(cfg, f"famo2o.{f}")
    cc.require(cfg, "famo2o.target_entropy", math.isfinite(cfg.famo2o.target_entropy),
               "must be a finite number (the code: -0.5)")
    iql.check_config(cfg)


def _register():
    from o2o_jax import algorithm
    algorithm.register(algorithm.Algorithm(
        name="famo2o", summary="FamO2O on IQL: a beta-conditioned universal policy and a "
                               "balance model choosing beta per state",
        create_members=create_members, offline_update=lambda cfg: update,
        to_online=lambda members, cfg: members.replace(online=True),
        online_update=lambda cfg: members_update, act=act, act_eval=act_eval,
        q_value=q_value, members_act_eval=act_eval, from_data=_from_data,
        config_section=("famo2o", default_config),
        preset={"agent.num_members": 1, "online.replay": "uniform"},
        check=_check, progress_keys=("critic_loss", "value_loss", "beta_balance")))


_register()
