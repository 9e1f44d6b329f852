"""Asymptotic performance and sample efficiency of one run, from its learning curve.

A learning curve is two equally long sequences: ``frames`` (env frames at which a value was logged,
non-decreasing) and ``values`` (e.g. the leader's mean episode return; ``NaN`` where none was
available yet). The frame budget is the last logged frame, ``frames[-1]``, unless ``budget`` is given.
Everything is plain NumPy; lists and arrays are accepted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["final_performance", "frames_to_threshold", "normalized_auc"]

ArrayLike = Sequence[float] | np.ndarray


def _curve(
    frames: ArrayLike, values: ArrayLike, budget: float | None, check_budget: bool = True
) -> tuple[np.ndarray, np.ndarray, float]:
    frames = np.asarray(frames, dtype=np.float64).reshape(-1)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if frames.shape != values.shape:
        raise ValueError(f"frames and values differ in length: {frames.size} != {values.size}")
    if frames.size == 0:
        raise ValueError("the learning curve is empty")
    if not np.all(np.isfinite(frames)) or np.any(frames < 0):
        raise ValueError("frames must be finite and >= 0")
    if np.any(np.diff(frames) < 0):
        raise ValueError("frames must be non-decreasing")
    budget = float(frames[-1]) if budget is None else float(budget)
    if check_budget and not budget > 0:
        raise ValueError(f"the frame budget must be > 0, got {budget}")
    return frames, values, budget


def final_performance(
    frames: ArrayLike, values: ArrayLike, fraction: float = 0.1, *, budget: float | None = None
) -> float:
    """Mean of the values logged in the last ``fraction`` of the frame budget (asymptotic performance).

    The window is ``(1 - fraction) * budget <= frame <= budget`` (both ends included). ``NaN`` values are ignored;
    the result is ``NaN`` when the window holds no finite value.

    Args:
        frames (array-like): logged frames, non-decreasing.
        values (array-like): the value at each frame.
        fraction (float): width of the window as a fraction of the budget, in ``(0, 1]``. Defaults to ``0.1``.

    Keyword Args:
        budget (float, optional): the frame budget. Defaults to ``frames[-1]``.

    Returns:
        float: the window's mean value.

    Examples:
        >>> final_performance([10, 20, 30, 40, 50, 60, 70, 80, 90, 100], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 0.2)
        8.0
        >>> # the window is frames 80, 90 and 100: (7 + 8 + 9) / 3
        >>> final_performance([50, 100], [1.0, float("nan")])  # no finite value in [90, 100]
        nan
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction} is not accepted: it must be in (0, 1]")
    frames, values, budget = _curve(frames, values, budget)
    start = budget - fraction * budget - 1e-9 * budget  # the boundary frame counts, despite rounding
    window = (frames >= start) & (frames <= budget) & np.isfinite(values)
    return float(values[window].mean()) if window.any() else math.nan


def normalized_auc(
    frames: ArrayLike, values: ArrayLike, low: float, high: float, *, budget: float | None = None
) -> float:
    """Area under the learning curve over the frame budget, normalised to ``[0, 1]`` (sample efficiency).

    Exactly:

    1. Values are mapped to ``u = (v - low) / (high - low)`` (not clipped: a curve above ``high`` or
       below ``low`` leaves ``[0, 1]``).
    2. ``NaN`` values before the first finite value count as ``low`` (``u = 0``); later ``NaN`` values are
       dropped (the curve is interpolated across them).
    3. The curve is piecewise linear through the remaining points. If the first frame is after 0, the
       point ``(0, low)`` is prepended (an untrained run scores ``low``); if the last finite value is
       logged before the budget, it is held constant up to the budget. Points after the budget are cut
       off (the curve is interpolated at the budget).
    4. The area (trapezoid rule over frames, from 0 to the budget) is divided by the budget.

    So a curve at ``high`` from frame 0 to the budget gives 1, one at ``low`` gives 0, and a curve that
    climbs linearly from ``low`` at frame 0 to ``high`` at the budget gives 0.5.

    Args:
        frames (array-like): logged frames, non-decreasing, ``>= 0``.
        values (array-like): the value at each frame.
        low (float): the score mapped to 0 (e.g. a random policy's return).
        high (float): the score mapped to 1 (e.g. the best final score among the compared variants).

    Keyword Args:
        budget (float, optional): the frame budget. Defaults to ``frames[-1]``.

    Returns:
        float: the normalised area.

    Examples:
        >>> normalized_auc([0, 10, 20, 40], [0.0, 10.0, 10.0, 0.0], low=0.0, high=10.0)  # (5 + 10 + 10) / 40
        0.625
        >>> normalized_auc([10, 20], [float("nan"), 4.0], low=0.0, high=4.0)  # (0, 0), (10, 0), (20, 1)
        0.25
    """
    if not high > low:
        raise ValueError(f"high={high} must be greater than low={low}")
    frames, values, budget = _curve(frames, values, budget)
    u = (values - low) / (high - low)
    finite = np.isfinite(u)
    if finite.any():
        first = int(np.argmax(finite))
        keep = finite | (np.arange(u.size) < first)
    else:
        keep = np.ones_like(finite)
    x, y = frames[keep], np.where(finite, u, 0.0)[keep]
    if x[0] > 0:
        x, y = np.concatenate([[0.0], x]), np.concatenate([[0.0], y])
    if x[-1] < budget:
        x, y = np.concatenate([x, [budget]]), np.concatenate([y, [y[-1]]])
    elif x[-1] > budget:
        inside = x < budget
        y_budget = np.interp(budget, x, y)
        x, y = np.concatenate([x[inside], [budget]]), np.concatenate([y[inside], [y_budget]])
    area = float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))
    return area / budget


def frames_to_threshold(frames: ArrayLike, values: ArrayLike, threshold: float) -> float:
    """The first logged frame whose value is ``>= threshold``, ``NaN`` if none is (``NaN`` values never are).

    For the study's sample-efficiency measure, ``threshold`` is a fixed fraction of the best final score
    among the compared variants (see :func:`final_performance`).

    Examples:
        >>> frames_to_threshold([10, 20, 30], [1.0, 5.0, 9.0], 5.0)
        20.0
        >>> frames_to_threshold([10, 20, 30], [1.0, 5.0, 9.0], 10.0)
        nan
    """
    frames, values, _ = _curve(frames, values, None, check_budget=False)
    reached = np.nonzero(values >= threshold)[0]  # False for NaN
    return float(frames[reached[0]]) if reached.size else math.nan
