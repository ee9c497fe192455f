"""dqnkit.stats against closed forms and brute force: every bootstrap sample of a tiny
array enumerated, every pair of runs compared in Python loops."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dqnkit.stats import Interval, describe, improvement_ci, iqm, iqm_band, iqm_ci, probability_of_improvement


def test_iqm_of_known_arrays():
    assert iqm(np.arange(1, 9)) == 4.5  # 1..8: 3, 4, 5, 6 kept
    assert iqm([1, 2, 3, 4, 100]) == 3.0  # one cut from each end of five
    assert iqm([7.0]) == 7.0
    assert iqm([[1, 2], [3, 4]]) == 2.5  # every run of every task together
    with pytest.raises(ValueError):
        iqm([])


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, st.integers(1, 40), elements=st.floats(-1e6, 1e6)))
def test_iqm_is_scipys_trim_mean(x):
    scipy_stats = pytest.importorskip("scipy.stats")
    assert iqm(x) == pytest.approx(scipy_stats.trim_mean(x, 0.25), rel=1e-9, abs=1e-6)


def _exact_bootstrap(scores_RT: np.ndarray, statistic) -> np.ndarray:
    """The statistic of every stratified bootstrap sample, each equally likely."""
    runs, tasks = scores_RT.shape
    per_task = [list(itertools.product(scores_RT[:, t], repeat=runs)) for t in range(tasks)]
    return np.array([statistic(np.array(sample).T) for sample in itertools.product(*per_task)])


def _is_quantile(exact: np.ndarray, value: float, q: float, tol: float = 0.01) -> bool:
    """``value`` is the q-quantile of the discrete distribution ``exact``, up to Monte Carlo error."""
    return np.mean(exact < value) <= q + tol and np.mean(exact <= value) >= q - tol


def test_iqm_ci_is_the_percentile_interval_of_the_exact_stratified_bootstrap():
    scores_RT = np.array([[1.0, 10.0], [2.0, 30.0], [7.0, 20.0]])  # 3 runs of 2 tasks: 27 * 27 samples
    exact = _exact_bootstrap(scores_RT, iqm)
    ci = iqm_ci(scores_RT, reps=40_000, seed=1)
    assert ci.value == iqm(scores_RT)
    assert _is_quantile(exact, ci.low, 0.025) and _is_quantile(exact, ci.high, 0.975)
    assert iqm_ci(scores_RT, reps=500, seed=3) == iqm_ci(scores_RT, reps=500, seed=3)  # seeded


def test_iqm_ci_covers_the_centre_about_95_times_in_100():
    rng = np.random.default_rng(0)
    covered = [ci.low <= 0 <= ci.high for ci in (iqm_ci(rng.standard_normal(30), reps=1000) for _ in range(200))]
    assert 0.88 <= np.mean(covered) <= 0.99  # the percentile bootstrap runs a little short at n = 30


def test_probability_of_improvement_is_the_share_of_pairs_won():
    x, y = np.array([[1.0, 5.0], [3.0, 6.0], [4.0, 6.0]]), np.array([[2.0, 6.0], [3.0, 4.0]])
    per_task = []
    for t in range(2):
        pairs = [(a, b) for a in x[:, t] for b in y[:, t]]
        per_task.append(sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs))
    assert probability_of_improvement(x, y) == pytest.approx(np.mean(per_task))
    assert probability_of_improvement([1, 2], [1, 2]) == 0.5
    assert probability_of_improvement([3, 4], [1, 2]) == 1.0


def test_improvement_ci_is_the_percentile_interval_of_the_exact_bootstrap():
    x, y = np.array([1.0, 4.0, 6.0]), np.array([2.0, 3.0, 5.0])
    exact = np.array(
        [
            probability_of_improvement(np.array(xs), np.array(ys))
            for xs in itertools.product(x, repeat=3)
            for ys in itertools.product(y, repeat=3)
        ]
    )
    ci = improvement_ci(x, y, reps=40_000, seed=2)
    assert ci.value == probability_of_improvement(x, y)
    assert _is_quantile(exact, ci.low, 0.025) and _is_quantile(exact, ci.high, 0.975)
    with pytest.raises(ValueError, match="same tasks"):
        improvement_ci(np.ones((2, 2)), np.ones((2, 3)))


def test_describe():
    assert describe(Interval(412.34, 380.0, 450.25)) == "412.3 [380.0, 450.2]"


def test_iqm_band_is_iqm_ci_at_every_point():
    curves_RG = np.random.default_rng(4).normal(size=(5, 7))
    band = iqm_band(curves_RG, reps=300, seed=2)
    assert band.shape == (3, 7)
    for g in range(7):  # the same draws as one point's interval: equal, not just close
        assert tuple(band[:, g]) == tuple(iqm_ci(curves_RG[:, g], reps=300, seed=2))
