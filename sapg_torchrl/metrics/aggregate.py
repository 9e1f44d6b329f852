"""Aggregates across seeds with rliable's conventions: IQM and probability of improvement, with 95%
stratified-bootstrap confidence intervals (percentile method).

`rliable <https://github.com/google-research/rliable>`_ is imported on first use (it is an optional
dependency). Scores are given per run (one scalar per seed, shape ``(n_seeds,)``) or, as rliable takes
them, per run and task (``(n_runs, n_tasks)``); a 1-D array is one task.

Each call draws its bootstrap from numpy's generator seeded with ``seed`` (afresh per variant in
:func:`iqm_with_ci`), so results are reproducible and a variant's interval does not depend on which other
variants are passed. rliable 1.2 draws from numpy's *global* generator whatever ``random_state`` it is
given, so the global state is seeded for the call and restored afterwards (not thread-safe).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np

__all__ = ["iqm_difference", "iqm_with_ci", "probability_of_improvement"]


def _rliable():
    try:
        from rliable import library, metrics
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "sapg_torchrl.metrics.aggregate needs rliable: pip install 'rliable>=1.2' "
            "(with arch<8, which needs pandas<3)"
        ) from error
    return library, metrics


def _as_runs_by_tasks(scores, name: str) -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: expected scores of shape (n_seeds,) or (n_runs, n_tasks), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: scores must be finite")
    return array


def _interval(func, data, reps: int, seed: int, confidence: float) -> tuple[float, float, float]:
    library, _ = _rliable()
    # rliable (1.2) draws its resampling indices from numpy's global generator (np.random.choice), not
    # from the random_state it is given: seed the global generator for the call and restore it after.
    global_state = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():  # arch >= 7 deprecates the random_state that rliable passes
            warnings.filterwarnings("ignore", message=".*random_state.*", category=FutureWarning)
            point, interval = library.get_interval_estimates(
                {"x": data},
                func,
                reps=reps,
                confidence_interval_size=confidence,
                random_state=np.random.RandomState(seed),
            )
    finally:
        np.random.set_state(global_state)
    return float(point["x"][0]), float(interval["x"][0, 0]), float(interval["x"][1, 0])


def iqm_with_ci(
    scores: Mapping[str, np.ndarray], reps: int = 2000, seed: int = 0, *, confidence: float = 0.95
) -> dict[str, tuple[float, float, float]]:
    """Interquartile mean of each variant's scores with a stratified-bootstrap confidence interval.

    The IQM is rliable's :func:`metrics.aggregate_iqm`, i.e. ``scipy.stats.trim_mean(scores, 0.25)`` over
    all runs and tasks: ``int(0.25 * n)`` scores are cut from each end of the ``n`` sorted scores and the
    rest averaged (IQM of ``1..8`` is the mean of ``3..6``; of 5 seeds, the mean of the middle 3). The
    interval is rliable's ``get_interval_estimates`` (runs resampled with replacement within each task,
    percentile method).

    Args:
        scores (dict): variant name -> scores, ``(n_seeds,)`` or ``(n_runs, n_tasks)``.
        reps (int): bootstrap replications. Defaults to ``2000``.
        seed (int): seed of every variant's bootstrap. Defaults to ``0``.

    Keyword Args:
        confidence (float): coverage of the interval. Defaults to ``0.95``.

    Returns:
        dict: variant name -> ``(iqm, low, high)``.

    Examples:
        >>> iqm, low, high = iqm_with_ci({"sapg": np.arange(1.0, 9.0)}, reps=200)["sapg"]
        >>> iqm, bool(low <= iqm <= high)
        (4.5, True)
    """
    _, metrics = _rliable()

    def func(x):
        return np.array([metrics.aggregate_iqm(x)])

    return {
        name: _interval(func, _as_runs_by_tasks(values, name), reps, seed, confidence)
        for name, values in scores.items()
    }


def probability_of_improvement(
    x: np.ndarray, y: np.ndarray, reps: int = 2000, seed: int = 0, *, confidence: float = 0.95
) -> tuple[float, float, float]:
    """``P(X > Y)``: the probability that a run of ``x`` scores higher than a run of ``y``, with a
    stratified-bootstrap confidence interval.

    The point estimate is rliable's :func:`metrics.probability_of_improvement`: the Mann-Whitney ``U``
    statistic over all ``n_x * n_y`` pairs of runs (a tie counts 1/2) divided by ``n_x * n_y``, averaged
    over tasks. The interval resamples the runs of ``x`` and ``y`` independently (rliable's
    ``get_interval_estimates`` on the pair).

    Args:
        x (array): scores of the first variant (e.g. ``sapg``), ``(n_seeds_x,)`` or ``(n_runs, n_tasks)``.
        y (array): scores of the second variant, same number of tasks.
        reps (int): bootstrap replications. Defaults to ``2000``.
        seed (int): seed of the bootstrap. Defaults to ``0``.

    Keyword Args:
        confidence (float): coverage of the interval. Defaults to ``0.95``.

    Returns:
        tuple: ``(p, low, high)``.

    Examples:
        >>> p, low, high = probability_of_improvement(np.array([3.0, 4.0]), np.array([1.0, 3.0]), reps=200)
        >>> p  # pairs (3>1, 3=3, 4>1, 4>3): (1 + 0.5 + 1 + 1) / 4
        0.875
    """
    _, metrics = _rliable()
    return _compare(metrics.probability_of_improvement, x, y, reps, seed, confidence)


def _compare(statistic, x, y, reps: int, seed: int, confidence: float) -> tuple[float, float, float]:
    """``statistic(x, y)`` with its interval, the runs of ``x`` and ``y`` resampled independently."""
    x, y = _as_runs_by_tasks(x, "x"), _as_runs_by_tasks(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y have different numbers of tasks: {x.shape[1]} != {y.shape[1]}")
    return _interval(lambda a, b: np.array([statistic(a, b)]), [x, y], reps, seed, confidence)


def iqm_difference(
    x: np.ndarray, y: np.ndarray, reps: int = 2000, seed: int = 0, *, confidence: float = 0.95
) -> tuple[float, float, float]:
    """The effect size ``IQM(x) - IQM(y)`` in the scores' own units, with a stratified-bootstrap confidence interval
    (the runs of ``x`` and ``y`` resampled independently, as for :func:`probability_of_improvement`).

    Args:
        x (array): scores of the first variant (e.g. ``sapg``), ``(n_seeds_x,)`` or ``(n_runs, n_tasks)``.
        y (array): scores of the second variant, same number of tasks.
        reps (int): bootstrap replications. Defaults to ``2000``.
        seed (int): seed of the bootstrap. Defaults to ``0``.

    Keyword Args:
        confidence (float): coverage of the interval. Defaults to ``0.95``.

    Returns:
        tuple: ``(difference, low, high)``.

    Examples:
        >>> d, low, high = iqm_difference(np.array([3.0, 4.0, 5.0, 6.0]), np.array([1.0, 2.0, 3.0, 4.0]), reps=200)
        >>> d  # IQM of 4 scores: the mean of the middle 2, 4.5 - 2.5
        2.0
    """
    _, metrics = _rliable()
    return _compare(lambda a, b: metrics.aggregate_iqm(a) - metrics.aggregate_iqm(b), x, y, reps, seed, confidence)
