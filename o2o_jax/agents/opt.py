"""OPT, online pre-training (Shin et al.): before fine-tuning, train a *new* value
function on a little online data with a meta-adaptation objective, then let the actor
move from the offline critic to the new one.

Spec: shared/spec/methods.md B6. **Known from its abstract and a secondary summary; the
code (LGAI-Research/opt) was not read.** Everything below is the spec's reading, and its
constants are ours (config fields):

1. Offline: TD3+BC (`agents/td3.py`; the paper pretrains with TD3 or SPOT, ours the
   TD3+BC of this framework), giving pi and Q^off.
2. Online pre-training, the first `opt.pretrain_updates` online updates (ours: 25k):
   pi and Q^off frozen; a freshly initialised twin critic Q^on (created with the member,
   so every seed draws its own) is trained by
       L(theta) = L_TD^off(theta) + L_TD^on(theta - eta grad L_TD^off(theta)),
   the second-order MAML objective (ours: eta = `opt.meta_lr` 1e-3), L_TD the TD3 loss of
   Q^on on the offline half / online half of each batch (`online.replay = "mixed"`,
   ratio 0.5), with TD3's smoothed target from Q^on's own target and pi's target.
3. Fine-tuning: both critics keep their TD3 updates on the whole batch; every
   `policy_delay`-th step the actor maximises
       kappa Q1^on(s, mu(s)) + (1 - kappa) Q1^off(s, mu(s))
   (the TD3+BC loss with that mixture as its Q), kappa rising linearly from 0 to 1 over
   the first `opt.kappa_fraction` (ours 0.25) of the fine-tuning updates.

Logged statistics of the phase not running read 0 (e.g. `critic_loss` of Q^off during
pre-training). The phase switch and the policy delay are `lax.cond`s on step counters
that every member and seed holds equal (each its own copy, stepped together), taken
through `stacking.lockstep` so that under vmap the compiled program branches to the
active phase instead of computing both.
"""
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct
from flax.training.train_state import TrainState

from o2o_jax import networks, optim
from o2o_jax.agents import stacking, td3


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.pretrain_updates = 25_000  # online pre-training of Q^on (ours)
    c.meta_lr = 1e-3             # eta of the inner step (ours)
    c.kappa_fraction = 0.25      # kappa 0 -> 1 over this share of fine-tuning (ours)
    return c


class OPT(struct.PyTreeNode):
    td3: td3.TD3                 # pi, Q^off and their targets (TD3+BC offline)
    q_on: TrainState             # Q^on, twin critics
    q_on_target: object
    step: jax.Array              # online updates so far
    pretrain_updates: int = struct.field(pytree_node=False, default=25_000)
    meta_lr: float = struct.field(pytree_node=False, default=1e-3)
    kappa_updates: float = struct.field(pytree_node=False, default=1.0)


def create(key, obs_dim, act_dim, cfg) -> OPT:
    k_td3, k_on = jax.random.split(key)
    base = td3.create(k_td3, obs_dim, act_dim, cfg.td3, "td3_bc")
    critic_def = networks.make(networks.TwinCritic, hidden_dims=tuple(cfg.td3.hidden_dims),
                               activation=cfg.td3.activation, num_qs=2)
    params = critic_def.init(k_on, jnp.zeros((1, obs_dim)),
                             jnp.zeros((1, act_dim)))["params"]
    return OPT(td3=base,
               q_on=TrainState.create(apply_fn=critic_def.apply, params=params,
                                      tx=optim.adam(cfg.td3.critic_lr)),
               q_on_target=jax.tree_util.tree_map(jnp.copy, params),
               step=jnp.zeros((), jnp.int32),
               pretrain_updates=int(cfg.opt.pretrain_updates), meta_lr=float(cfg.opt.meta_lr))


def create_members(key, obs_dim, act_dim, cfg):
    return stacking.create(lambda k: create(k, obs_dim, act_dim, cfg), key,
                           cfg.agent.num_members)


def offline_update(state: OPT, batch, key):
    new, info = td3.update(state.td3, batch, key)
    return state.replace(td3=new), info


# ---------------------------------------------------------------------------------------
# Q^on: TD loss, the meta objective
# ---------------------------------------------------------------------------------------

def as_td3(state: OPT, critic_params=None) -> td3.TD3:
    """The TD3 state with Q^on in place of Q^off (for TD3's losses)."""
    params = state.q_on.params if critic_params is None else critic_params
    return state.td3.replace(critic=state.q_on.replace(params=params),
                             target_critic_params=state.q_on_target)


def td_loss_on(params, state: OPT, batch, key):
    return td3.critic_loss(params, as_td3(state, params), batch, key)[0]


def halves(batch):
    n = batch["rewards"].shape[0] // 2
    return (jax.tree_util.tree_map(lambda x: x[:n], batch),
            jax.tree_util.tree_map(lambda x: x[n:], batch))


def meta_loss(params, state: OPT, batch, key):
    """L_off(theta) + L_on(theta - eta grad L_off(theta)) (second order)."""
    off, on = halves(batch)                     # mixed replay: the offline half first
    k_off, k_on = jax.random.split(key)
    l_off, g = jax.value_and_grad(td_loss_on)(params, state, off, k_off)
    adapted = jax.tree_util.tree_map(lambda p, d: p - state.meta_lr * d, params, g)
    l_on = td_loss_on(adapted, state, on, k_on)
    return l_off + l_on, {"meta_loss": l_off + l_on, "td_off": l_off, "td_on": l_on}


def kappa(state: OPT) -> jax.Array:
    t = (state.step - state.pretrain_updates).astype(jnp.float32)
    return jnp.clip(t / state.kappa_updates, 0.0, 1.0)


# ---------------------------------------------------------------------------------------
# The online step: the phase switch
# ---------------------------------------------------------------------------------------

def _pretrain(state: OPT, batch, key):
    (_, info), grads = jax.value_and_grad(meta_loss, has_aux=True)(
        state.q_on.params, state, batch, key)
    q_on = state.q_on.apply_gradients(grads=grads)
    return state.replace(q_on=q_on, q_on_target=optax.incremental_update(
        q_on.params, state.q_on_target, state.td3.tau)), info


def mixed_actor_loss(actor_params, state: OPT, batch, k):
    """TD3+BC's actor loss with Q1 = k Q1^on + (1 - k) Q1^off."""
    obs = batch["observations"]
    pi = td3.mu(state.td3, actor_params, obs)
    q_off = td3.q_values(state.td3, state.td3.critic.params, obs, pi)[0]
    q_on = td3.q_values(state.td3, state.q_on.params, obs, pi)[0]
    q1 = k * q_on + (1.0 - k) * q_off
    lam = jax.lax.stop_gradient(state.td3.bc_alpha / jnp.mean(jnp.abs(q1)))
    loss = -lam * jnp.mean(q1) + jnp.mean((pi - batch["actions"]) ** 2)
    return loss, {"actor_loss": loss, "q_pi": jnp.mean(q1)}


def _finetune(state: OPT, batch, key):
    k_off, k_on = jax.random.split(key)
    s = state.td3
    (_, c_info), g_off = jax.value_and_grad(td3.critic_loss, has_aux=True)(
        s.critic.params, s, batch, k_off)
    s = s.replace(critic=s.critic.apply_gradients(grads=g_off))
    g_on = jax.grad(td_loss_on)(state.q_on.params, state, batch, k_on)
    state = state.replace(td3=s, q_on=state.q_on.apply_gradients(grads=g_on))
    k = kappa(state)

    def actor_and_targets(st):
        (_, a_info), grads = jax.value_and_grad(mixed_actor_loss, has_aux=True)(
            st.td3.actor.params, st, batch, k)
        t = st.td3
        actor = t.actor.apply_gradients(grads=grads)
        tau = t.tau
        t = t.replace(actor=actor, target_actor_params=optax.incremental_update(
            actor.params, t.target_actor_params, tau),
            target_critic_params=optax.incremental_update(t.critic.params,
                                                          t.target_critic_params, tau))
        return st.replace(td3=t, q_on_target=optax.incremental_update(
            st.q_on.params, st.q_on_target, tau)), a_info

    skipped = jax.eval_shape(lambda st: actor_and_targets(st)[1], state)
    state, a_info = jax.lax.cond(
        stacking.lockstep(state.td3.critic.step % state.td3.policy_delay == 0),
        actor_and_targets,
        lambda st: (st, jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype),
                                               skipped)), state)
    return state, {**c_info, **a_info}


def online_update(state: OPT, batch, key):
    """Meta pre-training of Q^on for the first `pretrain_updates` updates, then
    fine-tuning; the info keys of both phases are reported (zeros where not run)."""
    pre = jax.eval_shape(lambda s: _pretrain(s, batch, key)[1], state)
    fine = jax.eval_shape(lambda s: _finetune(s, batch, key)[1], state)
    zeros = lambda tree: jax.tree_util.tree_map(                           # noqa: E731
        lambda x: jnp.zeros(x.shape, x.dtype), tree)

    def pretrain_branch(s):
        s, info = _pretrain(s, batch, key)
        return s, {**zeros(fine), **info}

    def finetune_branch(s):
        s, info = _finetune(s, batch, key)
        return s, {**zeros(pre), **info}

    # Members and seeds step together: one phase computed for all (not a select of both).
    in_pretraining = stacking.lockstep(state.step < state.pretrain_updates)
    state, info = jax.lax.cond(in_pretraining, pretrain_branch, finetune_branch, state)
    info["opt_pretraining"] = in_pretraining.astype(jnp.float32)
    info["opt_kappa"] = kappa(state)
    return state.replace(step=state.step + 1), info


def members_update(members: OPT, batch, key):
    keys = jax.random.split(key, stacking.num_stacked(members))
    return jax.vmap(online_update, in_axes=(0, None, 0))(members, batch, keys)


def to_online(members: OPT, cfg) -> OPT:
    from o2o_jax import online
    finetune = max(online.total_updates(cfg.online) - int(cfg.opt.pretrain_updates), 1)
    return members.replace(kappa_updates=float(max(cfg.opt.kappa_fraction * finetune, 1.0)))


def _act(members: OPT, observations, key):
    return td3.act(members.td3, observations, key)


def _act_eval(members: OPT, observations):
    return td3.act_eval(members.td3, observations)


def _q(members: OPT, observations, actions):
    return td3.q_ens(members.td3, observations, actions)


def _from_data(members: OPT, dataset, cfg) -> OPT:
    return members.replace(td3=td3.with_normalizer(members.td3, dataset, cfg))


def _check(cfg):
    from o2o_jax import config_checks as cc
    cc.non_negative_int(cfg, "opt.pretrain_updates")
    cc.positive_float(cfg, "opt.meta_lr")
    cc.in_range(cfg, "opt.kappa_fraction", 0.0, 1.0, lo_open=True)
    cc.require(cfg, "online.replay", cfg.online.replay == "mixed",
               "must be 'mixed' for algo 'opt' (its meta objective takes the offline and "
               "the online half of each batch)")
    cc.require(cfg, "online.offline_ratio", cfg.online.offline_ratio == 0.5,
               "must be 0.5 for algo 'opt' (halves of each batch)")
    cc.require(cfg, "online.batch_size", cfg.online.batch_size % 2 == 0,
               "must be even for algo 'opt' (an offline and an online half)")
    td3.check_config(cfg)


def _register():
    from o2o_jax import algorithm
    algorithm.register(algorithm.Algorithm(
        name="opt", summary="OPT (our reading of the abstract): TD3+BC offline; online a "
                            "new critic meta-pre-trained, then the actor moves to it",
        create_members=create_members, offline_update=lambda cfg: offline_update,
        to_online=to_online, online_update=lambda cfg: members_update, act=_act,
        act_eval=_act_eval, q_value=_q, members_act_eval=_act_eval, from_data=_from_data,
        config_section=("opt", default_config),
        preset={"agent.num_members": 1, "online.replay": "mixed",
                "online.offline_ratio": 0.5},
        check=_check, progress_keys=("critic_loss", "meta_loss", "opt_kappa")))


_register()
