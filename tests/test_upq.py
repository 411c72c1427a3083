"""UPQ: the members'-std penalty in the target against NumPy, and beta = 0 reducing
exactly to Off2OnRL's ensemble SAC update."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax.agents import actor_critic as ac
from o2o_jax.agents import ensemble, sac, upq
from tests import numpy_ref as ref
from tests.helpers import random_batch
from tests.test_awac import _member, np_policy

OBS, ACT, B, N = 4, 2, 8, 3


@pytest.fixture(scope="module")
def agent(tiny_agent_cfg):
    tiny_agent_cfg.backup_entropy = True
    members = ensemble.create_members(jax.random.PRNGKey(0), OBS, ACT, tiny_agent_cfg, N)
    agent = ensemble.to_ensemble(members, backup_entropy=True)
    noisy = jax.tree_util.tree_map(lambda x: x + 0.3 * jax.random.normal(
        jax.random.PRNGKey(1), x.shape), agent.target_critic_params)
    return agent.replace(target_critic_params=noisy)


@pytest.fixture(scope="module")
def tiny_agent_cfg():
    from configs import base
    c = base.get_agent_config()
    c.hidden_dims = (16, 16)
    return c


@pytest.mark.parametrize("beta", [0.1, 0.01])
def test_std_penalised_target_matches_numpy(agent, beta):
    batch, key = random_batch(2, B, OBS, ACT), jax.random.PRNGKey(3)
    y = upq.penalized_target(agent, batch, key, beta)
    mean, log_std = np_policy(agent, batch["next_observations"])
    noise = np.asarray(jax.random.normal(key, mean.shape), np.float64)
    a, log_p = ref.tanh_gaussian_sample(mean, log_std, noise)
    q = np.stack([ref.critic(_member(agent.target_critic_params, i),
                             batch["next_observations"], a).min(0) for i in range(N)])
    u = q.std(0)                                               # population std
    assert u.min() > 1e-3
    want = (np.asarray(batch["rewards"], np.float64) + 0.99
            * (1 - np.asarray(batch["dones"], np.float64))
            * (q - beta * u - float(agent.alpha) * log_p))
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)


def test_beta_zero_is_exactly_off2ons_update(agent):
    batch, key = random_batch(4, B, OBS, ACT), jax.random.PRNGKey(5)
    copy = lambda t: jax.tree_util.tree_map(jnp.copy, t)   # noqa: E731
    got, got_info = jax.jit(upq.make_update(0.0))(copy(agent), batch, key)
    want, want_info = jax.jit(sac.update)(copy(agent), batch, key)
    for x, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(x, w)
    assert float(got_info["critic_loss"]) == float(want_info["critic_loss"])
    # beta > 0 lowers every target that bootstraps (not at terminal transitions).
    lower = np.asarray(upq.penalized_target(agent, batch, key, 0.1))
    plain = np.asarray(sac.td_targets(agent, batch, key))
    live = np.asarray(batch["dones"]) == 0
    assert live.any() and np.all(lower[:, live] < plain[:, live])
    np.testing.assert_array_equal(lower[:, ~live], plain[:, ~live])
    assert ac.twin_axis(agent) == 1
