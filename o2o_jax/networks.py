"""Networks: MLP trunk, twin critics, tanh-Gaussian actor heads, density-ratio net.

Every module is a plain flax.linen module; agents hold their parameters in
pytrees and call `module.apply` through pure functions. Ensembles of members are
made by stacking parameter pytrees on a leading axis and `jax.vmap`-ing apply.
"""
from typing import Callable, Optional, Sequence

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS = {"relu": nn.relu, "tanh": nn.tanh, "gelu": nn.gelu, "elu": nn.elu,
               "silu": nn.silu}


def kernel_init(name: str):
    """Dense-kernel initialiser by name: "lecun" (flax's default, lecun normal) or
    "orthogonal" (orthogonal with scale sqrt(2), the IQL code's `default_init`)."""
    if name == "lecun":
        return nn.initializers.lecun_normal()
    if name == "orthogonal":
        return orthogonal(math.sqrt(2.0))
    raise ValueError(f"unknown kernel init {name!r}; allowed: 'lecun', 'orthogonal'")


def orthogonal(scale: float):
    """flax's orthogonal initialiser whose `jax.vmap` is a loop (same values).

    Why: members and seeds are created under `jax.vmap`, which turns each kernel's QR into
    one batched LAPACK call. An IQL run with 2 or 3 vmapped seeds hung silently in its
    creation: gdb showed both threads of XLA's CPU pool in `jax::ParallelBatchMap` ->
    `BlockingCounter::Wait` under `lapack_sgeqrf_ffi` and `lapack_sorgqr_ffi`, i.e.
    jaxlib 0.10's batched LAPACK kernels waiting for batch tasks on the pool they occupy
    (why 1 and 4 seeds ran was not established). Under `sequential_vmap` every QR sees one
    matrix and no batched LAPACK call is compiled. Initialisation only: the loop costs
    nothing that matters.
    """
    unit = nn.initializers.orthogonal(1.0)

    def init(key, shape, dtype=jnp.float32):
        q = jax.custom_batching.sequential_vmap(lambda k: unit(k, shape, dtype))(key)
        return (scale * q).astype(dtype)       # flax's: scale * Q (a traced scale works)

    return init


@functools.lru_cache(maxsize=None)
def _cached(cls, frozen_kwargs):
    return cls(**dict(frozen_kwargs))


def make(cls, **kwargs) -> nn.Module:
    """`cls(**kwargs)`, the same instance for the same settings.

    Agents keep `module.apply` as a static part of their pytrees; modules compare by
    identity, so equal settings must give the same instance for states to be stackable
    (members, seeds) and for jit to reuse its compilations.
    """
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return _cached(cls, tuple(sorted(kwargs.items())))


def get_activation(name: str) -> Callable:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; allowed: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLP(nn.Module):
    """Dense layers with an activation (and optional LayerNorm) after each hidden layer."""
    hidden_dims: Sequence[int]
    activation: str = "relu"
    layer_norm: bool = False
    activate_final: bool = True
    initializer: str = "lecun"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = get_activation(self.activation)
        for i, size in enumerate(self.hidden_dims):
            x = nn.Dense(size, kernel_init=kernel_init(self.initializer))(x)
            if i + 1 < len(self.hidden_dims) or self.activate_final:
                if self.layer_norm:
                    x = nn.LayerNorm()(x)
                x = act(x)
        return x


class Critic(nn.Module):
    """Q(s, a): MLP on concat(s, a) with a scalar head."""
    hidden_dims: Sequence[int]
    activation: str = "relu"
    layer_norm: bool = False
    initializer: str = "lecun"

    @nn.compact
    def __call__(self, observations: jax.Array, actions: jax.Array) -> jax.Array:
        x = jnp.concatenate([observations, actions], axis=-1)
        x = MLP(self.hidden_dims, self.activation, self.layer_norm,
                initializer=self.initializer)(x)
        return nn.Dense(1, kernel_init=kernel_init(self.initializer))(x)[..., 0]


class ValueNet(nn.Module):
    """V(s): MLP with a scalar head (IQL's expectile value)."""
    hidden_dims: Sequence[int]
    activation: str = "relu"
    layer_norm: bool = False
    initializer: str = "lecun"

    @nn.compact
    def __call__(self, observations: jax.Array) -> jax.Array:
        x = MLP(self.hidden_dims, self.activation, self.layer_norm,
                initializer=self.initializer)(
            observations)
        return nn.Dense(1, kernel_init=kernel_init(self.initializer))(x)[..., 0]


class TwinCritic(nn.Module):
    """`num_qs` independent critics with one call; output shape [num_qs, *batch]."""
    hidden_dims: Sequence[int]
    activation: str = "relu"
    layer_norm: bool = False
    num_qs: int = 2
    initializer: str = "lecun"

    @nn.compact
    def __call__(self, observations: jax.Array, actions: jax.Array) -> jax.Array:
        ensemble = nn.vmap(Critic, variable_axes={"params": 0}, split_rngs={"params": True},
                           in_axes=None, out_axes=0, axis_size=self.num_qs)
        return ensemble(self.hidden_dims, self.activation, self.layer_norm, self.initializer)(
            observations, actions)


class TanhGaussianActor(nn.Module):
    """Pre-tanh Gaussian parameters (mean, log_std) with separate heads.

    `log_std` is clipped to [log_std_min, log_std_max]; `mean` optionally to
    [-mean_clip, mean_clip] (the official CQL code clips to [-9, 9]).
    """
    action_dim: int
    hidden_dims: Sequence[int]
    activation: str = "relu"
    layer_norm: bool = False
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    mean_clip: Optional[float] = None

    @nn.compact
    def __call__(self, observations: jax.Array):
        x = MLP(self.hidden_dims, self.activation, self.layer_norm)(observations)
        mean = nn.Dense(self.action_dim, name="mean")(x)
        log_std = nn.Dense(self.action_dim, name="log_std")(x)
        if self.mean_clip is not None:
            mean = jnp.clip(mean, -self.mean_clip, self.mean_clip)
        log_std = jnp.clip(log_std, self.log_std_min, self.log_std_max)
        return mean, log_std


class GaussianActor(nn.Module):
    """An unsquashed diagonal Gaussian with a tanh on its mean and a state-independent
    log-std parameter (init 0, clipped to [log_std_min, log_std_max]): IQL's policy
    (`NormalTanhPolicy(state_dependent_std=False, tanh_squash_distribution=False)`).
    Returns (mean [..., A] in (-1, 1), log_std [..., A]). With `tanh_mean=False` the mean
    is left raw: the pre-tanh parameters of a tanh-squashed Gaussian with a
    state-independent std (FamO2O's balance model)."""
    action_dim: int
    hidden_dims: Sequence[int]
    activation: str = "relu"
    layer_norm: bool = False
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    initializer: str = "lecun"
    tanh_mean: bool = True     # False: the raw mean (pre-tanh parameters of a squashed one)

    @nn.compact
    def __call__(self, observations: jax.Array):
        x = MLP(self.hidden_dims, self.activation, self.layer_norm,
                initializer=self.initializer)(
            observations)
        mean = nn.Dense(self.action_dim, kernel_init=kernel_init(self.initializer),
                        name="mean")(x)
        if self.tanh_mean:
            mean = jnp.tanh(mean)
        log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))
        log_std = jnp.clip(log_std, self.log_std_min, self.log_std_max)
        return mean, jnp.broadcast_to(log_std, mean.shape)


class DeterministicActor(nn.Module):
    """mu(s) = tanh(MLP(s)) in (-1, 1)^A: the TD3 family's actor."""
    action_dim: int
    hidden_dims: Sequence[int]
    activation: str = "relu"
    layer_norm: bool = False
    initializer: str = "lecun"

    @nn.compact
    def __call__(self, observations: jax.Array) -> jax.Array:
        x = MLP(self.hidden_dims, self.activation, self.layer_norm,
                initializer=self.initializer)(observations)
        return jnp.tanh(nn.Dense(self.action_dim, kernel_init=kernel_init(self.initializer),
                                 name="mu")(x))


def uniform_range(lo: float, hi: float):
    """An initializer drawing U(lo, hi)."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, lo, hi)
    return init


def rlkit_fanin_uniform(key, shape, dtype=jnp.float32):
    """U(-1/sqrt(n), 1/sqrt(n)) with n the layer's *output* size, as rlkit's `fanin_init`.

    rlkit reads the fan from dim 0 of the torch weight, which is [out, in]; for a flax
    kernel [in, out] that is the last dim. (The authors' density-ratio net uses it.)
    """
    bound = 1.0 / jnp.sqrt(shape[-1])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class DensityRatio(nn.Module):
    """w(s, a) >= 0: MLP on concat(s, a), scalar head, then ReLU.

    Initialised as the authors' weight net (rlkit `ConcatMlp`, spec section 4): hidden
    layers `rlkit_fanin_uniform` with zero bias; the output layer's weights
    U(-init_w, init_w), init_w = 3e-3, and its bias 1, so that w is 1 everywhere up to
    ~1e-2 at the start (flax's default output layer gave w in [0, 5.6], and many offline
    points a dead ReLU within a few hundred updates).
    """
    hidden_dims: Sequence[int]
    activation: str = "relu"
    init_w: float = 3e-3

    @nn.compact
    def __call__(self, observations: jax.Array, actions: jax.Array) -> jax.Array:
        x = jnp.concatenate([observations, actions], axis=-1)
        act = get_activation(self.activation)
        for size in self.hidden_dims:
            x = act(nn.Dense(size, kernel_init=rlkit_fanin_uniform)(x))
        x = nn.Dense(1, kernel_init=uniform_range(-self.init_w, self.init_w),
                     bias_init=nn.initializers.constant(1.0))(x)[..., 0]
        return nn.relu(x)




class Temperature(nn.Module):
    """A single learnable log-temperature; `__call__` returns exp(log_value)."""
    initial_value: float = 1.0

    @nn.compact
    def __call__(self) -> jax.Array:
        log_value = self.param("log_value",
                               lambda _: jnp.full((), jnp.log(self.initial_value), jnp.float32))
        return jnp.exp(log_value)
