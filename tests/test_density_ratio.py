"""Density ratio: loss and priorities against NumPy; the trained net recovers a known ratio."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from o2o_jax import density_ratio as dr

predict = jax.jit(dr.predict_ratio)

W_OFF = np.array([0.0, 0.3, 1.0, 2.5, 7.0], np.float32)
W_ON = np.array([0.0, 0.5, 1.0, 4.0], np.float32)


def test_dr_loss_matches_numpy():
    w_off, w_on = W_OFF.astype(np.float64), W_ON.astype(np.float64)
    expected = np.mean(np.log((w_off + 1) / 2)) - np.mean(np.log(2 * w_on / (w_on + 1) + 1e-10))
    got = float(dr.dr_loss(jnp.asarray(W_OFF), jnp.asarray(W_ON)))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # At w = 1 everywhere both terms vanish.
    assert float(dr.dr_loss(jnp.ones(3), jnp.ones(4))) == pytest.approx(0.0, abs=1e-6)


def test_dr_loss_population_minimiser_is_the_ratio():
    # Two discrete distributions: the minimiser over per-atom w is p_on / p_off.
    p_off = np.array([0.5, 0.3, 0.2])
    p_on = np.array([0.1, 0.3, 0.6])

    def population_loss(w):
        return (jnp.sum(p_off * jnp.log((w + 1) / 2))
                - jnp.sum(p_on * jnp.log(2 * w / (w + 1) + 1e-10)))

    w = jnp.ones(3)
    grad = jax.jit(jax.grad(population_loss))
    for _ in range(3000):
        w = w - 0.5 * grad(w)
    np.testing.assert_allclose(np.asarray(w), p_on / p_off, rtol=1e-3)


def test_priorities_from_ratio_matches_numpy():
    w_rl = np.array([0.0, 1e-20, 0.2, 1.0, 3.0, 1e20], np.float32)
    w_off = np.array([0.5, 1.0, 2.0, 0.0], np.float32)
    for temperature in (5.0, 1.0):
        norm = np.mean(w_off.astype(np.float64) ** (1 / temperature)) + 1e-10
        expected = np.clip(w_rl.astype(np.float64) ** (1 / temperature) / norm, 1e-3, 1e3)
        got = dr.priorities_from_ratio(jnp.asarray(w_rl), jnp.asarray(w_off), temperature)
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)
    # Both clip bounds are active in this example (T = 5).
    got = np.asarray(dr.priorities_from_ratio(jnp.asarray(w_rl), jnp.asarray(w_off)))
    assert got[0] == np.float32(1e-3) and got[-1] == np.float32(1e3)


def test_create_dr_state_validates():
    with pytest.raises(ValueError):
        dr.create_dr_state(jax.random.PRNGKey(0), 0, 2, (8,), 1e-3)
    with pytest.raises(ValueError):
        dr.create_dr_state(jax.random.PRNGKey(0), 2, 2, (8,), 0.0)


def test_dr_update_reports_pre_update_metrics_and_descends():
    key = jax.random.PRNGKey(0)
    state = dr.create_dr_state(key, 3, 2, (32, 32), 1e-3)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    off_o, off_a = jax.random.normal(k1, (64, 3)), jax.random.normal(k2, (64, 2))
    on_o, on_a = jax.random.normal(k3, (64, 3)) + 1.0, jax.random.normal(k4, (64, 2)) + 1.0
    w_off = predict(state, off_o, off_a)
    w_on = predict(state, on_o, on_a)
    new_state, metrics = jax.jit(dr.dr_update)(state, off_o, off_a, on_o, on_a)
    np.testing.assert_allclose(float(metrics["dr_loss"]), float(dr.dr_loss(w_off, w_on)),
                               rtol=1e-5)
    np.testing.assert_allclose(float(metrics["w_offline"]), float(jnp.mean(w_off)), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["w_online"]), float(jnp.mean(w_on)), rtol=1e-5)
    assert int(new_state.step) == 1
    after = dr.dr_loss(predict(new_state, off_o, off_a), predict(new_state, on_o, on_a))
    assert float(after) < float(metrics["dr_loss"])


def test_trained_ratio_ranks_like_analytic_ratio():
    """Online N(mu1, I), offline N(0, 1.5^2 I) in 4 dims (3 obs + 1 action)."""
    obs_dim, act_dim, batch, steps = 3, 1, 256, 3000
    dim = obs_dim + act_dim
    mu1 = np.array([0.8, -0.5, 0.3, 0.6], np.float32)
    sd_off = 1.5

    def draw(key, n):
        k1, k2 = jax.random.split(key)
        off = jax.random.normal(k1, (n, dim)) * sd_off
        on = jax.random.normal(k2, (n, dim)) + mu1
        return off, on

    def train(key):
        init_key, data_key = jax.random.split(key)
        state = dr.create_dr_state(init_key, obs_dim, act_dim, (64, 64), 1e-3)

        def step(state, key):
            off, on = draw(key, batch)
            state, metrics = dr.dr_update(state, off[:, :obs_dim], off[:, obs_dim:],
                                          on[:, :obs_dim], on[:, obs_dim:])
            return state, metrics["dr_loss"]

        return jax.lax.scan(step, state, jax.random.split(data_key, steps))

    state, losses = jax.jit(train)(jax.random.PRNGKey(0))
    # Held-out points from both distributions.
    off, on = draw(jax.random.PRNGKey(123), 1000)
    x = np.concatenate([np.asarray(off), np.asarray(on)])
    log_p_on = stats.multivariate_normal(mu1, np.eye(dim)).logpdf(x)
    log_p_off = stats.multivariate_normal(np.zeros(dim), sd_off ** 2 * np.eye(dim)).logpdf(x)
    true_ratio = np.exp(log_p_on - log_p_off)
    w = np.asarray(predict(state, jnp.asarray(x[:, :obs_dim]), jnp.asarray(x[:, obs_dim:])))
    rho = stats.spearmanr(w, true_ratio).correlation
    assert rho >= 0.9, rho
    assert float(np.mean(losses[-100:])) < float(np.mean(losses[:100]))
    # The scale is learned too: on online points w is on average near the truth.
    on_slice = slice(1000, 2000)
    assert 0.5 < np.median(w[on_slice] / true_ratio[on_slice]) < 2.0


def test_initial_ratio_is_one_everywhere_as_the_reference():
    """The authors' weight net starts at w ~ 1 (output weights U(+-3e-3), bias 1); flax's
    default output layer gave w in [0, 5.6] (mean 1.95) and dead ReLUs soon after."""
    for seed, (obs_dim, act_dim) in enumerate([(17, 6), (11, 3)]):
        state = dr.create_dr_state(jax.random.PRNGKey(seed), obs_dim, act_dim, (256, 256))
        k1, k2 = jax.random.split(jax.random.PRNGKey(100 + seed))
        obs = 3.0 * jax.random.normal(k1, (4096, obs_dim))
        act = jax.random.uniform(k2, (4096, act_dim), minval=-1.0, maxval=1.0)
        w = np.asarray(predict(state, obs, act))
        assert abs(w.mean() - 1.0) < 0.02 and w.std() < 0.02, (w.mean(), w.std())
        params = state.params
        out = params["Dense_2"]
        assert np.all(np.asarray(out["bias"]) == 1.0)
        assert np.abs(np.asarray(out["kernel"])).max() <= 3e-3
        # Hidden layers: rlkit's fanin_init bound 1/sqrt(torch weight dim 0 = out size),
        # zero biases.
        for name in ("Dense_0", "Dense_1"):
            k = np.asarray(params[name]["kernel"])
            bound = 1.0 / np.sqrt(k.shape[1])
            assert np.abs(k).max() <= bound and np.abs(k).max() > 0.9 * bound
            assert np.all(np.asarray(params[name]["bias"]) == 0.0)
