#!/usr/bin/env python
"""Time per iteration of ``sapg`` against the number of envs ``N``, interleaved in one process.

    python benchmarks/scaling_n.py                                  # N = 384 .. 12288 at the embedded default
    python benchmarks/scaling_n.py --num-envs 384,1536,6144 --threads 2 --ablation no_split

Each ``N`` is the embedded default config with ``env.num_envs=N`` (``T``, epochs and 4 minibatches of ``N x T / 4``
rows per epoch follow the config), built once; the rounds run every ``N`` in a rotated order (warm-up, then timed
iterations, as ``throughput.py`` does). Printed per ``N``: seconds per iteration and its phases, frames/s, and
seconds per iteration per 1000 envs: once the cores are saturated the time is linear in ``N`` and that last column
is flat. Time only on a quiet machine (the load average is printed).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch
from throughput import SAPGVariant, compose_config, measure, summarize  # beside this script, on Python's path

from sapg_torchrl.cli.checks import check_command_line, exit_on_config_error

DEFAULT_N = "384,768,1536,3072,6144,12288"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-envs", default=DEFAULT_N, help=f"comma-separated N (default {DEFAULT_N})")
    p.add_argument("--ablation", default="sapg", help="the variant (default sapg)")
    p.add_argument("--env", default=None, help="env preset; default: the config's")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = p.parse_args(argv)
    try:
        values = [int(n) for n in args.num_envs.split(",")]
    except ValueError:
        print(f"error: --num-envs={args.num_envs!r} is not accepted: comma-separated integers, e.g. {DEFAULT_N}",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(2) from None
    check_command_line([f"ablation={args.ablation}", f"env.num_envs={','.join(map(str, values))}"]
                       + ([f"env={args.env}"] if args.env else []), "sapg")  # fmt: skip
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    load_before = os.getloadavg()[0]
    variants = []
    with exit_on_config_error():
        for n in values:
            ns = argparse.Namespace(**{**vars(args), "num_envs": n, "horizon": None, "epochs": None, "device": "cpu"})
            variant = SAPGVariant(f"N={n}", compose_config(args.ablation, ns))
            variants.append(variant)
    try:
        samples = measure(variants, args.rounds, args.warmup, {v.name: args.iters for v in variants})
    finally:
        for v in variants:
            v.close()
    results = summarize(variants, samples)
    print(f"\n{args.ablation}, torch threads {torch.get_num_threads()}, load average before/after: "
          f"{load_before:.2f} / {os.getloadavg()[0]:.2f}\n")  # fmt: skip
    print("| N | s/iter | frames/s | collect s | targets s | update s | s/iter per 1000 envs |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for v, n in zip(variants, values, strict=True):
        r = results[v.name]
        print(f"| {n} | {r['time_per_iter_s']:.3f} | {r['frames_per_s']:.0f} | {r['collect_s']:.3f} | "
              f"{r['targets_s']:.3f} | {r['update_s']:.3f} | {1000 * r['time_per_iter_s'] / n:.3f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
