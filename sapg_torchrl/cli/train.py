"""``sapg-train`` (``python recipes/sapg.py`` in a checkout): train SAPG, or one of its ablations, with one command.

    sapg-train                                      # SAPG on the embedded default (CPU, minutes)
    sapg-train ablation=disjoint                    # an ablation of the study
    sapg-train env=mountaincar fidelity=paper seed=3 total_frames=2e6
    sapg-train resume=runs/2026-11-27/10-00-00-000000_mountaincar_sapg_seed0   # continue that run
    sapg-train --config-dir my_configs ablation=mine                            # my_configs/ablation/mine.yaml
    torchrun --standalone --nproc_per_node=4 -m sapg_torchrl.cli.train env.num_envs=24576   # 4 processes, one run

Writes a run folder (``runs/...``) with the resolved config, ``metrics.csv`` (one row per iteration),
offline wandb logs and checkpoints. Bad settings exit with status 2 and a one-line message.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from sapg_torchrl.cli import CONFIG_DIR
from sapg_torchrl.cli.checks import check_command_line, exit_on_config_error


def run(cfg: DictConfig) -> dict:
    """The job: one training run in Hydra's output folder (also the study's job, see :mod:`sapg_torchrl.cli.study`),
    or, with ``resume=<run folder>``, the continuation of that run in its own folder."""
    from sapg_torchrl.app.run import train
    from sapg_torchrl.errors import Preempted
    from sapg_torchrl.app.run_folder import resume_config

    hydra_cfg = HydraConfig.get()
    runtime, choices = hydra_cfg.runtime, hydra_cfg.runtime.choices
    name = f"{choices['env']}_{choices['ablation']}_seed{cfg.seed}"
    if hydra_cfg.mode == RunMode.MULTIRUN and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SystemExit("error: a sweep (--multirun, sapg-study) runs each run in one process: launch single runs "
                         "with torchrun, or the sweep without it")  # fmt: skip
    if hydra_cfg.mode == RunMode.MULTIRUN:
        # a sweep job: a failure fails this job alone (Hydra records it and the sweep goes on), with a one-line log;
        # a stop signal stops the sweep too (the process was asked to end: a sequential sweep would otherwise go on
        # to its next run). Run again, the sweep resumes either from its checkpoint
        try:
            return train(cfg, runtime.output_dir, name=name)
        except Preempted as stopped:
            logging.getLogger("sapg").error("run %s: %s; the sweep stops here, the same command resumes it",
                                            runtime.output_dir, stopped.summary)  # fmt: skip
            raise SystemExit(stopped.exit_code) from None
        except Exception as err:
            logging.getLogger("sapg").error("run %s failed: %s: %s", runtime.output_dir, type(err).__name__, err)
            raise
    with exit_on_config_error():
        run_dir, resume = runtime.output_dir, cfg.resume is not None
        if resume:
            run_dir = cfg.resume
            cfg = resume_config(cfg.resume, list(hydra_cfg.overrides.task))
            name = Path(run_dir).resolve().name
        try:
            return train(cfg, run_dir, name=name, resume=resume)
        except FloatingPointError as err:  # diverged: its result.json says so
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(1) from None
        except Preempted as stopped:
            print(f"error: {stopped}", file=sys.stderr)
            raise SystemExit(stopped.exit_code) from None


_hydra_main = hydra.main(config_path=str(CONFIG_DIR), config_name="sapg", version_base="1.3")(run)


NOT_MAIN_RANK = ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
"""Under ``torchrun`` every rank but 0 runs Hydra with these: no folder, no log file (rank 0's run folder is the
run's, see :func:`sapg_torchrl.app.run.train`)."""


def main() -> None:
    """The console script: the command line is checked (one-line errors), then Hydra runs :func:`run`."""
    check_command_line(sys.argv[1:], "sapg")
    if int(os.environ.get("RANK", "0")) > 0:
        sys.argv = [a for a in sys.argv if not a.startswith(("hydra.run.dir=", "hydra.output_subdir="))] + NOT_MAIN_RANK
    _hydra_main()


if __name__ == "__main__":  # python -m sapg_torchrl.cli.train (what torchrun -m runs)
    main()
