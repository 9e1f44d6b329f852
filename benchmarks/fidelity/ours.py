#!/usr/bin/env python
"""Our ``sapg`` or ``no_split`` at the settings of ``released.py`` (beside this script), logging every finished
episode of the leader as it does (issue 35).

    python benchmarks/fidelity/ours.py --ablation sapg --seed 0 --out fidelity/sapg/hopper/seed0
    python benchmarks/fidelity/ours.py --ablation no_split --seed 0 --out fidelity/no_split/hopper/seed0 \
        ppo.shuffle=every_epoch                   # any further argument is a Hydra override of the run

The run is ``recipes/sapg.py env=<preset> ablation=<ablation>`` with the settings of the first Hopper study (the
released code's: followers' entropy scale 0.05, no log-std cap, 4 minibatches, the KL over all rows) and no
evaluation. Besides the run folder's usual files, ``<out>/episodes.csv`` has one row per finished episode of the
leader block (every env for ``no_split``), with the frames collected at the end of its iteration, as
``released.py`` writes the released code's.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from sapg_torchrl.app.run import train
from sapg_torchrl.cli import CONFIG_DIR
from sapg_torchrl.cli.checks import check_command_line

STUDY_SETTINGS = [
    "sapg.entropy_scale=0.05", "network.max_log_std=null", "ppo.num_minibatches=4", "ppo.kl_rows=all",
    "train.eval_interval=0", "train.progress=false", "logger.wandb=false",
]  # fmt: skip
"""The first Hopper study's settings where they differ from the preset (``docs/results/hopper/runs/*/config.yaml``)."""


class EpisodeLog:
    """A runner hook: appends ``frames, return, wall_s`` of each finished leader episode of an iteration to a CSV
    (one host transfer per iteration)."""

    def __init__(self, path: Path):
        self.file = open(path, "w", newline="")
        self.writer = csv.writer(self.file)
        self.writer.writerow(["frames", "return", "wall_s"])
        self.start = time.perf_counter()

    def __call__(self, runner, data) -> None:
        layout = runner.layout
        leader = slice(layout.leader * layout.block_size, (layout.leader + 1) * layout.block_size)
        following = data[leader].get("next")
        returns = following.get("episode_reward")[following.get("done")].tolist()
        wall = f"{time.perf_counter() - self.start:.1f}"
        self.writer.writerows([runner.frames, f"{r:.4f}", wall] for r in returns)
        self.file.flush()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ablation", default="sapg", help="sapg or no_split (any ablation of the study)")
    parser.add_argument("--env", default="hopper", help="an env preset (hopper, halfcheetah, ...)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=float, default=3e6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args, overrides = parser.parse_known_args(argv)
    if args.out.exists():
        raise SystemExit(f"error: {args.out} exists: remove it or choose another --out")
    overrides = [
        f"env={args.env}", f"ablation={args.ablation}", f"seed={args.seed}", f"total_frames={args.frames}",
        f"train.threads={args.threads}", *STUDY_SETTINGS, *overrides,
    ]  # fmt: skip
    check_command_line(overrides, "sapg")  # a bad value: one line naming it and what is accepted
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="sapg", overrides=overrides)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True)
    train(cfg, args.out, hooks=[EpisodeLog(args.out / "episodes.csv")])


if __name__ == "__main__":
    main()
