"""AdaptiveBC: the PD controller over a scripted return sequence against the code's rule
written as a plain loop, its start from the evaluation, and the UTD scan against the same
updates made one by one; the seeded online buffer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax.agents import adaptive_bc, td3
from tests.helpers import random_batch

OBS, ACT, B = 4, 2, 8


@pytest.fixture(scope="module")
def cfg():
    from configs import base
    c = base.get_config()
    c.env = "hopper"
    c.agent.num_members = 1
    c.td3.hidden_dims = (16, 16)
    c.adaptive_bc.update(num_qs=4, utd=3)
    return c


@pytest.fixture(scope="module")
def agent(cfg):
    members = adaptive_bc.create_members(jax.random.PRNGKey(0), OBS, ACT, cfg)
    return adaptive_bc.to_online(members, cfg)


def test_pd_controller_follows_the_code_over_a_scripted_sequence(agent):
    max_r = 6.918 * 1000
    assert agent.max_return == pytest.approx(max_r)
    a = adaptive_bc.online_start(agent, jnp.float32(3000.0))
    assert float(a.r_bar) == pytest.approx(3000.0 / max_r)
    # The code's rule (main.py), in plain Python.
    alpha, last_r = 0.4, 3000.0 / max_r
    episodes = [(2500.0, 400), (3200.0, 1000), (5500.0, 1000), (1000.0, 200), (6500.0, 1000),
                (6600.0, 1000)]
    for ret, length in episodes:
        current = ret / max_r
        alpha += length * (-3e-5 * (1.05 - last_r) + 1e-4 * max(0, last_r - current))
        alpha = max(0.0, min(alpha, 0.4))
        last_r = 0.05 * current + 0.95 * last_r
        # Another seed's step without an episode end changes nothing.
        same = adaptive_bc.episode_end(a, jnp.float32(ret), jnp.float32(length),
                                       jnp.asarray(False))
        np.testing.assert_array_equal(same.td3.bc_alpha, a.td3.bc_alpha)
        a = jax.jit(adaptive_bc.episode_end)(a, jnp.float32(ret), jnp.float32(length),
                                             jnp.asarray(True))
        np.testing.assert_allclose(np.asarray(a.td3.bc_alpha), alpha, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(float(a.r_bar), last_r, rtol=1e-5)
    # The sequence exercises the relaxation, the drop's tightening and the clip at 0.
    assert 0.0 <= float(a.td3.bc_alpha[0]) < 0.4


def test_utd_scan_equals_sequential_member_updates(agent):
    batch, key = random_batch(1, 3 * B, OBS, ACT), jax.random.PRNGKey(2)
    got, _ = jax.jit(adaptive_bc.online_update)(agent, batch, key)
    members = agent.td3
    for i, k in enumerate(jax.random.split(key, 3)):
        mini = jax.tree_util.tree_map(lambda x: x[i * B:(i + 1) * B], batch)
        members, _ = jax.jit(td3.members_update)(members, mini, k)
    for x, y in zip(jax.tree_util.tree_leaves(got.td3), jax.tree_util.tree_leaves(members)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=2e-6)
    assert int(got.td3.critic.step[0]) == 3


def test_subset_target_takes_the_min_over_a_random_subset(agent):
    from tests.test_td3 import np_mu
    one = jax.tree_util.tree_map(lambda x: x[0], agent.td3)
    one = one.replace(target_critic_params=jax.tree_util.tree_map(
        lambda x: x + 0.3 * jax.random.normal(jax.random.PRNGKey(3), x.shape),
        one.target_critic_params))
    batch, key = random_batch(4, B, OBS, ACT), jax.random.PRNGKey(5)
    y = td3.td_targets(one, batch, key)
    k_noise, k_sub = jax.random.split(key)
    idx = np.asarray(jax.random.choice(k_sub, 4, (2,), replace=False))
    eps = np.clip(0.2 * np.asarray(jax.random.normal(k_noise, (B, ACT)), np.float64),
                  -0.5, 0.5)
    a = np.clip(np_mu(one, one.target_actor_params, batch["next_observations"]) + eps, -1, 1)
    q = _np_critics(one, batch, a)
    want = (np.asarray(batch["rewards"]) + 0.99 * (1 - np.asarray(batch["dones"]))
            * q[idx].min(0))
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    assert np.max(np.abs(q[idx].min(0) - q.min(0))) > 1e-4


def _np_critics(state, batch, a):
    from tests import numpy_ref as ref
    x = np.concatenate([(np.asarray(batch["next_observations"], np.float64)
                         - np.asarray(state.obs_mean)) / np.asarray(state.obs_std), a], -1)
    return np.stack([ref.mlp(ref.critic_layers(state.target_critic_params, j), x)[..., 0]
                     for j in range(4)])
