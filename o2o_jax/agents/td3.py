"""TD3 (Fujimoto et al. 2018) and TD3+BC (Fujimoto & Gu 2021), offline and fine-tuned
online with the same loss ("-ft").

Spec: shared/spec/methods.md B1, B2; source: sfujim/TD3_BC (`TD3_BC.py`, `main.py`).

State `TD3` (one member; N members stacked and vmapped): a deterministic actor
mu(s) = tanh(MLP(s)) and its Polyak target, twin critics and their targets, the state
normaliser (`obs_mean`, `obs_std`: leaves, so checkpoints carry them; identity for
TD3) and the BC weight `bc_alpha` (a leaf: schedules of the methods built on this one
change it).

One step, in the code's order:
  1. critic: y = r + gamma (1 - d) min_j Qbar_j(s', clip(mubar(s') + eps, -1, 1)),
     eps = clip(N(0, policy_noise^2), -noise_clip, noise_clip); loss = sum over twins of
     mean_b (Q_j(s, a) - y)^2 (the code's mse(Q1, y) + mse(Q2, y));
  2. every `policy_delay`-th step (counted by the critic's optimizer step, so the first
     step does not update the actor, as the code's total_it), with the *updated* critic:
     TD3:    L = -mean_b Q1(s, mu(s));
     TD3+BC: L = -lambda mean_b Q1(s, mu(s)) + mean_{b,dims} (mu(s) - a)^2,
             lambda = bc_alpha / mean_b |Q1(s, mu(s))| (no gradient; the code normalises
             by |Q| at the policy's actions), bc_alpha = 2.5;
     then Polyak on the target actor and target critics (only on those steps).
States are normalised inside the agent, (s - mean) / std, for actor and critic inputs; the
replay holds raw observations. TD3+BC's normaliser is the dataset's observation mean and
std + 1e-3 (`from_data`); TD3's is the identity.

Acting: mu(s) + N(0, expl_noise^2) clipped to [-1, 1] (N members: the mean of their
mu(s)); evaluation: mu(s). Online, all members take the step on the shared batch, member
i with key split(key, N)[i].

Source values: 2x256 ReLU, Adam 3e-4 for both, gamma 0.99, tau 5e-3, policy noise 0.2,
noise clip 0.5, policy delay 2, exploration noise 0.1, alpha 2.5, batch 256.
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from flax.training.train_state import TrainState

from o2o_jax import networks, optim
from o2o_jax.agents import stacking


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.hidden_dims = (256, 256)
    c.activation = "relu"
    c.actor_lr = 3e-4
    c.critic_lr = 3e-4
    c.discount = 0.99
    c.tau = 5e-3
    c.policy_noise = 0.2         # target smoothing noise std
    c.noise_clip = 0.5
    c.policy_delay = 2
    c.expl_noise = 0.1           # exploration noise std online
    c.bc_alpha = 2.5             # TD3+BC's alpha (lambda = alpha / mean|Q|)
    c.normalizer_eps = 1e-3      # TD3+BC: std + eps
    return c


class TD3(struct.PyTreeNode):
    actor: TrainState
    critic: TrainState
    target_actor_params: object
    target_critic_params: object
    obs_mean: jax.Array          # [obs_dim]
    obs_std: jax.Array           # [obs_dim]
    bc_alpha: jax.Array          # []
    # The actor's objective: "td3", "td3_bc" (lambda = bc_alpha / mean|Q1|), or
    # "normalized_bc" (-Q1 / mean|Q1| + bc_alpha MSE: PR-FT's refinement and fine-tuning).
    objective: str = struct.field(pytree_node=False, default="td3")
    # The critics: `num_qs` of them (implicit in the parameters); the target's min over a
    # random subset of `subset` target critics (0: over all, TD3); the actor's Q-hat the
    # first critic ("q1", TD3) or the critics' mean ("mean", AdaptiveBC's REDQ critic).
    subset: int = struct.field(pytree_node=False, default=0)
    q_hat: str = struct.field(pytree_node=False, default="q1")
    # The BC term times mean_b batch["w"] (APL's GCTD3BC: only offline-buffer batches).
    gate_bc: bool = struct.field(pytree_node=False, default=False)
    bc_alpha_decay: float = struct.field(pytree_node=False, default=1.0)  # x per update
    discount: float = struct.field(pytree_node=False, default=0.99)
    tau: float = struct.field(pytree_node=False, default=5e-3)
    policy_noise: float = struct.field(pytree_node=False, default=0.2)
    noise_clip: float = struct.field(pytree_node=False, default=0.5)
    policy_delay: int = struct.field(pytree_node=False, default=2)
    expl_noise: float = struct.field(pytree_node=False, default=0.1)


OBJECTIVES = ("td3", "td3_bc", "normalized_bc")


def create(key: jax.Array, obs_dim: int, act_dim: int, cfg, objective: str = "td3",
           num_qs: int = 2, subset: int = 0, q_hat: str = "q1") -> TD3:
    """One agent from the `td3` config section with the actor `objective` and `num_qs`
    critics (see the fields)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r}: allowed {OBJECTIVES}")
    k_actor, k_critic = jax.random.split(key)
    hidden = tuple(cfg.hidden_dims)
    actor_def = networks.make(networks.DeterministicActor, action_dim=act_dim,
                              hidden_dims=hidden, activation=cfg.activation)
    critic_def = networks.make(networks.TwinCritic, hidden_dims=hidden,
                               activation=cfg.activation, num_qs=int(num_qs))
    obs = jnp.zeros((1, obs_dim), jnp.float32)
    actor_params = actor_def.init(k_actor, obs)["params"]
    critic_params = critic_def.init(k_critic, obs, jnp.zeros((1, act_dim), jnp.float32))[
        "params"]
    copy = functools.partial(jax.tree_util.tree_map, jnp.copy)
    return TD3(
        actor=TrainState.create(apply_fn=actor_def.apply, params=actor_params,
                                tx=optim.adam(cfg.actor_lr)),
        critic=TrainState.create(apply_fn=critic_def.apply, params=critic_params,
                                 tx=optim.adam(cfg.critic_lr)),
        target_actor_params=copy(actor_params), target_critic_params=copy(critic_params),
        obs_mean=jnp.zeros((obs_dim,), jnp.float32), obs_std=jnp.ones((obs_dim,), jnp.float32),
        bc_alpha=jnp.asarray(cfg.bc_alpha, jnp.float32), objective=objective,
        subset=int(subset), q_hat=str(q_hat),
        discount=float(cfg.discount), tau=float(cfg.tau),
        policy_noise=float(cfg.policy_noise), noise_clip=float(cfg.noise_clip),
        policy_delay=int(cfg.policy_delay), expl_noise=float(cfg.expl_noise))


# ---------------------------------------------------------------------------------------
# Networks on normalised states
# ---------------------------------------------------------------------------------------

def normalize(state: TD3, observations):
    return (observations - state.obs_mean) / state.obs_std


def mu(state: TD3, actor_params, observations):
    return state.actor.apply_fn({"params": actor_params}, normalize(state, observations))


def q_values(state: TD3, critic_params, observations, actions):
    """Every critic's Q-values [num_qs, *batch]."""
    return state.critic.apply_fn({"params": critic_params}, normalize(state, observations),
                                 actions)


# ---------------------------------------------------------------------------------------
# Losses and the step
# ---------------------------------------------------------------------------------------

def td_targets(state: TD3, batch, key: jax.Array) -> jax.Array:
    """y [B] with target smoothing (no gradient); the min over all target critics, or
    (`subset` > 0) over a random subset of them: then `key` splits into (noise, subset)."""
    next_obs = batch["next_observations"]
    a_next = mu(state, state.target_actor_params, next_obs)
    if state.subset:
        key, k_subset = jax.random.split(key)
    noise = jnp.clip(state.policy_noise * jax.random.normal(key, a_next.shape),
                     -state.noise_clip, state.noise_clip)
    a_next = jnp.clip(a_next + noise, -1.0, 1.0)
    q_all = q_values(state, state.target_critic_params, next_obs, a_next)
    if state.subset:
        q_all = q_all[jax.random.choice(k_subset, q_all.shape[0], (state.subset,),
                                        replace=False)]
    q_next = jnp.min(q_all, axis=0)
    return jax.lax.stop_gradient(batch["rewards"]
                                 + state.discount * (1.0 - batch["dones"]) * q_next)


def critic_loss(critic_params, state: TD3, batch, key: jax.Array):
    y = td_targets(state, batch, key)
    q = q_values(state, critic_params, batch["observations"], batch["actions"])
    loss = jnp.sum(jnp.mean((q - y) ** 2, axis=-1))
    return loss, {"critic_loss": loss, "q_data": jnp.mean(jnp.min(q, axis=0)),
                  "q1_data": jnp.mean(q[0]), "q_target": jnp.mean(y)}


def actor_loss(actor_params, state: TD3, critic_params, batch):
    """td3: -mean Q1(s, mu(s)); td3_bc: -lambda mean Q1 + mean (mu(s) - a)^2 with lambda =
    bc_alpha / mean|Q1|; normalized_bc: -mean Q1 / mean|Q1| + bc_alpha mean (mu(s) - a)^2
    (|Q1| at the policy's actions, no gradient through it)."""
    obs = batch["observations"]
    pi = mu(state, actor_params, obs)
    q_pi = q_values(state, critic_params, obs, pi)
    q1 = jnp.mean(q_pi, axis=0) if state.q_hat == "mean" else q_pi[0]
    if state.objective == "td3":
        loss = -jnp.mean(q1)
        return loss, {"actor_loss": loss, "q_pi": jnp.mean(q1)}
    scale = jax.lax.stop_gradient(1.0 / jnp.mean(jnp.abs(q1)))
    bc = jnp.mean((pi - batch["actions"]) ** 2)
    if state.gate_bc:
        bc = bc * jnp.mean(batch["w"])
    if state.objective == "td3_bc":
        lam = state.bc_alpha * scale
        loss = -lam * jnp.mean(q1) + bc
    else:
        lam = scale
        loss = -scale * jnp.mean(q1) + state.bc_alpha * bc
    return loss, {"actor_loss": loss, "q_pi": jnp.mean(q1), "bc_lambda": lam, "bc_mse": bc}


def _actor_and_targets(state: TD3, batch):
    (_, info), grads = jax.value_and_grad(actor_loss, has_aux=True)(
        state.actor.params, state, state.critic.params, batch)
    actor = state.actor.apply_gradients(grads=grads)
    return state.replace(
        actor=actor,
        target_actor_params=optax.incremental_update(actor.params, state.target_actor_params,
                                                     state.tau),
        target_critic_params=optax.incremental_update(
            state.critic.params, state.target_critic_params, state.tau)), info


def update(state: TD3, batch, key: jax.Array):
    """One TD3(+BC) step: the critic, then (every `policy_delay`-th step) the actor with
    the updated critic and the Polyak targets."""
    (_, c_info), grads = jax.value_and_grad(critic_loss, has_aux=True)(
        state.critic.params, state, batch, key)
    state = state.replace(critic=state.critic.apply_gradients(grads=grads))
    # Members and seeds step together: one branch for all (not a select of both).
    do_actor = stacking.lockstep(state.critic.step % state.policy_delay == 0)
    # A skipped step reports the actor loss at the current parameters (no step), so that
    # the logged means are those of the actor loss, not halved by zeros.
    state, a_info = jax.lax.cond(
        do_actor, lambda s: _actor_and_targets(s, batch),
        lambda s: (s, actor_loss(s.actor.params, s, s.critic.params, batch)[1]), state)
    a_info["bc_alpha"] = state.bc_alpha        # the weight this step used
    state = state.replace(bc_alpha=state.bc_alpha * state.bc_alpha_decay)
    return state, {**c_info, **a_info, "actor_updated": do_actor.astype(jnp.float32)}


def actor_only_update(state: TD3, batch, key: jax.Array = None):
    """One actor step with the critic frozen (no targets move): PR-FT's refinement."""
    del key
    (_, info), grads = jax.value_and_grad(actor_loss, has_aux=True)(
        state.actor.params, state, state.critic.params, batch)
    return state.replace(actor=state.actor.apply_gradients(grads=grads)), info


def members_update(members: TD3, batch, key: jax.Array):
    """Online: every member steps on the shared batch, member i with split(key, N)[i]."""
    keys = jax.random.split(key, stacking.num_stacked(members))
    return jax.vmap(update, in_axes=(0, None, 0))(members, batch, keys)


# ---------------------------------------------------------------------------------------
# Acting (stacked members [N, ...])
# ---------------------------------------------------------------------------------------

def act_eval(members: TD3, observations):
    """The mean over members of mu(s) (one member: its mu(s))."""
    return jnp.mean(jax.vmap(lambda m: mu(m, m.actor.params, observations))(members), 0)


def act(members: TD3, observations, key):
    a = act_eval(members, observations)
    noise = members.expl_noise * jax.random.normal(key, a.shape, a.dtype)
    return jnp.clip(a + noise, -1.0, 1.0)


def q_ens(members: TD3, observations, actions):
    """mean over members of the min over their critics at (s, a)."""
    q = jax.vmap(lambda m: q_values(m, m.critic.params, observations, actions))(members)
    return jnp.mean(jnp.min(q, axis=1), axis=0)


# ---------------------------------------------------------------------------------------
# Data: the state normaliser (TD3+BC)
# ---------------------------------------------------------------------------------------

def state_normalizer(observations, eps: float):
    """(mean, std + eps) of the dataset's observations over the data axis (the code's
    `normalize_states`), float32."""
    obs = np.asarray(observations, np.float64)
    return (obs.mean(0).astype(np.float32), (obs.std(0) + eps).astype(np.float32))


def with_normalizer(members: TD3, dataset, cfg) -> TD3:
    mean, std = state_normalizer(dataset.arrays["observations"], float(cfg.td3.normalizer_eps))
    return members.replace(obs_mean=jnp.broadcast_to(mean, members.obs_mean.shape),
                           obs_std=jnp.broadcast_to(std, members.obs_std.shape))


# ---------------------------------------------------------------------------------------
# Registration: td3 and td3_bc
# ---------------------------------------------------------------------------------------

def members_from_config(key, obs_dim, act_dim, cfg, objective="td3", **critics):
    """N = agent.num_members agents from the `td3` section; `critics`: num_qs, subset,
    q_hat (see `create`)."""
    return stacking.create(lambda k: create(k, obs_dim, act_dim, cfg.td3, objective,
                                            **critics), key, cfg.agent.num_members)


def check_config(cfg):
    from o2o_jax import config_checks as cc
    for f in ("actor_lr", "critic_lr", "bc_alpha", "normalizer_eps"):
        cc.positive_float(cfg, f"td3.{f}")
    for f in ("policy_noise", "noise_clip", "expl_noise"):
        cc.non_negative_float(cfg, f"td3.{f}")
    cc.positive_int(cfg, "td3.policy_delay")
    cc.in_range(cfg, "td3.tau", 0.0, 1.0, lo_open=True)
    cc.in_range(cfg, "td3.discount", 0.0, 1.0)


def _register():
    from o2o_jax import algorithm
    common = dict(offline_update=lambda cfg: update, to_online=lambda members, cfg: members,
                  online_update=lambda cfg: members_update, act=act, act_eval=act_eval,
                  q_value=q_ens, members_act_eval=act_eval, check=check_config,
                  progress_keys=("critic_loss", "q_data", "actor_loss"))
    algorithm.register(algorithm.Algorithm(
        name="td3", summary="TD3 offline and online (deterministic actor, clipped double Q, "
                            "delayed actor, target smoothing)",
        create_members=members_from_config, config_section=("td3", default_config),
        preset={"agent.num_members": 1, "online.replay": "uniform"}, **common))
    algorithm.register(algorithm.Algorithm(
        name="td3_bc", summary="TD3+BC offline and online (lambda = alpha / mean|Q| at the "
                               "policy's actions, dataset state normalisation)",
        create_members=functools.partial(members_from_config, objective="td3_bc"),
        from_data=with_normalizer,
        preset={"agent.num_members": 1, "online.replay": "uniform"}, **common))


_register()
