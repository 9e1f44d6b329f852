"""A study folder as data: the finished runs of every variant, by seed.

A study folder is what ``recipes/study.py`` writes: ``<folder>/<ablation>/seed<k>/`` run folders, each with
``config.yaml``, ``metrics.csv``, ``result.json`` (once finished, or once diverged) and ``states.pt`` (with
``train.record_states``). :func:`load_study` reads them into a :class:`Study` of :class:`Run` objects.

A run that diverged (``result.json`` with ``diverged: true``, see :func:`sapg_torchrl.app.run.train`) is a
result, not missing data: from the iteration it diverged on, its leader return is taken as the task's
minimum, the lowest leader return any run of the study logged (:attr:`Study.floor`).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["VARIANT_ORDER", "REFERENCE", "Run", "Study", "load_study"]

COUPLING_PREFIXES = ("train/awac_", "train/follower_leader_kl/", "train/discriminator_accuracy")
"""The ``metrics.csv`` columns of CPO's coupling (:class:`~sapg_torchrl.CPOLoss`'s diagnostics) a run keeps."""

VARIANT_ORDER = (
    "sapg", "no_split", "ppo_entropy_0.005", "ppo_entropy", "ppo_entropy_0.25", "symmetric", "no_off_policy",
    "no_is_correction", "no_is_correction_capped", "no_entropy", "disjoint",
)  # fmt: skip
"""The report's order of the variants; others found in a study folder follow, sorted by name."""

REFERENCE = "sapg"
MIN_SEEDS = 5
# settings every run of the study must share: (dotted config key, name in the report)
SHARED_KEYS = (
    ("env.make.env_name", "task"),
    ("env.num_envs", "N"),
    ("ppo.horizon", "T"),
    ("total_frames", "frame budget"),
    ("network.max_log_std", "log-std cap"),
)


# ------------------------------------------------------------------------------------------ loading
def _get(config: dict, dotted: str, default=None):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def comparable(value):
    """A setting as runs and studies compare it: ``4000000`` and ``4000000.0`` are one budget (runs from before the
    typed schema wrote ints)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


@dataclass
class Run:
    """One finished run of the study.

    Attributes:
        variant (str): the ablation (folder name).
        seed (int): the seed (``seed<k>`` folder).
        path (Path): the run folder.
        config (dict): the resolved ``config.yaml``.
        frames (np.ndarray): ``frames`` of every iteration (``metrics.csv``).
        leader_return (np.ndarray): ``return/leader`` of every iteration (``NaN`` before the first episode); a
            diverged run's is extended to its budget at the study's floor (see :func:`load_study`).
        eval_return (np.ndarray): ``eval/return`` of every logged iteration (``NaN`` where the leader was not
            evaluated).
        lr (np.ndarray): ``train/lr`` of every logged iteration, the learning rate the iteration's update ended at.
        result (dict): ``result.json``.
        states_path (Path or None): ``states.pt`` when the run recorded states.
        choices (dict): Hydra's group choices of the run (``.hydra/hydra.yaml``; empty if absent).
        overrides (list of str): the run's Hydra overrides (``.hydra/overrides.yaml``; empty if absent).
        coupling (dict): CPO's diagnostics of every logged iteration (``metrics.csv``'s ``train/awac_*``,
            ``train/follower_leader_kl/<b>`` and ``train/discriminator_accuracy`` columns, by column name); empty for
            other methods.
    """

    variant: str
    seed: int
    path: Path
    config: dict
    frames: np.ndarray
    leader_return: np.ndarray
    eval_return: np.ndarray
    lr: np.ndarray
    result: dict
    states_path: Path | None = None
    choices: dict = field(default_factory=dict)
    overrides: list = field(default_factory=list)
    coupling: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.variant}/seed{self.seed}"

    @property
    def budget(self) -> float:
        """The frames the run actually collected (its last logged frame)."""
        return float(self.frames[-1])

    @property
    def num_blocks(self) -> int:
        return int(_get(self.config, "sapg.num_blocks", 1))

    @property
    def kl_rows(self) -> str:
        """The rows the learning rate's KL was measured on, in kind: ``"on_policy"`` where the run had no relabelled
        rows (every row is on-policy: one block, or ``sapg.aggregation: none``), else ``ppo.kl_rows`` (``"all"`` in
        runs written before the setting existed, the behaviour they ran with)."""
        if self.num_blocks == 1 or _get(self.config, "sapg.aggregation") == "none":
            return "on_policy"
        return str(_get(self.config, "ppo.kl_rows", "all"))

    @property
    def diverged_at(self) -> int | None:
        """The iteration the run diverged on (non-finite losses), ``None`` if it did not."""
        return int(self.result["diverged_at_iteration"]) if self.result.get("diverged") else None


@dataclass
class Study:
    """The finished runs of a study folder, by variant (spec order), each variant's runs by seed.

    Attributes:
        folder (Path): the study folder.
        runs (dict): variant -> list of :class:`Run`.
        skipped (list): ``(run folder, reason)`` of the run folders left out (unfinished or unreadable).
        mismatches (list of str): settings that differ between runs (they should not).
        notes (list of str): other remarks (e.g. fewer seeds than the spec asks for).
        floor (float): the lowest leader return any run logged: a diverged run's return from the iteration
            it diverged on.
    """

    folder: Path
    runs: dict[str, list[Run]]
    floor: float = math.nan
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def variants(self) -> list[str]:
        return list(self.runs)

    @property
    def all_runs(self) -> list[Run]:
        return [run for runs in self.runs.values() for run in runs]

    @property
    def reference_run(self) -> Run:
        """The first run of ``sapg`` (else of the first variant): the source of the header's settings."""
        return self.runs.get(REFERENCE, next(iter(self.runs.values())))[0]

    def setting(self, dotted: str):
        return _get(self.reference_run.config, dotted)

    @property
    def name(self) -> str:
        """The study's name (its runs' ``study.name``, by default the env preset), else the folder's name."""
        return str(self.setting("study.name") or self.folder.name)

    @property
    def num_blocks(self) -> int | None:
        """``sapg``'s ``M`` (``None`` without a ``sapg`` variant)."""
        return self.runs[REFERENCE][0].num_blocks if REFERENCE in self.runs else None

    @property
    def fidelity(self) -> str:
        values = sorted({str(run.choices.get("fidelity", "unknown")) for run in self.all_runs})
        return ", ".join(values)

    @property
    def env_preset(self) -> str | None:
        values = sorted({str(run.choices["env"]) for run in self.all_runs if "env" in run.choices})
        return ", ".join(values) if values else None

    def seeds(self, variant: str) -> list[int]:
        return [run.seed for run in self.runs[variant]]

    @property
    def ppo_grid(self) -> dict[str, float]:
        """The PPO variants (one block: ``no_split`` and the ``ppo_entropy*`` grid) -> their entropy coefficient."""
        grid = {}
        for variant, runs in self.runs.items():
            config = runs[0].config
            if runs[0].num_blocks == 1:
                explicit = _get(config, "sapg.entropy_schedule") == "explicit"
                grid[variant] = float(_get(config, "sapg.entropy_coefficients")[0]) if explicit else 0.0
        return grid

    def diverged(self, variant: str) -> list[Run]:
        return [run for run in self.runs[variant] if run.diverged_at is not None]


def _variant_key(name: str):
    return (VARIANT_ORDER.index(name), "") if name in VARIANT_ORDER else (len(VARIANT_ORDER), name)


def _load_yaml(path: Path):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def _load_run(run_dir: Path) -> Run:
    import pandas as pd

    variant, seed = run_dir.parent.name, int(run_dir.name[len("seed") :])
    config = _load_yaml(run_dir / "config.yaml")
    metrics = pd.read_csv(run_dir / "metrics.csv")
    for column in ("frames", "return/leader"):
        if column not in metrics.columns:
            raise ValueError(f"metrics.csv has no {column!r} column")
    if len(metrics) == 0:
        raise ValueError("metrics.csv has no rows")
    frames = pd.to_numeric(metrics["frames"], errors="coerce").to_numpy(np.float64)
    if (back := np.flatnonzero(np.diff(frames) <= 0)).size:
        row = int(back[0]) + 1
        raise ValueError(f"metrics.csv's frames do not increase (row {row + 1}: {frames[row]:g} after "
                         f"{frames[row - 1]:g}): two processes wrote it?")  # fmt: skip
    leader = pd.to_numeric(metrics["return/leader"], errors="coerce").to_numpy(np.float64)
    nan = np.full(len(metrics), np.nan)
    evaluation = pd.to_numeric(metrics["eval/return"], errors="coerce").to_numpy(np.float64) if "eval/return" in metrics else nan
    lr = pd.to_numeric(metrics["train/lr"], errors="coerce").to_numpy(np.float64) if "train/lr" in metrics else nan
    result = json.loads((run_dir / "result.json").read_text())
    choices, overrides = {}, []
    hydra_dir = run_dir / ".hydra"
    if (hydra_dir / "hydra.yaml").exists():
        choices = dict(_get(_load_yaml(hydra_dir / "hydra.yaml"), "hydra.runtime.choices", {}) or {})
    if (hydra_dir / "overrides.yaml").exists():
        overrides = [str(o) for o in (_load_yaml(hydra_dir / "overrides.yaml") or [])]
    seed = int(config.get("seed", seed))
    states = run_dir / "states.pt"
    coupling = {
        column: pd.to_numeric(metrics[column], errors="coerce").to_numpy(np.float64)
        for column in metrics.columns
        if column.startswith(COUPLING_PREFIXES)
    }
    return Run(variant, seed, run_dir, config, frames, leader, evaluation, lr, result,
               states if states.exists() else None, choices, overrides, coupling)  # fmt: skip


def _describe(values: dict) -> str:
    """``{value: [run names]}`` -> ``"12 (sapg/seed0, sapg/seed1), 24 (no_split/seed0)"``."""
    parts = []
    for value, names in values.items():
        shown = ", ".join(names[:4]) + (f", ... ({len(names)} runs)" if len(names) > 4 else "")
        parts.append(f"{value} ({shown})")
    return "; ".join(parts)


def _is_ppo_variant(name: str) -> bool:
    """``no_split`` and the study's PPO entropy grid (``ppo_entropy*``): one block by design."""
    return name == "no_split" or name.startswith("ppo_entropy")


def _check(runs: dict[str, list[Run]]) -> tuple[list[str], list[str]]:
    mismatches, notes = [], []
    everything = [run for group in runs.values() for run in group]

    def differing(key, selected):
        values: dict = {}
        for run in selected:
            values.setdefault(repr(comparable(_get(run.config, key))), []).append(run.name)
        return values if len(values) > 1 else None

    for key, label in SHARED_KEYS:
        values = differing(key, everything)
        if values:
            mismatches.append(f"{label} (`{key}`) differs between runs: {_describe(values)}")
    # the one-block PPO variants (no_split and the ppo_entropy* grid built on it) have M = 1 by design
    rule: dict = {}
    for run in everything:
        rule.setdefault(run.kl_rows, []).append(run.name)
    if len(rule) > 1:
        mismatches.append(f"the learning rate's KL rows (`ppo.kl_rows`, in kind) differ between runs: {_describe(rule)}")
    blocks = differing("sapg.num_blocks", [run for run in everything if not _is_ppo_variant(run.variant)])
    if blocks:
        mismatches.append(
            f"M (`sapg.num_blocks`, all variants but no_split and ppo_entropy*) differs between runs: {_describe(blocks)}"
        )
    fidelity: dict = {}
    for run in everything:
        fidelity.setdefault(str(run.choices.get("fidelity", "unknown")), []).append(run.name)
    if len(fidelity) > 1:
        mismatches.append(f"fidelity differs between runs: {_describe(fidelity)}")
    seed_sets = {variant: tuple(run.seed for run in group) for variant, group in runs.items()}
    if len(set(seed_sets.values())) > 1:
        mismatches.append(
            "the variants have different seeds: "
            + "; ".join(f"{variant}: {', '.join(map(str, seeds))}" for variant, seeds in seed_sets.items())
        )
    few = [f"{variant} ({len(seeds)})" for variant, seeds in seed_sets.items() if len(seeds) < MIN_SEEDS]
    if few:
        notes.append(f"fewer than the spec's {MIN_SEEDS} seeds: {', '.join(few)}; the intervals are wide")
    if REFERENCE not in runs:
        notes.append(f"no `{REFERENCE}` runs: no probability of improvement and no check of the paper's claims")
    return mismatches, notes


def load_study(folder: str | Path) -> Study:
    """Reads the finished runs of a study folder (``<folder>/<ablation>/seed<k>/``).

    A diverged run's leader return is extended from the iteration it diverged on to its frame budget
    (``total_frames``, whole iterations) at the study's :attr:`~Study.floor`.

    Run folders without ``result.json`` (unfinished) or with unreadable files are skipped with one warning
    listing them (they are also listed in the report). Settings that should be shared by all runs (env
    name, ``N``, ``T``, total frames, ``sapg``'s ``M`` for every variant but ``no_split``, fidelity, seeds)
    are compared; differences are recorded in :attr:`Study.mismatches`, not raised.

    Raises:
        FileNotFoundError: ``folder`` is not a folder.
        ValueError: it holds no finished run.

    Examples:
        >>> load_study("/no/such/study")
        Traceback (most recent call last):
        ...
        FileNotFoundError: study folder /no/such/study does not exist or is not a folder
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"study folder {folder} does not exist or is not a folder")
    runs: dict[str, list[Run]] = {}
    skipped: list[tuple[Path, str]] = []
    for run_dir in sorted(folder.glob("*/seed*")):
        if not run_dir.is_dir() or not re.fullmatch(r"seed\d+", run_dir.name):
            continue
        if not (run_dir / "result.json").exists():
            skipped.append((run_dir, "unfinished (no result.json)"))
            continue
        try:
            run = _load_run(run_dir)
        except (OSError, ValueError, KeyError, TypeError) as error:
            skipped.append((run_dir, f"unreadable ({type(error).__name__}: {error})"))
            continue
        runs.setdefault(run.variant, []).append(run)
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} run folder(s) of {folder}: "
            + "; ".join(f"{p.relative_to(folder).as_posix()} {why}" for p, why in skipped),
            stacklevel=2,
        )
    if not runs:
        raise ValueError(f"study folder {folder} holds no finished run (<ablation>/seed<k>/result.json)")
    runs = {v: sorted(runs[v], key=lambda r: r.seed) for v in sorted(runs, key=_variant_key)}
    returns = np.concatenate([run.leader_return for group in runs.values() for run in group])
    floor = float(np.nanmin(returns)) if np.isfinite(returns).any() else math.nan
    for run in (run for group in runs.values() for run in group if run.diverged_at is not None):
        _extend_at_floor(run, floor)
    mismatches, notes = _check(runs)
    return Study(folder, runs, floor, skipped, mismatches, notes)


def _extend_at_floor(run: Run, floor: float) -> None:
    """From the iteration a run diverged on to its budget, its leader return is ``floor``."""
    per_iteration = int(_get(run.config, "env.num_envs")) * int(_get(run.config, "ppo.horizon"))
    budget = math.ceil(int(float(_get(run.config, "total_frames"))) / per_iteration) * per_iteration
    diverged = run.diverged_at * per_iteration
    frames = np.arange(diverged, budget + 1, per_iteration, dtype=np.float64)
    run.frames = np.concatenate([run.frames[run.frames < diverged], frames])
    run.leader_return = np.concatenate([run.leader_return[: len(run.frames) - len(frames)], np.full(len(frames), floor)])


# ------------------------------------------------------------------------------------------ numbers
