"""Optimizers, cached by their settings.

A TrainState's optimizer is a static part of its pytree: two states built with separately
created `optax.adam(lr)` objects have different tree structures, so they cannot be stacked
(seeds, members) and each one would trigger its own jit compilation. Creating optimizers
here returns the same object for the same settings.
"""
import functools

import optax


@functools.lru_cache(maxsize=None)
def adam(learning_rate: float) -> optax.GradientTransformation:
    return optax.adam(float(learning_rate))
