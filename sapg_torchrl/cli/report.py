"""``sapg-report`` (``python recipes/report.py`` in a checkout): write the ablation study's report: tables (IQM
with 95% bootstrap intervals), findings and plots.

    sapg-report runs/study/mountaincar                  # -> runs/study/mountaincar/report/report.md
    sapg-report runs/study/mountaincar --out reports/mc --study-command "sapg-study"
    sapg-report runs/study/mountaincar runs/study/hopper --out reports/all   # several tasks
    sapg-report --scaling runs/scaling/mountaincar/N* --out reports/scaling    # final return against N

Reads the finished runs of a study folder written by ``sapg-study`` (``<ablation>/seed<k>/``; unfinished ones are
skipped with a warning) and prints the path of ``report.md``. With several folders (one per task) each gets its
report in ``<out>/<study name>/`` (the runs' ``study.name``, by default the env preset) and
``<out>/across_tasks.md`` aggregates them (:mod:`sapg_torchrl.study.tasks`). With ``--scaling`` the folders are one
task's studies at different numbers of envs (``sapg-study --config-name scaling``): ``<out>/scaling.md`` and
``scaling.png`` give the final return against ``N`` (:mod:`sapg_torchrl.study.scaling`), and no per-study report is
written. A folder that does not exist or holds no finished run exits with status 2 and a one-line error.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from pathlib import Path

from sapg_torchrl.cli.checks import require_extra


def _invocation() -> str:
    """How this job was started, for the report's header: ``python recipes/report.py`` or ``sapg-report``."""
    script = sys.argv[0] if sys.argv and sys.argv[0] else "sapg-report"
    return f"python {Path(script).parent.name}/{Path(script).name}" if script.endswith(".py") else "sapg-report"


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description="Write report.md and plots for a study folder.")
    parser.add_argument("folders", type=Path, nargs="+", help="the study folder(s) (runs/study/<name>), one per task")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: <folder>/report; required with several folders)")
    parser.add_argument("--study-command", default=None,
                        help="the command that ran the study, for the header (default: rebuilt from the runs)")
    parser.add_argument("--scaling", action="store_true",
                        help="the folders are one task's studies at different N: write scaling.md (final return against N)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap replications (default: 2000)")
    parser.add_argument("--max-states", type=int, default=None,
                        help="cap on the states per variant for the diversity measures (default: all)")
    args = parser.parse_args(argv)
    for option, value in (("--reps", args.reps), ("--max-states", args.max_states)):
        if value is not None and value < 1:
            print(f"error: {option} must be a positive integer, got {value}", file=sys.stderr)
            raise SystemExit(2)
    require_extra("study", ("pandas", "rliable", "matplotlib"), "sapg-report")

    from sapg_torchrl.study import (
        aggregate_tasks,
        load_study,
        scaling_summary,
        summarize,
        write_cross_task_report,
        write_report,
        write_scaling_report,
    )

    several = len(args.folders) > 1
    if several and args.out is None:
        print("error: several study folders need --out (where the per-task and cross-task reports go)", file=sys.stderr)
        raise SystemExit(2)
    if args.scaling and not several:
        print(f"error: --scaling needs study folders at two or more N, got one: {args.folders[0]}", file=sys.stderr)
        raise SystemExit(2)
    command = f"{_invocation()} {shlex.join(argv)}"
    loaded = []
    for folder in args.folders:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                loaded.append(load_study(folder))
        except (FileNotFoundError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        for warning in caught:  # skipped (unfinished) runs: one line each, not a source excerpt
            print(f"warning: {warning.message}", file=sys.stderr)
    if args.scaling:
        try:
            scaling = scaling_summary(loaded, reps=args.reps)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        path = write_scaling_report(scaling, args.out, command)
        print(path)
        return path
    studies = {study.name: study for study in loaded}
    if len(studies) != len(loaded):
        clash = [study for study in loaded if [other.name for other in loaded].count(study.name) > 1]
        names = ", ".join(f"{study.folder} ({study.name})" for study in clash)
        print(f"error: two study folders hold the same study (study.name): {names}; give one folder per task",
              file=sys.stderr)
        raise SystemExit(2)
    for name, study in studies.items():
        out = (args.out / name if several else args.out) or study.folder / "report"
        path = write_report(study, out, command, study_command=args.study_command, reps=args.reps,
                            max_states=args.max_states)  # fmt: skip
        print(path)
    if several:
        summaries = {name: (study, summarize(study, reps=args.reps, diversity=False)) for name, study in studies.items()}
        path = write_cross_task_report(aggregate_tasks(summaries, reps=args.reps), args.out, command)
        print(path)
    return path
