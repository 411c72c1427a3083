"""ACA, actor-critic alignment (Yu & Zhang, ICML 2023): rebuild the critic from the
offline actor so that SAC's optimal policy of the new Q is exactly that actor, then run
plain SAC online on online data only.

Spec: shared/spec/methods.md C4 (the seed's slides; code not located: the constants and
choices marked "ours" are config fields or documented here).

1. Offline: SAC with maximum likelihood on the data in the actor,
       L_pi = mean_b [lambda (alpha log pi(b|s) - Q(s, b)) - log pi(a|s)],  b ~ pi(.|s),
   lambda = `aca.lambda_q` / mean_b |Q(s, b)| (ours: the spec leaves lambda open; TD3+BC's
   normalisation keeps the two terms on one scale), Q the min of the twin critics; SAC's
   critic and temperature.
2. Alignment (a phase after pretraining, `aca.align_steps` updates, ours 100k): with
   pi_0 and alpha_0 the pretrained actor and temperature, frozen, the critic is
   Q(s, a) = alpha_0 log pi_0(a|s) + Z(s) (the spec's "ours": alpha_0 log pi_0 for exact
   agreement with SAC at temperature alpha_0). Its Bellman residual under pi_0,
   Q(s, a) - r - gamma (1 - d) E_{a'~pi_0}[Qbar(s', a') - alpha_0 log pi_0(a'|s')], has the
   log pi_0(a'|s') terms cancel, so Z regresses to
       y = r - alpha_0 log pi_0(a|s) + gamma (1 - d) Zbar(s')
   with a Polyak target Zbar (rate `aca.z_tau`).
3. Online: Q_i(s, a) = alpha_0 log pi_0(a|s) + R_i(s, a), R_i = Z(s) + DeltaR_i(s, a), the
   last layer of DeltaR zero at the start (so R = Z: ours, the spec's reading of "R
   initialised from Z"); the actor starts at pi_0, alpha at alpha_0 (preset
   `online.reset_temperature` False); plain SAC, no offline data (`online_only`). pi_0 and
   alpha_0 sit in the critic's parameters behind a stop-gradient (their Adam steps are
   exactly zero) and are copied into the target critic after every step, so they stay
   frozen bit for bit.
One member (N = 1): the alignment is defined for one actor.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct
from flax.training.train_state import TrainState

from o2o_jax import distributions as dist
from o2o_jax import networks, optim
from o2o_jax.agents import actor_critic as ac
from o2o_jax.agents import ensemble, sac, stacking
from o2o_jax.agents.actor_critic import ActorCritic

FROZEN = ("pi0", "alpha0")


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.lambda_q = 2.5             # ours: lambda = lambda_q / mean|Q(s, b)|
    c.align_steps = 100_000      # ours
    c.z_lr = 3e-4
    c.z_tau = 5e-3
    return c


class AlignedCritic(nn.Module):
    """Q_i(s, a) = alpha_0 log pi_0(a|s) + Z(s) + DeltaR_i(s, a), [num_qs, *batch]; pi_0
    (`pi0`, a TanhGaussianActor) and alpha_0 (`alpha0`) without gradient to themselves
    (the gradient to the action flows)."""
    action_dim: int
    hidden_dims: tuple
    activation: str = "relu"
    actor_layer_norm: bool = False
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    mean_clip: float = None
    num_qs: int = 2

    @nn.compact
    def __call__(self, observations, actions):
        mean, log_std = networks.TanhGaussianActor(
            self.action_dim, self.hidden_dims, self.activation, self.actor_layer_norm,
            self.log_std_min, self.log_std_max, self.mean_clip, name="pi0")(observations)
        log_pi0 = dist.log_prob(jax.lax.stop_gradient(mean), jax.lax.stop_gradient(log_std),
                                actions)
        alpha0 = jax.lax.stop_gradient(self.param("alpha0", nn.initializers.ones, ()))
        z = networks.ValueNet(self.hidden_dims, self.activation, name="z")(observations)
        delta = networks.TwinCritic(self.hidden_dims, self.activation, num_qs=self.num_qs,
                                    name="delta")(observations, actions)
        return alpha0 * log_pi0 + z + delta


class ACA(struct.PyTreeNode):
    """One member: the SAC+MLE actor-critic, Z and its target, DeltaR's initial weights."""
    ac: ActorCritic
    z: TrainState
    z_target_params: object
    delta_params: object
    lambda_q: float = struct.field(pytree_node=False, default=2.5)
    z_tau: float = struct.field(pytree_node=False, default=5e-3)


def aligned_def(act_dim: int, agent_cfg):
    return networks.make(
        AlignedCritic, action_dim=act_dim, hidden_dims=tuple(agent_cfg.hidden_dims),
        activation=agent_cfg.activation, actor_layer_norm=agent_cfg.actor_layer_norm,
        log_std_min=float(agent_cfg.log_std_min), log_std_max=float(agent_cfg.log_std_max),
        mean_clip=agent_cfg.mean_clip)


def create(key, obs_dim: int, act_dim: int, cfg) -> ACA:
    k_ac, k_z, k_delta = jax.random.split(key, 3)
    a = cfg.agent
    value_def = networks.make(networks.ValueNet, hidden_dims=tuple(a.hidden_dims),
                              activation=a.activation)
    delta_def = networks.make(networks.TwinCritic, hidden_dims=tuple(a.hidden_dims),
                              activation=a.activation, num_qs=2)
    obs = jnp.zeros((1, obs_dim), jnp.float32)
    z_params = value_def.init(k_z, obs)["params"]
    delta = delta_def.init(k_delta, obs, jnp.zeros((1, act_dim), jnp.float32))["params"]
    last = delta["VmapCritic_0"]["Dense_0"]           # DeltaR's output layer: zero
    delta = {**delta, "VmapCritic_0": {**delta["VmapCritic_0"], "Dense_0": {
        k: jnp.zeros_like(v) for k, v in last.items()}}}
    return ACA(ac=ac.create(k_ac, obs_dim, act_dim, a),
               z=TrainState.create(apply_fn=value_def.apply, params=z_params,
                                   tx=optim.adam(cfg.aca.z_lr)),
               z_target_params=jax.tree_util.tree_map(jnp.copy, z_params),
               delta_params=delta, lambda_q=float(cfg.aca.lambda_q),
               z_tau=float(cfg.aca.z_tau))


def create_members(key, obs_dim, act_dim, cfg):
    return stacking.create(lambda k: create(k, obs_dim, act_dim, cfg), key,
                           cfg.agent.num_members)


# ---------------------------------------------------------------------------------------
# 1. Offline: SAC + maximum likelihood
# ---------------------------------------------------------------------------------------

def actor_loss(actor_params, agent: ActorCritic, batch, key, lambda_q: float):
    obs = batch["observations"]
    mean, log_std = ac.policy(agent, actor_params, obs)
    b, log_pb = dist.sample(key, mean, log_std)
    q = ac.conservative_q(agent, ac.q_values(agent, agent.critic.params, obs, b))
    lam = jax.lax.stop_gradient(lambda_q / jnp.mean(jnp.abs(q)))
    alpha = jax.lax.stop_gradient(agent.alpha)
    log_p_data = dist.log_prob(mean, log_std, batch["actions"])
    loss = jnp.mean(lam * (alpha * log_pb - q)) - jnp.mean(log_p_data)
    return loss, {"actor_loss": loss, "q_pi": jnp.mean(q),
                  "log_prob_data": jnp.mean(log_p_data), "aca_lambda": lam,
                  "log_probs": log_pb}


def offline_update(state: ACA, batch, key):
    agent = state.ac
    k_critic, k_actor = jax.random.split(key)
    (_, c_info), c_grads = jax.value_and_grad(sac.critic_loss, has_aux=True)(
        agent.critic.params, agent, batch, k_critic)
    (_, a_info), a_grads = jax.value_and_grad(actor_loss, has_aux=True)(
        agent.actor.params, agent, batch, k_actor, state.lambda_q)
    log_probs = a_info.pop("log_probs")
    t_loss, t_grads = jax.value_and_grad(sac.temperature_loss)(agent.temp.params, agent,
                                                               log_probs)
    agent = ac.soft_update(agent.replace(
        critic=agent.critic.apply_gradients(grads=c_grads),
        actor=agent.actor.apply_gradients(grads=a_grads),
        temp=agent.temp.apply_gradients(grads=t_grads)))
    return state.replace(ac=agent), {**c_info, **a_info, "alpha": state.ac.alpha,
                                     "temperature_loss": t_loss}


# ---------------------------------------------------------------------------------------
# 2. Alignment: fit Z
# ---------------------------------------------------------------------------------------

def z_loss(z_params, state: ACA, batch):
    agent = state.ac
    mean, log_std = ac.policy(agent, agent.actor.params, batch["observations"])
    log_pi0 = dist.log_prob(mean, log_std, batch["actions"])
    next_z = state.z.apply_fn({"params": state.z_target_params}, batch["next_observations"])
    y = jax.lax.stop_gradient(batch["rewards"] - agent.alpha * log_pi0
                              + agent.discount * (1.0 - batch["dones"]) * next_z)
    z = state.z.apply_fn({"params": z_params}, batch["observations"])
    loss = jnp.mean((z - y) ** 2)
    return loss, {"z_loss": loss, "z": jnp.mean(z), "z_target": jnp.mean(y)}


def align_update(state: ACA, batch, key=None):
    del key
    (_, info), grads = jax.value_and_grad(z_loss, has_aux=True)(state.z.params, state, batch)
    z = state.z.apply_gradients(grads=grads)
    return state.replace(z=z, z_target_params=optax.incremental_update(
        z.params, state.z_target_params, state.z_tau)), info


def _align_reset(members: ACA, key, cfg) -> ACA:
    del key, cfg
    return members


# ---------------------------------------------------------------------------------------
# 3. Online: the aligned critic and plain SAC
# ---------------------------------------------------------------------------------------

def aligned_params(member: ACA):
    """The aligned critic's parameters from a (stacked) member."""
    return {"pi0": member.ac.actor.params,
            "alpha0": member.ac.temp.apply_fn({"params": member.ac.temp.params}),
            "z": member.z.params, "delta": member.delta_params}


def to_online(members: ACA, cfg) -> ActorCritic:
    critic_def = aligned_def(members.ac.actor.params["mean"]["kernel"].shape[-1], cfg.agent)
    params = jax.vmap(aligned_params)(members)
    critic = jax.vmap(lambda p: TrainState.create(apply_fn=critic_def.apply, params=p,
                                                  tx=optim.adam(cfg.agent.critic_lr)))(params)
    agent = members.ac.replace(critic=critic,
                               target_critic_params=jax.tree_util.tree_map(jnp.copy, params))
    return ensemble.to_online(agent, cfg)


def online_update(agent: ActorCritic, batch, key):
    """SAC; pi_0 and alpha_0 copied back into the target critic (Polyak would round)."""
    agent, info = sac.update(agent, batch, key)
    target = dict(agent.target_critic_params)
    target.update({k: agent.critic.params[k] for k in FROZEN})
    return agent.replace(target_critic_params=target), info


def _check(cfg):
    from o2o_jax import config_checks as cc
    cc.require(cfg, "agent.num_members", cfg.agent.num_members == 1,
               "must be 1 for algo 'aca' (the alignment rebuilds the critic of one actor)")
    cc.positive_float(cfg, "aca.lambda_q")
    cc.non_negative_int(cfg, "aca.align_steps")
    cc.positive_float(cfg, "aca.z_lr")
    cc.in_range(cfg, "aca.z_tau", 0.0, 1.0, lo_open=True)
    cc.require(cfg, "online.replay", cfg.online.replay == "online_only",
               "must be 'online_only' for algo 'aca' (it fine-tunes without offline data)")


def _register():
    from o2o_jax import algorithm
    algorithm.register(algorithm.Algorithm(
        name="aca", summary="ACA: SAC+MLE offline, Q re-parameterised as alpha_0 log pi_0 "
                            "+ Z and Z fitted, then plain SAC on online data only",
        create_members=create_members, offline_update=lambda cfg: offline_update,
        post_offline=algorithm.PostOffline(phase="align", label="ACA alignment (Z fit)",
                                           steps_field="aca.align_steps",
                                           reset=_align_reset,
                                           update=lambda cfg: align_update),
        to_online=to_online, online_update=lambda cfg: online_update, act=ensemble.act,
        act_eval=ensemble.act_eval, q_value=ensemble.q_ens,
        members_act_eval=lambda m, obs: ensemble.members_policy_ensemble(m.ac, obs),
        config_section=("aca", default_config),
        preset={"agent.num_members": 1, "online.replay": "online_only",
                "online.reset_temperature": False, "agent.backup_entropy": True,
                "agent.bc_steps": 0},
        check=_check, progress_keys=("critic_loss", "actor_loss", "alpha")))


_register()
