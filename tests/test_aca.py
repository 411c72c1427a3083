"""ACA against NumPy: the re-parameterised Q = alpha_0 log pi_0(a|s) + Z(s) + DeltaR with
R = Z at the hand-over, the Z fit's target, the SAC+MLE actor loss, and pi_0 / alpha_0
frozen bit for bit through online updates."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax.agents import aca
from tests import numpy_ref as ref
from tests.helpers import random_batch
from tests.test_iql import np_value

OBS, ACT, B = 4, 2, 16


def _np(x):
    return np.asarray(x, np.float64)


def np_log_pi(params, obs, act):
    mean, log_std = ref.actor(params, obs)
    z = np.arctanh(np.clip(_np(act), -1 + 1e-6, 1 - 1e-6))
    return (np.sum(-0.5 * ((z - mean) / np.exp(log_std)) ** 2 - log_std
                   - 0.5 * np.log(2 * np.pi), -1) - np.sum(np.log(1 - np.tanh(z) ** 2), -1))


@pytest.fixture(scope="module")
def setup():
    from configs import base
    from o2o_jax import algorithm
    cfg = algorithm.get("aca").apply_preset(base.get_config())
    cfg.agent.hidden_dims = (16, 16)
    cfg.agent.num_members = 1
    members = aca.create_members(jax.random.PRNGKey(0), OBS, ACT, cfg)
    # A trained-looking alpha_0 and Z away from init.
    members = members.replace(
        ac=members.ac.replace(temp=members.ac.temp.replace(
            params={"log_value": jnp.full((1,), -1.5)})),
        z=members.z.replace(params=jax.tree_util.tree_map(
            lambda x: x + 0.3 * jax.random.normal(jax.random.PRNGKey(1), x.shape),
            members.z.params)))
    return cfg, members


def one(tree):
    return jax.tree_util.tree_map(lambda x: np.asarray(x)[0], tree)


def test_handover_q_is_alpha0_log_pi0_plus_z(setup):
    cfg, members = setup
    agent = aca.to_online(members, cfg)
    b = random_batch(2, B, OBS, ACT)
    q = np.asarray(agent.critic.apply_fn({"params": one(agent.critic.params)},
                                         b["observations"], b["actions"]))
    want = (np.exp(-1.5) * np_log_pi(one(members.ac.actor.params), b["observations"],
                                     b["actions"])
            + np_value(one(members.z.params), b["observations"]))
    np.testing.assert_allclose(q, np.stack([want, want]), rtol=1e-4, atol=1e-4)
    # The actor starts at pi_0 and alpha at alpha_0 (no reset).
    np.testing.assert_array_equal(agent.actor.params["mean"]["kernel"],
                                  members.ac.actor.params["mean"]["kernel"])
    np.testing.assert_allclose(float(agent.alpha), np.exp(-1.5), rtol=1e-6)


def test_z_target_cancels_the_next_state_log_pi(setup):
    _, members = setup
    m = jax.tree_util.tree_map(lambda x: x[0], members)
    b = random_batch(3, B, OBS, ACT)
    loss, info = aca.z_loss(m.z.params, m, b)
    y = (_np(b["rewards"]) - np.exp(-1.5) * np_log_pi(one(members.ac.actor.params),
                                                     b["observations"], b["actions"])
         + 0.99 * (1 - _np(b["dones"])) * np_value(one(members.z_target_params),
                                                  b["next_observations"]))
    z = np_value(one(members.z.params), b["observations"])
    np.testing.assert_allclose(loss, np.mean((z - y) ** 2), rtol=1e-4)


def test_offline_actor_loss_is_sac_plus_likelihood(setup):
    _, members = setup
    m = jax.tree_util.tree_map(lambda x: x[0], members)
    b, key = random_batch(4, B, OBS, ACT), jax.random.PRNGKey(5)
    loss, _ = aca.actor_loss(m.ac.actor.params, m.ac, b, key, 2.5)
    params = one(members.ac.actor.params)
    mean, log_std = ref.actor(params, b["observations"])
    noise = _np(jax.random.normal(key, mean.shape))
    a, log_pb = ref.tanh_gaussian_sample(mean, log_std, noise)
    q = ref.critic(one(members.ac.critic.params), b["observations"], a).min(0)
    lam = 2.5 / np.mean(np.abs(q))
    want = np.mean(lam * (np.exp(-1.5) * log_pb - q)) - np.mean(
        np_log_pi(params, b["observations"], b["actions"]))
    np.testing.assert_allclose(loss, want, rtol=1e-4)


def test_pi0_and_alpha0_stay_frozen_online(setup):
    cfg, members = setup
    agent = aca.to_online(members, cfg)
    step = jax.jit(aca.online_update)
    a = agent
    for t in range(3):
        a, _ = step(a, random_batch(10 + t, B, OBS, ACT), jax.random.PRNGKey(t))
    for k in aca.FROZEN:
        for tree in (a.critic.params, a.target_critic_params):
            for x, y in zip(jax.tree_util.tree_leaves(tree[k]),
                            jax.tree_util.tree_leaves(agent.critic.params[k])):
                np.testing.assert_array_equal(x, y)
    moved = [float(np.max(np.abs(_np(x) - _np(y)))) for x, y in zip(
        jax.tree_util.tree_leaves(a.critic.params["delta"]),
        jax.tree_util.tree_leaves(agent.critic.params["delta"]))]
    assert max(moved) > 0
