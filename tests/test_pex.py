"""PEX against closed forms and NumPy: the selection probabilities, the draws of the
choice (Monte Carlo), pi_new's AWR loss on the composed actions, and pi_off frozen."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax.agents import pex
from tests import numpy_ref as ref
from tests.helpers import random_batch
from tests.test_iql import np_gauss_logp, np_policy, np_value

OBS, ACT, B = 4, 2, 16


@pytest.fixture(scope="module")
def member():
    from configs import base
    cfg = base.get_config()
    cfg.iql.hidden_dims = (16, 16)
    cfg.pex.inv_temperature = 3.0
    m = jax.jit(lambda k: pex.create(k, OBS, ACT, cfg))(jax.random.PRNGKey(0))
    # A wider pi_new, so that its samples differ visibly from its mode.
    return m.replace(new_actor=m.new_actor.replace(
        params={**m.new_actor.params, "log_std": jnp.array([-0.5, 0.0])}))


def np_q(params, obs, act):
    return ref.critic(params, obs, act).min(0)


def test_selection_probabilities_are_the_q_softmax(member):
    b = random_batch(1, B, OBS, ACT)
    obs = b["observations"]
    a1, a2 = b["actions"], jnp.flip(b["actions"], 0)
    p = np.asarray(pex.selection_probs(member, obs, a1, a2), np.float64)
    q1, q2 = (np_q(member.iql.critic.params, obs, a) for a in (a1, a2))
    p_new = 1.0 / (1.0 + np.exp(-3.0 * (q2 - q1)))    # two-way softmax = logistic
    np.testing.assert_allclose(p[:, 1], p_new, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)


def test_select_composes_the_two_proposals_with_those_probabilities(member):
    obs = random_batch(2, 3, OBS, ACT)["observations"]
    keys = jax.random.split(jax.random.PRNGKey(5), 4000)
    composed, choice, probs = jax.jit(jax.vmap(lambda k: pex.select(member, obs, k)))(keys)
    a1, _ = np_policy(member.iql.actor.params, obs)
    mean, log_std = np_policy(member.new_actor.params, obs)
    k_a2 = jax.vmap(lambda k: jax.random.split(k)[0])(keys)
    noise = np.asarray(jax.vmap(lambda k: jax.random.normal(k, mean.shape))(k_a2), np.float64)
    a2 = mean + np.exp(log_std) * noise                               # [K, 3, A]
    choice = np.asarray(choice)
    want = np.where(choice[..., None] == 1, a2, a1[None])
    np.testing.assert_allclose(composed, want, rtol=1e-4, atol=1e-5)
    # The choice frequency per state matches the mean probability (Monte Carlo, 5 sigma).
    p_new = np.asarray(probs)[..., 1].mean(0)
    freq = choice.mean(0)
    assert np.all(np.abs(freq - p_new) < 5 * np.sqrt(p_new * (1 - p_new) / 4000) + 1e-3)
    assert np.any((p_new > 0.05) & (p_new < 0.95))     # the test sees real mixing
    # Greedy: pi_new's mode and the argmax.
    g, gc, gp = pex.select(member, obs)
    np.testing.assert_array_equal(gc, np.argmax(np.asarray(gp), -1))
    np.testing.assert_allclose(g, np.where(np.asarray(gc)[:, None] == 1, mean, a1),
                               rtol=1e-5, atol=1e-6)


def test_online_step_keeps_pi_off_and_trains_pi_new_on_composed_actions(member):
    b = random_batch(3, B, OBS, ACT)
    key = jax.random.PRNGKey(9)
    new, info = jax.jit(pex.update)(member, b, key)
    leaves = jax.tree_util.tree_leaves
    for x, y in zip(leaves(new.iql.actor), leaves(member.iql.actor)):
        np.testing.assert_array_equal(x, y)                   # pi_off frozen, Adam too
    assert max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
               zip(leaves(new.new_actor.params), leaves(member.new_actor.params))) > 0
    # pi_new's loss: AWR on the composed actions with the *updated* critics, targets, V.
    after_critics = member.replace(iql=new.iql)
    composed, _, _ = pex.select(after_critics, b["observations"], key)
    obs, a = np.asarray(b["observations"], np.float64), np.asarray(composed, np.float64)
    adv = np_q(new.iql.target_critic_params, obs, a) - np_value(new.iql.value.params, obs)
    w = np.minimum(np.exp(member.iql.beta * adv), member.iql.max_weight)
    mean, log_std = np_policy(member.new_actor.params, obs)
    np.testing.assert_allclose(info["actor_loss"],
                               -np.mean(w * np_gauss_logp(a, mean, log_std)), rtol=2e-4)
    # Offline, pi_new is not trained.
    off, _ = jax.jit(pex.offline_update)(member, b, key)
    for x, y in zip(leaves(off.new_actor), leaves(member.new_actor)):
        np.testing.assert_array_equal(x, y)
