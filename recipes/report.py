"""Write the ablation study's report: tables (IQM with 95% bootstrap intervals), findings and plots.

    python recipes/report.py runs/study/mountaincar                  # -> runs/study/mountaincar/report/report.md
    python recipes/report.py runs/study/mountaincar --out reports/mc --study-command "python recipes/study.py"

Reads the finished runs of a study folder written by ``recipes/study.py`` (``<ablation>/seed<k>/``;
unfinished ones are skipped with a warning) and prints the path of ``report.md``. A folder that does not
exist or holds no finished run exits with status 2 and a one-line error.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description="Write report.md and plots for a study folder.")
    parser.add_argument("folder", type=Path, help="the study folder (runs/study/<name>)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <folder>/report)")
    parser.add_argument("--study-command", default=None,
                        help="the command that ran the study, for the header (default: rebuilt from the runs)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap replications (default: 2000)")
    parser.add_argument("--max-states", type=int, default=None,
                        help="cap on the states per variant for the diversity measures (default: all)")
    args = parser.parse_args(argv)

    from sapg_torchrl.study import load_study, write_report

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            study = load_study(args.folder)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    for warning in caught:  # skipped (unfinished) runs: one line each, not a source excerpt
        print(f"warning: {warning.message}", file=sys.stderr)
    command = "python recipes/report.py " + shlex.join(argv)
    path = write_report(study, args.out or args.folder / "report", command, study_command=args.study_command,
                        reps=args.reps, max_states=args.max_states)  # fmt: skip
    print(path)
    return path


if __name__ == "__main__":
    main()
