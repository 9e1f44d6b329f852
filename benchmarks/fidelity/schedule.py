#!/usr/bin/env python
"""The adaptive learning rate beside the KL that drives it, released code against ours (issue 35): per run, the
geometric mean of the learning rate and the mean of the logged KL over the iterations up to ``--until`` frames.

    python benchmarks/fidelity/schedule.py docs/results/fidelity/runs docs/results/fidelity/lag --task hopper

Reads ``<root>/<method>/<task>/seed<k>/`` (or ``<root>/<task>/seed<k>/`` of one method, as ``compare.py``):
``schedule.csv`` or ``schedule.csv.gz`` (``frames, lr, kl``: rl_games' ``info/last_lr`` and
``info/kl``, taken from a released-code run's TensorBoard log, which is not committed) or ``metrics.csv`` (ours:
``train/lr``, ``train/kl_approx``; or ``metrics.csv.gz``). Both KLs are the analytic Gaussian KL of the policy before each optimizer step to
the previous epoch's (the behaviour policy in the first epoch), over every row, averaged over an iteration's epochs.
Prints, per method, the median and range over seeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # compare.py, beside this script
from compare import found, read_rows  # noqa: E402

COLUMNS = {"schedule.csv": ("lr", "kl"), "metrics.csv": ("train/lr", "train/kl_approx")}


def run_schedule(folder: Path, until: float) -> tuple[float, float] | None:
    """(geometric-mean learning rate, mean KL) over the iterations up to ``until`` frames, or ``None``."""
    for name, (lr_key, kl_key) in COLUMNS.items():
        if (folder / name).is_file() or (folder / f"{name}.gz").is_file():
            rows = [r for r in read_rows(folder / name) if float(r["frames"]) <= until]
            lr = np.array([float(r[lr_key]) for r in rows])
            kl = np.array([float(r[kl_key]) for r in rows])
            return float(np.exp(np.log(lr).mean())), float(np.nanmean(kl))
    return None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("roots", nargs="+", type=Path)
    p.add_argument("--task", default="hopper")
    p.add_argument("--until", type=float, default=1e6, help="frames (default 1e6)")
    args = p.parse_args(argv)
    methods: dict[str, list] = {}
    names = ("config.yaml", "schedule.csv", "schedule.csv.gz")  # a run of ours, or of rl_games
    folders = {(method, path.parent) for method, task, _, path in found(args.roots, names) if task == args.task}
    for method, folder in sorted(folders):
        schedule = run_schedule(folder, args.until)
        if schedule is not None:
            methods.setdefault(method, []).append(schedule)
    print(f"{args.task}, iterations up to {args.until:g} frames: median [range] over seeds")
    print("| method | seeds | learning rate (geometric mean) | KL (mean) |\n|---|---|---|---|")
    for method, values in sorted(methods.items()):
        lr, kl = np.array(values).T
        print(f"| {method} | {len(lr)} | {np.median(lr):.4f} [{lr.min():.4f}, {lr.max():.4f}] "
              f"| {np.median(kl):.4f} [{kl.min():.4f}, {kl.max():.4f}] |")  # fmt: skip


if __name__ == "__main__":
    main()
