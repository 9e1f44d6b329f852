#!/usr/bin/env python
"""The GPU path in one call: no host sync inside an iteration, and frames/s of sapg, no_split and stock TorchRL PPO
on GPU-resident envs (``benchmarks/gpu_check.sh`` installs what the GPU machine lacks, then runs this).

    python benchmarks/gpu_check.py                          # CUDA, N = 24576, the pure-torch pendulum (+ Brax ant)
    python benchmarks/gpu_check.py --device cpu --num-envs 384 --iters 1 --rounds 1   # tried for size on a CPU

1. **Host syncs** (CUDA only): ``sapg`` on :class:`~sapg_torchrl.envs.pendulum.TorchPendulumEnv` (``env=torch_pendulum``,
   it resets inside its step), one iteration after a warm-up one, under ``torch.cuda.set_sync_debug_mode``:
   collecting the rollout and building the batch (targets, relabelled rows) under ``"error"`` (any sync fails the
   check); the update under ``"warn"``, its syncs counted and checked against the documented per-epoch ones (the
   adaptive learning rate's KL: 2 per epoch), none per minibatch.
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
import importlib.util
import sys
import warnings
from pathlib import Path

import throughput
import torch

from sapg_torchrl.app.build import build_runner


def check_host_syncs(args: argparse.Namespace) -> bool:
    """Collect + batch under sync-debug ``error``, update under ``warn``; True when both stay within bounds."""
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
    ok = True
    try:
        torch.cuda.set_sync_debug_mode("error")
        data = next(batches)
        batch = runner.prepare(data)
        torch.cuda.set_sync_debug_mode(0)
        print("host syncs: collection and batch: none")
    except RuntimeError as error:
        torch.cuda.set_sync_debug_mode(0)
        print(f"host syncs: collection and batch: FAILED, a sync at: {str(error).splitlines()[0]}")
        ok = False
        data = next(batches)
        batch = runner.prepare(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        steps_before = runner.update.optimizer_steps
        runner.update.learn(batch, data, 0)
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    allowed = 2 * runner.update.ppo.epochs
    steps = runner.update.optimizer_steps - steps_before
    print(f"host syncs: update: {len(syncs)} over {runner.update.ppo.epochs} epochs, {steps} minibatch steps (allowed {allowed})")
    for where in sorted({f"{w.filename}:{w.lineno}" for w in syncs})[:10]:
        print(f"  sync at {where}")
    runner.collector.shutdown()
    return ok and len(syncs) <= allowed


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
    problem = None
    if args.num_envs < 6 or args.num_envs % 6:
        problem = f"--num-envs={args.num_envs} is not accepted: a positive multiple of 6 (sapg's blocks)"
    elif args.device != "cpu" and not (args.device.startswith("cuda") and torch.cuda.is_available()):
        problem = f"--device={args.device} is not accepted here: cpu (to try it for size), or cuda on a GPU machine"
    for name in ("rounds", "iters", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            problem = f"--{name}={getattr(args, name)} is not accepted: an integer >= 1"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
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
