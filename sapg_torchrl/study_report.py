"""The ablation study's report: load a study folder, aggregate across seeds, write ``report.md`` and plots.

A study folder is what ``recipes/study.py`` writes: ``<folder>/<ablation>/seed<k>/`` run folders, each
with ``config.yaml``, ``metrics.csv``, ``result.json`` (once finished) and ``states.pt`` (with
``train.record_states``). :func:`load_study` reads the finished runs; :func:`summarize` computes every
number of the report (spec section 3) with :mod:`sapg_torchrl.metrics`; :func:`write_report` writes
``report.md`` and PNG plots::

    from sapg_torchrl.study_report import load_study, write_report
    study = load_study("runs/study/mountaincar")
    write_report(study, "runs/study/mountaincar/report", command="python recipes/report.py runs/study/mountaincar")

All scores are the leader's (``return/leader``; with ``no_split`` the single policy on all envs). Across
seeds: rliable's interquartile mean (IQM) with 95% stratified-bootstrap intervals and the probability of
improvement of ``sapg`` over each ablation (:mod:`sapg_torchrl.metrics.aggregate`).

Needs ``rliable``, ``pandas`` and ``matplotlib`` (the ``study`` extra).
"""

from __future__ import annotations

import json
import math
import re
import shlex
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sapg_torchrl.metrics import (
    StateReservoir,
    autoencoder_reconstruction_error,
    curve_area,
    final_performance,
    frames_to_threshold,
    iqm_with_ci,
    normalized_auc,
    pca_reconstruction_error,
    probability_of_improvement,
)

__all__ = [
    "VARIANT_ORDER", "Run", "Study", "Summary", "default_study_command", "load_study", "summarize", "write_report",
]

VARIANT_ORDER = ("sapg", "no_split", "symmetric", "no_off_policy", "no_is_correction", "no_entropy", "disjoint")
"""The spec's order of the variants; others found in a study folder follow, sorted by name."""

REFERENCE = "sapg"
FINAL_FRACTION = 0.1  # asymptotic performance: the last 10% of the budget
THRESHOLD_FRACTION = 0.8  # sample efficiency: frames to reach low + 0.8 * (high - low)
BOTTLENECKS = (1, 2, 4)
PAPER_NUM_ENVS = 24576  # the published default N (spec section 1)
MIN_SEEDS = 5
# settings every run of the study must share: (dotted config key, name in the report)
SHARED_KEYS = (
    ("env.make.env_name", "task"),
    ("env.num_envs", "N"),
    ("ppo.horizon", "T"),
    ("total_frames", "frame budget"),
)
DASH = "–"


# ------------------------------------------------------------------------------------------ loading
def _get(config: dict, dotted: str, default=None):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


@dataclass
class Run:
    """One finished run of the study.

    Attributes:
        variant (str): the ablation (folder name).
        seed (int): the seed (``seed<k>`` folder).
        path (Path): the run folder.
        config (dict): the resolved ``config.yaml``.
        frames (np.ndarray): ``frames`` of every iteration (``metrics.csv``).
        leader_return (np.ndarray): ``return/leader`` of every iteration (``NaN`` before the first episode).
        result (dict): ``result.json``.
        states_path (Path or None): ``states.pt`` when the run recorded states.
        choices (dict): Hydra's group choices of the run (``.hydra/hydra.yaml``; empty if absent).
        overrides (list of str): the run's Hydra overrides (``.hydra/overrides.yaml``; empty if absent).
    """

    variant: str
    seed: int
    path: Path
    config: dict
    frames: np.ndarray
    leader_return: np.ndarray
    result: dict
    states_path: Path | None = None
    choices: dict = field(default_factory=dict)
    overrides: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.variant}/seed{self.seed}"

    @property
    def budget(self) -> float:
        """The frames the run actually collected (its last logged frame)."""
        return float(self.frames[-1])

    @property
    def num_blocks(self) -> int:
        return int(_get(self.config, "sapg.num_blocks", 1))


@dataclass
class Study:
    """The finished runs of a study folder, by variant (spec order), each variant's runs by seed.

    Attributes:
        folder (Path): the study folder.
        runs (dict): variant -> list of :class:`Run`.
        skipped (list): ``(run folder, reason)`` of the run folders left out (unfinished or unreadable).
        mismatches (list of str): settings that differ between runs (they should not).
        notes (list of str): other remarks (e.g. fewer seeds than the spec asks for).
    """

    folder: Path
    runs: dict[str, list[Run]]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def variants(self) -> list[str]:
        return list(self.runs)

    @property
    def all_runs(self) -> list[Run]:
        return [run for runs in self.runs.values() for run in runs]

    @property
    def reference_run(self) -> Run:
        """The first run of ``sapg`` (else of the first variant): the source of the header's settings."""
        return self.runs.get(REFERENCE, next(iter(self.runs.values())))[0]

    def setting(self, dotted: str):
        return _get(self.reference_run.config, dotted)

    @property
    def num_blocks(self) -> int | None:
        """``sapg``'s ``M`` (``None`` without a ``sapg`` variant)."""
        return self.runs[REFERENCE][0].num_blocks if REFERENCE in self.runs else None

    @property
    def fidelity(self) -> str:
        values = sorted({str(run.choices.get("fidelity", "unknown")) for run in self.all_runs})
        return ", ".join(values)

    @property
    def env_preset(self) -> str | None:
        values = sorted({str(run.choices["env"]) for run in self.all_runs if "env" in run.choices})
        return ", ".join(values) if values else None

    def seeds(self, variant: str) -> list[int]:
        return [run.seed for run in self.runs[variant]]


def _variant_key(name: str):
    return (VARIANT_ORDER.index(name), "") if name in VARIANT_ORDER else (len(VARIANT_ORDER), name)


def _load_yaml(path: Path):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def _load_run(run_dir: Path) -> Run:
    import pandas as pd

    variant, seed = run_dir.parent.name, int(run_dir.name[len("seed") :])
    config = _load_yaml(run_dir / "config.yaml")
    metrics = pd.read_csv(run_dir / "metrics.csv")
    for column in ("frames", "return/leader"):
        if column not in metrics.columns:
            raise ValueError(f"metrics.csv has no {column!r} column")
    if len(metrics) == 0:
        raise ValueError("metrics.csv has no rows")
    frames = pd.to_numeric(metrics["frames"], errors="coerce").to_numpy(np.float64)
    leader = pd.to_numeric(metrics["return/leader"], errors="coerce").to_numpy(np.float64)
    result = json.loads((run_dir / "result.json").read_text())
    choices, overrides = {}, []
    hydra_dir = run_dir / ".hydra"
    if (hydra_dir / "hydra.yaml").exists():
        choices = dict(_get(_load_yaml(hydra_dir / "hydra.yaml"), "hydra.runtime.choices", {}) or {})
    if (hydra_dir / "overrides.yaml").exists():
        overrides = [str(o) for o in (_load_yaml(hydra_dir / "overrides.yaml") or [])]
    seed = int(config.get("seed", seed))
    states = run_dir / "states.pt"
    return Run(variant, seed, run_dir, config, frames, leader, result, states if states.exists() else None,
               choices, overrides)  # fmt: skip


def _describe(values: dict) -> str:
    """``{value: [run names]}`` -> ``"12 (sapg/seed0, sapg/seed1), 24 (no_split/seed0)"``."""
    parts = []
    for value, names in values.items():
        shown = ", ".join(names[:4]) + (f", ... ({len(names)} runs)" if len(names) > 4 else "")
        parts.append(f"{value} ({shown})")
    return "; ".join(parts)


def _check(runs: dict[str, list[Run]]) -> tuple[list[str], list[str]]:
    mismatches, notes = [], []
    everything = [run for group in runs.values() for run in group]

    def differing(key, selected):
        values: dict = {}
        for run in selected:
            values.setdefault(repr(_get(run.config, key)), []).append(run.name)
        return values if len(values) > 1 else None

    for key, label in SHARED_KEYS:
        values = differing(key, everything)
        if values:
            mismatches.append(f"{label} (`{key}`) differs between runs: {_describe(values)}")
    blocks = differing("sapg.num_blocks", [run for run in everything if run.variant != "no_split"])
    if blocks:
        mismatches.append(f"M (`sapg.num_blocks`, all variants but no_split) differs between runs: {_describe(blocks)}")
    fidelity: dict = {}
    for run in everything:
        fidelity.setdefault(str(run.choices.get("fidelity", "unknown")), []).append(run.name)
    if len(fidelity) > 1:
        mismatches.append(f"fidelity differs between runs: {_describe(fidelity)}")
    seed_sets = {variant: tuple(run.seed for run in group) for variant, group in runs.items()}
    if len(set(seed_sets.values())) > 1:
        mismatches.append(
            "the variants have different seeds: "
            + "; ".join(f"{variant}: {', '.join(map(str, seeds))}" for variant, seeds in seed_sets.items())
        )
    few = [f"{variant} ({len(seeds)})" for variant, seeds in seed_sets.items() if len(seeds) < MIN_SEEDS]
    if few:
        notes.append(f"fewer than the spec's {MIN_SEEDS} seeds: {', '.join(few)}; the intervals are wide")
    if REFERENCE not in runs:
        notes.append(f"no `{REFERENCE}` runs: no probability of improvement and no check of the paper's claims")
    return mismatches, notes


def load_study(folder: str | Path) -> Study:
    """Reads the finished runs of a study folder (``<folder>/<ablation>/seed<k>/``).

    Run folders without ``result.json`` (unfinished) or with unreadable files are skipped with one warning
    listing them (they are also listed in the report). Settings that should be shared by all runs (env
    name, ``N``, ``T``, total frames, ``sapg``'s ``M`` for every variant but ``no_split``, fidelity, seeds)
    are compared; differences are recorded in :attr:`Study.mismatches`, not raised.

    Raises:
        FileNotFoundError: ``folder`` is not a folder.
        ValueError: it holds no finished run.

    Examples:
        >>> load_study("/no/such/study")
        Traceback (most recent call last):
        ...
        FileNotFoundError: study folder /no/such/study does not exist or is not a folder
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"study folder {folder} does not exist or is not a folder")
    runs: dict[str, list[Run]] = {}
    skipped: list[tuple[Path, str]] = []
    for run_dir in sorted(folder.glob("*/seed*")):
        if not run_dir.is_dir() or not re.fullmatch(r"seed\d+", run_dir.name):
            continue
        if not (run_dir / "result.json").exists():
            skipped.append((run_dir, "unfinished (no result.json)"))
            continue
        try:
            run = _load_run(run_dir)
        except (OSError, ValueError, KeyError, TypeError) as error:
            skipped.append((run_dir, f"unreadable ({type(error).__name__}: {error})"))
            continue
        runs.setdefault(run.variant, []).append(run)
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} run folder(s) of {folder}: "
            + "; ".join(f"{p.relative_to(folder).as_posix()} {why}" for p, why in skipped),
            stacklevel=2,
        )
    if not runs:
        raise ValueError(f"study folder {folder} holds no finished run (<ablation>/seed<k>/result.json)")
    runs = {v: sorted(runs[v], key=lambda r: r.seed) for v in sorted(runs, key=_variant_key)}
    mismatches, notes = _check(runs)
    return Study(folder, runs, skipped, mismatches, notes)


# ------------------------------------------------------------------------------------------ numbers
Interval = tuple[float, float, float]
NAN_INTERVAL: Interval = (math.nan, math.nan, math.nan)


@dataclass
class Summary:
    """Every number of the report.

    Attributes:
        per_run (dict): variant -> {metric -> array over the variant's runs (seed order)}: ``final``
            (leader's mean return over the last 10% of the budget), ``eval`` (final evaluation return),
            ``auc`` (normalised AUC), ``frames`` (frames to threshold, the budget when not reached),
            ``reached`` (bool).
        iqm (dict): metric (``final``, ``eval``, ``auc``, ``frames``) -> variant -> ``(iqm, low, high)``.
        poi (dict): ablation -> ``(P(sapg > ablation), low, high)`` on ``final``.
        low, high, threshold (float): AUC normalisation and the threshold of frames-to-threshold.
        best_variant (str): the variant with the highest IQM of ``final``.
        diversity (dict): variant -> {``states``, ``pca`` (curve), ``pca_area``, ``ae`` ({width: error}),
            ``entropy``, ``kl``}.
        curves (dict): variant -> ``(grid, iqm, band_low, band_high)`` of the leader's return.
        notes (list of str): remarks on the numbers (runs left out of an aggregate, ...).
    """

    per_run: dict
    iqm: dict
    poi: dict
    low: float
    high: float
    threshold: float
    best_variant: str | None
    diversity: dict
    curves: dict
    bottlenecks: tuple
    notes: list


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
            s = StateReservoir.load(run.states_path).states
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
    - ``eval``: ``result.json``'s ``eval/return`` (the final deterministic evaluation).
    - ``auc``: :func:`~sapg_torchrl.metrics.normalized_auc` with ``low`` the minimum of all runs' leader
      returns and ``high`` the best variant's IQM of ``final``.
    - ``frames``: :func:`~sapg_torchrl.metrics.frames_to_threshold` at ``low + 0.8 (high - low)``; a run
      that never reaches it counts as its budget.
    - IQM and intervals: :func:`~sapg_torchrl.metrics.iqm_with_ci` (``reps`` replications, ``seed``);
      probability of improvement of ``sapg`` over each other variant on ``final``.
    - diversity: the states of all seeds of a variant pooled, then
      :func:`~sapg_torchrl.metrics.pca_reconstruction_error` (equal count per variant) and its
      :func:`~sapg_torchrl.metrics.curve_area`, :func:`~sapg_torchrl.metrics.autoencoder_reconstruction_error`
      for the bottlenecks (1, 2, 4) smaller than the observation, the mean over seeds of the mean per-block
      entropy and of the mean off-diagonal pairwise KL (``result.json``).
    """
    notes: list[str] = []
    per_run: dict = {}
    for variant, runs in study.runs.items():
        per_run[variant] = {
            "final": np.array([final_performance(r.frames, r.leader_return, FINAL_FRACTION) for r in runs]),
            "eval": np.array([_float(r.result.get("eval/return")) for r in runs]),
        }
    for metric, what in (("final", "no finished episode in the last 10% of the budget"),
                         ("eval", "no final evaluation return")):  # fmt: skip
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

    poi = {}
    if REFERENCE in per_run:
        x = per_run[REFERENCE]["final"]
        x = x[np.isfinite(x)]
        for variant, d in per_run.items():
            if variant == REFERENCE:
                continue
            y = d["final"][np.isfinite(d["final"])]
            poi[variant] = probability_of_improvement(x, y, reps=reps, seed=seed) if x.size and y.size else NAN_INTERVAL

    div, bottlenecks = _diversity(study, seed, max_states, ae_epochs, notes) if diversity else ({}, ())
    curves = _learning_curves(study, curve_points, reps, seed)
    return Summary(per_run, iqm, poi, low, high, threshold, best, div, curves, bottlenecks, notes)


# ------------------------------------------------------------------------------------------ report
def _num(x, digits: int = 4) -> str:
    if x is None:
        return DASH
    x = float(x)
    return "n/a" if not math.isfinite(x) else f"{x:.{digits}g}"


def _frames(x) -> str:
    """Frames, short: ``480``, ``9999``, ``35k``, ``4.2M``, ``20G``.

    Examples:
        >>> [_frames(x) for x in (480, 9999, 35_000, 4_200_000, 2e10)]
        ['480', '9999', '35k', '4.2M', '20G']
    """
    x = float(x)
    if not math.isfinite(x):
        return "n/a"
    for scale, divisor, suffix in ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if abs(x) >= scale:
            return f"{x / divisor:.3g}{suffix}"
    return f"{x:.0f}"


def _ci(interval: Interval, digits: int = 4, fmt=None) -> str:
    point, low, high = interval
    if not math.isfinite(point):
        return "n/a"
    fmt = fmt or (lambda x: _num(x, digits))
    return f"{fmt(point)} [{fmt(low)}, {fmt(high)}]"


def _verdict(interval: Interval) -> str:
    p, low, high = interval
    if not math.isfinite(p):
        return "unknown"
    if low > 0.5:
        return "better"
    if high < 0.5:
        return "worse"
    return "indistinguishable"


def _colors(variants: Sequence[str]) -> dict:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    out, extra = {}, len(VARIANT_ORDER)
    for variant in variants:
        if variant in VARIANT_ORDER:
            out[variant] = cmap(VARIANT_ORDER.index(variant) % 10)
        else:
            out[variant] = cmap(extra % 10)
            extra += 1
    return out


def default_study_command(study: Study) -> str:
    """``python recipes/study.py ...`` that (re)runs the study's runs: the overrides shared by every run
    (from ``.hydra/overrides.yaml``), the variants and seeds found, and ``hydra.sweep.dir``."""
    common = None
    for run in study.all_runs:
        own = [o for o in run.overrides if not re.match(r"^(ablation|seed)=", o)]
        common = own if common is None else [o for o in common if o in own]
    seeds = sorted({run.seed for run in study.all_runs})
    args = [*(common or []), f"ablation={','.join(study.variants)}", f"seed={','.join(map(str, seeds))}",
            f"hydra.sweep.dir={study.folder}"]  # fmt: skip
    return "python recipes/study.py " + " ".join(shlex.quote(a) for a in args)


def _plot_learning_curves(study: Study, summary: Summary, path: Path, colors: dict) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    for variant, (grid, iqm, low, high) in summary.curves.items():
        n = len(study.runs[variant])
        ax.plot(grid, iqm, color=colors[variant], lw=1.8, label=f"{variant} ({n} seed{'s' * (n != 1)})")
        ax.fill_between(grid, low, high, color=colors[variant], alpha=0.2, lw=0)
    if math.isfinite(summary.threshold):
        ax.axhline(summary.threshold, color="grey", ls="--", lw=1, label=f"threshold ({summary.threshold:.3g})")
    ax.set_xlabel("env frames")
    ax.set_ylabel("leader return (IQM over seeds)")
    ax.set_title(f"{study.setting('env.make.env_name')}: leader return, IQM with 95% bootstrap band")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _interval_panel(ax, intervals: dict, colors: dict, title: str, reference: float | None = None) -> None:
    names = list(intervals)[::-1]  # first variant on top
    for y, name in enumerate(names):
        point, low, high = intervals[name]
        if not math.isfinite(point):
            ax.text(0.02, y, "n/a", transform=ax.get_yaxis_transform(), va="center", fontsize=8)
            continue
        ax.plot([low, high], [y, y], color=colors[name], lw=6, alpha=0.5, solid_capstyle="butt")
        ax.plot([point], [y], marker="|", ms=16, mew=2.5, color="black")
    if reference is not None:
        ax.axvline(reference, color="grey", ls="--", lw=1)
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(-0.7, len(names) - 0.3)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)


def _plot_final_scores(summary: Summary, path: Path, colors: dict) -> None:
    import matplotlib.pyplot as plt

    rows = len(summary.iqm["final"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 1.0 + 0.45 * rows), sharey=True)
    _interval_panel(axes[0], summary.iqm["final"], colors, "leader return, last 10% of budget")
    _interval_panel(axes[1], summary.iqm["eval"], colors, "final evaluation return")
    for ax in axes:
        ax.set_xlabel("IQM [95% CI]")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_poi(summary: Summary, path: Path, colors: dict) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 1.0 + 0.45 * len(summary.poi)))
    _interval_panel(ax, summary.poi, colors, f"P({REFERENCE} > variant) on the final return", reference=0.5)
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("probability of improvement [95% CI]")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_pca(summary: Summary, path: Path, colors: dict) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for variant, d in summary.diversity.items():
        if "pca" not in d:
            continue
        k = np.arange(1, len(d["pca"]) + 1)
        ax.plot(k, d["pca"], marker="o", color=colors[variant], label=f"{variant} (area {d['pca_area']:.3g})")
    ax.set_xlabel("number of PCA components")
    ax.set_ylabel("reconstruction error (standardised states)")
    ax.set_title("PCA reconstruction error of the leader's visited states")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _claim_lines(study: Study, summary: Summary) -> list[str]:
    lines = []
    if REFERENCE not in study.runs:
        return [f"- No `{REFERENCE}` runs: the paper's claims cannot be checked."]
    verdicts = {v: _verdict(summary.poi[v]) for v in ("symmetric", "no_off_policy") if v in summary.poi}
    absent = [v for v in ("symmetric", "no_off_policy") if v not in summary.poi]
    relative = {"better": f"worse than {REFERENCE}", "worse": f"better than {REFERENCE}",
                "indistinguishable": f"indistinguishable from {REFERENCE}", "unknown": "no scores"}  # fmt: skip
    detail = ", ".join([f"`{v}` {relative[w]}" for v, w in verdicts.items()]
                       + [f"`{v}` not in this study" for v in absent])  # fmt: skip
    if not verdicts:
        status = "not tested"
    elif all(w == "better" for w in verdicts.values()):
        status = "holds" + (" for the variants present" if absent else "")
    elif any(w == "worse" for w in verdicts.values()):
        status = "contradicted"
    else:
        status = "not supported (not clearly worse)"
    claim = "*`symmetric` and `no_off_policy` are clearly worse than `sapg`*"
    lines.append(f"- Paper: {claim} — **{status}** ({detail}).")
    n = study.setting("env.num_envs")
    scale = (f"N = {n} here, the paper's default is {PAPER_NUM_ENVS}"
             + ("; a check at small N" if isinstance(n, int) and n < PAPER_NUM_ENVS // 4 else ""))  # fmt: skip
    if "no_split" in summary.poi:
        w = _verdict(summary.poi["no_split"])
        p = _ci(summary.poi["no_split"], 3)
        status = {"better": "holds (sapg better)", "indistinguishable": "holds (sapg not worse; indistinguishable)",
                  "worse": "contradicted (sapg worse)", "unknown": "not tested (no scores)"}[w]  # fmt: skip
        lines.append(f"- Paper: *`sapg` is at least as good as PPO (`no_split`) at large N* — **{status}** "
                     f"(P({REFERENCE} > no_split) = {p}; {scale}).")  # fmt: skip
    else:
        lines.append(f"- Paper: *`sapg` is at least as good as PPO (`no_split`) at large N* — **not tested** "
                     f"(no `no_split` runs; {scale}).")  # fmt: skip
    return lines


def _render(study: Study, summary: Summary, command: str, study_command: str, reps: int, plots: list[str]) -> str:
    s, variants = summary, study.variants
    budget = study.setting("total_frames")
    frames_done = sorted({int(r.budget) for r in study.all_runs})
    seeds = "; ".join(f"{v}: {len(study.runs[v])} ({', '.join(map(str, study.seeds(v)))})" for v in variants)
    preset = study.env_preset
    task = f"`{study.setting('env.make.env_name')}`" + (f" (env preset `{preset}`)" if preset else "")
    out = [f"# SAPG ablation study: {study.setting('env.make.env_name')}", ""]
    out += ["| setting | value |", "|---|---|",
            f"| task | {task} |",
            f"| N (envs) | {study.setting('env.num_envs')} |",
            f"| M (`sapg`'s blocks) | {study.num_blocks if study.num_blocks is not None else 'n/a (no sapg runs)'} |",
            f"| T (horizon) | {study.setting('ppo.horizon')} |",
            f"| frame budget | {budget} (`total_frames`); frames collected per run: "
            f"{', '.join(map(str, frames_done))} |",
            f"| seeds per variant | {seeds} |",
            f"| fidelity | {study.fidelity} |",
            f"| variants | {', '.join(f'`{v}`' for v in variants)} |",
            f"| study folder | `{study.folder}` |", ""]  # fmt: skip
    out += ["Regenerate this report:", "", "```bash", command, "```", "",
            "Run (or resume: finished runs are skipped) the study:", "",
            "```bash", study_command, "```", ""]  # fmt: skip

    out += ["## Consistency", ""]
    if study.mismatches:
        out += ["**Settings differ between runs** (the variants should differ only in their ablation):", ""]
        out += [f"- {m}" for m in study.mismatches] + [""]
    else:
        shared = ", ".join(label for _, label in SHARED_KEYS)
        out += [f"All runs share {shared}, fidelity and seeds; all variants but `no_split` share M.", ""]
    if study.skipped:
        out += [f"Skipped run folders ({len(study.skipped)}):", ""]
        out += [f"- `{p.relative_to(study.folder).as_posix()}`: {why}" for p, why in study.skipped] + [""]
    for note in study.notes + s.notes:
        out.append(f"- Note: {note}")
    if study.notes or s.notes:
        out.append("")

    out += ["## Asymptotic performance", "",
            "Per variant, across seeds: interquartile mean (IQM) with a 95% stratified-bootstrap interval "
            f"(rliable, {reps} replications, percentile method). *Final return*: the leader's mean episode "
            "return (`return/leader`) over the last 10% of the frame budget. *Eval return*: the final "
            "deterministic evaluation of the leader on fresh envs (`result.json` `eval/return`). "
            f"*P({REFERENCE} > variant)*: rliable's probability of improvement of `{REFERENCE}` over the "
            "variant on the final return, with its 95% interval.", "",
            "| variant | seeds | final return IQM [95% CI] | eval return IQM [95% CI] "
            f"| P({REFERENCE} > variant) [95% CI] |",
            "|---|---|---|---|---|"]  # fmt: skip
    for v in variants:
        poi = DASH if v == REFERENCE or v not in s.poi else _ci(s.poi[v], 3)
        out.append(f"| {v} | {len(study.runs[v])} | {_ci(s.iqm['final'][v])} | {_ci(s.iqm['eval'][v])} | {poi} |")
    out.append("")

    out += ["## Sample efficiency", "",
            f"*Normalised AUC*: area under the leader's learning curve over the budget, divided by the budget, "
            f"with returns mapped to [0, 1] by low = {_num(s.low)} (the minimum of all runs' leader-return "
            f"curves) and high = {_num(s.high)} (the IQM final return of the best variant, "
            f"`{s.best_variant}`); returns before the first finished episode count as low. "
            f"*Frames to threshold*: the first logged frame at which the leader's return reaches "
            f"{_num(s.threshold)} = low + {THRESHOLD_FRACTION} (high - low), i.e. {THRESHOLD_FRACTION:.0%} of the "
            "best variant's IQM final score between low and high; **runs that never reach it count as the "
            "budget** (their frames collected). *Reached*: the fraction of runs that reached it.", "",
            "| variant | normalised AUC IQM [95% CI] | frames to threshold IQM [95% CI] | reached |",
            "|---|---|---|---|"]  # fmt: skip
    for v in variants:
        d = s.per_run[v]
        reached = f"{int(d['reached'].sum())}/{d['reached'].size}"
        out.append(f"| {v} | {_ci(s.iqm['auc'][v], 3)} | {_ci(s.iqm['frames'][v], fmt=_frames)} | {reached} |")
    out.append("")

    out += ["## Exploration diversity", ""]
    if s.diversity:
        counts = sorted({d["states"] for d in s.diversity.values() if "states" in d})
        ae_heads = [f"AE error, bottleneck {w}" for w in s.bottlenecks]
        out += ["The leader's visited states (`states.pt`) of all seeds of a variant are pooled, every variant "
                f"subsampled to the same count ({', '.join(map(str, counts)) or 'n/a'} states) and standardised "
                "with one mean and std over the union. *PCA area*: the mean over k = 1..d of the PCA "
                "reconstruction error with k components (the paper's measure; curves in `pca_curves.png`). "
                "*AE error*: held-out reconstruction error of a small autoencoder with that bottleneck "
                "(bottlenecks of (1, 2, 4) smaller than the observation's dimension). Higher errors mean more "
                "diverse states. *Entropy*: mean over seeds of the mean over blocks of each block policy's "
                "entropy on the run's states (`diversity/entropy_per_block`). *Pairwise KL*: mean over seeds of "
                "the mean off-diagonal KL(pi_i || pi_j) between block policies (`diversity/pairwise_kl`); "
                f"{DASH} with one block.", "",
                "| " + " | ".join(["variant", "PCA area", *ae_heads, "mean per-block entropy", "mean pairwise KL"])
                + " |",
                "|---" * (4 + len(ae_heads)) + "|"]  # fmt: skip
        for v in variants:
            d = s.diversity[v]
            ae = [_num(d.get("ae", {}).get(w)) if "ae" in d else "n/a" for w in s.bottlenecks]
            area = _num(d["pca_area"]) if "pca_area" in d else "n/a"
            out.append(f"| {v} | {area} | " + " | ".join([*ae, _num(d["entropy"]), _num(d["kl"])]) + " |")
        out.append("")
    else:
        out += ["Not computed.", ""]

    out += ["## Plots", "",
            "The learning-curve band is a simple percentile bootstrap over seeds at each grid point (100 points "
            f"from 0 to the budget, {reps} resamplings; with one task this is rliable's stratified bootstrap); "
            "each run's curve is interpolated linearly onto the grid, `NaN` before its first finished episode, "
            "and at each point the IQM is over the seeds that have a value there.", ""]  # fmt: skip
    titles = {"learning_curves.png": "learning curves", "final_scores.png": "final scores",
              "pca_curves.png": "PCA reconstruction error",
              "probability_of_improvement.png": "probability of improvement"}  # fmt: skip
    out += [f"![{titles[p]}]({p})" for p in plots] + [""]

    out += ["## Findings", ""]
    if s.best_variant is not None:
        out.append(f"- Best IQM final return: `{s.best_variant}` ({_ci(s.iqm['final'][s.best_variant])}).")
    if s.poi:
        for v, interval in s.poi.items():
            w = _verdict(interval)
            why = {"better": "interval above 0.5", "worse": "interval below 0.5",
                   "indistinguishable": "interval contains 0.5", "unknown": "no scores"}[w]  # fmt: skip
            text = {"better": f"`{REFERENCE}` is better than `{v}`", "worse": f"`{REFERENCE}` is worse than `{v}`",
                    "indistinguishable": f"`{REFERENCE}` and `{v}` are indistinguishable",
                    "unknown": f"`{REFERENCE}` vs `{v}`: unknown"}[w]  # fmt: skip
            out.append(f"- {text}: P({REFERENCE} > {v}) = {_ci(interval, 3)} ({why}).")
    out += _claim_lines(study, s)
    lo, hi = min(len(r) for r in study.runs.values()), max(len(r) for r in study.runs.values())
    out += ["", f"With {lo if lo == hi else f'{lo} to {hi}'} seed{'s' * (hi != 1)} per variant, \"indistinguishable\" "
            "can mean too few seeds rather than equal performance.", ""]  # fmt: skip
    return "\n".join(out)


def write_report(
    study: Study,
    out_dir: str | Path,
    command: str,
    *,
    study_command: str | None = None,
    reps: int = 2000,
    seed: int = 0,
    diversity: bool = True,
    max_states: int | None = None,
    ae_epochs: int = 30,
) -> Path:
    """Writes ``report.md`` and its plots (``learning_curves.png``, ``final_scores.png``,
    ``pca_curves.png``, ``probability_of_improvement.png``) in ``out_dir``; returns the report's path.

    Args:
        study (Study): from :func:`load_study`.
        out_dir (path): created if needed.
        command (str): the command that regenerates this report (printed in the header).

    Keyword Args:
        study_command (str, optional): the command that ran the study. Defaults to
            :func:`default_study_command` (overrides shared by the runs, variants, seeds, sweep folder).
        reps (int): bootstrap replications. Defaults to ``2000``.
        seed (int): seed of the bootstraps and of the diversity measures. Defaults to ``0``.
        diversity (bool): compute the PCA and autoencoder errors. Defaults to ``True``.
        max_states (int, optional): cap on the states per variant for PCA and autoencoders.
        ae_epochs (int): autoencoder training passes. Defaults to ``30``.
    """
    import matplotlib

    matplotlib.use("Agg")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(study, reps=reps, seed=seed, diversity=diversity, max_states=max_states, ae_epochs=ae_epochs)
    colors = _colors(study.variants)
    plots = ["learning_curves.png", "final_scores.png"]
    _plot_learning_curves(study, summary, out_dir / plots[0], colors)
    _plot_final_scores(summary, out_dir / plots[1], colors)
    if any("pca" in d for d in summary.diversity.values()):
        plots.append("pca_curves.png")
        _plot_pca(summary, out_dir / plots[-1], colors)
    if summary.poi:
        plots.append("probability_of_improvement.png")
        _plot_poi(summary, out_dir / plots[-1], colors)
    text = _render(study, summary, command, study_command or default_study_command(study), reps, plots)
    path = out_dir / "report.md"
    path.write_text(text)
    return path
