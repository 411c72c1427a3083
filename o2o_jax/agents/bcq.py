"""Batch-constrained deep Q-learning, BCQ (Fujimoto et al. 2019), continuous actions.

BCQ-ft in Lee et al. section 6 applies the same update offline and online; like every
baseline but SAC-ft it gets the N-ensemble (stacked members, `jax.vmap`).

Pieces of the state `BCQState` (one member; N members are stacked on a leading axis):
* a conditional VAE of the behaviour policy: encoder on concat(s, a) -> latent mean and
  log-std (clipped to [-4, 15]); decoder on concat(s, z) -> tanh action. Sampling uses
  z ~ N(0, I) clipped to [-0.5, 0.5]. Latent dim 2 |A| by default.
* a perturbation actor xi(s, a) = clip(a + phi tanh(MLP(concat(s, a))), -1, 1), its target;
* twin critics (`networks.TwinCritic`) and their targets.

Losses (all gradients at the pre-update parameters, then Polyak targets with rate tau for
the critics and the actor):
* VAE: recon + 0.5 KL, recon = mean over batch and action dims of (a_hat - a)^2,
  KL = -0.5 (1 + log sigma^2 - mu^2 - sigma^2) averaged over batch *and latent dims*
  (`kl_reduction="mean"`, the BCQ code's `.mean()`), or summed over latent dims and
  averaged over the batch (`kl_reduction="sum"`, the textbook ELBO).
* critic: for each s', n candidates a_k = xi_target(s', decode(s', z_k)), target twins,
  soft clipped double Q  y_k = lmbda min(Q1, Q2) + (1 - lmbda) max(Q1, Q2),
  y = r + gamma (1 - d) max_k y_k; loss = sum over twins of mean_b (Q_j(s, a) - y)^2.
* actor: -mean_b Q1(s, xi(s, a_vae)), a_vae = decode(s, z) without gradient.
* acting: n candidates per state, the one with the largest Q1 (stacked members: every
  member proposes n candidates, scored by the mean over members of Q1).

Deviation from the BCQ code (documented, not a knob): the code steps the VAE first and
then uses the *updated* VAE in the critic and actor losses, and the updated critic in the
actor loss; here every loss sees the pre-update parameters (the o2o_jax convention).

Key derivation: `update` splits its key into (k_vae, k_critic, k_actor); the VAE noise is
`normal(k_vae, mu.shape)`; the latent draws of the critic / actor / acting are
`clip(normal(k, obs.shape[:-1] + (n,) + (latent_dim,)), -0.5, 0.5)` (no n axis in the
actor loss).

Source values (sfujim/BCQ `continuous_BCQ/BCQ.py`): phi 0.05, lmbda 0.75, 10 candidates
in the target, 100 in `select_action`, latent 2|A|, VAE 750-750, actor and critics
400-300, Adam lr 1e-3 for all three, gamma 0.99, tau 5e-3, minibatch 100.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct
from flax.training.train_state import TrainState

from o2o_jax import networks, optim
from o2o_jax.agents import stacking

Params = Any
LOG_STD_MIN, LOG_STD_MAX = -4.0, 15.0     # VAE latent log-std clip (BCQ code)
LATENT_CLIP = 0.5                          # prior samples clipped to [-0.5, 0.5]
KL_REDUCTIONS = ("mean", "sum")


def default_config() -> ml_collections.ConfigDict:
    """BCQ's knobs with the values of the authors' code (see module docstring)."""
    c = ml_collections.ConfigDict()
    c.phi = 0.05                 # max perturbation (x max_action = 1)
    c.lmbda = 0.75               # soft clipped double-Q weight on the min
    c.n_candidates = 10          # VAE candidates per s' in the critic target
    c.n_act_candidates = 10      # candidates per state when acting (BCQ code: 100)
    c.latent_dim = ml_collections.config_dict.placeholder(int)   # None: 2 * act_dim
    c.vae_hidden_dims = (750, 750)
    c.actor_hidden_dims = (400, 300)
    c.critic_hidden_dims = (400, 300)
    c.activation = "relu"
    c.actor_lr = 1e-3
    c.critic_lr = 1e-3
    c.vae_lr = 1e-3              # torch Adam default in the BCQ code
    c.discount = 0.99
    c.tau = 5e-3                 # Polyak rate of target critics and target actor
    c.kl_reduction = "mean"      # "mean": BCQ code; "sum": sum over latent dims
    return c


# ---------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------

class VAE(nn.Module):
    """Conditional VAE: `encode(s, a) -> (mu, log_sigma)`, `decode(s, z) -> tanh action`."""
    action_dim: int
    latent_dim: int
    hidden_dims: Sequence[int]
    activation: str = "relu"

    def setup(self):
        self.encoder = networks.MLP(self.hidden_dims, self.activation)
        self.latent_mean = nn.Dense(self.latent_dim)
        self.latent_log_std = nn.Dense(self.latent_dim)
        self.decoder = networks.MLP(self.hidden_dims, self.activation)
        self.action_out = nn.Dense(self.action_dim)

    def encode(self, observations, actions):
        h = self.encoder(jnp.concatenate([observations, actions], axis=-1))
        return (self.latent_mean(h),
                jnp.clip(self.latent_log_std(h), LOG_STD_MIN, LOG_STD_MAX))

    def decode(self, observations, z):
        h = self.decoder(jnp.concatenate([observations, z], axis=-1))
        return jnp.tanh(self.action_out(h))

    def __call__(self, observations, actions, z):   # for init only
        return self.encode(observations, actions), self.decode(observations, z)


class Perturbation(nn.Module):
    """xi(s, a) = clip(a + phi tanh(MLP(concat(s, a))), -1, 1)."""
    action_dim: int
    hidden_dims: Sequence[int]
    phi: float = 0.05
    activation: str = "relu"

    @nn.compact
    def __call__(self, observations, actions):
        x = networks.MLP(self.hidden_dims, self.activation)(
            jnp.concatenate([observations, actions], axis=-1))
        delta = self.phi * jnp.tanh(nn.Dense(self.action_dim)(x))
        return jnp.clip(actions + delta, -1.0, 1.0)


# ---------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------

class BCQState(struct.PyTreeNode):
    actor: TrainState              # perturbation model xi
    target_actor_params: Params
    critic: TrainState             # twin critics
    target_critic_params: Params
    vae: TrainState
    # --- static hyperparameters ---
    latent_dim: int = struct.field(pytree_node=False, default=2)
    discount: float = struct.field(pytree_node=False, default=0.99)
    tau: float = struct.field(pytree_node=False, default=5e-3)
    lmbda: float = struct.field(pytree_node=False, default=0.75)
    n_candidates: int = struct.field(pytree_node=False, default=10)
    n_act_candidates: int = struct.field(pytree_node=False, default=10)
    kl_reduction: str = struct.field(pytree_node=False, default="mean")


def create(key: jax.Array, obs_dim: int, act_dim: int, cfg) -> BCQState:
    """One BCQ member from a `default_config()`-shaped config."""
    if cfg.kl_reduction not in KL_REDUCTIONS:
        raise ValueError(f"kl_reduction {cfg.kl_reduction!r}: allowed {KL_REDUCTIONS}")
    latent_dim = 2 * act_dim if cfg.latent_dim is None else int(cfg.latent_dim)
    k_actor, k_critic, k_vae = jax.random.split(key, 3)
    # Cached modules and optimizers: members / seeds built separately stay stackable and
    # share compilations (see networks.make, optim.adam).
    actor_def = networks.make(Perturbation, action_dim=act_dim,
                              hidden_dims=tuple(cfg.actor_hidden_dims), phi=float(cfg.phi),
                              activation=cfg.activation)
    critic_def = networks.make(networks.TwinCritic, hidden_dims=tuple(cfg.critic_hidden_dims),
                               activation=cfg.activation, layer_norm=False, num_qs=2)
    vae_def = networks.make(VAE, action_dim=act_dim, latent_dim=latent_dim,
                            hidden_dims=tuple(cfg.vae_hidden_dims), activation=cfg.activation)
    obs = jnp.zeros((1, obs_dim), jnp.float32)
    act = jnp.zeros((1, act_dim), jnp.float32)
    z = jnp.zeros((1, latent_dim), jnp.float32)
    actor_params = actor_def.init(k_actor, obs, act)["params"]
    critic_params = critic_def.init(k_critic, obs, act)["params"]
    vae_params = vae_def.init(k_vae, obs, act, z)["params"]
    return BCQState(
        actor=TrainState.create(apply_fn=actor_def.apply, params=actor_params,
                                tx=optim.adam(cfg.actor_lr)),
        target_actor_params=actor_params,
        critic=TrainState.create(apply_fn=critic_def.apply, params=critic_params,
                                 tx=optim.adam(cfg.critic_lr)),
        target_critic_params=critic_params,
        vae=TrainState.create(apply_fn=vae_def.apply, params=vae_params,
                              tx=optim.adam(cfg.vae_lr)),
        latent_dim=latent_dim,
        discount=float(cfg.discount),
        tau=float(cfg.tau),
        lmbda=float(cfg.lmbda),
        n_candidates=int(cfg.n_candidates),
        n_act_candidates=int(cfg.n_act_candidates),
        kl_reduction=str(cfg.kl_reduction),
    )


def create_members(key: jax.Array, obs_dim: int, act_dim: int, cfg, num_members: int):
    """N independent members stacked on a leading axis; member i uses key split i."""
    return stacking.create(lambda k: create(k, obs_dim, act_dim, cfg), key, num_members)


num_stacked = stacking.num_stacked


# ---------------------------------------------------------------------------------------
# Pure pieces
# ---------------------------------------------------------------------------------------

def sample_latent(key: jax.Array, batch_shape, latent_dim: int) -> jax.Array:
    """z ~ N(0, I) clipped to [-0.5, 0.5], shape [*batch_shape, latent_dim]."""
    z = jax.random.normal(key, tuple(batch_shape) + (latent_dim,))
    return jnp.clip(z, -LATENT_CLIP, LATENT_CLIP)


def decode(state: BCQState, vae_params, observations, z):
    return state.vae.apply_fn({"params": vae_params}, observations, z, method=VAE.decode)


def encode(state: BCQState, vae_params, observations, actions):
    return state.vae.apply_fn({"params": vae_params}, observations, actions,
                              method=VAE.encode)


def perturb(state: BCQState, actor_params, observations, actions):
    return state.actor.apply_fn({"params": actor_params}, observations, actions)


def candidates(state: BCQState, actor_params, vae_params, observations, key, n: int):
    """n perturbed VAE candidates per state: (obs_n, decoded, perturbed), [..., n, .]."""
    obs_n = jnp.broadcast_to(observations[..., None, :],
                             observations.shape[:-1] + (n, observations.shape[-1]))
    z = sample_latent(key, obs_n.shape[:-1], state.latent_dim)
    decoded = decode(state, vae_params, obs_n, z)
    return obs_n, decoded, perturb(state, actor_params, obs_n, decoded)


def vae_loss(vae_params, state: BCQState, batch, key: jax.Array):
    obs, actions = batch["observations"], batch["actions"]
    mu, log_std = encode(state, vae_params, obs, actions)
    z = mu + jnp.exp(log_std) * jax.random.normal(key, mu.shape)
    recon = decode(state, vae_params, obs, z)
    recon_loss = jnp.mean((recon - actions) ** 2)
    kl = -0.5 * (1.0 + 2.0 * log_std - mu ** 2 - jnp.exp(2.0 * log_std))
    kl_loss = jnp.mean(kl) if state.kl_reduction == "mean" else jnp.mean(jnp.sum(kl, -1))
    loss = recon_loss + 0.5 * kl_loss
    return loss, {"vae_loss": loss, "recon_loss": recon_loss, "kl_loss": kl_loss}


def td_targets(state: BCQState, batch, key: jax.Array) -> jax.Array:
    """y = r + gamma (1 - d) max_k [lmbda min + (1 - lmbda) max](Qbar1, Qbar2)(s', a_k)."""
    obs_n, _, next_actions = candidates(state, state.target_actor_params, state.vae.params,
                                        batch["next_observations"], key, state.n_candidates)
    q = state.critic.apply_fn({"params": state.target_critic_params}, obs_n,
                              next_actions)                                  # [2, B, n]
    soft = state.lmbda * jnp.min(q, axis=0) + (1.0 - state.lmbda) * jnp.max(q, axis=0)
    y = batch["rewards"] + state.discount * (1.0 - batch["dones"]) * jnp.max(soft, axis=-1)
    return jax.lax.stop_gradient(y)


def critic_loss(critic_params, state: BCQState, batch, key: jax.Array):
    y = td_targets(state, batch, key)
    q = state.critic.apply_fn({"params": critic_params}, batch["observations"],
                              batch["actions"])                              # [2, B]
    loss = jnp.sum(jnp.mean((q - y[None]) ** 2, axis=-1))
    return loss, {"critic_loss": loss, "q_data": jnp.mean(q), "q_target": jnp.mean(y)}


def actor_loss(actor_params, state: BCQState, batch, key: jax.Array):
    obs = batch["observations"]
    z = sample_latent(key, obs.shape[:-1], state.latent_dim)
    sampled = jax.lax.stop_gradient(decode(state, state.vae.params, obs, z))
    q1 = state.critic.apply_fn({"params": state.critic.params}, obs,
                               perturb(state, actor_params, obs, sampled))[0]
    loss = -jnp.mean(q1)
    return loss, {"actor_loss": loss, "q_pi": jnp.mean(q1)}


def update(state: BCQState, batch, key: jax.Array):
    """One BCQ step: (state, batch, key) -> (state, info); plugs into make_train_chunk."""
    k_vae, k_critic, k_actor = jax.random.split(key, 3)
    (_, vae_info), vae_grads = jax.value_and_grad(vae_loss, has_aux=True)(
        state.vae.params, state, batch, k_vae)
    (_, critic_info), critic_grads = jax.value_and_grad(critic_loss, has_aux=True)(
        state.critic.params, state, batch, k_critic)
    (_, actor_info), actor_grads = jax.value_and_grad(actor_loss, has_aux=True)(
        state.actor.params, state, batch, k_actor)
    critic = state.critic.apply_gradients(grads=critic_grads)
    actor = state.actor.apply_gradients(grads=actor_grads)
    new_state = state.replace(
        vae=state.vae.apply_gradients(grads=vae_grads),
        critic=critic,
        actor=actor,
        target_critic_params=optax.incremental_update(critic.params,
                                                      state.target_critic_params, state.tau),
        target_actor_params=optax.incremental_update(actor.params, state.target_actor_params,
                                                     state.tau),
    )
    return new_state, {**vae_info, **critic_info, **actor_info}


def members_update(members: BCQState, batch, key: jax.Array):
    """All stacked members step on one shared batch, member i with key split(key, N)[i].

    The online rule of BCQ-ft with an ensemble (the same update as offline, per member).
    For offline pretraining with one minibatch per member use
    `offline.make_train_chunk(num_steps, batch_size, bcq.update)`.
    """
    keys = jax.random.split(key, num_stacked(members))
    return jax.vmap(update, in_axes=(0, None, 0))(members, batch, keys)


# ---------------------------------------------------------------------------------------
# Acting
# ---------------------------------------------------------------------------------------

def _pick(actions, scores):
    """actions [..., m, A], scores [..., m] -> the highest-scoring action [..., A]."""
    idx = jnp.argmax(scores, axis=-1)
    return jnp.take_along_axis(actions, idx[..., None, None], axis=-2)[..., 0, :]


def act(state: BCQState, observations: jax.Array, key: jax.Array) -> jax.Array:
    """argmax over n perturbed VAE candidates of Q1; observations [..., obs_dim]."""
    obs_n, _, cands = candidates(state, state.actor.params, state.vae.params, observations,
                                 key, state.n_act_candidates)
    q1 = state.critic.apply_fn({"params": state.critic.params}, obs_n, cands)[0]
    return _pick(cands, q1)


def ensemble_act(members: BCQState, observations: jax.Array, key: jax.Array) -> jax.Array:
    """Stacked members: member i proposes n candidates with key split(key, N)[i]; all N n
    candidates are scored by the mean over members of Q1 and the best one is returned."""
    keys = jax.random.split(key, num_stacked(members))

    # `members` only lends its static fields and apply_fns; parameters are passed per member.
    def propose(actor_params, vae_params, k):
        return candidates(members, actor_params, vae_params, observations, k,
                          members.n_act_candidates)[2]

    cands = jax.vmap(propose)(members.actor.params, members.vae.params, keys)  # [N,...,n,A]
    cands = jnp.moveaxis(cands, 0, -3)                                         # [...,N,n,A]
    cands = cands.reshape(cands.shape[:-3] + (-1, cands.shape[-1]))            # [...,Nn,A]
    obs_m = jnp.broadcast_to(observations[..., None, :],
                             cands.shape[:-1] + observations.shape[-1:])
    q1 = jax.vmap(lambda p: members.critic.apply_fn({"params": p}, obs_m, cands)[0])(
        members.critic.params)                                                 # [N,...,Nn]
    return _pick(cands, jnp.mean(q1, axis=0))


def q_ens(members: BCQState, observations: jax.Array, actions: jax.Array) -> jax.Array:
    """mean over stacked members of min(Q1, Q2)(s, a), shape [*batch] (AUROC analysis)."""
    apply = members.critic.apply_fn
    q = jax.vmap(lambda p: apply({"params": p}, observations, actions))(members.critic.params)
    return jnp.mean(jnp.min(q, axis=1), axis=0)


# ---------------------------------------------------------------------------------------
# Registration: BCQ offline and online (BCQ-ft), the N members acting as one ensemble.
# ---------------------------------------------------------------------------------------

def _members(key, obs_dim, act_dim, cfg):
    return create_members(key, obs_dim, act_dim, cfg.bcq, cfg.agent.num_members)


def _update(cfg):
    return update


def _members_update(cfg):
    return members_update


def _eval_act(members, observations):
    # BCQ has no deterministic mode: a fixed key makes evaluation reproducible.
    return ensemble_act(members, observations, jax.random.PRNGKey(0))


def _register():
    from o2o_jax import algorithm
    algorithm.register(algorithm.Algorithm(
        name="bcq_ft", summary="BCQ-ft: BCQ members offline and online, online data appended",
        create_members=_members, offline_update=_update,
        to_online=lambda members, cfg: members, online_update=_members_update,
        act=ensemble_act, act_eval=_eval_act, q_value=q_ens, members_act_eval=_eval_act,
        config_section=("bcq", default_config), preset={"online.replay": "uniform"}))


_register()
