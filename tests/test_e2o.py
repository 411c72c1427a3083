"""E2O against independent computations: the WeightedMinPair closed form against the
explicit mean over pairs, the Bellman weights, and the UCB action choice against NumPy."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax.agents import cql, e2o
from tests import numpy_ref as ref
from tests.helpers import random_batch

OBS, ACT, B, NQ = 4, 2, 8, 5


def np_critics(params, obs, act):
    x = np.concatenate([np.asarray(obs, np.float64), np.asarray(act, np.float64)], -1)
    return np.stack([ref.mlp(ref.critic_layers(params, j), x)[..., 0] for j in range(NQ)])


def test_pair_min_is_the_mean_over_pairs_of_their_min():
    q = np.random.default_rng(0).normal(size=(2, 6, 7))        # critics on axis 1
    explicit = np.mean([np.minimum(q[:, i], q[:, j])
                        for i, j in itertools.combinations(range(6), 2)], axis=0)
    np.testing.assert_allclose(e2o.pair_min(jnp.asarray(q), 1), explicit, rtol=1e-5)
    np.testing.assert_allclose(float(jnp.sum(e2o.pair_min_weights(6))), 1.0, rtol=1e-6)


@pytest.fixture(scope="module")
def state():
    from configs import base
    cfg = base.get_config()
    cfg.agent.hidden_dims = (16, 16)
    cfg.agent.num_members = 1
    cfg.e2o.num_qs = NQ
    members = e2o._members(jax.random.PRNGKey(0), OBS, ACT, cfg)
    return e2o._to_online(members, cfg)


def test_loose_target_and_bellman_weights_match_numpy(state):
    agent = state.ac
    agent = agent.replace(target_critic_params=jax.tree_util.tree_map(
        lambda x: x + 0.3 * jax.random.normal(jax.random.PRNGKey(1), x.shape),
        agent.target_critic_params))
    batch, key = random_batch(2, B, OBS, ACT), jax.random.PRNGKey(3)
    y, w = e2o.loose_target(agent, batch, key, 10.0)
    one = jax.tree_util.tree_map(lambda x: np.asarray(x)[0], agent.actor.params)
    mean, log_std = ref.actor(one, batch["next_observations"])
    a, log_p = ref.tanh_gaussian_sample(mean, log_std, np.asarray(
        jax.random.normal(key, mean.shape), np.float64))
    tq = jax.tree_util.tree_map(lambda x: np.asarray(x)[0], agent.target_critic_params)
    q = np_critics(tq, batch["next_observations"], a)               # [NQ, B]
    pairs = np.mean([np.minimum(q[i], q[j]) for i, j in itertools.combinations(range(NQ), 2)],
                    0)
    want_y = (np.asarray(batch["rewards"]) + 0.99 * (1 - np.asarray(batch["dones"]))
              * (pairs - float(agent.alpha) * log_p))
    np.testing.assert_allclose(np.asarray(y)[0], want_y, rtol=1e-4, atol=1e-5)
    want_w = 1 / (1 + np.exp(10.0 * q.std(0))) + 0.5
    np.testing.assert_allclose(np.asarray(w)[0], want_w, rtol=1e-4)


def test_ucb_act_picks_the_most_optimistic_candidate(state):
    obs = random_batch(4, B, OBS, ACT)["observations"]
    key = jax.random.PRNGKey(5)
    s = state.replace(ucb_lambda=2.0, ucb_candidates=7)
    got = np.asarray(e2o.ucb_act(s, obs, key))
    agent = s.ac
    one = jax.tree_util.tree_map(lambda x: np.asarray(x)[0], agent.actor.params)
    mean, log_std = ref.actor(one, obs)
    noise = np.asarray(jax.random.normal(key, (7,) + mean.shape), np.float64)
    cands, _ = ref.tanh_gaussian_sample(mean[None], log_std[None], noise)    # [K, B, A]
    critics = jax.tree_util.tree_map(lambda x: np.asarray(x)[0], agent.critic.params)
    q = np.stack([np_critics(critics, obs, cands[k]) for k in range(7)], 1)  # [NQ, K, B]
    score = q.mean(0) + 2.0 * q.std(0)
    best = score.argmax(0)
    np.testing.assert_allclose(got, cands[best, np.arange(B)], rtol=1e-5, atol=1e-6)
    # lambda matters: with lambda = 0 some state picks another candidate.
    assert np.any(q.mean(0).argmax(0) != best)
