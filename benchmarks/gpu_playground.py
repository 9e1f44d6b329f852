#!/usr/bin/env python
"""The paper's kind of task at the paper's kind of scale (issue 39): ``sapg`` and ``no_split`` trained for a few
minutes each on MuJoCo Playground's LEAP cube reorientation (``env=playground_leap_cube_reorient``, MJX on JAX's
device), recording frames/s, the time of each phase and the return reached (``benchmarks/gpu_playground.sh``
installs what the GPU machine lacks, then runs this).

    python benchmarks/gpu_playground.py --out benchmarks/gpu_h100               # CUDA, N = 12288, 150 s per variant (the .sh: 90)
    python benchmarks/gpu_playground.py --device cpu --num-envs 12 --seconds 1 --horizon 4   # tried for size on a CPU

Each variant is the runner's own loop body (:meth:`~sapg_torchrl.training.Runner.run_iteration`: collect, targets,
update; no evaluation, checkpoints or sinks) until its time is spent, on one seed; both variants share the process
and so JAX's compilation of the task (the first iteration of the first variant carries it: reported apart). Per
iteration: the seconds of each phase (the device synchronised at each phase's end), frames (``N x T``) and the
leader's training return (the mean of its envs' last finished episodes, NaN until every leader env has finished
one: LEAP's episodes are 1000 steps, so at ``T = 16`` that takes 63 iterations). Printed as a table, and with
``--out DIR`` written there as ``playground_leap.md`` and, per variant, ``playground_leap_<variant>.csv`` (every
iteration). A few minutes on one seed say what the path costs and whether it learns at all, not how well.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from gpu_check import device_or_size_problem, exit_or_start
from throughput import PHASES, PhaseClock

from sapg_torchrl.app.build import build_runner
from sapg_torchrl.cli import CONFIG_DIR

PRESET = "playground_leap_cube_reorient"


def compose_config(variant: str, args: argparse.Namespace):
    overrides = [f"env={PRESET}", f"ablation={variant}", f"device={args.device}", f"env.num_envs={args.num_envs}",
                 "logger.wandb=false", "train.progress=false", "train.eval_interval=0", f"seed={args.seed}",
                 f"total_frames={10**12}"]  # fmt: skip
    if args.horizon is not None:
        overrides.append(f"ppo.horizon={args.horizon}")
    if args.menagerie is not None:
        overrides.append(f"env.make.menagerie={Path(args.menagerie).resolve()}")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="sapg", overrides=overrides)


def train_for(variant: str, args: argparse.Namespace, log=print) -> list[dict]:
    """``variant`` trained for ``args.seconds`` (after its first iteration): one row per iteration."""
    started = time.perf_counter()
    runner = build_runner(compose_config(variant, args))
    built = time.perf_counter() - started
    clock = runner.phase_clock = PhaseClock(runner.device)
    rows, spent = [], 0.0
    try:
        while not rows or spent < args.seconds:
            clock.start()
            metrics = runner.run_iteration()
            row = {"iteration": runner.iteration, "frames": runner.frames, **clock.times,
                   "return_leader": metrics.get("return/leader", math.nan)}  # fmt: skip
            row["seconds"] = sum(clock.times[p] for p in PHASES)
            if len(rows) == 0:
                row["build_s"] = built
            else:
                spent += row["seconds"]
            rows.append(row)
            if runner.iteration % 10 == 0 or len(rows) == 1:
                log(f"  {variant} iteration {runner.iteration}: {row['seconds']:.2f} s "
                    f"({', '.join(f'{p} {clock.times[p]:.2f}' for p in PHASES)}), leader return {row['return_leader']:.1f}")  # fmt: skip
    finally:
        runner.collector.shutdown()
        runner.env.close()
    return rows


def summarize(variant: str, rows: list[dict], num_envs: int) -> dict:
    """Steady state (every iteration after the first, which carries compilation): median seconds per phase and
    frames/s; the first iteration's and the build's seconds; frames and the leader's return at the end."""
    steady = rows[1:] or rows
    phases = {p: statistics.median(r[p] for r in steady) for p in PHASES}
    per_iteration = statistics.median(r["seconds"] for r in steady)
    returns = [r["return_leader"] for r in rows if not math.isnan(r["return_leader"])]
    frames_per_iteration = rows[0]["frames"]
    return {
        "variant": variant, "N": num_envs, "iterations": len(rows), "frames": rows[-1]["frames"],
        "fps": frames_per_iteration / per_iteration, **{f"{p}_s": phases[p] for p in PHASES},
        "first_iteration_s": rows[0]["seconds"], "build_s": rows[0]["build_s"],
        "return_first": returns[0] if returns else math.nan, "return_last": returns[-1] if returns else math.nan,
    }  # fmt: skip


def render(meta: str, summaries: list[dict]) -> str:
    lines = [meta, "", "| variant | N | iterations | frames | frames/s | collect s | targets s | update s | first iteration s "
             "| build s | leader return (first reported -> last) |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for s in summaries:
        lines.append(
            f"| {s['variant']} | {s['N']} | {s['iterations']} | {s['frames']:,} | {s['fps']:,.0f} | {s['collect_s']:.3f} "
            f"| {s['targets_s']:.3f} | {s['update_s']:.3f} | {s['first_iteration_s']:.1f} | {s['build_s']:.1f} "
            f"| {s['return_first']:.1f} -> {s['return_last']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="the learner's device: cuda (default) or cpu (to try it for size)")
    p.add_argument("--num-envs", type=int, default=12288, help="N (default 12288, 6 blocks of 2048; a multiple of 6)")
    p.add_argument("--seconds", type=float, default=150.0, help="training seconds per variant after its first iteration")
    p.add_argument("--horizon", type=int, default=None, help="T (default: the preset's, 16)")
    p.add_argument("--variants", nargs="+", default=["sapg", "no_split"], help="ablations to train (default sapg no_split)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--menagerie", default=None, help="a mujoco_menagerie folder with leap_hand/ (default: the adapter's)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    p.add_argument("--out", default=None, help="a folder for playground_leap.md and the per-iteration CSVs")
    args = p.parse_args(argv)
    problem = device_or_size_problem(args)
    if problem is None and args.seconds <= 0:
        problem = f"--seconds={args.seconds} is not accepted: a number > 0"
    if problem is None and args.threads is not None and args.threads < 1:
        problem = f"--threads={args.threads} is not accepted: an integer >= 1"
    name = exit_or_start(problem, args)
    import jax

    meta = (f"{PRESET}: torch {torch.__version__} on {args.device} ({name}); JAX {jax.__version__} on "
            f"{jax.default_backend()}; N = {args.num_envs}, {args.seconds:g} s per variant after its first iteration, "
            f"seed {args.seed}")  # fmt: skip
    print(meta, flush=True)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    summaries, started = [], time.perf_counter()
    for variant in args.variants:
        rows = train_for(variant, args, log=lambda line: print(line, flush=True))
        summaries.append(summarize(variant, rows, args.num_envs))
        if out:
            with open(out / f"playground_leap_{variant}.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    table = render(meta, summaries) + f"\nTotal: {time.perf_counter() - started:.0f} s for {len(args.variants)} variants.\n"
    print("\n" + table)
    if out:
        (out / "playground_leap.md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
