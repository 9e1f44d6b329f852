"""Across tasks: one aggregate of several studies (one study folder per task), with rliable's conventions.

For each of the study's two measures (:data:`~sapg_torchrl.study.summary.MEASURES`: the training return over the
last 10% of the budget, and the mean of the last 3 evaluations), each task's per-run scores are min-max normalised
with that task's own range: 0 is the lowest leader return any run of the task logged (:attr:`Study.floor`), 1 the
best variant's IQM on the task and measure. Then, per variant present in every task, the ``(n_runs, n_tasks)`` matrix
of normalised scores gives the IQM over all runs and tasks and the probability of improvement of ``sapg`` over the
variant averaged over tasks, both with 95% stratified-bootstrap intervals (runs resampled within each task). A
variant needs the same number of runs in every task: the seeds it has in all of them are used.

The tuned PPO baseline is the best point of each task's PPO entropy grid on the measure (:attr:`Summary.tuned_ppo`),
which need not be the same grid point on every task nor on both measures; it gets its own row, :data:`TUNED_PPO`,
made of each task's tuned variant, so that ``sapg`` is compared across tasks with the PPO a researcher would have
tuned on each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sapg_torchrl.metrics import iqm_with_ci, probability_of_improvement
from sapg_torchrl.study.runs import REFERENCE, Study
from sapg_torchrl.study.summary import MEASURES, Interval, Summary

__all__ = ["TUNED_PPO", "CrossTask", "aggregate_tasks", "write_cross_task_report"]

TUNED_PPO = "tuned_ppo"
"""The cross-task row of the tuned PPO baseline: each task's own best point of the PPO entropy grid."""


@dataclass
class CrossTask:
    """The aggregate of several tasks' studies, per measure (every dict below but ``seeds`` is keyed by the measure,
    :data:`~sapg_torchrl.study.summary.MEASURES`, first).

    Attributes:
        tasks (list of str): the tasks (their studies' names), in the order given.
        ranges (dict): measure -> task -> ``(low, high)`` of its normalisation.
        scores (dict): measure -> variant -> ``(n_runs, n_tasks)`` normalised scores (rows: the seeds in common).
        seeds (dict): variant -> the seeds used.
        iqm (dict): measure -> variant -> ``(iqm, low, high)`` over all runs and tasks.
        poi (dict): measure -> variant -> ``P(sapg > variant)`` averaged over tasks, ``(p, low, high)``.
        notes (list of str): variants left out, and why.
        tuned_ppo (dict): measure -> task -> the variant that is its tuned PPO baseline, the :data:`TUNED_PPO` row
            (empty where a task has no PPO variant).
    """

    tasks: list[str]
    ranges: dict[str, dict[str, tuple[float, float]]]
    scores: dict[str, dict[str, np.ndarray]]
    seeds: dict[str, list[int]]
    iqm: dict[str, dict[str, Interval]]
    poi: dict[str, dict[str, Interval]]
    notes: list[str] = field(default_factory=list)
    tuned_ppo: dict[str, dict[str, str]] = field(default_factory=dict)


def aggregate_tasks(tasks: dict[str, tuple[Study, Summary]], *, reps: int = 2000, seed: int = 0) -> CrossTask:
    """The cross-task aggregate of ``{task: (study, summary)}`` (each from :func:`~sapg_torchrl.study.load_study`
    and :func:`~sapg_torchrl.study.summarize`), on both measures.

    Examples:
        >>> import numpy as np
        >>> from types import SimpleNamespace as S
        >>> def task(sapg, ppo):  # a stand-in for a study and its summary: seeds 0..2, floor 0, best IQM 10
        ...     runs = {v: [S(seed=k) for k in range(3)] for v in ("sapg", "no_split")}
        ...     per_run = {"sapg": {"final": np.array(sapg), "eval": np.array(sapg)},
        ...                "no_split": {"final": np.array(ppo), "eval": np.array(ppo)}}
        ...     iqm = {m: {"sapg": (10.0, 10.0, 10.0)} for m in ("final", "eval")}
        ...     return S(runs=runs, floor=0.0), S(per_run=per_run, iqm=iqm, tuned_ppo={"final": "no_split", "eval": "no_split"})
        >>> out = aggregate_tasks({"a": task([10, 10, 10], [0, 5, 10]), "b": task([8, 10, 10], [0, 0, 5])}, reps=100)
        >>> out.scores["final"]["no_split"].tolist()
        [[0.0, 0.0], [0.5, 0.0], [1.0, 0.5]]
        >>> round(out.poi["final"]["no_split"][0], 4)  # task a: 7.5 of 9 pairs (a tie counts 1/2), task b: 9 of 9
        0.9167
        >>> out.tuned_ppo["final"], out.scores["final"]["tuned_ppo"].tolist()  # the only PPO point, in both tasks
        ({'a': 'no_split', 'b': 'no_split'}, [[0.0, 0.0], [0.5, 0.0], [1.0, 0.5]])
    """
    names = list(tasks)
    notes: list[str] = []
    common = [v for v in next(iter(tasks.values()))[0].runs if all(v in study.runs for study, _ in tasks.values())]
    missing = sorted({v for study, _ in tasks.values() for v in study.runs} - set(common))
    if missing:
        notes.append(f"not in every task, left out: {', '.join(missing)}")
    ranges, scores, iqm, poi, tuned_ppo, seeds = {}, {}, {}, {}, {}, {}
    for measure, name in MEASURES.items():
        ranges[measure] = {task: (float(study.floor), _best(summary, measure)) for task, (study, summary) in tasks.items()}
        bad = [task for task, (low, high) in ranges[measure].items() if not high > low]
        if bad:
            raise ValueError(f"no normalisation range on the {name} (best IQM not above the floor) for: {', '.join(bad)}")
        tuned = {task: summary.tuned_ppo.get(measure) for task, (_, summary) in tasks.items()}
        tuned_ppo[measure] = tuned if all(tuned.values()) else {}
        rows = {variant: dict.fromkeys(names, variant) for variant in common}
        rows |= {TUNED_PPO: tuned_ppo[measure]} if tuned_ppo[measure] else {}
        scores[measure] = {}
        for row, variant_of in rows.items():
            shared = sorted(set.intersection(*({r.seed for r in study.runs[variant_of[task]]}
                                               for task, (study, _) in tasks.items())))  # fmt: skip
            columns = []
            for task, (study, summary) in tasks.items():
                variant = variant_of[task]
                by_seed = dict(zip((r.seed for r in study.runs[variant]), summary.per_run[variant][measure], strict=True))
                low, high = ranges[measure][task]
                columns.append([(by_seed[k] - low) / (high - low) for k in shared])
            matrix = np.array(columns, dtype=np.float64).T.reshape(len(shared), len(names))
            if not shared or not np.isfinite(matrix).all():
                notes.append(f"{row}: no seed with a finite {name} in every task, left out of that aggregate")
                continue
            scores[measure][row], seeds[row] = matrix, shared
        iqm[measure] = iqm_with_ci(scores[measure], reps=reps, seed=seed)
        poi[measure] = {}
        if REFERENCE in scores[measure]:
            poi[measure] = {v: probability_of_improvement(scores[measure][REFERENCE], s, reps=reps, seed=seed)
                            for v, s in scores[measure].items() if v != REFERENCE}  # fmt: skip
    return CrossTask(names, ranges, scores, seeds, iqm, poi, notes, tuned_ppo)


def _best(summary: Summary, measure: str) -> float:
    """The best variant's IQM on ``measure``: 1 of the normalisation."""
    points = [interval[0] for interval in summary.iqm[measure].values() if math.isfinite(interval[0])]
    return max(points) if points else math.nan


def _tuned_label(cross: CrossTask, measure: str) -> str:
    return f"tuned PPO ({', '.join(f'{task}: {variant}' for task, variant in cross.tuned_ppo[measure].items())})"


def _ci(interval: Interval) -> str:
    point, low, high = interval
    return "n/a" if not math.isfinite(point) else f"{point:.3g} [{low:.3g}, {high:.3g}]"


def write_cross_task_report(cross: CrossTask, out_dir: str | Path, command: str) -> Path:
    """Writes ``across_tasks.md`` and ``across_tasks.png`` (normalised IQM per variant, one panel per measure) in
    ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = max(len(cross.scores[m]) for m in MEASURES)
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(11, 1.0 + 0.45 * rows), squeeze=False)
    for ax, (measure, name) in zip(axes[0], MEASURES.items(), strict=True):
        variants = list(cross.scores[measure])
        for y, variant in enumerate(variants[::-1]):
            point, low, high = cross.iqm[measure][variant]
            ax.plot([low, high], [y, y], lw=6, alpha=0.5, solid_capstyle="butt")
            ax.plot([point], [y], marker="|", ms=16, mew=2.5, color="black")
        ax.set_yticks(range(len(variants)), ["tuned PPO" if v == TUNED_PPO else v for v in variants[::-1]])
        ax.set_xlabel(f"IQM of min-max normalised {name} [95% CI]")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"across {len(cross.tasks)} tasks: {', '.join(cross.tasks)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "across_tasks.png", dpi=120)
    plt.close(fig)
    lines = [f"# SAPG ablation study across tasks: {', '.join(cross.tasks)}", "", "```bash", command, "```", "",
             "For each measure (the training return over the last 10% of the budget, the paper's; the mean of the "
             "leader's last 3 evaluations), each task's per-run scores are mapped to [0, 1] by the task's lowest "
             "logged leader return and its best variant's IQM on that measure; then rliable's IQM over all runs and "
             "tasks and the probability of improvement of `sapg`, averaged over tasks, with 95% stratified-bootstrap "
             "intervals (runs resampled within each task). *tuned PPO*: each task's best point of its PPO entropy "
             "grid on that measure, chosen on the same seeds (a selection that favours PPO)."]  # fmt: skip
    for measure, name in MEASURES.items():
        lines += ["", f"## {name.capitalize()}", "", "| task | low | high |", "|---|---|---|"]
        lines += [f"| {task} | {low:.4g} | {high:.4g} |" for task, (low, high) in cross.ranges[measure].items()]
        lines += ["", f"| variant | seeds | normalised IQM [95% CI] | P({REFERENCE} > variant) [95% CI] |",
                  "|---|---|---|---|"]  # fmt: skip
        for variant in cross.scores[measure]:
            poi = "–" if variant not in cross.poi[measure] else _ci(cross.poi[measure][variant])
            label = _tuned_label(cross, measure) if variant == TUNED_PPO else variant
            lines.append(f"| {label} | {len(cross.seeds[variant])} | {_ci(cross.iqm[measure][variant])} | {poi} |")
    lines += [""] + [f"- Note: {note}" for note in cross.notes] + ["", "![across tasks](across_tasks.png)", ""]
    path = out_dir / "across_tasks.md"
    path.write_text("\n".join(lines))
    return path
