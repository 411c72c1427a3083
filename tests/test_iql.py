"""IQL against a float64 NumPy re-implementation on fixed parameters: the expectile loss,
the AWR weights and their clip, the step order (V first; the actor and Q see the new V;
Polyak last), the reward scale, the ensemble's acting, and a resumed run."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax import algorithm, config_checks
from o2o_jax.agents import iql
from tests import numpy_ref as ref
from tests.helpers import random_batch, resumed_rows_match

OBS, ACT, B = 4, 2, 16


def _np(x):
    return np.asarray(x, np.float64)


def np_value(params, obs):
    mlp_p = params["MLP_0"]
    layers = [(_np(mlp_p[f"Dense_{i}"]["kernel"]), _np(mlp_p[f"Dense_{i}"]["bias"]))
              for i in range(len(mlp_p))]
    layers.append((_np(params["Dense_0"]["kernel"]), _np(params["Dense_0"]["bias"])))
    return ref.mlp(layers, _np(obs))[..., 0]


def np_policy(params, obs):
    mlp_p = params["MLP_0"]
    layers = [(_np(mlp_p[f"Dense_{i}"]["kernel"]), _np(mlp_p[f"Dense_{i}"]["bias"]))
              for i in range(len(mlp_p))]
    h = np.maximum(ref.mlp(layers, _np(obs)), 0.0)   # ReLU after the last hidden layer too
    mean = np.tanh(h @ _np(params["mean"]["kernel"]) + _np(params["mean"]["bias"]))
    log_std = np.clip(_np(params["log_std"]), -5.0, 2.0)
    return mean, np.broadcast_to(log_std, mean.shape)


def np_gauss_logp(a, mean, log_std):
    return np.sum(-0.5 * ((a - mean) / np.exp(log_std)) ** 2 - log_std
                  - 0.5 * np.log(2 * np.pi), -1)


def np_expectile(u, tau):
    return np.abs(tau - (u < 0)) * u ** 2


@pytest.fixture(scope="module")
def agent():
    from configs import base
    c = base.get_config().iql
    c.hidden_dims = (16, 16)
    state = jax.jit(lambda k: iql.create(k, OBS, ACT, c))(jax.random.PRNGKey(3))
    # Targets, V and the log-std away from their init, so that every term is non-trivial.
    perturb = lambda t, k: jax.tree_util.tree_map(   # noqa: E731
        lambda x: x + 0.3 * jax.random.normal(k, x.shape), t)
    return state.replace(
        target_critic_params=perturb(state.target_critic_params, jax.random.PRNGKey(4)),
        value=state.value.replace(params=perturb(state.value.params, jax.random.PRNGKey(5))),
        actor=state.actor.replace(params={**state.actor.params,
                                          "log_std": jnp.array([-0.7, 0.4])}),
        reward_scale=jnp.float32(2.5))


def test_expectile_loss_matches_numpy():
    u = np.linspace(-3, 3, 13)
    for tau in (0.5, 0.7, 0.9):
        np.testing.assert_allclose(iql.expectile_loss(jnp.asarray(u), tau),
                                   np_expectile(u, tau), rtol=1e-6)
    # tau = 0.5 is half the squared error; tau > 0.5 weighs under-estimates of Q more.
    np.testing.assert_allclose(iql.expectile_loss(jnp.asarray(u), 0.5), 0.5 * u ** 2,
                               rtol=1e-6)


def test_awr_weights_and_clip_match_numpy(agent):
    batch = random_batch(1, B, OBS, ACT)
    q = ref.critic(agent.target_critic_params, batch["observations"], batch["actions"]).min(0)
    adv = q - np_value(agent.value.params, batch["observations"])
    beta = 4.0
    raw = np.exp(beta * adv)
    max_weight = float(np.median(raw))     # half the batch clipped, half not
    assert 0 < np.sum(raw > max_weight) < B
    w, got_adv = iql.awr_weights(agent.replace(max_weight=max_weight), agent.value.params,
                                 batch, beta)
    np.testing.assert_allclose(got_adv, adv, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(w, np.minimum(raw, max_weight), rtol=1e-4)


def np_step_losses(agent, batch, new_value_params):
    """(V loss at the old V, actor loss with the new V, Q loss with the new V), float64."""
    obs, a = _np(batch["observations"]), _np(batch["actions"])
    q_bar = ref.critic(agent.target_critic_params, obs, a).min(0)
    v_loss = np.mean(np_expectile(q_bar - np_value(agent.value.params, obs), agent.expectile))
    w = np.minimum(np.exp(agent.beta * (q_bar - np_value(new_value_params, obs))),
                   agent.max_weight)
    mean, log_std = np_policy(agent.actor.params, obs)
    a_loss = -np.mean(w * np_gauss_logp(a, mean, log_std))
    y = (float(agent.reward_scale) * _np(batch["rewards"]) + agent.discount
         * (1 - _np(batch["dones"]))
         * np_value(new_value_params, _np(batch["next_observations"])))
    q = ref.critic(agent.critic.params, obs, a)
    return v_loss, a_loss, np.sum(np.mean((q - y) ** 2, -1))


def test_step_order_matches_numpy(agent):
    batch = random_batch(2, B, OBS, ACT)
    new, info = jax.jit(iql.update)(agent, batch, jax.random.PRNGKey(0))
    v_loss, a_loss, q_loss = np_step_losses(agent, batch, new.value.params)
    np.testing.assert_allclose(info["value_loss"], v_loss, rtol=2e-4)
    np.testing.assert_allclose(info["actor_loss"], a_loss, rtol=2e-4)
    np.testing.assert_allclose(info["critic_loss"], q_loss, rtol=2e-4)
    # The test tells the orders apart: with the old V the actor and Q losses differ.
    _, a_old, q_old = np_step_losses(agent, batch, agent.value.params)
    assert abs(a_old - a_loss) > 1e-3 * abs(a_loss) and abs(q_old - q_loss) > 1e-3 * q_loss
    # Polyak from the *new* critics; V has no target.
    leaves = jax.tree_util.tree_leaves
    moved = 0.0
    for tgt, old, crit, prev in zip(leaves(new.target_critic_params),
                                    leaves(agent.target_critic_params),
                                    leaves(new.critic.params), leaves(agent.critic.params)):
        np.testing.assert_allclose(tgt, (1 - agent.tau) * _np(old) + agent.tau * _np(crit),
                                   rtol=1e-5, atol=1e-7)
        moved = max(moved, float(np.max(np.abs(_np(crit) - _np(prev)))))
    assert moved > 0


def test_members_step_on_a_shared_batch_equal_single_steps(agent):
    """Online, the stacked members each take the single-agent step on the one batch."""
    members = jax.tree_util.tree_map(lambda x: jnp.stack([x, x * 0.9]), agent)
    batch = random_batch(3, B, OBS, ACT)
    new, _ = jax.jit(iql.members_update)(members, batch, jax.random.PRNGKey(0))
    for i in range(2):
        one = jax.tree_util.tree_map(lambda x: x[i], members)
        want, _ = jax.jit(iql.update)(one, batch, None)
        for got, exp in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(np.asarray(got)[i], exp, rtol=1e-5, atol=1e-6)


def test_ensemble_acting_is_the_moment_matched_gaussian(agent):
    members = jax.tree_util.tree_map(
        lambda x, k: jnp.stack([x, x + 0.2 * jax.random.normal(k, x.shape)]),
        agent, jax.tree_util.tree_unflatten(
            jax.tree_util.tree_structure(agent),
            list(jax.random.split(jax.random.PRNGKey(9),
                                  len(jax.tree_util.tree_leaves(agent))))))
    obs = random_batch(4, B, OBS, ACT)["observations"]
    ms, ls = zip(*(np_policy(jax.tree_util.tree_map(lambda x: np.asarray(x)[i],
                                                    members.actor.params), obs)
                   for i in range(2)))
    ms, ls = np.stack(ms), np.stack(ls)
    mean = ms.mean(0)
    std = np.sqrt((np.exp(2 * ls) + (ms - mean) ** 2).mean(0))
    np.testing.assert_allclose(iql.act_eval(members, obs), mean, rtol=1e-5, atol=1e-6)
    key = jax.random.PRNGKey(7)
    noise = np.asarray(jax.random.normal(key, mean.shape), np.float64)
    np.testing.assert_allclose(iql.act(members, obs, key),
                               np.clip(mean + std * noise, -1, 1), rtol=1e-4, atol=1e-5)
    # One member: its own Gaussian.
    one = jax.tree_util.tree_map(lambda x: x[:1], members)
    np.testing.assert_allclose(iql.act(one, obs, key),
                               np.clip(ms[0] + np.exp(ls[0]) * noise, -1, 1),
                               rtol=1e-4, atol=1e-5)


def test_reward_scale_from_the_dataset():
    returns = np.array([310.0, -40.0, 120.5, 60.0])
    assert iql.dataset_reward_scale(returns) == pytest.approx(1000.0 / 350.0)
    with pytest.raises(ValueError, match="iql.reward_scale"):
        iql.dataset_reward_scale([5.0])
    from configs import base
    cfg = base.get_config()
    cfg.iql.hidden_dims = (8,)
    members = iql.create_members(jax.random.PRNGKey(0), OBS, ACT, cfg.iql, 2)
    members = jax.tree_util.tree_map(lambda x: x[None], members)       # [S=1, N=2]
    data = types.SimpleNamespace(episode_returns=lambda: returns, dataset_id="test")
    got = iql.from_data(members, data, cfg).reward_scale
    np.testing.assert_allclose(got, np.full((1, 2), 1000.0 / 350.0), rtol=1e-6)
    cfg.iql.reward_scale = 1.0
    np.testing.assert_array_equal(iql.from_data(members, data, cfg).reward_scale, 1.0)


def test_cosine_decay_is_refused_with_an_online_phase():
    from configs import hopper_medium
    cfg = algorithm.get("iql").apply_preset(hopper_medium.get_config("quick"))
    cfg.iql.actor_lr_cosine_steps = 1000
    with pytest.raises(config_checks.ConfigError, match="iql.actor_lr_cosine_steps"):
        config_checks.check(cfg)
    cfg.online.epochs = 0
    config_checks.check(cfg)


def test_iql_run_resumes_from_its_checkpoint(minari_root, tmp_path, monkeypatch):
    """Killed after its first online checkpoint, a resumed IQL run logs the same rows as an
    uninterrupted one (the reward scale rides in the checkpoint)."""
    def configure(c):
        algorithm.get("iql").apply_preset(c)
        c.iql.hidden_dims = (8, 8)

    rows = resumed_rows_match(tmp_path, monkeypatch, configure)
    assert any(r["phase"] == "online" and r["value_loss"] for r in rows)
