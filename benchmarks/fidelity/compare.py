#!/usr/bin/env python
"""The released code beside ours by one measure (issue 35): from each run's ``episodes.csv`` (``released.py``,
``ours.py``), the mean return of the last 100 finished leader episodes (rl_games' ``game_rewards``) at fixed frames.

    python benchmarks/fidelity/compare.py <root> [<root> ...] --out docs/results/fidelity

``<root>/<method>/<task>/seed<k>/episodes.csv`` (or ``.csv.gz``; a root may also be one method's folder,
``<method>/<task>/seed<k>/``, to take that method alone): every method and task found under the roots is read (a method's
cells stop where its shortest run ended: ``run.json``, else ``metrics.csv``, else its last episode). Writes
``<out>/report.md`` (per task and method: each frame point's IQM over seeds with its 95% stratified-bootstrap
interval, rliable's, and the per-seed range; and, where the runs have the ``eval.json`` of ``evaluate.py``, the
deterministic evaluation of their final leaders alike) and ``<out>/<task>.png`` (IQM curves with the seeds' range).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
from pathlib import Path

import numpy as np

from sapg_torchrl.metrics import iqm_with_ci

RECENT = 100
"""Episodes in the measure: rl_games' ``games_to_track`` in the released configs."""


def recent_mean(frames: np.ndarray, returns: np.ndarray, at: float, recent: int = RECENT) -> float:
    """Mean of the last ``recent`` returns of episodes that finished by ``at`` frames (NaN before the first).

    Examples:
        >>> recent_mean(np.array([10, 10, 20, 30]), np.array([1.0, 3.0, 5.0, 7.0]), 20, recent=2)
        4.0
    """
    done = returns[frames <= at][-recent:]
    return float(done.mean()) if done.size else float("nan")


def read_rows(path: Path) -> list[dict]:
    """The rows of the CSV ``path`` (gzipped if it ends in ``.gz``), or of ``<path>.gz`` where ``path`` is not there
    (the run data is committed gzipped)."""
    if path.suffix != ".gz" and not path.is_file():
        path = path.with_name(path.name + ".gz")
    with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)) as f:
        return list(csv.DictReader(f))


def run_end(folder: Path, last_episode: float) -> float:
    """The frames a run collected in all: ``run.json``'s (``released.py``), else ``metrics.csv``'s last row (ours),
    else its last finished episode's."""
    if (folder / "run.json").is_file():
        return float(json.loads((folder / "run.json").read_text())["frames"])
    if (folder / "metrics.csv").is_file() or (folder / "metrics.csv.gz").is_file():
        rows = read_rows(folder / "metrics.csv")
        if rows:
            return float(rows[-1]["frames"])
    return last_episode


def load(roots: list[Path]) -> dict:
    """``{task: {method: {seed: (frames, returns, end)}}}`` from every ``episodes.csv`` (or ``episodes.csv.gz``, as
    committed) under the ``roots``; ``end``: :func:`run_end`."""
    runs: dict = {}
    for method, task, seed, path in found(roots, ("episodes.csv", "episodes.csv.gz")):
        rows = [(float(r["frames"]), float(r["return"])) for r in read_rows(path.with_name("episodes.csv"))]
        if rows:
            frames, returns = map(np.array, zip(*rows))
            runs.setdefault(task, {}).setdefault(method, {})[seed] = (frames, returns, run_end(path.parent, frames.max()))
    if not runs:
        raise SystemExit(f"error: no <method>/<task>/seed<k>/episodes.csv under {', '.join(map(str, roots))}")
    return runs


def evaluations(roots: list[Path]) -> dict:
    """``{task: {method: {seed: return}}}`` from every ``eval.json`` (``evaluate.py``) under the ``roots``."""
    scores: dict = {}
    for method, task, seed, path in found(roots, ("eval.json",)):
        scores.setdefault(task, {}).setdefault(method, {})[seed] = json.loads(path.read_text())["return"]
    return scores


def found(roots: list[Path], names: tuple[str, ...]):
    """``(method, task, seed, path)`` of each file named one of ``names`` in ``<root>/<method>/<task>/seed<k>/``, or
    in ``<root>/<task>/seed<k>/`` where the root is one method's folder (the method is then its name)."""
    for root in roots:
        for pattern, depth in (("*/*/seed*/", 4), ("*/seed*/", 3)):
            for path in sorted(p for name in names for p in root.glob(pattern + name)):
                parts = path.relative_to(root).parts
                method = parts[0] if depth == 4 else root.name
                yield method, parts[-3], int(parts[-2].removeprefix("seed")), path


def interval(scores: np.ndarray, method: str) -> str:
    """``IQM [low, high] (min-max)`` over seeds."""
    iqm, low, high = iqm_with_ci({method: scores})[method]
    return f"{iqm:.0f} [{low:.0f}, {high:.0f}] ({scores.min():.0f}-{scores.max():.0f})"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--points", type=float, nargs="+", default=[0.5e6, 1e6, 1.5e6, 2e6, 2.5e6, 3e6])
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["# The released code beside ours, one measure", "",
             f"Mean return of the last {RECENT} finished leader episodes (rl_games' `game_rewards`) at each frame point; "
             "IQM over seeds [95% stratified-bootstrap interval] (per-seed range). Made by `benchmarks/fidelity/compare.py`.", ""]  # fmt: skip
    evaluated = evaluations(args.roots)
    for task, methods in load(args.roots).items():
        ends = {method: min(end for _, _, end in seeds.values()) for method, seeds in methods.items()}
        last = max(ends.values())
        points = [p for p in args.points if p <= last]
        lines += [f"## {task}", "", "| method | seeds | " + " | ".join(f"{p / 1e6:g}M" for p in points) + " |",
                  "|---|---|" + "---|" * len(points)]  # fmt: skip
        fig, ax = plt.subplots(figsize=(7, 4))
        grid = np.linspace(last / 50, last, 50)
        for method, seeds in sorted(methods.items()):
            cells = []
            for p in points:
                scores = np.array([recent_mean(f, r, p) for f, r, _ in seeds.values()])
                if p > ends[method] or not np.isfinite(scores).all():  # beyond a run's end, or before an episode
                    cells.append("–")
                    continue
                cells.append(interval(scores, method))
            lines.append(f"| {method} | {len(seeds)} | " + " | ".join(cells) + " |")
            own = grid[grid <= ends[method]]
            curves = np.array([[recent_mean(f, r, g) for g in own] for f, r, _ in seeds.values()])
            sort = np.sort(curves, axis=0)
            cut = len(seeds) // 4
            ax.plot(own, sort[cut: len(seeds) - cut].mean(0), label=f"{method} ({len(seeds)} seeds)")
            ax.fill_between(own, sort[0], sort[-1], alpha=0.2)
        ax.set(xlabel="frames", ylabel=f"leader return (last {RECENT} episodes)", title=task)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.out / f"{task}.png", dpi=110)
        plt.close(fig)
        lines.append("")
        if task in evaluated:
            lines += ["Deterministic evaluation of each run's final leader (`evaluate.py`: the mean action, the first "
                      "episode of each of 32 fresh envs, the same envs for every run):", "",
                      "| method | seeds | return |", "|---|---|---|"]  # fmt: skip
            for method, seeds in sorted(evaluated[task].items()):
                lines.append(f"| {method} | {len(seeds)} | {interval(np.array(list(seeds.values())), method)} |")
            lines.append("")
    (args.out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
