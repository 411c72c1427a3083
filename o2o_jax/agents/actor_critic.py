"""The actor-critic state shared by every SAC-family agent (SAC, CQL, the online ensemble).

`ActorCritic` is a frozen pytree (rlpd style): train states for actor, twin critics and
temperature, target critic parameters, and the shared static hyperparameters as
`pytree_node=False` fields. A method's own knobs are not here: CQL's live in `cql.CQL`.

Two shapes of the same state:
* a single agent (`members == 0`): unstacked parameters. N independent offline CQL members
  are N such states stacked on a leading axis and updated with `jax.vmap`.
* an ensemble agent (`members == N`): the same stacked parameters held as one agent that
  acts through the moment-matched ensemble policy (paper eq. 5) and whose Q-values carry
  a leading member axis. Built from stacked members by `o2o_jax.agents.ensemble`.

`policy` and `q_values` hide the difference, so the losses in `sac.py` / `cql.py` are
written once for both.
"""
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct
from flax.training.train_state import TrainState

from o2o_jax import distributions as dist
from o2o_jax import networks, optim

Params = Any


class ActorCritic(struct.PyTreeNode):
    actor: TrainState
    critic: TrainState
    target_critic_params: Params
    temp: TrainState              # log-temperature alpha (networks.Temperature)
    # --- static hyperparameters (what every actor-critic method shares; a method's own
    # knobs live in its own state, e.g. cql.CQL) ---
    members: int = struct.field(pytree_node=False, default=0)
    discount: float = struct.field(pytree_node=False, default=0.99)
    tau: float = struct.field(pytree_node=False, default=5e-3)
    target_entropy: float = struct.field(pytree_node=False, default=-1.0)
    backup_entropy: bool = struct.field(pytree_node=False, default=True)
    # Exploration of an ensemble agent (`ensemble.act`): 0 = one sample of pi_E (the
    # paper's rule); lambda > 0 = the public rerun fork's optimistic pick among the
    # members' own samples (`ensemble.ucb_act`).
    explore_ucb: float = struct.field(pytree_node=False, default=0.0)
    # How a single agent's actor reduces its critics: "min" (twins; SAC, CQL) or "mean"
    # (REDQ's ensemble of `num_qs` critics).
    actor_q: str = struct.field(pytree_node=False, default="min")

    @property
    def alpha(self) -> jax.Array:
        return self.temp.apply_fn({"params": self.temp.params})


def default_config() -> ml_collections.ConfigDict:
    """The `agent` config section: networks, optimisers and loss knobs of every SAC-family
    agent, and CQL's knobs (cql_*, bc_steps, read by `cql.create` into its own state).
    Defaults are the paper-scale reference values of shared/spec/off2on.md."""
    c = ml_collections.ConfigDict()
    c.num_members = 5            # N: ensemble size
    c.hidden_dims = (256, 256)
    c.activation = "relu"
    c.actor_layer_norm = False
    c.critic_layer_norm = False
    c.log_std_min = -20.0        # official CQL code: -5
    c.log_std_max = 2.0
    c.mean_clip = ml_collections.config_dict.placeholder(float)   # official CQL code: 9.0
    c.actor_lr = 1e-4
    c.critic_lr = 3e-4
    c.temp_lr = 1e-4             # = policy lr
    c.init_temperature = 1.0
    c.target_entropy = ml_collections.config_dict.placeholder(float)  # None: -|A|
    c.discount = 0.99
    c.tau = 5e-3
    # CQL (offline). cql_weight is alpha_cql; 0 turns the penalty off (plain SAC).
    c.backup_entropy = False     # CQL reference: deterministic backup offline
    c.cql_weight = 5.0
    c.cql_n_actions = 10
    c.cql_temp = 1.0
    c.cql_lagrange = False
    c.cql_target_action_gap = 10.0
    c.cql_lagrange_init = 1.0
    c.cql_lagrange_lr = 3e-4
    c.bc_steps = 40_000          # policy_eval_start: BC warm start of the actor
    return c


def create(key: jax.Array, obs_dim: int, act_dim: int, cfg, num_qs: int = 2,
           actor_q: str = "min") -> ActorCritic:
    """Initialise one agent from an agent config (see configs/base.py `agent` section);
    `num_qs` critics (REDQ: 10), reduced for the actor by `actor_q`."""
    k_actor, k_critic = jax.random.split(key)
    hidden = tuple(cfg.hidden_dims)
    actor_def = networks.make(
        networks.TanhGaussianActor, action_dim=act_dim, hidden_dims=hidden,
        activation=cfg.activation, layer_norm=cfg.actor_layer_norm,
        log_std_min=float(cfg.log_std_min), log_std_max=float(cfg.log_std_max),
        mean_clip=cfg.mean_clip)
    critic_def = networks.make(networks.TwinCritic, hidden_dims=hidden,
                               activation=cfg.activation, layer_norm=cfg.critic_layer_norm,
                               num_qs=int(num_qs))
    obs = jnp.zeros((1, obs_dim), jnp.float32)
    act = jnp.zeros((1, act_dim), jnp.float32)
    actor_params = actor_def.init(k_actor, obs)["params"]
    critic_params = critic_def.init(k_critic, obs, act)["params"]
    temp_def = networks.make(networks.Temperature, initial_value=float(cfg.init_temperature))
    target_entropy = (-float(act_dim) if cfg.target_entropy is None
                      else float(cfg.target_entropy))
    return ActorCritic(
        actor=TrainState.create(apply_fn=actor_def.apply, params=actor_params,
                                tx=optim.adam(cfg.actor_lr)),
        critic=TrainState.create(apply_fn=critic_def.apply, params=critic_params,
                                 tx=optim.adam(cfg.critic_lr)),
        # Own buffers (the state is donated; an eager call would otherwise alias the two).
        target_critic_params=jax.tree_util.tree_map(jnp.copy, critic_params),
        temp=TrainState.create(apply_fn=temp_def.apply,
                               params=temp_def.init(jax.random.PRNGKey(0))["params"],
                               tx=optim.adam(cfg.temp_lr)),
        members=0,
        discount=float(cfg.discount),
        tau=float(cfg.tau),
        target_entropy=target_entropy,
        backup_entropy=bool(cfg.backup_entropy),
        actor_q=str(actor_q),
    )


# ---------------------------------------------------------------------------------------
# Policy and Q-values, written once for a single agent and for a stacked ensemble.
# ---------------------------------------------------------------------------------------

def policy(agent: ActorCritic, actor_params: Params, observations: jax.Array):
    """Pre-tanh (mean, log_std) of the agent's policy at `observations` [..., obs_dim].

    For an ensemble agent this is the moment-matched ensemble policy of paper eq. 5,
    differentiable in all members' parameters.
    """
    if agent.members == 0:
        return agent.actor.apply_fn({"params": actor_params}, observations)
    return dist.ensemble_moments(*member_policies(agent, actor_params, observations))


def member_policies(agent: ActorCritic, actor_params: Params, observations: jax.Array):
    """Each member's own pre-tanh (mean, log_std) at `observations`: [N, *batch, act_dim]
    (the stacked actor parameters applied member by member)."""
    apply = agent.actor.apply_fn
    return jax.vmap(lambda p: apply({"params": p}, observations))(actor_params)


def q_values(agent: ActorCritic, critic_params: Params, observations: jax.Array,
             actions: jax.Array) -> jax.Array:
    """Twin Q-values, shape [2, *batch] (single) or [N, 2, *batch] (ensemble).

    `observations` [*batch, obs_dim] and `actions` [*batch, act_dim] may have any batch
    shape, e.g. [B, n, .] to score n actions per state.
    """
    apply = agent.critic.apply_fn
    if agent.members == 0:
        return apply({"params": critic_params}, observations, actions)
    return jax.vmap(lambda p: apply({"params": p}, observations, actions))(critic_params)


def conservative_q(agent: ActorCritic, q: jax.Array) -> jax.Array:
    """Min over twin critics (with `actor_q == "mean"`: the mean over the critics), then
    (ensemble) mean over members: Q_ens of spec section 2.

    `q` is `q_values` output; returns [*batch].
    """
    reduce = jnp.mean if agent.actor_q == "mean" else jnp.min
    if agent.members == 0:
        return reduce(q, axis=0)
    return jnp.mean(reduce(q, axis=1), axis=0)


def member_twin_min(agent: ActorCritic, q: jax.Array) -> jax.Array:
    """Min over the agent's critics only (the twins; all `num_qs` of a CQL-N agent):
    [*batch] (single) or [N, *batch] (ensemble)."""
    return jnp.min(q, axis=0 if agent.members == 0 else 1)


def twin_axis(agent: ActorCritic) -> int:
    return 0 if agent.members == 0 else 1


def soft_update(agent: ActorCritic) -> ActorCritic:
    """Polyak-average the target critics towards the online critics (rate tau)."""
    new_target = optax.incremental_update(agent.critic.params, agent.target_critic_params,
                                          agent.tau)
    return agent.replace(target_critic_params=new_target)


def act(agent: ActorCritic, observations: jax.Array, key: Optional[jax.Array] = None):
    """Action for the environment: a sample if `key` is given, else tanh(mean)."""
    mean, log_std = policy(agent, agent.actor.params, observations)
    if key is None:
        return dist.mode(mean)
    actions, _ = dist.sample(key, mean, log_std)
    return actions
