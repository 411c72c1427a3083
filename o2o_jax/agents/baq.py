"""BAQ, behaviour-adaptive Q-learning: a behaviour-cloning model of the offline data as
the reference, pulled towards where the policy deviates and is uncertain, relaxed as
online experience accumulates.

Spec: shared/spec/methods.md C5, **known from its abstract and a third-party summary
only**: this file is the spec's *reading*, and its constants (lambda_0, k, T_relax) are
unknown, so ours are config fields and nothing here reproduces a published number.

* Offline: CQL members (`agents/cql.py`, as Off2OnRL) and, with each, a BC model pi_BC
  (a tanh-Gaussian policy, `networks.TanhGaussianActor`) fitted by maximum likelihood on
  the data (-mean log pi_BC(a|s)); frozen online.
* Online: SAC on the ensemble agent (no CQL term) with
  - the actor loss L_SAC + lambda_t u(s) ||mu_pi(s) - mu_BC(s)||^2, mu the tanh of the
    pre-tanh means, u(s) the std over the critics (members x twins) of Q(s, mu_pi(s))
    divided by its batch mean, lambda_t = lambda_0 max(0, 1 - t / T_relax), t the online
    update count (its own counter; T_relax 0: the online budget);
  - the critic's squared TD errors weighted by w = exp(-k ||mu_pi(s) - mu_BC(s)||^2);
  - prioritized replay by BC divergence (`online.replay = "prioritized"`): the offline
    items start at ||a - mu_BC(s)||^2 + eps (`offline_priorities`), new online items at
    the running maximum, and each drawn item's priority becomes that divergence.
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections
from flax import struct
from flax.training.train_state import TrainState

from o2o_jax import distributions as dist
from o2o_jax import networks, optim
from o2o_jax.agents import actor_critic as ac
from o2o_jax.agents import cql, ensemble, sac, stacking


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.lambda0 = 1.0              # ours (unknown)
    c.k = 1.0                    # ours (unknown)
    c.t_relax = 0                # ours: 0 = the run's online updates
    c.priority_eps = 1e-3
    c.bc_lr = 3e-4
    return c


class BAQ(struct.PyTreeNode):
    cql: cql.CQL                 # offline: a CQL member; online: its ensemble agent inside
    bc: TrainState               # pi_BC
    step: jax.Array              # online updates so far (lambda_t's t)
    lambda0: float = struct.field(pytree_node=False, default=1.0)
    k: float = struct.field(pytree_node=False, default=1.0)
    t_relax: float = struct.field(pytree_node=False, default=1.0)
    priority_eps: float = struct.field(pytree_node=False, default=1e-3)


def create(key, obs_dim, act_dim, cfg) -> BAQ:
    k_cql, k_bc = jax.random.split(key)
    a = cfg.agent
    bc_def = networks.make(networks.TanhGaussianActor, action_dim=act_dim,
                           hidden_dims=tuple(a.hidden_dims), activation=a.activation,
                           log_std_min=float(a.log_std_min), log_std_max=float(a.log_std_max))
    params = bc_def.init(k_bc, jnp.zeros((1, obs_dim), jnp.float32))["params"]
    b = cfg.baq
    return BAQ(cql=cql.create(k_cql, obs_dim, act_dim, a),
               bc=TrainState.create(apply_fn=bc_def.apply, params=params,
                                    tx=optim.adam(b.bc_lr)),
               step=jnp.zeros((), jnp.int32),
               lambda0=float(b.lambda0), k=float(b.k), priority_eps=float(b.priority_eps))


def create_members(key, obs_dim, act_dim, cfg):
    return stacking.create(lambda k: create(k, obs_dim, act_dim, cfg), key,
                           cfg.agent.num_members)


def bc_mode(state: BAQ, observations):
    return jnp.tanh(state.bc.apply_fn({"params": state.bc.params}, observations)[0])


def bc_loss(params, state: BAQ, batch):
    mean, log_std = state.bc.apply_fn({"params": params}, batch["observations"])
    loss = -jnp.mean(dist.log_prob(mean, log_std, batch["actions"]))
    return loss, {"bc_loss": loss}


def offline_update(state: BAQ, batch, key):
    new_cql, info = cql.update(state.cql, batch, key)
    (_, b_info), grads = jax.value_and_grad(bc_loss, has_aux=True)(state.bc.params, state,
                                                                   batch)
    return state.replace(cql=new_cql, bc=state.bc.apply_gradients(grads=grads)), {
        **info, **b_info}


# ---------------------------------------------------------------------------------------
# Online
# ---------------------------------------------------------------------------------------

def relax(state: BAQ, step) -> jax.Array:
    """lambda_t = lambda_0 max(0, 1 - t / T_relax)."""
    return state.lambda0 * jnp.maximum(0.0, 1.0 - step / state.t_relax)


def gated_bc(state: BAQ, agent, batch, mean, log_std):
    """lambda_t u(s) ||tanh(mean) - mu_BC(s)||^2, u the critics' std at the policy's mode
    over its batch mean (no gradient through u)."""
    obs = batch["observations"]
    mu = jnp.tanh(mean)
    q = ac.q_values(agent, agent.critic.params, obs, jax.lax.stop_gradient(mu))
    spread = jnp.std(q.reshape((-1,) + q.shape[-1:]), axis=0)                 # [B]
    u = jax.lax.stop_gradient(spread / (jnp.mean(spread) + 1e-8))
    dev = jnp.sum((mu - bc_mode(state, obs)) ** 2, axis=-1)
    lam = relax(state, state.step)
    loss = lam * jnp.mean(u * dev)
    return loss, {"baq_bc_term": loss, "baq_lambda": lam, "baq_deviation": jnp.mean(dev)}


def weighted_target(state: BAQ, agent, batch, key):
    """(y, w): SAC's target and w = exp(-k ||mu_pi(s) - mu_BC(s)||^2)."""
    y = sac.td_targets(agent, batch, key)
    obs = batch["observations"]
    mu = ac.act(agent, obs)
    w = jnp.exp(-state.k * jnp.sum((mu - bc_mode(state, obs)) ** 2, axis=-1))
    return y, jax.lax.stop_gradient(w)


def online_update(state: BAQ, batch, key):
    agent = state.cql.ac
    new_ac, info = sac.update(agent, batch, key,
                              target_fn=functools.partial(weighted_target, state),
                              actor_extra=functools.partial(gated_bc, state))
    dev = jnp.sum((batch["actions"] - bc_mode(state, batch["observations"])) ** 2, axis=-1)
    info["priorities"] = dev + state.priority_eps
    return state.replace(cql=state.cql.replace(ac=new_ac), step=state.step + 1), info


def offline_priorities(state: BAQ, offline_data, chunk: int = 8192):
    """||a - mu_BC(s)||^2 + eps of every offline item [M], in chunks (the 'prioritized'
    replay's starting priorities of the offline data)."""
    obs, act = offline_data["observations"], offline_data["actions"]
    m = obs.shape[0]
    pad = -m % chunk
    obs = jnp.concatenate([obs, jnp.zeros((pad,) + obs.shape[1:], obs.dtype)])
    act = jnp.concatenate([act, jnp.zeros((pad,) + act.shape[1:], act.dtype)])
    dev = jax.lax.map(lambda xs: jnp.sum((xs[1] - bc_mode(state, xs[0])) ** 2, -1),
                      (obs.reshape((-1, chunk) + obs.shape[1:]),
                       act.reshape((-1, chunk) + act.shape[1:])))
    return dev.reshape(-1)[:m] + state.priority_eps


def to_online(members: BAQ, cfg) -> BAQ:
    from o2o_jax import online
    first = stacking.member(members, 0)
    t_relax = cfg.baq.t_relax or online.total_updates(cfg.online)
    return first.replace(cql=first.cql.replace(ac=cql.to_ensemble_agent(members.cql, cfg)),
                         bc=first.bc, step=jnp.zeros((), jnp.int32),
                         t_relax=float(max(t_relax, 1)))


def _act(state: BAQ, observations, key):
    return ensemble.act(state.cql.ac, observations, key)


def _act_eval(state: BAQ, observations):
    return ensemble.act_eval(state.cql.ac, observations)


def _q(state: BAQ, observations, actions):
    return ensemble.q_ens(state.cql.ac, observations, actions)


def _check(cfg):
    from o2o_jax import config_checks as cc
    from o2o_jax.agents import off2on
    cc.require(cfg, "agent.num_members", cfg.agent.num_members == 1,
               "must be 1 for algo 'baq' (one BC reference model)")
    for f in ("lambda0", "k", "priority_eps"):
        cc.non_negative_float(cfg, f"baq.{f}")
    cc.positive_float(cfg, "baq.bc_lr")
    cc.non_negative_int(cfg, "baq.t_relax")
    cc.require(cfg, "online.replay", cfg.online.replay in ("prioritized", "uniform"),
               "must be 'prioritized' (BAQ's BC-divergence replay) or 'uniform' for algo "
               "'baq'")
    off2on.check_sac_online(cfg)


def _register():
    from o2o_jax import algorithm
    algorithm.register(algorithm.Algorithm(
        name="baq", summary="BAQ (our reading of the abstract): CQL + a BC model offline; "
                            "online SAC with an uncertainty-gated BC pull that relaxes, "
                            "BC-weighted TD and BC-divergence priorities",
        create_members=create_members, offline_update=lambda cfg: offline_update,
        to_online=to_online, online_update=lambda cfg: online_update, act=_act,
        act_eval=_act_eval, q_value=_q,
        members_act_eval=lambda m, obs: cql.members_act_eval(m.cql, obs),
        initial_priorities=offline_priorities,
        config_section=("baq", default_config),
        preset={"agent.num_members": 1, "online.replay": "prioritized"}, check=_check))


_register()
