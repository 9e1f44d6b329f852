"""
Reading a study folder and drawing its figures
==============================================

A study folder (``runs/study/<name>/<ablation>/seed<k>/``, written by ``sapg-study``) holds each run's
``config.yaml``, ``metrics.csv`` (a row per iteration) and ``result.json``. :func:`~sapg_torchrl.study.load_study`
reads it, :func:`~sapg_torchrl.study.summarize` computes the report's numbers (rliable's IQM with 95%
stratified-bootstrap intervals across seeds, the probability of improvement), and ``sapg-report`` writes them
with its plots; here they are drawn by hand from the same objects. The data: this repository's MountainCar
study (``docs/results/mountaincar/runs``), as far as it has run.
"""

# %%
# Load the runs. Unfinished runs are skipped with a warning; runs whose settings differ (other than in their
# variant's own keys) are listed in ``mismatches``.
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from sapg_torchrl.study import load_study, summarize

# the docs build runs this from docs/examples/; a checkout's root works too
folder = next(p for p in (Path("../results/mountaincar/runs"), Path("docs/results/mountaincar/runs")) if p.is_dir())
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    study = load_study(folder)
for variant, runs in study.runs.items():
    print(f"{variant:>24}: seeds {[run.seed for run in runs]}, {runs[0].budget:.0f} frames")

# %%
# One run's metrics are a plain table: the leader's return and every block's.
run = study.runs["sapg"][0]
print(run.path.relative_to(folder), "final leader return:", round(float(run.leader_return[-1]), 2))

# %%
# The aggregates across seeds (few bootstrap replications, to keep the page quick; the report uses 2000).
summary = summarize(study, reps=300, diversity=False)
for variant, (iqm, low, high) in summary.iqm["final"].items():
    print(f"{variant:>24}: final return IQM {iqm:7.2f}  [{low:7.2f}, {high:7.2f}]")
for measure in ("final", "eval"):  # the training return and the mean of the last 3 evaluations
    for variant, (p, low, high) in summary.poi[measure].items():
        d, d_low, d_high = summary.effect[measure][variant]
        print(f"{measure}: P(sapg > {variant}) = {p:.2f} [{low:.2f}, {high:.2f}], "
              f"IQM difference {d:+.2f} [{d_low:+.2f}, {d_high:+.2f}]")

# %%
# Learning curves: the IQM across seeds of the leader's return against env frames, with its 95% band.
fig, left = plt.subplots(figsize=(7, 4))
for variant, (grid, iqm, band_low, band_high) in summary.curves.items():
    (line,) = left.plot(grid, iqm, label=variant)
    left.fill_between(grid, band_low, band_high, color=line.get_color(), alpha=0.2)
left.axhline(summary.threshold, color="grey", ls=":", lw=1)
left.set(xlabel="env frames", ylabel="leader's return (IQM)", title="learning curves")
left.legend(fontsize=7)
fig.tight_layout()

# %%
# Final scores: each seed as a dot, the IQM and its interval as a bar.
names = list(summary.per_run)
fig, right = plt.subplots(figsize=(7, 0.6 * len(names) + 1.5))
for i, variant in enumerate(names):
    scores = summary.per_run[variant]["final"]
    iqm, low, high = summary.iqm["final"][variant]
    right.errorbar(iqm, i, xerr=[[iqm - low], [high - iqm]], fmt="o", color="k", capsize=3)
    right.scatter(scores, np.full(len(scores), i) + 0.15, s=12, alpha=0.6)
right.set_yticks(range(len(names)), names)
right.set(xlabel="final return", title="final return: seeds, IQM, 95% CI")
fig.tight_layout()
