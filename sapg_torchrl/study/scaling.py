"""Performance against the number of envs ``N``: several study folders of one task that differ only in ``N``.

The paper's central claim is that PPO stops improving as ``N`` grows while SAPG turns the extra envs into
exploration. ``recipes/study.py --config-name scaling`` runs ``sapg`` and the tuned PPO baseline at several ``N``
(``<folder>/N<N>/<ablation>/seed<k>/``, each ``N<N>`` a study folder); :func:`scaling_summary` gives each
variant's score at each ``N`` as an IQM with a 95% stratified-bootstrap interval, and ``P(sapg > variant)`` at
each ``N``, for two measures of the leader at the end of the budget:

- ``"final"``: its training return over the last 10% of the budget, as in the study's report. At a fixed frame
  budget each env steps ``budget / N`` times: where that is under two of the longest episodes, the window holds
  only the episodes that ended early (e.g. MountainCar's flag reached), or none (the run is left out of that
  aggregate and counted), so this measure is not comparable across ``N`` there, and the report says so. At a
  fixed number of iterations every ``N`` takes the same steps per env, and the window the same kind of episodes;
- ``"eval"``: the mean of its last 3 deterministic evaluations on fresh envs (full episodes, the same at every
  ``N``).

These are the study's two measures (:data:`~sapg_torchrl.study.summary.MEASURES`).

:func:`write_scaling_report` writes ``scaling.md`` and ``scaling.png`` (both measures against ``N``, and each variant's
learning curve at each ``N`` against frames). A study folder of the same task and budget
at another ``N`` (e.g. the ablation study's) can be added: only the variants found at two or more ``N`` are
compared.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sapg_torchrl.study.render import variant_colors
from sapg_torchrl.study.runs import REFERENCE, Study, comparable
from sapg_torchrl.study.summary import MEASURES, Interval, improvement_over, summarize

__all__ = ["Scaling", "scaling_summary", "trend", "write_scaling_report"]

# settings every study of a scaling sweep shares (dotted config key, name in the messages); and either the frame
# budget or the number of iterations
_SAME = (("env.make.env_name", "task"), ("ppo.horizon", "T"))


@dataclass
class Scaling:
    """Final scores against ``N``.

    Attributes:
        task (str): the env's name.
        budget (float or None): the frame budget of every run, where every ``N`` has the same (``None`` where the
            budget grows with ``N`` at a fixed number of iterations).
        iterations (int or None): the iterations of every run, where every ``N`` runs the same number (``None`` at
            a fixed frame budget).
        budgets (dict): ``N`` -> the frames its runs collect (their ``total_frames`` rounded up to whole
            iterations, as the runner does).
        num_envs (list of int): the values of ``N``, ascending.
        folders (dict): ``N`` -> its study folder.
        variants (list of str): the variants found at two or more ``N``, in the study's order.
        iqm (dict): measure (:data:`MEASURES`) -> variant -> ``N`` -> ``(IQM, low, high)`` (absent where not run).
        runs (dict): variant -> ``N`` -> the number of runs.
        scored (dict): measure -> variant -> ``N`` -> the runs with a value (a run whose leader finished no
            episode in the last 10% of the budget has no final training return).
        poi (dict): measure -> variant -> ``N`` -> ``P(sapg > variant)`` with its interval, where both ran.
        curves (dict): variant -> ``N`` -> ``(frames, iqm, band_low, band_high)``, the IQM over seeds of the
            leader's training return on a grid of its budget (:attr:`~sapg_torchrl.study.summary.Summary.curves`).
        episode_steps (int or None): the longest episode (``env.eval_steps``).
        notes (list of str): variants left out, measures not comparable at some ``N``, and why; the runs
            without a value are counted per cell (``scored``), not noted.
    """

    task: str
    budget: float | None
    iterations: int | None
    budgets: dict[int, float]
    num_envs: list[int]
    folders: dict[int, Path]
    variants: list[str]
    iqm: dict[str, dict[str, dict[int, Interval]]]
    runs: dict[str, dict[int, int]]
    scored: dict[str, dict[str, dict[int, int]]]
    poi: dict[str, dict[str, dict[int, Interval]]]
    curves: dict[str, dict[int, tuple]]
    episode_steps: int | None = None
    notes: list[str] = field(default_factory=list)


def trend(final: dict[int, Interval]) -> str:
    """What a variant's final return does as ``N`` grows, judged by non-overlapping 95% intervals.

    ``"degrades"``: the largest ``N``'s interval lies wholly below the best ``N``'s; ``"improves"``: the
    smallest ``N``'s lies wholly below the largest's; ``"saturates"``: neither, but the best ``N`` is not the
    largest (more envs do not help beyond the intervals); ``"flat"``: neither, and the best ``N`` is the largest
    (more envs may help, but not beyond the intervals).

    Examples:
        >>> trend({384: (10.0, 8.0, 12.0), 1536: (50.0, 45.0, 55.0), 6144: (20.0, 15.0, 25.0)})
        'degrades'
        >>> trend({384: (10.0, 8.0, 12.0), 6144: (50.0, 45.0, 55.0)})
        'improves'
        >>> trend({384: (50.0, 40.0, 60.0), 1536: (55.0, 40.0, 60.0), 6144: (52.0, 40.0, 60.0)})
        'saturates'
    """
    finite = {n: i for n, i in sorted(final.items()) if math.isfinite(i[0])}
    if len(finite) < 2:
        return "unknown"
    smallest, largest = finite[min(finite)], finite[max(finite)]
    best_n = max(finite, key=lambda n: (finite[n][0], n))  # a tie goes to the larger N
    if largest[2] < finite[best_n][1]:
        return "degrades"
    if smallest[2] < largest[1]:
        return "improves"
    return "saturates" if best_n != max(finite) else "flat"


def scaling_summary(studies: Sequence[Study], *, reps: int = 2000, seed: int = 0) -> Scaling:
    """Final returns against ``N`` from study folders (:func:`~sapg_torchrl.study.load_study`) of one task, one per
    ``N``, at one frame budget (a larger ``N``: fewer iterations) or at one number of iterations (the budget grows
    with ``N``: ``recipes/study.py --config-name scaling_hopper``).

    Raises:
        ValueError: fewer than two studies, two at the same ``N``, a study whose task or ``T`` differs from the
            first's, or budgets that are neither the same nor the same number of iterations (naming the folders and
            values).
    """
    if len(studies) < 2:
        raise ValueError(f"a scaling report needs study folders at two or more N, got {len(studies)}")
    by_n: dict[int, Study] = {}
    for study in studies:
        n = int(study.setting("env.num_envs"))
        if n in by_n:
            raise ValueError(f"two study folders have N={n}: {by_n[n].folder} and {study.folder}")
        for key, label in _SAME:
            mine, first = study.setting(key), studies[0].setting(key)
            if comparable(mine) != comparable(first):
                raise ValueError(f"{label} ({key}) differs: {mine} in {study.folder}, {first} in {studies[0].folder}")
        by_n[n] = study
    num_envs = sorted(by_n)
    configured = {n: float(by_n[n].setting("total_frames")) for n in num_envs}
    horizon = int(studies[0].setting("ppo.horizon"))
    iterations = {n: math.ceil(configured[n] / (n * horizon)) for n in num_envs}
    budget = iteration_count = None
    if len({comparable(b) for b in configured.values()}) == 1:
        budget = configured[num_envs[0]]
    elif len(set(iterations.values())) == 1:
        iteration_count = iterations[num_envs[0]]
    else:
        raise ValueError(
            "the studies have neither one frame budget nor one number of iterations: "
            + ", ".join(f"N={n}: {configured[n]:.6g} frames ({iterations[n]} iterations) in {by_n[n].folder}"
                        for n in num_envs)
        )
    budgets = {n: float(iterations[n] * n * horizon) for n in num_envs}  # what the runs collect (whole iterations)
    summaries = {n: summarize(by_n[n], reps=reps, seed=seed, diversity=False) for n in num_envs}
    found: dict[str, list[int]] = {}
    for n in num_envs:
        for variant in by_n[n].variants:
            found.setdefault(variant, []).append(n)
    order = [v for study in studies for v in study.variants]
    variants = sorted((v for v, ns in found.items() if len(ns) >= 2), key=order.index)
    alone: dict[int, list[str]] = {}
    for v, ns in found.items():
        if len(ns) < 2:
            alone.setdefault(ns[0], []).append(v)
    notes = [f"only at N={n}, left out: {', '.join(vs)}" for n, vs in alone.items()]
    iqm = {m: {v: {n: summaries[n].iqm[m][v] for n in found[v]} for v in variants} for m in MEASURES}
    runs = {v: {n: len(by_n[n].runs[v]) for n in found[v]} for v in variants}
    scored = {m: {v: {n: int(np.isfinite(summaries[n].per_run[v][m]).sum()) for n in found[v]} for v in variants}
              for m in MEASURES}  # fmt: skip
    improvement = {m: {n: improvement_over(summaries[n].per_run, m, reps=reps, seed=seed) for n in num_envs}
                   for m in MEASURES}  # fmt: skip
    poi = {m: {v: {n: improvement[m][n][v] for n in found[v] if v in improvement[m][n]}
               for v in variants if v != REFERENCE} for m in MEASURES}  # fmt: skip
    curves = {v: {n: summaries[n].curves[v] for n in found[v]} for v in variants}
    first = studies[0]
    steps = first.setting("env.eval_steps")
    episode_steps = int(steps) if steps is not None else None
    short = [n for n in num_envs if episode_steps and budgets[n] / n < 2 * episode_steps]
    if short:
        where = (f"at N={', '.join(map(str, short))} each env steps fewer than two of the longest episodes "
                 f"({episode_steps} steps) in the budget")  # fmt: skip
        if iteration_count is None:  # fewer steps per env at a larger N: a window of another kind of episodes
            notes.append(f"{where}: there the final training return averages only the episodes that ended early "
                         "(or none), so it is not comparable across N; the evaluation return is comparable")
        else:  # the same steps per env at every N: the same bias at every N
            notes.append(f"{where}: the final training return averages the episodes that ended in the last 10% of "
                         "the budget, the early-ending ones over-represented, alike at every N (each takes the same "
                         "steps per env), so both measures compare across N")
    for n in num_envs:  # the summaries' own notes are about measures this report leaves out or counts per cell
        notes += [f"N={n}: {note}" for note in (*by_n[n].mismatches, *by_n[n].notes)]
    return Scaling(str(first.setting("env.make.env_name")), budget, iteration_count, budgets, num_envs,
                   {n: by_n[n].folder for n in num_envs}, variants, iqm, runs, scored, poi, curves, episode_steps,
                   notes)  # fmt: skip


def _ci(interval: Interval) -> str:
    point, low, high = interval
    return "n/a" if not math.isfinite(point) else f"{point:.4g} [{low:.4g}, {high:.4g}]"


def _plot(scaling: Scaling, path: Path) -> None:
    """Top row: each measure against ``N``; bottom row: per variant, the leader's training return against frames at
    each ``N`` (does a larger ``N`` learn as much per frame, and is it still climbing at the end)."""
    import matplotlib.pyplot as plt

    colors = variant_colors(scaling.variants)
    fig = plt.figure(figsize=(11, 8.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1)
    for ax, (measure, label) in zip(top.subplots(1, len(MEASURES)), MEASURES.items(), strict=True):
        for variant in scaling.variants:
            ns = sorted(scaling.iqm[measure][variant])
            point, low, high = (np.array([scaling.iqm[measure][variant][n][i] for n in ns]) for i in range(3))
            ax.plot(ns, point, marker="o", color=colors[variant], lw=1.8, label=variant)
            ax.fill_between(ns, low, high, color=colors[variant], alpha=0.2, lw=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(scaling.num_envs, [str(n) for n in scaling.num_envs])
        ax.minorticks_off()
        ax.set_xlabel("N, parallel envs (log scale)")
        ax.set_ylabel(f"leader's {label} (IQM, 95% CI)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    shades = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(scaling.num_envs)))
    shade = dict(zip(scaling.num_envs, shades, strict=True))
    row = bottom.subplots(1, len(scaling.variants), sharey=True, squeeze=False)[0]
    for ax, variant in zip(row, scaling.variants, strict=True):
        for n, (grid, iqm, low, high) in sorted(scaling.curves[variant].items()):
            ax.plot(grid, iqm, color=shade[n], lw=1.6, label=f"N={n}")
            ax.fill_between(grid, low, high, color=shade[n], alpha=0.15, lw=0)
        ax.set_title(variant, fontsize=10)
        ax.set_xlabel("frames")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    row[0].set_ylabel("leader's training return (IQM, 95% band)")
    end = (f"{scaling.budget:.3g} frames per run" if scaling.iterations is None
           else f"{scaling.iterations} iterations per run (the frames grow with N)")  # fmt: skip
    top.suptitle(f"{scaling.task}: the leader at the end of {end}, against N", fontsize=10)
    bottom.suptitle("the leader's learning curve at each N, against frames", fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _runs_text(scaling: Scaling) -> str:
    if scaling.iterations is None:
        return (f"Each run collects {scaling.budget:.4g} frames, rounded up to whole iterations: a larger N means "
                "fewer iterations (fewer updates)")
    frames = ", ".join(f"{scaling.budgets[n]:.4g} at N={n}" for n in scaling.num_envs)
    return (f"Each run runs {scaling.iterations} iterations, so the frames grow with N ({frames}) and every N takes "
            "the same number of updates")


def write_scaling_report(scaling: Scaling, out_dir: str | Path, command: str) -> Path:
    """Writes ``scaling.md`` (per measure, the table behind the figure's top row with each variant's :func:`trend`,
    and ``P(sapg > variant)`` at each ``N``) and ``scaling.png`` (each measure against ``N``; each variant's learning
    curves against frames, one per ``N``) in ``out_dir``; returns the Markdown's path."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _plot(scaling, out_dir / "scaling.png")
    header = " | ".join(f"N={n}" for n in scaling.num_envs)
    steps = " | ".join(f"{scaling.budgets[n] / n:.0f}" for n in scaling.num_envs)
    rule = "|---" * (len(scaling.num_envs) + 2) + "|"
    longest = f" (longest episode: {scaling.episode_steps})" if scaling.episode_steps else ""
    about = (
        "{runs}. *Evaluation return*: the mean of the leader's last 3 deterministic evaluations on fresh envs. "
        "*Training return*: its mean return over the last 10% of the budget. IQM over seeds with a 95% "
        "stratified-bootstrap interval; in parentheses the runs that have the measure, of the runs. Trend: "
        "`degrades` when the largest N's interval lies below the best N's, `improves` when the smallest N's lies "
        "below the largest's; otherwise no change beyond the intervals: `saturates` when the best N is not the "
        "largest, `flat` when it is."
    )
    lines = [f"# The leader against N: {scaling.task}", "", "```bash", command, "```", "",
             about.format(runs=_runs_text(scaling)), "", f"| steps per env{longest} | {steps} |",
             "|---" * (len(scaling.num_envs) + 1) + "|"]  # fmt: skip
    for measure, label in MEASURES.items():
        lines += ["", f"## {label[0].upper()}{label[1:]}", "", f"| variant | {header} | trend |", rule]
        for variant in scaling.variants:
            by_n = scaling.iqm[measure][variant]
            cells = [f"{_ci(by_n[n])} ({scaling.scored[measure][variant][n]}/{scaling.runs[variant][n]})"
                     if n in by_n else "–" for n in scaling.num_envs]  # fmt: skip
            lines.append(f"| {variant} | {' | '.join(cells)} | {trend(by_n)} |")
        if scaling.poi[measure]:
            lines += ["", f"P({REFERENCE} > variant) on the {label} [95% CI]:", "",
                      f"| variant | {header} |", "|---" * (len(scaling.num_envs) + 1) + "|"]  # fmt: skip
            for variant, by_n in scaling.poi[measure].items():
                cells = [_ci(by_n[n]) if n in by_n else "–" for n in scaling.num_envs]
                lines.append(f"| {variant} | {' | '.join(cells)} |")
    lines += ["", "Study folders: " + ", ".join(f"N={n}: `{p}`" for n, p in scaling.folders.items()), ""]
    lines += [f"- Note: {note}" for note in scaling.notes] + ["", "![the leader against N](scaling.png)", ""]
    path = out_dir / "scaling.md"
    path.write_text("\n".join(lines))
    return path
