#!/usr/bin/env python
"""Training throughput against rl_games (the library SAPG's authors built on), at identical settings.

    pip install -e ".[bench]"                           # rl_games 1.6.5
    python benchmarks/rl_games_vs_ours.py               # MountainCarContinuous-v0 and HalfCheetah-v4, 2 rounds
    python benchmarks/rl_games_vs_ours.py --tasks HalfCheetah-v4 --iters 10 --rounds 3 --out results.md

Runs rl_games' PPO (``a2c_continuous``), our ``no_split`` and our ``sapg`` on the same envpool task, each in a
fresh process, interleaved (every round runs the three in a rotated order), with the same settings: ``N`` envs
(1536), ``T`` (16), 5 epochs, minibatch ``4 N`` rows, an MLP 256-256-128 ELU trunk shared by actor and critic,
a state-independent log-std, KL-adaptive learning rate (target 0.016, from 5e-4), clipped values, input and value
normalisation, gradient clip 1.0, the same number of torch and envpool threads, torch.compile off and our
in-loop evaluation off. ``sapg`` updates ``(N + B) T`` rows per iteration, 1/6 more than the others by design.

Per run: frames/s (the median over the iterations after the first of ``N T / wall time``, rl_games' own ``fps
total``, which times its play and update phases the same way) and frames per CPU-second (frames over the process's
CPU time, every thread, over the same iterations). Ratios ``ours / rl_games`` per round and of the medians. Where the
time goes: the median seconds of each iteration's two phases, ``play`` (collect the rollout and compute its targets:
rl_games' ``play_time``; ours the runner's ``collect`` and ``targets`` phases) and ``update`` (the epochs: rl_games'
``update_time``; ours the runner's ``update`` phase), with their ratio to rl_games'.
Targets (issue 12): ``no_split`` >= 1.2x and ``sapg`` >= 1.0x rl_games. Time only on a quiet machine: the load
average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PRESETS = {"MountainCarContinuous-v0": "mountaincar", "HalfCheetah-v4": "halfcheetah"}
VARIANTS = ("rl_games", "no_split", "sapg")
RESULT = "RESULT "  # the worker's last line: RESULT {json}


# ------------------------------------------------------------------------------------------------- workers
def _timed(iterations, run_one):
    """``run_one()`` ``iterations`` times; wall and CPU seconds of each, and the seconds of its two phases, ``play``
    (collect the rollout and compute its targets) and ``update`` (the epochs), as ``run_one`` returns them."""
    out = []
    for _ in range(iterations):
        wall, cpu = time.perf_counter(), time.process_time()
        play, update = run_one()
        out.append((time.perf_counter() - wall, time.process_time() - cpu, play, update))
    return out


def rl_games_worker(args) -> list[tuple[float, float]]:
    import torch
    from rl_games.common.a2c_common import ContinuousA2CBase
    from rl_games.torch_runner import Runner

    times = []
    original = ContinuousA2CBase.train_epoch

    def train_epoch(self):  # rl_games' epoch = our iteration: collect N x T frames, then the update
        wall, cpu = time.perf_counter(), time.process_time()
        result = original(self)  # (step_time, play_time, update_time, ...): play includes its returns (GAE)
        times.append((time.perf_counter() - wall, time.process_time() - cpu, result[1], result[2]))
        return result

    ContinuousA2CBase.train_epoch = train_epoch
    torch.set_num_threads(args.threads)
    n = args.num_envs
    config = {"params": {
        "seed": 0,
        "algo": {"name": "a2c_continuous"},
        "model": {"name": "continuous_a2c_logstd"},
        "network": {
            "name": "actor_critic", "separate": False,
            "space": {"continuous": {"mu_activation": "None", "sigma_activation": "None", "mu_init": {"name": "default"},
                                     "sigma_init": {"name": "const_initializer", "val": 0}, "fixed_sigma": True}},
            "mlp": {"units": [256, 256, 128], "activation": "elu", "initializer": {"name": "default"}},
        },
        "config": {
            "name": f"bench_{args.task}", "env_name": "envpool", "device": "cpu", "ppo": True,
            "env_config": {"env_name": args.task, "env_type": "gymnasium", "num_threads": args.env_threads, "seed": 0},
            "num_actors": n, "horizon_length": args.horizon, "minibatch_size": 4 * n, "mini_epochs": args.epochs,
            "learning_rate": 5e-4, "lr_schedule": "adaptive", "kl_threshold": 0.016, "normalize_input": True,
            "normalize_value": True, "normalize_advantage": True, "value_bootstrap": True, "gamma": 0.99, "tau": 0.95,
            "e_clip": 0.2, "clip_value": True, "critic_coef": 2.0, "entropy_coef": 0.0, "grad_norm": 1.0,
            "truncate_grads": True, "bounds_loss_coef": 1e-4, "reward_shaper": {"scale_value": 1.0},
            "max_epochs": args.iters, "save_frequency": 0, "save_best_after": 10**9, "score_to_win": 10**9,
            "print_stats": False, "mixed_precision": False, "use_smooth_clamp": False,
            "train_dir": str(Path(args.workdir) / "rl_games"),
        },
    }}  # fmt: skip
    runner = Runner()
    runner.load(config)
    runner.run({"train": True, "play": False})
    return times


def ours_worker(args) -> list[tuple[float, float]]:
    import torch
    from hydra import compose, initialize_config_dir

    from throughput import PhaseClock  # beside this script

    from sapg_torchrl.app.build import build_runner
    from sapg_torchrl.cli import CONFIG_DIR

    torch.set_num_threads(args.threads)
    overrides = [f"ablation={args.variant}", f"env={PRESETS[args.task]}", f"env.num_envs={args.num_envs}",
                 f"ppo.horizon={args.horizon}", f"ppo.epochs={args.epochs}", "device=cpu", "logger.wandb=false",
                 "train.progress=false", "train.eval_interval=0", f"+env.make.num_threads={args.env_threads}"]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="sapg", overrides=overrides)
    cfg.total_frames = args.num_envs * args.horizon * (args.iters + 1)
    runner = build_runner(cfg)
    runner.phase_clock = clock = PhaseClock(runner.device)

    def iteration():  # the runner's own iteration: what Runner.train() runs, without sinks, checkpoints, evaluation
        clock.start()
        runner.run_iteration()
        return clock.times["collect"] + clock.times["targets"], clock.times["update"]

    try:
        return _timed(args.iters, iteration)
    finally:
        runner.collector.shutdown()


# ------------------------------------------------------------------------------------------------ driver
def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)

def run_worker(variant: str, task: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, "--tasks", task, "--num-envs", str(args.num_envs),
           "--horizon", str(args.horizon), "--epochs", str(args.epochs), "--iters", str(args.iters),
           "--threads", str(args.threads), "--env-threads", str(args.env_threads), "--workdir", args.workdir]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=args.workdir)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode or not lines:
        raise RuntimeError(f"{variant} on {task} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    times = json.loads(lines[-1][len(RESULT):])[1:]  # the first iteration warms up
    frames = args.num_envs * args.horizon
    return {"fps": statistics.median(frames / t[0] for t in times),
            "fps_cpu": frames * len(times) / sum(t[1] for t in times),
            "play_s": statistics.median(t[2] for t in times), "update_s": statistics.median(t[3] for t in times)}  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default=",".join(PRESETS), help=f"comma-separated, of {', '.join(PRESETS)}")
    p.add_argument("--num-envs", type=int, default=1536)
    p.add_argument("--horizon", type=int, default=16)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--iters", type=int, default=10, help="iterations per run, the first untimed (default 10)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of every run (default 2)")
    p.add_argument("--env-threads", type=int, default=2, help="envpool threads of every run (default 2)")
    p.add_argument("--out", default=None, help="also write the table (markdown) here")
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    tasks = args.tasks.split(",")
    bad = [t for t in tasks if t not in PRESETS]
    if bad:
        _fail(f"--tasks: {bad[0]!r} is not accepted; accepted: {', '.join(PRESETS)}")
    for name in ("num_envs", "horizon", "epochs", "iters", "rounds", "threads", "env_threads"):
        if getattr(args, name) < (2 if name == "iters" else 1):
            _fail(f"--{name.replace('_', '-')}={getattr(args, name)} is not accepted: at least {2 if name == 'iters' else 1}")
    if args.num_envs % 6:
        _fail(f"--num-envs={args.num_envs} is not accepted: a multiple of 6 (sapg's blocks)")
    if args.worker:  # a child process: one run, its per-iteration times on the last line
        args.task, args.variant = tasks[0], args.worker
        times = rl_games_worker(args) if args.worker == "rl_games" else ours_worker(args)
        print(RESULT + json.dumps(times))
        return 0
    try:
        import rl_games  # noqa: F401
    except ImportError:
        _fail('rl_games is not installed: pip install -e ".[bench]"')

    import tempfile

    load_before = os.getloadavg()[0]
    results = {t: {v: [] for v in VARIANTS} for t in tasks}
    with tempfile.TemporaryDirectory() as workdir:
        args.workdir = workdir
        for r in range(args.rounds):
            for task in tasks:
                order = VARIANTS[r % 3:] + VARIANTS[: r % 3]
                for variant in order:
                    res = run_worker(variant, task, args)
                    results[task][variant].append(res)
                    print(f"round {r + 1}/{args.rounds} {task} {variant:<8} {res['fps']:8.0f} frames/s "
                          f"{res['fps_cpu']:8.0f} frames/CPU-s", flush=True)  # fmt: skip
    lines = [f"N={args.num_envs}, T={args.horizon}, {args.epochs} epochs, minibatch {4 * args.num_envs} rows, MLP 256-256-128 "
             f"ELU, {args.threads} torch threads, {args.env_threads} envpool threads, {args.iters} iterations per run "
             f"(the first untimed), {args.rounds} rounds; load average before/after: {load_before:.2f} / "
             f"{os.getloadavg()[0]:.2f}", "",
             "| task | variant | frames/s (per round) | frames/CPU-s (per round) | frames/s vs rl_games (per round) "
             "| play s (vs rl_games) | update s (vs rl_games) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for task in tasks:
        base = results[task]["rl_games"]
        for variant in VARIANTS:
            runs = results[task][variant]
            ratios = [x["fps"] / b["fps"] for x, b in zip(runs, base, strict=True)]
            fps = ", ".join(f"{x['fps']:.0f}" for x in runs)
            fps_cpu = ", ".join(f"{x['fps_cpu']:.0f}" for x in runs)
            vs = "–" if variant == "rl_games" else f"{statistics.median(ratios):.2f}x ({', '.join(f'{x:.2f}' for x in ratios)})"
            phases = []
            for phase in ("play_s", "update_s"):
                mine, theirs = (statistics.median(x[phase] for x in r) for r in (runs, base))
                phases.append(f"{mine:.3f}" + ("" if variant == "rl_games" else f" ({mine / theirs:.2f}x)"))
            lines.append(f"| {task} | {variant} | {fps} | {fps_cpu} | {vs} | {phases[0]} | {phases[1]} |")
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
