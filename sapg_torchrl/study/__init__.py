"""The ablation study's report: load a study folder, aggregate across seeds, write ``report.md`` and plots.

:func:`load_study` reads the runs (:mod:`~sapg_torchrl.study.runs`); :func:`summarize` computes every number
of the report (spec section 3, :mod:`~sapg_torchrl.study.summary`); :func:`write_report` writes ``report.md``
and PNG plots (:mod:`~sapg_torchrl.study.render`); :func:`aggregate_tasks` aggregates several tasks' studies
(:mod:`~sapg_torchrl.study.tasks`); :func:`scaling_summary` and :func:`write_scaling_report` compare the final return
across studies that differ only in the number of envs (:mod:`~sapg_torchrl.study.scaling`)::

    from sapg_torchrl.study import load_study, write_report
    study = load_study("runs/study/mountaincar")
    write_report(study, "runs/study/mountaincar/report", command="python recipes/report.py runs/study/mountaincar")

All scores are the leader's (``return/leader``; with one block, the single policy on all envs). Across
seeds: rliable's interquartile mean (IQM) with 95% stratified-bootstrap intervals and the probability of
improvement of ``sapg`` over each variant (:mod:`sapg_torchrl.metrics.aggregate`).

Needs ``rliable``, ``pandas`` and ``matplotlib`` (the ``study`` extra).
"""

from sapg_torchrl.study.render import default_study_command, write_report
from sapg_torchrl.study.runs import VARIANT_ORDER, Run, Study, load_study
from sapg_torchrl.study.scaling import Scaling, scaling_summary, write_scaling_report
from sapg_torchrl.study.summary import Summary, summarize
from sapg_torchrl.study.tasks import CrossTask, aggregate_tasks, write_cross_task_report

__all__ = [
    "VARIANT_ORDER", "CrossTask", "Run", "Study", "Summary", "aggregate_tasks", "default_study_command",
    "Scaling", "load_study", "scaling_summary", "summarize", "write_cross_task_report", "write_report",
    "write_scaling_report",
]  # fmt: skip
