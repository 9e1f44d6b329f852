"""A restructuring changes no number: the same seed gives the same ``metrics.csv``, cell for cell.

Runs four short fixed-seed runs with the recipe of a checkout (``sapg``, ``disjoint``, an LSTM policy, ``sapg`` on
2 processes under torchrun, and ``sapg`` on Hopper with 192 envs, whose episodes end within the run), then compares two such sets cell for cell, timing columns (``time_s``, ``fps``) aside (columns only the second set
has, new diagnostics, are listed, not compared)::

    python benchmarks/same_seed_check.py run  --checkout /path/to/old/clone --out /tmp/before
    python benchmarks/same_seed_check.py run  --out /tmp/after                 # this checkout
    python benchmarks/same_seed_check.py compare /tmp/before /tmp/after        # exit 1 on any difference
    python benchmarks/same_seed_check.py run --out /tmp/after --set ppo.shuffle=every_epoch   # a new key at its old value

Each run is 4 iterations of the embedded default (MountainCar, N = 1536, T = 16), with an evaluation at
iterations 1, 2 and 4, and one torch thread per process, so that the float reductions are the same from run to run.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMON = ["seed=3", "total_frames=98304", "train.eval_interval=2", "train.threads=1", "train.progress=false",
          "logger.wandb=false", "train.checkpoint_interval=2"]  # fmt: skip
CASES = {
    "sapg": ["ablation=sapg"],
    "disjoint": ["ablation=disjoint"],
    "lstm": ["ablation=sapg", "network.lstm_size=32"],
    "torchrun2": ["ablation=sapg"],
    "hopper": ["env=hopper", "env.num_envs=192"],  # short episodes: the return columns and episode counts fill in
}
TIMING = ("time_s", "fps")


def run(checkout: Path, out: Path, cases: list[str], overrides: list[str] = ()) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for case in cases:
        folder = out / case
        command = [sys.executable, str(checkout / "recipes" / "sapg.py")]
        if case == "torchrun2":
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                       str(checkout / "recipes" / "sapg.py")]  # fmt: skip
        done = subprocess.run([*command, *COMMON, *CASES[case], *overrides, f"hydra.run.dir={folder}"], env=env, cwd=out)
        if done.returncode:
            raise SystemExit(f"error: {case} failed with exit code {done.returncode}")
        print(f"{case}: {folder / 'metrics.csv'}")


def rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as f:
        header, *body = list(csv.reader(f))
    return header, body


def compare(a: Path, b: Path, cases: list[str]) -> int:
    differences = 0
    for case in cases:
        (ha, ra), (hb, rb) = rows(a / case / "metrics.csv"), rows(b / case / "metrics.csv")
        removed, added = [n for n in ha if n not in hb], [n for n in hb if n not in ha]
        if removed:
            print(f"{case}: columns of the first set missing from the second: {removed}")
            differences += 1
            continue
        # every column of the first set, compared; columns only the second set has (new diagnostics) are listed
        kept = [(i, hb.index(name)) for i, name in enumerate(ha) if name not in TIMING]
        cells = [(r, ha[i], x[i], y[j]) for r, (x, y) in enumerate(zip(ra, rb)) for i, j in kept if x[i] != y[j]]
        new = f"; columns added in the second: {added}" if added else ""
        if len(ra) != len(rb) or cells:
            differences += 1
            print(f"{case}: {len(ra)} vs {len(rb)} rows, {len(cells)} cells differ, e.g. {cells[:3]}{new}")
        else:
            print(f"{case}: {len(ra)} rows x {len(kept)} columns ({len(ha) - len(kept)} timing columns aside): identical{new}")
    return 1 if differences else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--checkout", type=Path, default=REPO)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="Hydra overrides added to every case (e.g. a new key at the old behaviour's value)")
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    for p in (r, c):
        p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    if args.command == "run":
        args.out.mkdir(parents=True, exist_ok=True)
        run(args.checkout.resolve(), args.out.resolve(), args.cases, args.set)
    else:
        raise SystemExit(compare(args.a, args.b, args.cases))


if __name__ == "__main__":
    main()
