"""Comparisons of runs that a few seeds can carry: the interquartile mean (IQM) with
stratified bootstrap confidence intervals, and the probability of improvement.

Agarwal et al., "Deep Reinforcement Learning at the Edge of the Statistical Precipice"
(NeurIPS 2021, https://arxiv.org/abs/2108.13264), the method of its ``rliable`` library
written in numpy (rliable 1.2.0 does not import with numpy 2). Scores are arrays
``[runs, tasks]``; a 1-D array is one task. "Stratified" means each bootstrap sample draws
runs with replacement within each task, so that every task keeps its number of runs.

Legend: ``R`` runs (seeds), ``T`` tasks (envs), ``B`` bootstrap samples.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Interval(NamedTuple):
    """A point estimate and its confidence interval ``[low, high]``."""

    value: float
    low: float
    high: float


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle half of all scores, a quarter of them cut
    from each end (``int(n / 4)`` of ``n``, as ``scipy.stats.trim_mean(x, 0.25)``)."""
    return float(_iqm(np.asarray(scores, dtype=float).reshape(1, -1))[0])


def _iqm(samples_BN: np.ndarray) -> np.ndarray:
    """IQM of each row of ``samples_BN``."""
    n = samples_BN.shape[1]
    if n == 0:
        raise ValueError("the IQM of no scores is undefined")
    cut = int(n * 0.25)
    return np.sort(samples_BN, axis=1)[:, cut : n - cut].mean(axis=1)


def _as_runs_by_tasks(scores: np.ndarray) -> np.ndarray:
    scores_RT = np.asarray(scores, dtype=float)
    return scores_RT[:, None] if scores_RT.ndim == 1 else scores_RT


def _resample(scores_RT: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """``reps`` stratified bootstrap samples ``[B, R, T]``: runs drawn with replacement per task."""
    runs, tasks = scores_RT.shape
    picks_BRT = rng.integers(0, runs, size=(reps, runs, tasks))
    return np.take_along_axis(scores_RT[None], picks_BRT, axis=1)


def iqm_ci(scores: np.ndarray, confidence: float = 0.95, reps: int = 2000, seed: int = 0) -> Interval:
    """IQM of ``scores`` (``[runs, tasks]`` or ``[runs]``) and its stratified bootstrap
    percentile interval at ``confidence`` from ``reps`` samples (seeded: reproducible)."""
    scores_RT = _as_runs_by_tasks(scores)
    samples_BRT = _resample(scores_RT, reps, np.random.default_rng(seed))
    estimates_B = _iqm(samples_BRT.reshape(reps, -1))
    low, high = np.quantile(estimates_B, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(iqm(scores_RT), float(low), float(high))


def iqm_band(curves_RG: np.ndarray, confidence: float = 0.95, reps: int = 2000, seed: int = 0) -> np.ndarray:
    """Pointwise :func:`iqm_ci` of curves ``[runs, points]``, as ``[3, points]`` rows of
    (IQM, low, high): the line and shaded band of a plot. All points share one set of
    resampled runs, the draws :func:`iqm_ci` makes for one point, so column ``g`` equals
    ``iqm_ci(curves_RG[:, g])`` exactly."""
    curves_RG = np.asarray(curves_RG, dtype=float)
    runs, points = curves_RG.shape
    picks_BR = np.random.default_rng(seed).integers(0, runs, size=(reps, runs))
    samples_GBR = curves_RG.T[:, picks_BR]  # each point's bootstrap samples of its runs
    estimates_GB = _iqm(samples_GBR.reshape(points * reps, runs)).reshape(points, reps)
    low_G, high_G = np.quantile(estimates_GB, [(1 - confidence) / 2, (1 + confidence) / 2], axis=1)
    return np.stack([_iqm(curves_RG.T), low_G, high_G])


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y): the chance that a run of ``x`` scores above a run of ``y`` on the same task
    (ties count a half), averaged over tasks. ``x`` and ``y``: ``[runs, tasks]``, the same
    tasks, any numbers of runs."""
    x_RT, y_RT = _as_runs_by_tasks(x), _as_runs_by_tasks(y)
    return float(_improvement(x_RT[None], y_RT[None])[0])


def _improvement(x_BRT: np.ndarray, y_BRT: np.ndarray) -> np.ndarray:
    """P(X > Y) of each bootstrap sample: all pairs of runs compared, task by task."""
    above = x_BRT[:, :, None, :] > y_BRT[:, None, :, :]  # [B, Rx, Ry, T]
    tied = x_BRT[:, :, None, :] == y_BRT[:, None, :, :]
    return (above + 0.5 * tied).mean(axis=(1, 2, 3))


def improvement_ci(x: np.ndarray, y: np.ndarray, confidence: float = 0.95, reps: int = 2000, seed: int = 0) -> Interval:
    """:func:`probability_of_improvement` of ``x`` over ``y`` and its stratified bootstrap
    percentile interval (``x`` and ``y`` resampled independently)."""
    x_RT, y_RT = _as_runs_by_tasks(x), _as_runs_by_tasks(y)
    if x_RT.shape[1] != y_RT.shape[1]:
        raise ValueError(f"x has {x_RT.shape[1]} tasks and y {y_RT.shape[1]}: compare them on the same tasks")
    rng = np.random.default_rng(seed)
    estimates_B = _improvement(_resample(x_RT, reps, rng), _resample(y_RT, reps, rng))
    low, high = np.quantile(estimates_B, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(probability_of_improvement(x_RT, y_RT), float(low), float(high))


def describe(interval: Interval, digits: int = 1) -> str:
    """``"412.3 [380.0, 450.2]"``: a value and its interval, for tables."""
    return f"{interval.value:.{digits}f} [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"
