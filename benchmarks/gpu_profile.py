#!/usr/bin/env python
"""Where the update's time goes: one iteration's update (``PPOUpdate.learn``: the epochs of minibatch steps) of
``sapg`` and of TorchRL's stock PPO (``benchmarks/throughput.py``'s two pipelines, same env and sizes), each under
:mod:`torch.profiler`, side by side in one process.

    python benchmarks/gpu_profile.py                              # CUDA, N = 24576, the pure-torch pendulum
    python benchmarks/gpu_profile.py --device cpu --num-envs 384  # tried for size on a CPU

For each pipeline it prints the update's wall time, the device's busy time (the sum of its kernels' times; on a CPU,
the operators' own times), the kernels launched (on CUDA) and operator calls per minibatch step, and the operators
that take the most device time. Wall time far above busy time means the update waits on the host (Python, operator
dispatch, launches): fewer, larger operations (``train.compile``) would help, a faster GPU would not.
"""

from __future__ import annotations

import argparse
import sys
import time

import throughput
import torch
from torch.profiler import ProfilerActivity, profile

from sapg_torchrl.app.build import build_runner


def sapg_update(args: argparse.Namespace):
    """The runner's update on one prepared batch, after a warm-up iteration."""
    runner = build_runner(throughput.compose_config("sapg", args, args.overrides))
    runner.run_iteration()
    data = runner.collect()
    batch = runner.prepare(data)
    steps = runner.update.optimizer_steps

    def update():
        runner.update.learn(batch, data, 0)

    update()  # the timed call repeats this one: same shapes, warm caches
    return update, runner.update.optimizer_steps - steps, runner.collector.shutdown


def stock_update(args: argparse.Namespace):
    """Stock PPO's update on one prepared batch, after a warm-up iteration."""
    stock = throughput.StockPPO(throughput.compose_config("sapg", args), args.device)
    stock.iteration()
    batch = stock.targets(stock.collect())

    def update():
        stock.update(batch)

    update()
    return update, stock.minibatches, stock.close


def profile_update(name: str, build, args: argparse.Namespace) -> None:
    update, steps, close = build(args)
    device = torch.device(args.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        update()
        sync()
    wall = time.perf_counter() - t0
    events, cpu, cuda = prof.key_averages(), torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA
    kernels = [e for e in prof.events() if e.device_type == cuda]
    if device.type == "cuda":  # the kernels' own times (an operator's device time is its kernels')
        busy, sort = sum(e.self_device_time_total for e in kernels) / 1e6, "self_device_time_total"
    else:
        busy, sort = sum(e.self_cpu_time_total for e in events) / 1e6, "self_cpu_time_total"
    calls = sum(e.count for e in events if e.device_type == cpu)
    print(f"\n== {name}: update wall {wall:.3f} s (under the profiler), device busy {busy:.3f} s "
          f"({busy / wall:.0%}), {steps} minibatch steps: {len(kernels) / max(steps, 1):.0f} kernels and "
          f"{calls / max(steps, 1):.0f} operator calls per step")  # fmt: skip
    print(events.table(sort_by=sort, row_limit=args.rows, max_name_column_width=60))
    close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (to try it for size)")
    p.add_argument("--env", default="torch_pendulum", help="the env config (default torch_pendulum)")
    p.add_argument("--num-envs", type=int, default=24576, help="N (default 24576; a multiple of 6)")
    p.add_argument("--rows", type=int, default=15, help="operators listed per pipeline (default 15)")
    p.add_argument("overrides", nargs="*", help="config overrides for sapg only (e.g. train.compile=true)")
    args = p.parse_args(argv)
    if args.num_envs < 6 or args.num_envs % 6:
        print(f"error: --num-envs={args.num_envs} is not accepted: a positive multiple of 6 (sapg's blocks)", file=sys.stderr)
        return 2
    if args.device != "cpu" and not (args.device.startswith("cuda") and torch.cuda.is_available()):
        print(f"error: --device={args.device} is not accepted here: cpu, or cuda on a GPU machine", file=sys.stderr)
        return 2
    args.horizon = args.epochs = None
    args.rounds, args.warmup, args.iters = 1, 3, 1  # compose_config's frame budget: enough for the calls above
    print(f"torch {torch.__version__}, {args.device}, env={args.env}, N={args.num_envs}, sapg overrides: {args.overrides}")
    profile_update("sapg", sapg_update, args)
    profile_update("stock", stock_update, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
