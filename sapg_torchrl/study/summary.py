"""Every number of a study's report, from a :class:`~sapg_torchrl.study.Study`, with
:mod:`sapg_torchrl.metrics` (rliable's IQM and probability of improvement, PCA and autoencoder errors)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from sapg_torchrl.metrics import (
    autoencoder_reconstruction_error,
    curve_area,
    final_performance,
    frames_to_threshold,
    iqm_difference,
    iqm_with_ci,
    load_states,
    normalized_auc,
    pca_reconstruction_error,
    probability_of_improvement,
)
from sapg_torchrl.loss import LR_BOUNDS
from sapg_torchrl.study.runs import REFERENCE, Study

__all__ = ["MEASURES", "Summary", "summarize", "Interval"]

FINAL_FRACTION = 0.1  # asymptotic performance: the last 10% of the budget
EVAL_POINTS = 3  # the evaluation measure: the mean of the last 3 evaluations of the leader
THRESHOLD_FRACTION = 0.8  # sample efficiency: frames to reach low + 0.8 * (high - low)
BOTTLENECKS = (1, 2, 4)

MEASURES = {
    "final": "training return",
    "eval": "evaluation return",
}
"""The two co-primary measures of asymptotic performance, both of the leader: ``final``, the paper's (the mean
return of its training episodes over the last 10% of the budget, exploration noise included), and ``eval``, its
deterministic evaluation on fresh envs, averaged over the last 3 evaluation points (one evaluation is noisy)."""

Interval = tuple[float, float, float]
NAN_INTERVAL: Interval = (math.nan, math.nan, math.nan)


@dataclass
class Summary:
    """Every number of the report.

    Attributes:
        per_run (dict): variant -> {metric -> array over the variant's runs (seed order)}: ``final``
            (leader's mean return over the last 10% of the budget), ``eval`` (mean of the leader's last 3
            evaluations), ``auc`` (normalised AUC), ``frames`` (frames to threshold, the budget when not reached),
            ``reached`` (bool), ``lr`` (the run's median learning rate over its iterations), ``lr_at_cap`` (the
            fraction of its iterations at the schedule's upper bound).
        iqm (dict): metric (``final``, ``eval``, ``auc``, ``frames``) -> variant -> ``(iqm, low, high)``.
        poi (dict): measure (:data:`MEASURES`) -> variant -> ``(P(sapg > variant), low, high)``.
        effect (dict): measure -> variant -> ``(IQM(sapg) - IQM(variant), low, high)``, in the measure's units.
        lr (dict): variant -> ``(median over seeds of the runs' median learning rates, mean fraction at the cap)``.
        low, high, threshold (float): AUC normalisation and the threshold of frames-to-threshold.
        best_variant (str): the variant with the highest IQM of ``final``.
        tuned_ppo (dict): measure -> the PPO variant (one block, see :attr:`Study.ppo_grid`) with the highest IQM on
            that measure: the tuned PPO baseline, chosen per measure (empty without PPO variants).
        diversity (dict): variant -> {``states``, ``pca`` (curve), ``pca_area``, ``ae`` ({width: error}),
            ``entropy``, ``kl``}.
        curves (dict): variant -> ``(grid, iqm, band_low, band_high)`` of the leader's return.
        coupling (dict): variant -> {``awac_weight_mean``, ``awac_clamped_fraction``, ``follower_leader_kl``,
            ``discriminator_accuracy`` (NaN without a discriminator)} for the variants that log CPO's coupling: each run's mean over the iterations of the last 10% of its budget
            (the KL: over the followers too), then the mean over seeds.
        notes (list of str): remarks on the numbers (runs left out of an aggregate, ...).
    """

    per_run: dict
    iqm: dict
    poi: dict
    effect: dict
    lr: dict
    low: float
    high: float
    threshold: float
    best_variant: str | None
    tuned_ppo: dict
    diversity: dict
    curves: dict
    bottlenecks: tuple
    notes: list
    coupling: dict = field(default_factory=dict)


def _float(value) -> float:
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def _finite_iqm(scores: dict[str, np.ndarray], reps: int, seed: int) -> dict[str, Interval]:
    out = {}
    for variant, values in scores.items():
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        out[variant] = iqm_with_ci({variant: values}, reps=reps, seed=seed)[variant] if values.size else NAN_INTERVAL
    return out


def improvement_over(
    per_run: dict, metric: str, *, reps: int = 2000, seed: int = 0, compare=probability_of_improvement
) -> dict[str, Interval]:
    """``compare(sapg, variant)`` on one per-run ``metric`` (``"final"`` or ``"eval"`` of :attr:`Summary.per_run`)
    for every variant but ``sapg``, over the runs with a finite value: ``P(sapg > variant)`` by default, or e.g.
    :func:`~sapg_torchrl.metrics.iqm_difference`; empty without ``sapg``."""
    if REFERENCE not in per_run:
        return {}
    x = per_run[REFERENCE][metric]
    x = x[np.isfinite(x)]
    out = {}
    for variant, d in per_run.items():
        if variant != REFERENCE:
            y = d[metric][np.isfinite(d[metric])]
            out[variant] = compare(x, y, reps=reps, seed=seed) if x.size and y.size else NAN_INTERVAL
    return out


def last_evaluations(run, points: int = EVAL_POINTS) -> float:
    """The mean of the leader's last ``points`` evaluation returns of ``run`` (fewer if it has fewer; ``NaN`` if
    none).

    Examples:
        >>> from types import SimpleNamespace
        >>> last_evaluations(SimpleNamespace(eval_return=np.array([np.nan, 1.0, np.nan, 2.0, 3.0, 7.0])))
        4.0
    """
    values = run.eval_return[np.isfinite(run.eval_return)]
    return float(values[-points:].mean()) if values.size else math.nan


def _learning_rates(runs, cap: float) -> tuple[np.ndarray, np.ndarray]:
    """Each run's median learning rate over its iterations, and the fraction of them at ``cap``."""
    medians = np.array([np.nanmedian(r.lr) if np.isfinite(r.lr).any() else math.nan for r in runs])
    at_cap = np.array([np.mean(r.lr[np.isfinite(r.lr)] >= cap * (1 - 1e-6)) if np.isfinite(r.lr).any() else math.nan
                       for r in runs])  # fmt: skip
    return medians, at_cap


def _learning_curves(study: Study, points: int, reps: int, seed: int) -> dict:
    """IQM over seeds of the leader's return on a common frame grid, with a percentile-bootstrap band.

    Each run's curve is interpolated linearly onto the grid (``NaN`` before its first finished episode
    and after its last frame). At each grid point the IQM is over the seeds that have a value there, and
    the band is the 2.5-97.5 percentiles of the IQM over ``reps`` resamplings of those seeds with
    replacement (one task: rliable's stratified bootstrap is this plain bootstrap).
    """
    from scipy.stats import trim_mean

    budget = max(run.budget for run in study.all_runs)
    grid = np.linspace(0.0, budget, points)
    rng = np.random.default_rng(seed)
    out = {}
    for variant, runs in study.runs.items():
        table = np.full((len(runs), points), np.nan)
        for i, run in enumerate(runs):
            finite = np.isfinite(run.leader_return)
            if not finite.any():
                continue
            x, y = run.frames[finite], run.leader_return[finite]
            inside = (grid >= x[0]) & (grid <= run.frames[-1])
            table[i, inside] = np.interp(grid[inside], x, y)
        iqm, low, high = (np.full(points, np.nan) for _ in range(3))
        for j in range(points):
            values = table[:, j][np.isfinite(table[:, j])]
            if values.size == 0:
                continue
            iqm[j] = trim_mean(values, 0.25)
            boot = trim_mean(values[rng.integers(0, values.size, (reps, values.size))], 0.25, axis=1)
            low[j], high[j] = np.percentile(boot, [2.5, 97.5])
        out[variant] = (grid, iqm, low, high)
    return out


def _diversity(study: Study, seed: int, max_states: int | None, ae_epochs: int, notes: list) -> tuple[dict, tuple]:
    out = {variant: {} for variant in study.runs}
    for variant, runs in study.runs.items():
        entropies = [float(np.mean(r.result["diversity/entropy_per_block"]))
                     for r in runs if r.result.get("diversity/entropy_per_block")]  # fmt: skip
        kls = []
        for run in runs:
            kl = run.result.get("diversity/pairwise_kl")
            if kl is None:
                continue
            kl = np.asarray(kl, dtype=np.float64)
            if kl.ndim == 2 and kl.shape[0] > 1:
                m = kl.shape[0]
                kls.append(float((kl.sum() - np.trace(kl)) / (m * (m - 1))))
        out[variant]["entropy"] = float(np.mean(entropies)) if entropies else math.nan
        out[variant]["kl"] = float(np.mean(kls)) if kls else None  # None: one block, no pair
        out[variant]["kl_runs"] = len(kls)
    pooled = {}
    for variant, runs in study.runs.items():
        states = []
        for run in runs:
            if run.states_path is None:
                continue
            s = load_states(run.states_path)
            if s.numel():
                states.append(s.reshape(s.shape[0], -1).to(torch.float64).cpu())
        if states:
            pooled[variant] = torch.cat(states)
    missing = [v for v in study.runs if v not in pooled]
    if missing:
        notes.append(f"no recorded states (`states.pt`, train.record_states) for: {', '.join(missing)}")
    widths = [pooled_variant.shape[1] for pooled_variant in pooled.values()]
    bottlenecks: tuple = ()
    if pooled and len(set(widths)) == 1 and min(s.shape[0] for s in pooled.values()) >= 5:
        count = min(s.shape[0] for s in pooled.values())
        count = count if max_states is None else min(count, max_states)
        pca = pca_reconstruction_error(pooled, seed=seed, max_states=max_states)
        areas = curve_area(pca)
        dim = widths[0]
        bottlenecks = tuple(w for w in BOTTLENECKS if w < dim)
        ae = {}
        if bottlenecks:
            ae = autoencoder_reconstruction_error(pooled, bottlenecks=bottlenecks, epochs=ae_epochs, seed=seed,
                                                  max_states=max_states)  # fmt: skip
        else:
            notes.append(f"observations have {dim} dimension(s): no autoencoder bottleneck of {BOTTLENECKS} is smaller")
        for variant in pooled:
            out[variant].update(states=count, pooled=int(pooled[variant].shape[0]), pca=pca[variant],
                                pca_area=areas[variant], ae=ae.get(variant, {}))  # fmt: skip
    elif pooled:
        notes.append("the recorded states differ in width between variants or are too few: no PCA/autoencoder errors")
    return out, bottlenecks


def summarize(
    study: Study,
    *,
    reps: int = 2000,
    seed: int = 0,
    diversity: bool = True,
    max_states: int | None = None,
    ae_epochs: int = 30,
    curve_points: int = 100,
) -> Summary:
    """Every number of the report (see :class:`Summary`).

    - ``final``: :func:`~sapg_torchrl.metrics.final_performance` of ``return/leader`` over the last 10% of
      the run's budget (its last logged frame); runs without a finished episode there are left out of the
      aggregates (noted).
    - ``eval``: the mean of the leader's last 3 deterministic evaluations (``eval/return`` in ``metrics.csv``;
      :func:`last_evaluations`); a diverged run's is the study's floor, like its return from the iteration it
      diverged on.
    - ``auc``: :func:`~sapg_torchrl.metrics.normalized_auc` with ``low`` the minimum of all runs' leader
      returns and ``high`` the best variant's IQM of ``final``.
    - ``frames``: :func:`~sapg_torchrl.metrics.frames_to_threshold` at ``low + 0.8 (high - low)``; a run
      that never reaches it counts as its budget.
    - IQM and intervals: :func:`~sapg_torchrl.metrics.iqm_with_ci` (``reps`` replications, ``seed``); on both
      measures (:data:`MEASURES`), the probability of improvement of ``sapg`` over each other variant and the
      effect size :func:`~sapg_torchrl.metrics.iqm_difference`; the tuned PPO baseline per measure.
    - learning rates: each run's median ``train/lr`` and the fraction of its iterations at the schedule's upper
      bound; per variant the median over seeds and the mean fraction.
    - diversity: the states of all seeds of a variant pooled, then
      :func:`~sapg_torchrl.metrics.pca_reconstruction_error` (equal count per variant) and its
      :func:`~sapg_torchrl.metrics.curve_area`, :func:`~sapg_torchrl.metrics.autoencoder_reconstruction_error`
      for the bottlenecks (1, 2, 4) smaller than the observation, the mean over seeds of the mean per-block
      entropy and of the mean off-diagonal pairwise KL (``result.json``).
    """
    notes: list[str] = []
    per_run: dict = {}
    for variant, runs in study.runs.items():
        lr, at_cap = _learning_rates(runs, LR_BOUNDS[1])
        per_run[variant] = {
            "final": np.array([final_performance(r.frames, r.leader_return, FINAL_FRACTION) for r in runs]),
            "eval": np.array([study.floor if r.diverged_at is not None else last_evaluations(r) for r in runs]),
            "lr": lr,
            "lr_at_cap": at_cap,
        }
    for metric, what in (("final", "no finished episode in the last 10% of the budget"),
                         ("eval", "no evaluation return")):  # fmt: skip
        bad = []
        for variant, runs in study.runs.items():
            missing = [r.seed for r, v in zip(runs, per_run[variant][metric], strict=True) if not math.isfinite(v)]
            if len(missing) == len(runs):
                bad.append(f"{variant} (all {len(runs)} runs)")
            elif missing:
                bad.append(f"{variant} (seed{'s' * (len(missing) > 1)} {', '.join(map(str, missing))})")
        if bad:
            notes.append(f"{what}, left out of that aggregate: {'; '.join(bad)}")
    iqm = {"final": _finite_iqm({v: d["final"] for v, d in per_run.items()}, reps, seed),
           "eval": _finite_iqm({v: d["eval"] for v, d in per_run.items()}, reps, seed)}  # fmt: skip

    finals = {v: t[0] for v, t in iqm["final"].items() if math.isfinite(t[0])}
    best = max(finals, key=finals.get) if finals else None
    tuned_ppo = {}
    for measure in MEASURES:
        points = {v: iqm[measure][v][0] for v in study.ppo_grid if math.isfinite(iqm[measure][v][0])}
        if points:
            tuned_ppo[measure] = max(points, key=points.get)
    lr = {v: (float(np.nanmedian(d["lr"])) if np.isfinite(d["lr"]).any() else math.nan,
              float(np.nanmean(d["lr_at_cap"])) if np.isfinite(d["lr_at_cap"]).any() else math.nan)
          for v, d in per_run.items()}  # fmt: skip
    values = np.concatenate([r.leader_return for r in study.all_runs])
    low = float(np.nanmin(values)) if np.isfinite(values).any() else math.nan
    high = finals[best] if best is not None else math.nan
    threshold = low + THRESHOLD_FRACTION * (high - low)
    if not high > low:  # also NaN
        notes.append(f"the best IQM final score ({high:.4g}) is not above the lowest return ({low:.4g}): "
                     "no normalised AUC nor threshold")  # fmt: skip
        threshold = math.nan
    for variant, runs in study.runs.items():
        d = per_run[variant]
        if math.isnan(threshold):
            d["auc"] = d["frames"] = np.full(len(runs), math.nan)
            d["reached"] = np.zeros(len(runs), dtype=bool)
            continue
        d["auc"] = np.array([normalized_auc(r.frames, r.leader_return, low, high) for r in runs])
        hit = np.array([frames_to_threshold(r.frames, r.leader_return, threshold) for r in runs])
        d["reached"] = np.isfinite(hit)
        d["frames"] = np.where(d["reached"], hit, [r.budget for r in runs])
    iqm["auc"] = _finite_iqm({v: d["auc"] for v, d in per_run.items()}, reps, seed)
    iqm["frames"] = _finite_iqm({v: d["frames"] for v, d in per_run.items()}, reps, seed)

    poi = {m: improvement_over(per_run, m, reps=reps, seed=seed) for m in MEASURES}
    effect = {m: improvement_over(per_run, m, reps=reps, seed=seed, compare=iqm_difference) for m in MEASURES}
    div, bottlenecks = _diversity(study, seed, max_states, ae_epochs, notes) if diversity else ({}, ())
    curves = _learning_curves(study, curve_points, reps, seed)
    return Summary(per_run, iqm, poi, effect, lr, low, high, threshold, best, tuned_ppo, div, curves, bottlenecks,
                   notes, _coupling(study))  # fmt: skip


def _coupling(study: Study) -> dict:
    """CPO's coupling per variant (see :attr:`Summary.coupling`)."""
    out = {}
    for variant, runs in study.runs.items():
        if not all(run.coupling for run in runs):
            continue
        values: dict = {"awac_weight_mean": [], "awac_clamped_fraction": [], "follower_leader_kl": [],
                        "discriminator_accuracy": []}  # fmt: skip
        for run in runs:
            c = run.coupling
            leader = run.config.get("sapg", {}).get("leader", "last")
            kl = [c[k] for k in sorted(c) if k.startswith("train/follower_leader_kl/")]
            leader = len(kl) - 1 if leader == "last" else 0 if leader == "first" else int(leader) % len(kl)
            followers = np.nanmean(np.stack([k for b, k in enumerate(kl) if b != leader]), axis=0)
            accuracy = c.get("train/discriminator_accuracy", np.full(len(run.frames), np.nan))  # cpo_adr only
            for name, series in (("awac_weight_mean", c["train/awac_weight_mean"]),
                                 ("awac_clamped_fraction", c["train/awac_clamped_fraction"]),
                                 ("follower_leader_kl", followers), ("discriminator_accuracy", accuracy)):  # fmt: skip
                values[name].append(final_performance(run.frames, series, FINAL_FRACTION))
        out[variant] = {name: float(np.nanmean(v)) if np.isfinite(v).any() else math.nan for name, v in values.items()}
    return out


# ------------------------------------------------------------------------------------------ report
