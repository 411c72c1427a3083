"""Independent NumPy re-implementations used by the tests (float64 throughout)."""
import numpy as np


def mlp(layers, x):
    """layers: list of (kernel, bias); ReLU after every layer except the last."""
    for i, (w, b) in enumerate(layers):
        x = x @ w + b
        if i + 1 < len(layers):
            x = np.maximum(x, 0.0)
    return x


def _np(x):
    return np.asarray(x, np.float64)


def critic_layers(params, j):
    """Layers of twin critic j from a flax TwinCritic param tree."""
    p = params["VmapCritic_0"]
    mlp_p = p["MLP_0"]
    layers = [(_np(mlp_p[f"Dense_{i}"]["kernel"][j]), _np(mlp_p[f"Dense_{i}"]["bias"][j]))
              for i in range(len(mlp_p))]
    layers.append((_np(p["Dense_0"]["kernel"][j]), _np(p["Dense_0"]["bias"][j])))
    return layers


def critic(params, obs, act):
    """[2, *batch] twin Q-values."""
    x = np.concatenate([_np(obs), _np(act)], -1)
    return np.stack([mlp(critic_layers(params, j), x)[..., 0] for j in range(2)])


def actor(params, obs, log_std_min=-20.0, log_std_max=2.0):
    mlp_p = params["MLP_0"]
    h = _np(obs)
    for i in range(len(mlp_p)):
        h = np.maximum(h @ _np(mlp_p[f"Dense_{i}"]["kernel"]) + _np(mlp_p[f"Dense_{i}"]["bias"]), 0)
    mean = h @ _np(params["mean"]["kernel"]) + _np(params["mean"]["bias"])
    log_std = h @ _np(params["log_std"]["kernel"]) + _np(params["log_std"]["bias"])
    return mean, np.clip(log_std, log_std_min, log_std_max)


def tanh_gaussian_sample(mean, log_std, noise):
    """a = tanh(z), log pi(a) by the change of variables with log(1 - tanh^2) directly."""
    z = mean + np.exp(log_std) * noise
    a = np.tanh(z)
    logp_z = np.sum(-0.5 * ((z - mean) / np.exp(log_std)) ** 2 - log_std
                    - 0.5 * np.log(2 * np.pi), -1)
    return a, logp_z - np.sum(np.log(1.0 - a ** 2), -1)


def logsumexp(x, axis):
    m = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))
