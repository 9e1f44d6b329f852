#!/usr/bin/env python
"""Operator calls per optimizer step: a measure of the update's host-side cost that holds on any hardware (issue 36).

    python benchmarks/op_count.py                      # sapg and no_split, eager, beside stock ClipPPOLoss
    python benchmarks/op_count.py --top 10             # and each pipeline's most frequent operators

Counts the ATen operators dispatched (a :class:`~torch.utils._python_dispatch.TorchDispatchMode`: every call that
reaches the operator level, forward, backward, gradient clipping and Adam included) over one iteration's update,
``PPOUpdate.learn`` (the epochs of minibatch steps, the observation-norm update), and divides by its optimizer
steps; the same for TorchRL's stock pipeline (``throughput.py``'s ``StockPPO``: ``ClipPPOLoss`` on separate MLPs of the
same widths, Adam, gradient clipping), with PyTorch's default Adam (single-tensor on the CPU) and with Adam's
``foreach`` (``stock_foreach``: what the same script runs on a GPU, and what ours runs everywhere). On a GPU each operator is at least one kernel launch, so that this count is
what the host pays per step wherever the update waits on it. Counted, never timed: the same on every machine, for
the same torch. ``N`` does not change it as long as an epoch has the same number of minibatches (4 at the study's
settings), so a small ``--num-envs`` counts what the default ``N`` would. Compiled updates are not counted here:
their operators run inside generated code (``benchmarks/gpu_profile.py`` counts their kernels on a GPU).

:data:`RECORDED` holds the counts of the commit that recorded them; ``tests/test_benchmarks.py`` fails when a count
grows by more than :data:`TOLERANCE`.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import throughput
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sapg_torchrl.app.build import build_runner

RECORDED = {"sapg": 453, "no_split": 443, "stock": 466, "stock_foreach": 356}
"""Operator calls per optimizer step, eager, torch 2.13.0 on the CPU (2026-12-07: Adam's foreach, the loss's masked
means in one pass, the value normaliser's statistics read once per forward; before: sapg 577, no_split 560)."""
TOLERANCE = 0.10
"""How much a count may grow over :data:`RECORDED` before the test fails."""


class OperatorCount(TorchDispatchMode):
    """Counts the ATen operators dispatched while active, by name."""

    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def ours(ablation: str, args: argparse.Namespace):
    """The runner's update of one collected iteration: ``(update, optimizer steps, close)``."""
    runner = build_runner(throughput.compose_config(ablation, args))
    data = runner.collect()
    batch = runner.prepare(data)
    ppo = runner.update.ppo
    steps = ppo.epochs * len(runner.update.minibatch_sizes(batch.shape[0], batch.numel() // batch.shape[0]))
    return (lambda: runner.update.learn(batch.clone(), data, 0)), steps, runner.collector.shutdown


def stock(args: argparse.Namespace, adam_foreach: bool | None = None):
    """TorchRL's stock PPO update of one collected iteration (``adam_foreach``: see ``StockPPO``)."""
    pipeline = throughput.StockPPO(throughput.compose_config("no_split", args), args.device, adam_foreach)
    batch = pipeline.targets(pipeline.collect())
    return (lambda: pipeline.update(batch)), pipeline.minibatches, pipeline.close


def count(name: str, args: argparse.Namespace) -> tuple[float, Counter]:
    """Operator calls per optimizer step of ``name`` (``sapg``, ``no_split``, any ablation, ``stock``, or
    ``stock_foreach``: stock with Adam's ``foreach``, as it runs on a GPU), and the calls by operator over the whole
    update."""
    if name.startswith("stock"):
        update, steps, close = stock(args, adam_foreach=True if name == "stock_foreach" else None)
    else:
        update, steps, close = ours(name, args)
    try:
        update()  # warm-up: lazy initialisations (Adam's state) are not per-step costs
        with OperatorCount() as counter:
            update()
    finally:
        close()
    return sum(counter.calls.values()) / steps, counter.calls


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pipelines", default="sapg,no_split,stock,stock_foreach",
                   help="comma-separated (default: sapg,no_split,stock,stock_foreach)")
    p.add_argument("--env", default=None, help="env preset; default: the config's")
    p.add_argument("--num-envs", type=int, default=48, help="N (default 48; a multiple of 6)")
    p.add_argument("--top", type=int, default=0, help="list each pipeline's most frequent operators (default 0)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.num_envs < 6 or args.num_envs % 6:
        print(f"error: --num-envs={args.num_envs} is not accepted: a positive multiple of 6 (sapg's blocks)", file=sys.stderr)
        raise SystemExit(2)
    torch.set_num_threads(args.threads)
    args.device, args.horizon, args.epochs, args.rounds, args.warmup, args.iters = "cpu", None, None, 1, 1, 1
    names = args.pipelines.split(",")
    print(f"torch {torch.__version__}, env={args.env or 'default'}, N={args.num_envs}, eager\n")
    print("| pipeline | operator calls per optimizer step | recorded |\n|---|---|---|")
    tops = {}
    for name in names:
        per_step, calls = count(name, args)
        tops[name] = calls
        print(f"| {name} | {per_step:.0f} | {RECORDED.get(name, '–')} |", flush=True)
    for name, calls in tops.items() if args.top else ():
        print(f"\n{name}: " + ", ".join(f"{op} {n}" for op, n in calls.most_common(args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
