"""experiments.tanh_saturation's log-densities against a direct change of variables."""
import numpy as np

from experiments import tanh_saturation


def test_log_pis_exact_and_epsilon_forms():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(50, 3))
    log_std = rng.uniform(-1, 0.5, size=(50, 3))
    noise = rng.normal(size=(50, 3))
    exact, eps, frac = tanh_saturation.log_pis(mean, log_std, noise)
    z = mean + np.exp(log_std) * noise
    std = np.exp(log_std)
    gauss = np.sum(-0.5 * ((z - mean) / std) ** 2 - np.log(std * np.sqrt(2 * np.pi)), -1)
    direct = gauss - np.sum(np.log(1 - np.tanh(z) ** 2), -1)     # fine for |z| < 5 here
    assert np.abs(z).max() < 5 and frac == 0.0
    np.testing.assert_allclose(exact, direct, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(
        eps, direct - np.sum(np.log1p(1e-6 / (1 - np.tanh(z) ** 2)), -1), rtol=1e-9)
    # Saturated: z = 10 in one dimension; exact -log(1 - tanh^2) = 2 (z - log 2 +
    # log(1 + e^-2z)) ~ 18.61, the epsilon form caps it at -log(1e-6 + ...) ~ 13.8.
    exact, eps, frac = tanh_saturation.log_pis(np.array([[10.0]]), np.array([[-30.0]]),
                                               np.array([[0.0]]))
    assert frac == 1.0
    np.testing.assert_allclose(exact - eps, 2 * (10 - np.log(2)) + np.log(1e-6 + 4 * np.exp(-20)),
                               rtol=1e-6)
