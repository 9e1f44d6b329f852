"""The study's report as Markdown and PNG plots: :func:`write_report`."""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sapg_torchrl.loss import LR_BOUNDS
from sapg_torchrl.study.runs import REFERENCE, SHARED_KEYS, VARIANT_ORDER, Study
from sapg_torchrl.study.summary import EVAL_POINTS, MEASURES, THRESHOLD_FRACTION, Interval, Summary, summarize

__all__ = ["default_study_command", "write_report"]

PAPER_NUM_ENVS = 24576  # the published default N (spec section 1)
DASH = "–"


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


def _label(variant: str, study: Study, summary: Summary, measure: str) -> str:
    """The variant's name, marked where it is the tuned PPO baseline on ``measure``."""
    tuned = summary.tuned_ppo.get(measure) == variant and len(study.ppo_grid) > 1
    return f"{variant} (tuned PPO)" if tuned else variant


MEASURE_TEXT = {
    "final": "the leader's mean episode return while training (`return/leader`) over the last 10% of the frame budget, "
    "exploration noise included: the paper's measure",
    "eval": f"the mean of the leader's last {EVAL_POINTS} deterministic evaluations on fresh envs (`eval/return` in "
    "`metrics.csv`): its policy without exploration noise",
}
"""What each of :data:`~sapg_torchrl.study.summary.MEASURES` is, for the report."""


def _signed(interval: Interval, digits: int = 4) -> str:
    point, low, high = interval
    if not math.isfinite(point):
        return "n/a"
    return f"{point:+.{digits}g} [{low:+.{digits}g}, {high:+.{digits}g}]"


def _diverged(study: Study, variant: str) -> str:
    runs = study.diverged(variant)
    if not runs:
        return f"0/{len(study.runs[variant])}"
    at = sorted(run.diverged_at for run in runs)
    where = f"it. {at[0]}" if at[0] == at[-1] else f"it. {at[0]}{DASH}{at[-1]}"
    return f"{len(runs)}/{len(study.runs[variant])} ({where})"


def _verdict(interval: Interval) -> str:
    p, low, high = interval
    if not math.isfinite(p):
        return "unknown"
    if low > 0.5:
        return "better"
    if high < 0.5:
        return "worse"
    return "indistinguishable"


def finding(measure: str, variant: str, poi: Interval, effect: Interval) -> str:
    """One line of the report's findings: ``sapg`` against ``variant`` on ``measure``.

    The verdict is P(sapg > variant)'s (:func:`_verdict`); where the effect's interval (IQM(sapg) - IQM(variant))
    still contains 0, the line says the difference is weak, so that a P just past 0.5 is not read as a clear gap.

    Examples:
        >>> print(finding("eval", "symmetric", (0.84, 0.52, 1.0), (771.0, -90.7, 1776.0)))  # doctest: +NORMALIZE_WHITESPACE
        - Evaluation return: `sapg` is better than `symmetric`: P(sapg > symmetric) = 0.84 [0.52, 1] (interval above
        0.5; the effect's interval contains 0: a weak difference); effect +771 [-90.7, +1776].
    """
    w = _verdict(poi)
    why = {"better": "interval above 0.5", "worse": "interval below 0.5",
           "indistinguishable": "interval contains 0.5", "unknown": "no scores"}[w]  # fmt: skip
    if w in ("better", "worse") and effect[1] <= 0 <= effect[2]:
        why += "; the effect's interval contains 0: a weak difference"
    text = {"better": f"`{REFERENCE}` is better than `{variant}`", "worse": f"`{REFERENCE}` is worse than `{variant}`",
            "indistinguishable": f"`{REFERENCE}` and `{variant}` are indistinguishable",
            "unknown": f"`{REFERENCE}` vs `{variant}`: unknown"}[w]  # fmt: skip
    return (
        f"- {MEASURES[measure].capitalize()}: {text}: P({REFERENCE} > {variant}) = {_ci(poi, 3)} ({why}); effect "
        f"{_signed(effect)}."
    )


def variant_colors(variants: Sequence[str]) -> dict:
    """One fixed colour per variant (its place in :data:`VARIANT_ORDER`), the same in every plot and report."""
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
        n, diverged = len(study.runs[variant]), len(study.diverged(variant))
        label = f"{variant} ({n} seed{'s' * (n != 1)}" + (f", {diverged} diverged)" if diverged else ")")
        ax.plot(grid, iqm, color=colors[variant], lw=1.8, label=label)
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
    _interval_panel(axes[0], summary.iqm["final"], colors, "training return, last 10% of budget")
    _interval_panel(axes[1], summary.iqm["eval"], colors, f"evaluation return, mean of the last {EVAL_POINTS}")
    for ax in axes:
        ax.set_xlabel("IQM [95% CI]")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_poi(summary: Summary, path: Path, colors: dict) -> None:
    import matplotlib.pyplot as plt

    rows = len(summary.poi["final"])
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(9, 1.0 + 0.45 * rows), sharey=True)
    for ax, (measure, name) in zip(axes, MEASURES.items(), strict=True):
        _interval_panel(ax, summary.poi[measure], colors, f"P({REFERENCE} > variant), {name}", reference=0.5)
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


def _claim_lines(study: Study, summary: Summary, measure: str) -> list[str]:
    lines = []
    if REFERENCE not in study.runs:
        return [f"- No `{REFERENCE}` runs: the paper's claims cannot be checked."]
    poi, name = summary.poi[measure], MEASURES[measure]
    verdicts = {v: _verdict(poi[v]) for v in ("symmetric", "no_off_policy") if v in poi}
    absent = [v for v in ("symmetric", "no_off_policy") if v not in poi]
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
    lines.append(f"- Paper: {claim} — on the {name}: **{status}** ({detail}).")
    n = study.setting("env.num_envs")
    scale = (f"N = {n} here, the paper's default is {PAPER_NUM_ENVS}"
             + ("; a check at small N" if isinstance(n, int) and n < PAPER_NUM_ENVS // 4 else ""))  # fmt: skip
    baselines = dict.fromkeys(v for v in ("no_split", summary.tuned_ppo.get(measure)) if v in poi)
    for baseline in baselines:
        w = _verdict(poi[baseline])
        p = _ci(poi[baseline], 3)
        status = {"better": "holds (sapg better)", "indistinguishable": "holds (sapg not worse; indistinguishable)",
                  "worse": "contradicted (sapg worse)", "unknown": "not tested (no scores)"}[w]  # fmt: skip
        which = "the paper's PPO" if baseline == "no_split" else "the tuned PPO baseline"
        lines.append(f"- Paper: *`sapg` is at least as good as PPO at large N*, against {which} (`{baseline}`), on the "
                     f"{name} — **{status}** (P({REFERENCE} > {baseline}) = {p}, IQM difference "
                     f"{_signed(summary.effect[measure][baseline])}; {scale}).")  # fmt: skip
    if not baselines:
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
            "Two co-primary measures, both of the leader: the *training return*, "
            f"{MEASURE_TEXT['final']}; and the *evaluation return*, {MEASURE_TEXT['eval']}. Per variant, across "
            "seeds: interquartile mean (IQM) with a 95% stratified-bootstrap interval "
            f"(rliable, {reps} replications, percentile method); *P({REFERENCE} > variant)*: rliable's probability "
            f"of improvement of `{REFERENCE}` over the variant; *effect*: IQM({REFERENCE}) - IQM(variant) in the "
            "measure's units, with its interval (runs of both resampled). *Diverged*: runs stopped by non-finite "
            f"losses; from the iteration they diverged on, both their returns count as {_num(study.floor)}, the "
            "lowest leader return any run of the study logged.", ""]  # fmt: skip
    for measure, name in MEASURES.items():
        out += [f"### {name.capitalize()}", "",
                f"| variant | seeds | diverged | IQM [95% CI] | P({REFERENCE} > variant) [95% CI] "
                f"| effect: IQM({REFERENCE}) - IQM(variant) [95% CI] |",
                "|---|---|---|---|---|---|"]  # fmt: skip
        for v in variants:
            poi = DASH if v == REFERENCE or v not in s.poi[measure] else _ci(s.poi[measure][v], 3)
            effect = DASH if v == REFERENCE or v not in s.effect[measure] else _signed(s.effect[measure][v])
            out.append(f"| {_label(v, study, s, measure)} | {len(study.runs[v])} | {_diverged(study, v)} "
                       f"| {_ci(s.iqm[measure][v])} | {poi} | {effect} |")  # fmt: skip
        out.append("")
        if study.ppo_grid:
            grid = ", ".join(f"`{v}` (entropy {c:g}): {_ci(s.iqm[measure][v])}" for v, c in study.ppo_grid.items())
            out += [f"*PPO entropy grid* (one block, {name}): {grid}. The tuned PPO baseline on this measure is its "
                    f"best point, `{s.tuned_ppo.get(measure, 'n/a')}`, chosen on these same seeds (a selection that "
                    "favours PPO); `no_split` is the paper's PPO (entropy 0).", ""]  # fmt: skip
    rules = sorted({run.kl_rows for run in study.all_runs})
    out += ["### Learning rates", "",
            "The KL-adaptive learning rate reacts to each variant's own data, so a variant's verdict also carries "
            f"the rate it trained at. The KL that drives it is measured on: {', '.join(f'`{r}`' for r in rules)} "
            "rows (`ppo.kl_rows`; runs without relabelled rows measure on-policy rows whatever the setting). "
            "*Median lr*: the median over seeds of each run's median `train/lr` over its iterations; *at cap*: the "
            f"mean fraction of iterations at the schedule's upper bound ({LR_BOUNDS[1]:g}).", "",
            "| variant | median lr | at cap |", "|---|---|---|"]  # fmt: skip
    for v in variants:
        lr, at_cap = s.lr[v]
        out.append(f"| {v} | {_num(lr, 3)} | {'n/a' if not math.isfinite(at_cap) else f'{at_cap:.0%}'} |")
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

    if s.coupling:
        out += ["## CPO's coupling", "",
                "For the variants that train CPO (`CPOLoss`): the advantage-weighted term's weights "
                "`exp(A / awac_lambda)` on the leader's rows relabelled to the followers (their mean, and the share "
                "capped at `awac_max`), the mean analytic KL(pi_follower || pi_leader) on the followers' own rows "
                "and the discriminator's accuracy on the rollout (`cpo_adr`; "
                f"{DASH} without one), each a run's mean over the last 10% of its budget, then the mean over seeds.", "",
                "| variant | AWAC weight, mean | AWAC weights capped | follower-to-leader KL | discriminator accuracy |",
                "|---|---|---|---|---|"]  # fmt: skip
        for v, d in s.coupling.items():
            accuracy = DASH if math.isnan(d["discriminator_accuracy"]) else _num(d["discriminator_accuracy"], 3)
            out.append(f"| {v} | {_num(d['awac_weight_mean'])} | {_num(d['awac_clamped_fraction'], 3)} | "
                       f"{_num(d['follower_leader_kl'])} | {accuracy} |")
        out.append("")

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
    for measure in MEASURES:
        out += [finding(measure, v, interval, s.effect[measure][v]) for v, interval in s.poi[measure].items()]
    for measure in MEASURES:
        out += _claim_lines(study, s, measure)
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
    colors = variant_colors(study.variants)
    plots = ["learning_curves.png", "final_scores.png"]
    _plot_learning_curves(study, summary, out_dir / plots[0], colors)
    _plot_final_scores(summary, out_dir / plots[1], colors)
    if any("pca" in d for d in summary.diversity.values()):
        plots.append("pca_curves.png")
        _plot_pca(summary, out_dir / plots[-1], colors)
    if summary.poi["final"]:
        plots.append("probability_of_improvement.png")
        _plot_poi(summary, out_dir / plots[-1], colors)
    text = _render(study, summary, command, study_command or default_study_command(study), reps, plots)
    path = out_dir / "report.md"
    path.write_text(text)
    return path
