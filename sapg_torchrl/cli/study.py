"""``sapg-study`` (``python recipes/study.py`` in a checkout): the whole ablation study with one command, every
ablation x 5 seeds, resumable.

    sapg-study                                      # this machine, 2 runs at a time (joblib)
    sapg-study hydra.launcher.n_jobs=4 total_frames=3e6
    sapg-study hydra/launcher=slurm hydra.launcher.partition=gpu   # a SLURM cluster
    sapg-study ablation=sapg,no_split seed=0,1,2    # a part of it
    sapg-study 'seed=range(10)' study.name=mountaincar_10seeds

Runs land in ``runs/study/<study.name>/<ablation>/seed<k>/`` (``study.name`` defaults to the env preset).
Re-running the same command skips finished runs and redoes failed or interrupted ones (their files are
moved to ``interrupted-<n>/``, never deleted); a crashed run does not stop the others. Then:

    sapg-report runs/study/<study.name>
"""

from __future__ import annotations

import sys

import hydra

from sapg_torchrl.cli import CONFIG_DIR
from sapg_torchrl.cli.checks import check_command_line
from sapg_torchrl.cli.train import run

_hydra_main = hydra.main(config_path=str(CONFIG_DIR), config_name="study", version_base="1.3")(run)


def main() -> None:
    """The console script: the command line is checked (each value of each sweep), then Hydra sweeps."""
    check_command_line(sys.argv[1:], "study")
    _hydra_main()
