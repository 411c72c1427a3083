"""Fitted Q evaluation (Le et al. 2019) of a fixed policy, for the FQE-init analysis.

Lee et al. section 3.3: a CQL-pretrained policy pi_phi is kept, its pessimistic critics are
replaced by the non-pessimistic Q^pi learned by FQE, and {pi_phi, Q_FQE} is fine-tuned with
SAC like {pi_phi, Q_CQL}. On the `ActorCritic` state:

* `reset_critics(agent, key, cfg)`: fresh critics (and target = critic, fresh Adam state)
  for a single agent, N stacked single agents, or an ensemble agent; the actor is kept.
* `update(agent, batch, key)`: the critic step only,
    y = r + gamma (1 - d) min_j Qbar_j(s', a'),  a' ~ pi(.|s')  (one sample, no gradient),
    loss = sum_j mean_b (Q_j(s, a) - y)^2,
  then Polyak targets. No entropy term (whatever the agent's `backup_entropy`), no CQL
  term, and the actor and temperature are left untouched (bit-identical). For an ensemble
  agent pi is the moment-matched pi_E and each member bootstraps from its own target pair.

Key derivation: `update` passes its key to `sac.critic_loss` (which splits off k_target
for a' ~ pi(.|s')).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
from flax.training.train_state import TrainState

from o2o_jax import networks, optim
from o2o_jax.agents import actor_critic as ac
from o2o_jax.agents import sac
from o2o_jax.agents.actor_critic import ActorCritic


def default_config() -> ml_collections.ConfigDict:
    """FQE's own knobs (the critic architecture comes from the agent config)."""
    c = ml_collections.ConfigDict()
    c.steps = 250_000        # FQE gradient steps per member (our choice; the paper gives none)
    # The FQE critic's learning rate, width and gamma/tau are the agent config's
    # (critic_lr, hidden_dims, discount, tau): reset_critics reads the agent config.
    return c


def _evaluation_agent(agent: ActorCritic) -> ActorCritic:
    """The agent as FQE sees it: deterministic backup (and no penalty: sac.critic_loss is
    called without one)."""
    return agent.replace(backup_entropy=False)


def td_targets(agent: ActorCritic, batch, key: jax.Array) -> jax.Array:
    """FQE targets y, [B] (single) or [N, B] (ensemble)."""
    return sac.td_targets(_evaluation_agent(agent), batch, key)


def critic_loss(critic_params, agent: ActorCritic, batch, key: jax.Array):
    return sac.critic_loss(critic_params, _evaluation_agent(agent), batch, key)


def update(agent: ActorCritic, batch, key: jax.Array):
    """One FQE step: critic gradient at the pre-update parameters, then Polyak targets."""
    (_, info), grads = jax.value_and_grad(critic_loss, has_aux=True)(
        agent.critic.params, agent, batch, key)
    new_agent = agent.replace(critic=agent.critic.apply_gradients(grads=grads))
    return ac.soft_update(new_agent), info


# ---------------------------------------------------------------------------------------
# Fresh critics for a pretrained agent.
# ---------------------------------------------------------------------------------------

def _dims(agent: ActorCritic):
    """(num_stacked or 0, obs_dim, act_dim) read off the parameter shapes."""
    mean_kernel = agent.actor.params["mean"]["kernel"]
    act_dim = mean_kernel.shape[-1]
    first = agent.critic.params["VmapCritic_0"]["MLP_0"]["Dense_0"]["kernel"]  # [.., 2, in, h]
    obs_dim = first.shape[-2] - act_dim
    stacked = mean_kernel.shape[0] if mean_kernel.ndim == 3 else 0
    return stacked, obs_dim, act_dim


@functools.lru_cache(maxsize=None)
def _critic_init(obs_dim: int, act_dim: int, hidden_dims: tuple, activation: str,
                 layer_norm: bool, lr: float):
    """jit(key -> fresh critic TrainState), built as `ac.create` builds its critic from
    the same key (one compiled function per architecture)."""
    # The same cached module / optimizer objects as ac.create: the reset agent keeps its
    # pytree structure (stackable, and jitted updates are not recompiled).
    critic_def = networks.make(networks.TwinCritic, hidden_dims=hidden_dims,
                               activation=activation, layer_norm=layer_norm, num_qs=2)
    tx = optim.adam(lr)

    def init(key):
        _, k_critic = jax.random.split(key)        # ac.create: (k_actor, k_critic)
        params = critic_def.init(k_critic, jnp.zeros((1, obs_dim), jnp.float32),
                                 jnp.zeros((1, act_dim), jnp.float32))["params"]
        return TrainState.create(apply_fn=critic_def.apply, params=params, tx=tx)

    return jax.jit(init)


def _copy(tree):
    # Give every leaf its own buffer (critic and target start equal) so that the state
    # can be donated.
    return jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), tree)


def reset_critics(agent: ActorCritic, key: jax.Array, cfg) -> ActorCritic:
    """Re-initialise critics and targets (and the critic optimiser) of a pretrained agent.

    `cfg` is the agent config (hidden_dims, activation, critic_layer_norm, critic_lr); the
    new critic is the one `ac.create(key, ...)` would make. Works on a single agent, on N
    stacked single agents (offline members; member i is initialised from
    `split(key, N)[i]`, per-member optimizer states and step counters), and on an ensemble
    agent (members == N; same per-member keys, one optimizer state over all members).
    The actor, temperature and static fields are kept.
    """
    stacked, obs_dim, act_dim = _dims(agent)
    init = _critic_init(obs_dim, act_dim, tuple(cfg.hidden_dims), cfg.activation,
                        cfg.critic_layer_norm, float(cfg.critic_lr))
    if stacked == 0:
        critic = init(key)
    else:
        critics = [init(k) for k in jax.random.split(key, stacked)]
        critic = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *critics)
        if agent.members > 0:   # ensemble agent: one TrainState over stacked parameters
            critic = TrainState.create(apply_fn=critic.apply_fn, params=critic.params,
                                       tx=critic.tx)
    critic = _copy(critic)
    return agent.replace(critic=critic, target_critic_params=_copy(critic.params))


# ---------------------------------------------------------------------------------------
# Registration: FQE-init (paper section 3.3), the method with FQE-fitted critics.
# ---------------------------------------------------------------------------------------

def _reset(members, key, cfg):
    """FQE-init's members are CQL members: refit their actor-critics' critics."""
    return members.replace(ac=reset_critics(members.ac, key, cfg.agent))


def _update_cql_member(state, batch, key):
    new_ac, info = update(state.ac, batch, key)
    return state.replace(ac=new_ac), info


def _update(cfg):
    return _update_cql_member


def _check(cfg):
    from o2o_jax import config_checks
    from o2o_jax.agents import off2on
    config_checks.positive_int(cfg, "fqe.steps")
    off2on.check_sac_online(cfg)


def _register():
    from o2o_jax import algorithm
    from o2o_jax.agents import off2on
    algorithm.register(dataclasses.replace(
        off2on.OFF2ON, name="fqe_init",
        summary="FQE-init: off2on with the critics re-initialised after pretraining and "
                "fitted to Q^pi of the pretrained policy (non-pessimistic)",
        post_offline=algorithm.PostOffline(phase="fqe", label="FQE critics",
                                           steps_field="fqe.steps", reset=_reset,
                                           update=_update),
        config_section=("fqe", default_config), check=_check))


_register()
