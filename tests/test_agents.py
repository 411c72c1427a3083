"""SAC / CQL / ensemble losses against NumPy re-implementations written here.

The random draws are regenerated in the test with the same key derivation as the code
(documented in sac.py / cql.py); everything else is recomputed in float64 NumPy.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax.agents import actor_critic as ac
from o2o_jax.agents import cql, ensemble, sac
from o2o_jax import offline
from tests import numpy_ref as ref
from tests.helpers import random_batch

OBS, ACT, B = 4, 2, 6


def make_batch(seed=0, b=B):
    return random_batch(seed, b, OBS, ACT)


def perturb(agent, seed):
    """Make targets differ from critics and alpha != 1 so every term is exercised."""
    k = jax.random.PRNGKey(seed)
    noisy = jax.tree_util.tree_map(lambda x: x + 0.1 * jax.random.normal(k, x.shape),
                                   agent.critic.params)
    temp = agent.temp.replace(params={"log_value": jnp.float32(-0.7)})
    return agent.replace(target_critic_params=noisy, temp=temp)


def np_td_target(agent, batch, key, alpha, backup_entropy, actor_p=None):
    actor_p = agent.actor.params if actor_p is None else actor_p
    mean, log_std = ref.actor(actor_p, batch["next_observations"])
    noise = np.asarray(jax.random.normal(key, mean.shape), np.float64)
    a2, lp2 = ref.tanh_gaussian_sample(mean, log_std, noise)
    q_next = ref.critic(agent.target_critic_params, batch["next_observations"], a2).min(0)
    if backup_entropy:
        q_next = q_next - alpha * lp2
    d = np.asarray(batch["dones"], np.float64)
    return np.asarray(batch["rewards"], np.float64) + agent.discount * (1 - d) * q_next


@pytest.mark.parametrize("backup_entropy", [True, False])
def test_sac_critic_and_actor_loss_match_numpy(tiny_agent_cfg, backup_entropy):
    tiny_agent_cfg.backup_entropy = backup_entropy
    agent = perturb(ac.create(jax.random.PRNGKey(1), OBS, ACT, tiny_agent_cfg), 2)
    batch, key = make_batch(), jax.random.PRNGKey(3)
    alpha = math.exp(-0.7)
    loss, info = sac.critic_loss(agent.critic.params, agent, batch, key)
    k_target, _ = jax.random.split(key)
    y = np_td_target(agent, batch, k_target, alpha, backup_entropy)
    q = ref.critic(agent.critic.params, batch["observations"], batch["actions"])
    expected = np.sum(np.mean((q - y[None]) ** 2, axis=1))
    np.testing.assert_allclose(loss, expected, rtol=1e-4)

    loss, _ = sac.actor_loss(agent.actor.params, agent, batch, key)
    mean, log_std = ref.actor(agent.actor.params, batch["observations"])
    noise = np.asarray(jax.random.normal(key, mean.shape), np.float64)
    a, lp = ref.tanh_gaussian_sample(mean, log_std, noise)
    q_pi = ref.critic(agent.critic.params, batch["observations"], a).min(0)
    np.testing.assert_allclose(loss, np.mean(alpha * lp - q_pi), rtol=1e-4, atol=1e-5)

    t_loss = sac.temperature_loss(agent.temp.params, agent, jnp.asarray(lp, jnp.float32))
    np.testing.assert_allclose(t_loss, 0.7 * np.mean(lp - ACT), rtol=1e-4)


def test_bc_warm_start_actor_loss(tiny_agent_cfg):
    tiny_agent_cfg.bc_steps = 5
    agent = perturb(ac.create(jax.random.PRNGKey(1), OBS, ACT, tiny_agent_cfg), 2)
    batch, key = make_batch(), jax.random.PRNGKey(3)
    loss, _ = sac.actor_loss(agent.actor.params, agent, batch, key,
                             bc_steps=tiny_agent_cfg.bc_steps)
    mean, log_std = ref.actor(agent.actor.params, batch["observations"])
    noise = np.asarray(jax.random.normal(key, mean.shape), np.float64)
    _, lp = ref.tanh_gaussian_sample(mean, log_std, noise)
    a_data = np.asarray(batch["actions"], np.float64)
    z = np.arctanh(a_data)
    lp_data = (np.sum(-0.5 * ((z - mean) / np.exp(log_std)) ** 2 - log_std
                      - 0.5 * np.log(2 * np.pi), -1) - np.sum(np.log(1 - a_data ** 2), -1))
    np.testing.assert_allclose(loss, np.mean(math.exp(-0.7) * lp - lp_data), rtol=1e-4)


@pytest.mark.parametrize("lagrange", [False, True])
def test_cql_critic_loss_matches_numpy(tiny_agent_cfg, lagrange):
    tiny_agent_cfg.cql_lagrange = lagrange
    tiny_agent_cfg.cql_lagrange_init = 2.0
    tiny_agent_cfg.cql_n_actions = 3
    tiny_agent_cfg.cql_temp = 0.7
    state = cql.create(jax.random.PRNGKey(5), OBS, ACT, tiny_agent_cfg)
    agent = perturb(state.ac, 6)
    state = state.replace(ac=agent)
    batch, key = make_batch(1), jax.random.PRNGKey(7)
    loss, info = sac.critic_loss(agent.critic.params, agent, batch, key,
                                 cql.penalty_fn(state))

    k_target, k_pen = jax.random.split(key)
    y = np_td_target(agent, batch, k_target, math.exp(-0.7), False)
    q = ref.critic(agent.critic.params, batch["observations"], batch["actions"])
    td = np.sum(np.mean((q - y[None]) ** 2, axis=1))
    n = 3
    k_rand, k_pi, k_next = jax.random.split(k_pen, 3)
    rand = np.asarray(jax.random.uniform(k_rand, (B, n, ACT), minval=-1.0, maxval=1.0), np.float64)
    log_q = [np.full((B, n), -ACT * np.log(2.0))]
    acts = [rand]
    for k, obs_key in ((k_pi, "observations"), (k_next, "next_observations")):
        mean, log_std = ref.actor(agent.actor.params, batch[obs_key])
        noise = np.asarray(jax.random.normal(k, (n,) + mean.shape), np.float64)
        a, lp = ref.tanh_gaussian_sample(mean[None], log_std[None], noise)
        acts.append(a.transpose(1, 0, 2))
        log_q.append(lp.T)
    acts, log_q = np.concatenate(acts, 1), np.concatenate(log_q, 1)
    obs_rep = np.repeat(np.asarray(batch["observations"], np.float64)[:, None], 3 * n, 1)
    q_ood = ref.critic(agent.critic.params, obs_rep, acts)          # [2, B, 3n]
    lse = 0.7 * ref.logsumexp((q_ood - log_q[None]) / 0.7, axis=2)   # [2, B]
    gap = lse.mean(1) - q.mean(1)
    per_q = 5.0 * gap
    if lagrange:
        per_q = 2.0 * (per_q - 10.0)
    np.testing.assert_allclose(loss, td + per_q.sum(), rtol=1e-4)
    if lagrange:
        l_loss = cql.lagrange_loss(state.lagrange.params, state, jnp.asarray(gap, jnp.float32))
        np.testing.assert_allclose(l_loss, -0.5 * np.sum(2.0 * (5.0 * gap - 10.0)), rtol=1e-4)


def stacked_params(tree, i):
    return jax.tree_util.tree_map(lambda x: x[i], tree)


def test_ensemble_losses_match_numpy(tiny_agent_cfg):
    tiny_agent_cfg.backup_entropy = True
    n = 3
    members = ensemble.create_members(jax.random.PRNGKey(0), OBS, ACT, tiny_agent_cfg, n)
    agent = ensemble.to_ensemble(members, init_temperature=0.5)
    batch, key = make_batch(2), jax.random.PRNGKey(9)
    alpha = 0.5

    def np_policy(obs):
        ms, ls = zip(*(ref.actor(stacked_params(agent.actor.params, i), obs) for i in range(n)))
        ms, ls = np.stack(ms), np.stack(ls)
        mean_e = ms.mean(0)
        var_e = (np.exp(2 * ls) + ms ** 2).mean(0) - mean_e ** 2
        return mean_e, np.clip(0.5 * np.log(var_e), -20, 2)

    loss, _ = sac.critic_loss(agent.critic.params, agent, batch, key)
    k_target, _ = jax.random.split(key)
    mean, log_std = np_policy(batch["next_observations"])
    noise = np.asarray(jax.random.normal(k_target, mean.shape), np.float64)
    a2, lp2 = ref.tanh_gaussian_sample(mean, log_std, noise)
    expected = 0.0
    d = np.asarray(batch["dones"], np.float64)
    for i in range(n):
        tq = ref.critic(stacked_params(agent.target_critic_params, i),
                        batch["next_observations"], a2).min(0)
        y = np.asarray(batch["rewards"]) + 0.99 * (1 - d) * (tq - alpha * lp2)
        q = ref.critic(stacked_params(agent.critic.params, i), batch["observations"],
                       batch["actions"])
        expected += np.sum(np.mean((q - y[None]) ** 2, axis=1))
    np.testing.assert_allclose(loss, expected, rtol=1e-4)

    loss, _ = sac.actor_loss(agent.actor.params, agent, batch, key)
    mean, log_std = np_policy(batch["observations"])
    noise = np.asarray(jax.random.normal(key, mean.shape), np.float64)
    a, lp = ref.tanh_gaussian_sample(mean, log_std, noise)
    q_ens = np.mean([ref.critic(stacked_params(agent.critic.params, i),
                                batch["observations"], a).min(0) for i in range(n)], 0)
    np.testing.assert_allclose(loss, np.mean(alpha * lp - q_ens), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ensemble.q_ens(agent, batch["observations"], jnp.asarray(a, jnp.float32)),
                               q_ens, rtol=1e-4, atol=1e-5)


def test_ensemble_actor_gradient_reaches_every_member(tiny_agent_cfg):
    members = ensemble.create_members(jax.random.PRNGKey(0), OBS, ACT, tiny_agent_cfg, 3)
    agent = ensemble.to_ensemble(members)
    grads = jax.grad(lambda p: sac.actor_loss(p, agent, make_batch(), jax.random.PRNGKey(1))[0])(
        agent.actor.params)
    per_member = jax.vmap(lambda g: sum(jnp.sum(jnp.abs(x)) for x in
                                         jax.tree_util.tree_leaves(g)))(grads)
    assert np.all(np.asarray(per_member) > 0)


def dataset(m=64, seed=0):
    b = make_batch(seed, m)
    return b


def test_vmapped_members_equal_separate_single_member_updates(tiny_agent_cfg):
    tiny_agent_cfg.bc_steps = 1  # exercise the BC branch on step 0 too
    n, steps = 3, 2
    data = dataset()
    members = cql.create_members(jax.random.PRNGKey(0), OBS, ACT, tiny_agent_cfg, n)
    key = jax.random.PRNGKey(42)
    chunk = offline.make_train_chunk(steps, batch_size=8, update_fn=cql.update)
    vm, _ = chunk(jax.tree_util.tree_map(jnp.copy, members), data, key)
    step_keys = jax.random.split(key, steps)
    step_fn = jax.jit(lambda a, k: offline.member_step(a, data, k, 8, cql.update))
    for i in range(n):
        agent = ensemble.member(members, i)
        for s in range(steps):
            agent, _ = step_fn(agent, jax.random.split(step_keys[s], n)[i])
        for got, want in zip(jax.tree_util.tree_leaves(ensemble.member(vm, i)),
                             jax.tree_util.tree_leaves(agent)):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_to_ensemble_can_keep_each_members_adam_moments(tiny_agent_cfg):
    """fresh_optimizers=False: each member's Adam moments carry over, and the first online
    critic step is Adam from exactly those moments (NumPy reference), counted once."""
    n, steps = 2, 3
    members = cql.create_members(jax.random.PRNGKey(0), OBS, ACT, tiny_agent_cfg, n)
    members, _ = offline.make_train_chunk(steps, 8, cql.update)(members, dataset(),
                                                                jax.random.PRNGKey(1))
    members = members.ac          # the hand-over takes the members' actor-critics
    agent = ensemble.to_ensemble(members, fresh_optimizers=False, backup_entropy=True)
    assert int(agent.critic.step) == steps and int(agent.actor.step) == steps
    batch, key = make_batch(), jax.random.PRNGKey(5)
    k_critic, _ = jax.random.split(key)
    grads = jax.grad(lambda p: sac.critic_loss(p, agent, batch, k_critic)[0])(
        agent.critic.params)
    new, _ = jax.jit(sac.update)(agent, batch, key)
    adam_state = members.critic.opt_state[0]          # stacked per-member moments
    t, b1, b2, eps, lr = steps + 1, 0.9, 0.999, 1e-8, tiny_agent_cfg.critic_lr
    flat = jax.tree_util.tree_leaves
    for p, g, mu, nu, got in zip(flat(agent.critic.params), flat(grads), flat(adam_state.mu),
                                 flat(adam_state.nu), flat(new.critic.params)):
        p, g, mu, nu = (np.asarray(x, np.float64) for x in (p, g, mu, nu))
        m = b1 * mu + (1 - b1) * g
        v = b2 * nu + (1 - b2) * g ** 2
        want = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_members_differ_in_init_and_minibatches(tiny_agent_cfg):
    n = 4
    members = ensemble.create_members(jax.random.PRNGKey(0), OBS, ACT, tiny_agent_cfg, n)
    w = np.asarray(members.actor.params["MLP_0"]["Dense_0"]["kernel"])
    for i in range(n):
        for j in range(i + 1, n):
            assert not np.allclose(w[i], w[j])
    data = {k: v for k, v in dataset(m=1000).items()}
    data["rewards"] = jnp.arange(1000, dtype=jnp.float32)  # reward = row index
    keys = jax.random.split(jax.random.PRNGKey(3), n)
    rows = [set(np.asarray(offline.sample_batch(data, jax.random.split(k)[0], 32)["rewards"])
                .astype(int)) for k in keys]
    for i in range(n):
        for j in range(i + 1, n):
            assert len(rows[i] & rows[j]) < 10  # independent draws of 32 from 1000 overlap ~1


def _q_gap_after_training(cfg, data):
    members = cql.create_members(jax.random.PRNGKey(0), OBS, ACT, cfg, 1)
    members, _ = offline.make_train_chunk(300, 64, cql.update)(members, data,
                                                              jax.random.PRNGKey(1))
    agent = ensemble.member(members, 0).ac
    q = lambda a: ac.conservative_q(agent, ac.q_values(agent, agent.critic.params,
                                                       data["observations"], a))
    rand = jax.random.uniform(jax.random.PRNGKey(2), data["actions"].shape, minval=-1, maxval=1)
    return float(jnp.mean(q(data["actions"])) - jnp.mean(q(rand)))


def test_cql_lowers_ood_q_relative_to_data(tiny_agent_cfg):
    """CQL pushes Q at uniform actions below Q at the behaviour policy's actions; SAC does not."""
    data = dataset(m=256, seed=4)
    w = np.random.default_rng(0).normal(size=(OBS, ACT))
    data["actions"] = jnp.tanh(data["observations"] @ w) * 0.8   # deterministic behaviour
    tiny_agent_cfg.critic_lr = 3e-3
    tiny_agent_cfg.cql_weight = 0.0
    gap_sac = _q_gap_after_training(tiny_agent_cfg, data)
    tiny_agent_cfg.cql_weight = 5.0
    gap_cql = _q_gap_after_training(tiny_agent_cfg, data)
    assert gap_cql > gap_sac + 1.0, (gap_sac, gap_cql)


def test_member_mask_names_the_member_axis_not_a_coincident_size():
    """stacking.member_mask: exact, by building from N and N + 1 members; a shared leaf that
    happens to have N rows is not taken for member-stacked (a shape guess would)."""
    from configs import base
    from o2o_jax.agents import stacking
    cfg = base.get_agent_config()
    cfg.hidden_dims = (3, 3)        # N = 3: every hidden axis has the member count's size
    members = ensemble.create_members(jax.random.PRNGKey(0), 4, 3, cfg, 3)
    mask = stacking.member_mask(lambda m: ensemble.to_ensemble(m), members)
    agent = ensemble.to_ensemble(members)
    flat = {jax.tree_util.keystr(p): v
            for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
    shapes = {jax.tree_util.keystr(p): np.shape(x)
              for p, x in jax.tree_util.tree_flatten_with_path(agent)[0]}
    assert flat.keys() == shapes.keys()
    for path, stacked in flat.items():
        expect = ((".actor" in path or ".critic" in path or "target_critic_params" in path)
                  and "count" not in path and path not in (".actor.step", ".critic.step"))
        assert stacked == expect, (path, shapes[path])
        if stacked:
            assert shapes[path][0] == 3
    # A shared leaf of N rows is not member-stacked.
    coincident = stacking.member_mask(
        lambda m: {"stacked": m.actor.params, "shared": jnp.zeros((3, 2))}, members)
    assert not coincident["shared"]
    assert all(jax.tree_util.tree_leaves(coincident["stacked"]))


def test_ucb_exploration_picks_the_most_optimistic_member_sample():
    """ensemble.ucb_act (the public rerun's exploration) against NumPy: each member's own
    sample, scored by the target first-twin critics' mean + lambda * std (N - 1) over
    members, the best taken per state; lambda = 0 takes the highest mean instead."""
    from configs import base
    cfg = base.get_agent_config()
    cfg.hidden_dims = (8, 8)
    n, b = 3, 6
    members = ensemble.create_members(jax.random.PRNGKey(0), 4, 2, cfg, n)
    # Targets differ from the critics, so that using the wrong set would show.
    members = members.replace(target_critic_params=jax.tree_util.tree_map(
        lambda x: x * 1.5 + 0.1, members.target_critic_params))
    agent = ensemble.to_ensemble(members, explore_ucb=100.0)
    obs = jnp.asarray(np.random.default_rng(1).normal(size=(b, 4)), jnp.float32)
    key = jax.random.PRNGKey(5)
    noise = np.asarray(jax.random.normal(key, (n, b, 2)), np.float64)   # the draws it makes
    props = []
    for i in range(n):
        mean, log_std = ref.actor(ensemble.member(members, i).actor.params, obs)
        props.append(ref.tanh_gaussian_sample(mean, log_std, noise[i])[0])
    props = np.stack(props)                                            # [N, B, A]
    q1 = np.stack([[ref.critic(jax.tree_util.tree_map(lambda x: x[j],
                                                      members.target_critic_params),
                               obs, props[i])[0] for i in range(n)] for j in range(n)])
    for lam in (100.0, 0.0):
        score = q1.mean(0) + lam * q1.std(0, ddof=1)                   # [N, B]
        expected = props[np.argmax(score, 0), np.arange(b)]
        got = np.asarray(ensemble.ucb_act(agent, obs, key, lam))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # act() takes this path only when explore_ucb > 0; else one sample of pi_E.
    np.testing.assert_allclose(np.asarray(ensemble.act(agent, obs, key)),
                               np.asarray(ensemble.ucb_act(agent, obs, key, 100.0)))
    plain = agent.replace(explore_ucb=0.0)
    np.testing.assert_allclose(np.asarray(ensemble.act(plain, obs, key)),
                               np.asarray(ac.act(plain, obs, key)))
    # The picks differ between lambda = 100 and 0 on some state (the test can tell them).
    assert not np.allclose(np.asarray(ensemble.ucb_act(agent, obs, key, 100.0)),
                           np.asarray(ensemble.ucb_act(agent, obs, key, 0.0)))


def test_lockstep_takes_the_first_member_unbatched_under_nested_vmap():
    """stacking.lockstep: the identity outside vmap; under seeds x members vmap the value
    of the first seed's first member for all (its documented rule: values equal by
    construction), unbatched, so that a cond on it keeps one branch."""
    from o2o_jax.agents import stacking
    assert int(stacking.lockstep(jnp.int32(7))) == 7
    x = jnp.arange(6, dtype=jnp.int32).reshape(2, 3) + 4       # [seeds, members]

    def f(v):
        return jax.lax.cond(stacking.lockstep(v) % 2 == 0, lambda: v * 10, lambda: -v)

    nested = jax.vmap(jax.vmap(f))
    np.testing.assert_array_equal(jax.jit(nested)(x), np.asarray(x) * 10)   # x[0, 0] = 4
    np.testing.assert_array_equal(jax.jit(nested)(x + 1), -(np.asarray(x) + 1))
    assert " cond[" in str(jax.make_jaxpr(nested)(x))


def test_unequal_counters_names_the_counters_out_of_lockstep():
    """stacking.unequal_counters: nothing for members created together; a train state's step
    or an Adam count that differs across members (or seeds) is named with its values."""
    from o2o_jax.agents import stacking, td3
    import ml_collections
    cfg = ml_collections.ConfigDict({"td3": td3.default_config(), "agent": {"num_members": 3}})
    cfg.td3.hidden_dims = (8, 8)
    members = td3.members_from_config(jax.random.PRNGKey(0), 5, 2, cfg, "td3_bc")
    seeds = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), members)   # [S = 2, N = 3]
    assert stacking.unequal_counters(members) == []
    assert stacking.unequal_counters(seeds) == []
    # Counters that differ from each other but are equal across members are in lockstep.
    moved = members.replace(actor=members.actor.replace(step=members.actor.step + 7))
    assert stacking.unequal_counters(moved) == []
    one_member = members.replace(critic=members.critic.replace(
        step=members.critic.step.at[1].set(5)))
    assert stacking.unequal_counters(one_member) == [".critic.step: 0, 5"]
    count = seeds.actor.opt_state[0].count.at[1, 2].add(3)
    other_seed = seeds.replace(actor=seeds.actor.replace(
        opt_state=(seeds.actor.opt_state[0]._replace(count=count),) + seeds.actor.opt_state[1:]))
    assert stacking.unequal_counters(other_seed) == [".actor.opt_state[0].count: 0, 3"]
