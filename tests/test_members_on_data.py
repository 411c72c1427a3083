"""experiments.members_on_data's measurements against a float64 NumPy re-implementation
(3-member ensemble, tiny networks), with its random draws regenerated from the documented
key derivation: chunk i uses fold_in(key, i), split into (policy sample, next action)."""
import jax
import numpy as np

from experiments import members_on_data
from o2o_jax.agents import actor_critic as ac
from o2o_jax.agents import ensemble
from tests import numpy_ref as ref
from tests.helpers import random_batch
from tests.test_awac import _member, np_log_prob, np_policy

OBS, ACT, B, N = 4, 2, 16, 3


def np_measure(agent, b, key):
    f = {k: np.asarray(v, np.float64) for k, v in b.items()}
    k_pi, k_next = jax.random.split(jax.random.fold_in(key, 0))
    mean, log_std = np_policy(agent, f["observations"])
    a_pi, logp_own = ref.tanh_gaussian_sample(
        mean, log_std, np.asarray(jax.random.normal(k_pi, mean.shape), np.float64))
    nm, nls = np_policy(agent, f["next_observations"])
    a_next, logp_next = ref.tanh_gaussian_sample(
        nm, nls, np.asarray(jax.random.normal(k_next, nm.shape), np.float64))

    def qs(params, obs, act):   # [N, 2, B]
        return np.stack([ref.critic(_member(params, i), obs, act) for i in range(N)])

    q_data_all = qs(agent.critic.params, f["observations"], f["actions"])
    q_data = q_data_all.min(1).mean(0)
    q_pi = qs(agent.critic.params, f["observations"], a_pi).min(1).mean(0)
    next_q = qs(agent.target_critic_params, f["next_observations"], a_next).min(1)   # [N, B]
    alpha, gamma = float(agent.alpha), float(agent.discount)
    y = f["rewards"] + gamma * (1 - f["dones"]) * (next_q - alpha * logp_next)
    return {"q_data": q_data.mean(), "q_pi": q_pi.mean(), "cql_gap": (q_data - q_pi).mean(),
            "log_pi_data": np_log_prob(mean, log_std, f["actions"]).mean(),
            "log_pi_own": logp_own.mean(), "td_residual": (y[:, None] - q_data_all).mean()}


def test_measurements_match_numpy_and_do_not_depend_on_chunking():
    cfg = ac.default_config()
    cfg.hidden_dims = (16, 16)
    members = ensemble.create_members(jax.random.PRNGKey(1), OBS, ACT, cfg, N)
    agent = ensemble.hand_over(members, ensemble_online_cfg())
    # Targets apart from the critics, so that the test tells them apart.
    agent = agent.replace(target_critic_params=jax.tree_util.tree_map(
        lambda x: x * 0.9, agent.target_critic_params))
    b = {k: np.asarray(v) for k, v in random_batch(2, B, OBS, ACT).items()}
    key = jax.random.PRNGKey(3)
    got = members_on_data.measure(agent, b, key, batch=B)
    want = np_measure(agent, b, key)
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-4, atol=1e-4, err_msg=k)
    halves = members_on_data.measure(agent, b, key, batch=B // 2)
    for k in ("q_data", "log_pi_data"):   # no random draw: chunking must not matter
        np.testing.assert_allclose(halves[k], got[k], rtol=1e-5, err_msg=k)


def ensemble_online_cfg():
    from configs import base
    return base.get_config().online
