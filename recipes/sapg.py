"""Train SAPG, or one of its ablations, with one command.

    python recipes/sapg.py                          # SAPG on the embedded default (CPU, minutes)
    python recipes/sapg.py ablation=disjoint        # an ablation of the study
    python recipes/sapg.py env=mountaincar fidelity=paper seed=3 total_frames=2e6
    python recipes/sapg.py resume=runs/2026-11-27/10-00-00-000000_mountaincar_sapg_seed0   # continue that run

Writes a run folder (``runs/...``) with the resolved config, ``metrics.csv`` (one row per iteration),
offline wandb logs and checkpoints. Bad settings exit with status 2 and a one-line message.
"""

from __future__ import annotations

import sys
from pathlib import Path

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sapg_torchrl.recipe_cli import (  # noqa: E402
    check_group_choices,
    check_override_keys,
    exit_on_config_error,
    register_resolvers,
)

CONFIG_DIR = Path(__file__).parent / "config"
GROUPS = ("ablation", "env", "fidelity")
register_resolvers()


def run(cfg: DictConfig) -> dict:
    """The job: one training run in Hydra's output folder (also the study's job, see recipes/study.py), or,
    with ``resume=<run folder>``, the continuation of that run in its own folder."""
    from sapg_torchrl.config import resume_config, train
    from sapg_torchrl.errors import Preempted

    hydra_cfg = HydraConfig.get()
    runtime, choices = hydra_cfg.runtime, hydra_cfg.runtime.choices
    name = f"{choices['env']}_{choices['ablation']}_seed{cfg.seed}"
    if hydra_cfg.mode == RunMode.MULTIRUN:
        # a sweep job: fail this job alone (Hydra records it and the sweep goes on), with a one-line log; run
        # again, the sweep resumes it from its checkpoint
        try:
            return train(cfg, runtime.output_dir, name=name)
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


main = hydra.main(config_path=str(CONFIG_DIR), config_name="sapg", version_base="1.3")(run)


if __name__ == "__main__":
    check_group_choices(sys.argv[1:], CONFIG_DIR, groups=GROUPS)
    check_override_keys(sys.argv[1:], CONFIG_DIR, "sapg", groups=GROUPS)
    main()
