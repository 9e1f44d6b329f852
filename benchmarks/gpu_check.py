#!/usr/bin/env python
"""The GPU path in one call: no host sync inside an iteration, and frames/s of sapg, no_split and stock TorchRL PPO
on GPU-resident envs (``benchmarks/gpu_check.sh`` installs what the GPU machine lacks, then runs this).

    python benchmarks/gpu_check.py                          # CUDA, N = 24576, the pure-torch pendulum (+ Brax ant)
    python benchmarks/gpu_check.py --device cpu --num-envs 384 --iters 1 --rounds 1   # tried for size on a CPU

1. **Host syncs** (CUDA only): ``sapg`` on :class:`~sapg_torchrl.envs.pendulum.TorchPendulumEnv` (``env=torch_pendulum``,
   it resets inside its step), one iteration after a warm-up one, under ``torch.cuda.set_sync_debug_mode("warn")``:
   collecting the rollout and building the batch (targets, relabelled rows) may not sync at all, the update only for
   the adaptive learning rate's KL (2 per epoch), none per minibatch. Each sync is printed with the call stack that
   led to it (this library's, TorchRL's and tensordict's frames).
2. **CUDA graphs** (CUDA only): ``sapg`` with ``train.cudagraphs=true`` collects two batches (the first captures
   the rollout policy); the second's stored log-probabilities must be what the eager actor gives for its observations
   and actions (the graph computes the policy), and its host syncs are counted under ``"warn"`` (tensordict's
   ``CudaGraphModule`` synchronises before each replay: printed, not failed).
3. **Throughput**: ``benchmarks/throughput.py`` (interleaved rounds, same process) for ``sapg``, ``no_split``,
   ``stock`` and, on CUDA, ``sapg_cudagraphs`` on ``torch_pendulum`` at ``--num-envs``, then on ``brax_ant`` where
   JAX and Brax import.

Exits non-zero if the sync check or the CUDA-graph check fails. Prints everything it measured; ``--out DIR`` also writes the throughput
tables there (``pendulum.md``, ``brax_ant.md``).
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import sys
import traceback
import warnings
from pathlib import Path

import throughput
import torch

from sapg_torchrl.app.build import build_runner

OURS = ("sapg_torchrl", "torchrl", "tensordict", "benchmarks")


def host_syncs(fn) -> list[str]:
    """Calls ``fn`` under CUDA's sync-debug mode ``warn`` and returns one line per host sync it made: the innermost
    frames of this library, TorchRL, tensordict and this folder that led to it (its call stack, not only the line)."""
    found, show = [], warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if "called a synchronizing" not in str(message):  # not torch's note that the mode is a prototype
            return show(message, category, filename, lineno, file, line)
        frames = [f for f in traceback.extract_stack()[:-1] if any(k in f.filename for k in OURS)]
        found.append(" <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames[-4:])))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return found


def report_syncs(what: str, syncs: list[str], allowed: int) -> bool:
    """Prints the count of ``syncs`` against ``allowed`` and each distinct one; True when within bounds."""
    ok = len(syncs) <= allowed
    print(f"host syncs: {what}: {len(syncs)} (allowed {allowed}){'' if ok else ' FAILED'}")
    for where, count in collections.Counter(syncs).most_common(12):
        print(f"  {count} x {where}")
    return ok


def check_host_syncs(args: argparse.Namespace) -> bool:
    """Collect + batch (none allowed) and the update (the learning rate's KL: 2 per epoch, none per minibatch) under
    sync-debug ``warn``, every sync listed with its call stack; True when both stay within bounds."""
    device = torch.device(args.device)
    if device.type != "cuda":
        print("host syncs: skipped (CUDA's sync-debug mode needs a GPU; tests/test_host_sync.py is the CPU proxy)")
        return True
    opts = argparse.Namespace(device=args.device, env="torch_pendulum", num_envs=args.num_envs, horizon=None,
                              epochs=None, rounds=1, warmup=2, iters=1)  # fmt: skip
    cfg = throughput.compose_config("sapg", opts)
    runner = build_runner(cfg)
    batches = iter(runner.collector)
    data = next(batches)
    runner.update.learn(runner.prepare(data), data, 0)  # warm-up: allocations, lazy inits, the first reset
    torch.cuda.synchronize(device)
    step = {}
    ok = report_syncs("collection", host_syncs(lambda: step.update(data=next(batches))), 0)
    ok = report_syncs("batch (targets, relabelled rows)", host_syncs(lambda: step.update(batch=runner.prepare(step["data"]))), 0) and ok
    steps_before = runner.update.optimizer_steps
    syncs = host_syncs(lambda: runner.update.learn(step["batch"], step["data"], 0))
    steps = runner.update.optimizer_steps - steps_before
    ok = report_syncs(f"update ({runner.update.ppo.epochs} epochs, {steps} minibatch steps)", syncs, 2 * runner.update.ppo.epochs) and ok
    runner.collector.shutdown()
    return ok


def check_cudagraph_rollout(args: argparse.Namespace) -> bool:
    """The rollout under ``train.cudagraphs=true`` against the eager actor; True when they agree."""
    if torch.device(args.device).type != "cuda":
        print("cuda graphs: skipped (no CUDA; tests/test_compile.py checks the wiring)")
        return True
    opts = argparse.Namespace(device=args.device, env="torch_pendulum", num_envs=args.num_envs, horizon=None,
                              epochs=None, rounds=1, warmup=2, iters=1)  # fmt: skip
    runner = build_runner(throughput.compose_config("sapg", opts, ["train.cudagraphs=true"]))
    batches = iter(runner.collector)
    next(batches)  # CudaGraphModule's warm-up calls and the capture
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        data = next(batches)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode(0)
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    key = runner.update.loss.tensor_keys.sample_log_prob
    with torch.no_grad():
        rows = data.reshape(-1)
        eager = runner.actor.get_dist(rows.select(*runner.actor.in_keys, strict=False)).log_prob(rows.get("action"))
    error = (eager - rows.get(key)).abs().max().item()
    ok = error < 1e-3
    print(f"cuda graphs: {data.numel()} steps' log-probs against the eager actor: max |difference| {error:.2e} "
          f"({'agree' if ok else 'FAILED'}); host syncs while collecting: {syncs} over {data.shape[-1]} steps")
    runner.collector.shutdown()
    return ok


def run_throughput(args: argparse.Namespace, env: str, out: str | None) -> None:
    argv = ["--device", args.device, "--env", env, "--num-envs", str(args.num_envs), "--no-disjoint",
            "--rounds", str(args.rounds), "--iters", str(args.iters), "--warmup", "1"]  # fmt: skip
    if torch.device(args.device).type == "cuda":
        argv.append("--cudagraphs")
    if out:
        argv += ["--out", out]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    print(f"\n== throughput: env={env} N={args.num_envs} ({args.device})", flush=True)
    throughput.main(argv)


def device_or_size_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with ``--num-envs`` or ``--device`` here, in one line (``None``: nothing)."""
    if args.num_envs < 6 or args.num_envs % 6:
        return f"--num-envs={args.num_envs} is not accepted: a positive multiple of 6 (sapg's blocks)"
    if args.device != "cpu" and not (args.device.startswith("cuda") and torch.cuda.is_available()):
        return f"--device={args.device} is not accepted here: cpu (to try it for size), or cuda on a GPU machine"
    return None


def exit_or_start(problem: str | None, args: argparse.Namespace) -> str:
    """Exits with status 2 and one line where ``problem`` says what is wrong; else applies ``--threads`` and returns
    the device's name."""
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu (to try it for size)")
    p.add_argument("--num-envs", type=int, default=24576, help="N (default 24576; a multiple of 6)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved throughput rounds (default 2)")
    p.add_argument("--iters", type=int, default=3, help="timed iterations per variant and round (default 3)")
    p.add_argument("--no-brax", action="store_true", help="skip the Brax ant line")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    p.add_argument("--out", default=None, help="a folder for the throughput tables")
    args = p.parse_args(argv)
    problem = device_or_size_problem(args)
    for name in ("rounds", "iters", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            problem = f"--{name}={getattr(args, name)} is not accepted: an integer >= 1"
    name = exit_or_start(problem, args)
    print(f"torch {torch.__version__}, device {args.device} ({name}), N={args.num_envs}", flush=True)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    ok = check_host_syncs(args)
    ok = check_cudagraph_rollout(args) and ok
    run_throughput(args, "torch_pendulum", str(out / "pendulum.md") if out else None)
    if args.no_brax:
        pass
    elif all(importlib.util.find_spec(m) for m in ("jax", "brax")):
        run_throughput(args, "brax_ant", str(out / "brax_ant.md") if out else None)
    else:
        print("\nbrax_ant: skipped (JAX or Brax does not import here)")
    print("\nhost sync and CUDA-graph checks:", "passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
