"""Run the whole ablation study with one command: every ablation x 5 seeds, resumable.

    python recipes/study.py                                  # this machine, 2 runs at a time (joblib)
    python recipes/study.py hydra.launcher.n_jobs=4 total_frames=3e6
    python recipes/study.py hydra/launcher=slurm hydra.launcher.partition=gpu   # a SLURM cluster
    python recipes/study.py ablation=sapg,no_split seed=0,1,2         # a part of it
    python recipes/study.py 'seed=range(10)' study.name=mountaincar_10seeds

Runs land in ``runs/study/<study.name>/<ablation>/seed<k>/`` (``study.name`` defaults to the env preset).
Re-running the same command skips finished runs and redoes failed or interrupted ones (their files are
moved to ``interrupted-<n>/``, never deleted); a crashed run does not stop the others. Then:

    python recipes/report.py runs/study/<study.name>
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sapg import CONFIG_DIR, GROUPS, run  # noqa: E402

from sapg_torchrl.recipe_cli import check_group_choices, check_override_keys  # noqa: E402

main = hydra.main(config_path=str(CONFIG_DIR), config_name="study", version_base="1.3")(run)

if __name__ == "__main__":
    check_group_choices(sys.argv[1:], CONFIG_DIR, groups=GROUPS)
    check_override_keys(sys.argv[1:], CONFIG_DIR, "study", groups=GROUPS)
    main()
