"""Aggregate statistics for a handful of seeds: mean, interquartile mean, bootstrap CIs.

numpy only (no jax): importable by the plotting script and notebooks without a device.

IQM here is the *fractional-weight* interquartile mean: sort the n values, view sample i
as covering the unit interval [i, i + 1] of probability mass, keep the mass in
[n/4, 3n/4] and weight each sample by how much of its interval lies there (the weights
sum to n/2). For n divisible by 4 this is exactly `scipy.stats.trim_mean(x, 0.25)` (the
aggregate rliable reports); otherwise the two boundary samples get fractional weight
instead of being dropped or kept whole (e.g. n=9: 2.25 samples trimmed from each end,
the 3rd and 7th smallest carry weight 0.75). Note that `scipy.stats.trim_mean`, and hence
rliable, trims `int(0.25 * n)` whole samples instead, so the two differ when n % 4 != 0.
"""
from typing import Callable, Dict, Optional

import numpy as np


def mean(values, axis: Optional[int] = None):
    """Arithmetic mean (NaN if there are no values)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan")
    return np.mean(values, axis=axis)


def iqm_weights(n: int) -> np.ndarray:
    """Weights (summing to 1) of the sorted samples in the fractional-weight IQM."""
    if n <= 0:
        return np.zeros(0)
    lo, hi = n / 4.0, 3.0 * n / 4.0
    left = np.arange(n, dtype=np.float64)
    overlap = np.clip(np.minimum(left + 1.0, hi) - np.maximum(left, lo), 0.0, None)
    return overlap / overlap.sum()


def iqm(values, axis: Optional[int] = None):
    """Interquartile mean (fractional-weight definition; see module docstring).

    axis=None flattens; otherwise reduces along `axis` (vectorised, used by the bootstrap).
    NaNs propagate (drop them first if they mean "missing").
    """
    values = np.asarray(values, dtype=np.float64)
    if axis is None:
        values = values.reshape(-1)
        axis = 0
    n = values.shape[axis]
    if n == 0:
        out_shape = values.shape[:axis] + values.shape[axis + 1:]
        return float("nan") if not out_shape else np.full(out_shape, np.nan)
    s = np.moveaxis(np.sort(values, axis=axis), axis, -1)
    out = s @ iqm_weights(n)
    return float(out) if np.ndim(out) == 0 else out


def _apply_stat(stat_fn: Callable, samples: np.ndarray) -> np.ndarray:
    """stat_fn over each row of `samples` [R, n]; vectorised when stat_fn takes `axis`."""
    try:
        out = np.asarray(stat_fn(samples, axis=1), dtype=np.float64)
        if out.shape == (samples.shape[0],):
            return out
    except TypeError:
        pass
    return np.array([stat_fn(row) for row in samples], dtype=np.float64)


def bootstrap_ci(values, stat_fn: Callable = np.mean, confidence: float = 0.95,
                 num_resamples: int = 10_000, seed: int = 0):
    """Percentile-bootstrap confidence interval of `stat_fn(values)` -> (low, high).

    Resamples the (flattened) values with replacement `num_resamples` times and returns
    the (1 - confidence)/2 and (1 + confidence)/2 quantiles of the resampled statistic.
    One value gives a zero-width interval; none gives (nan, nan).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    n = values.size
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    # Resample in chunks so that memory stays ~16 MB whatever n and num_resamples are.
    chunk = max(1, min(num_resamples, 2_000_000 // n))
    stats = []
    done = 0
    while done < num_resamples:
        k = min(chunk, num_resamples - done)
        idx = rng.integers(0, n, size=(k, n))
        stats.append(_apply_stat(stat_fn, values[idx]))
        done += k
    stats = np.concatenate(stats)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)


def largest_drop(scores, start: int = 0, within: int = 10) -> np.ndarray:
    """Per row (seed) of `scores` [S, T] (T points of a curve, NaN where missing): the
    largest fall below the score at index `start` over indices start..start + `within`,
    i.e. max(score[start] - score[start..start + within]); 0 if the curve never falls
    below its start there, NaN if the start is missing or no later point is there. The
    no-collapse measure of fine-tuning: `scores` by online epoch, start 0 = the
    pretrained members' score."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if scores.shape[1] <= start:
        return np.full(scores.shape[0], np.nan)
    window = scores[:, start:start + within + 1]
    falls = window[:, :1] - window
    out = np.where(np.isfinite(falls), falls, -np.inf).max(axis=1)   # the start itself: 0
    later = np.isfinite(window[:, 1:]).any(axis=1)
    return np.where(np.isfinite(window[:, 0]) & later, out, np.nan)


def summarize(values, confidence: float = 0.95, num_resamples: int = 10_000,
              seed: int = 0, ci_stat: Callable = np.mean) -> Dict[str, float]:
    """dict(mean, iqm, ci_low, ci_high, n) over the finite values (NaNs are dropped).

    The CI is a percentile bootstrap of `ci_stat` (the mean by default; pass `iqm` for
    a CI of the IQM).
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    low, high = bootstrap_ci(values, ci_stat, confidence, num_resamples, seed)
    return {"mean": float(mean(values)), "iqm": float(iqm(values)), "ci_low": low,
            "ci_high": high, "n": int(values.size)}
