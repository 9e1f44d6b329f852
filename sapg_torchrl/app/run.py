"""One run in its folder (:func:`train`): the folder taken and prepared (:mod:`sapg_torchrl.app.run_folder`), the
runner built (:mod:`sapg_torchrl.app.build`), new or resumed from its checkpoint, its sinks opened, and its
``result.json`` written at the end (with the diversity measures of the leader's visited states where recorded)."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from sapg_torchrl.app.build import build_runner
from sapg_torchrl.app.run_folder import RESULT_FILE, RunStart, hold_run_folder, prepare_run_dir
from sapg_torchrl.app.schema import validate
from sapg_torchrl.errors import ConfigError
from sapg_torchrl.metrics.diversity import pairwise_block_kl, per_block_entropy
from sapg_torchrl.training.checkpoint import load_checkpoint
from sapg_torchrl.training.device import device_of
from sapg_torchrl.training.distributed import Ranks, process_group
from sapg_torchrl.training.runner import Hook, Runner
from sapg_torchrl.training.sinks import CSVSink, WandbSink, aside
from sapg_torchrl.training.state_reservoir import StateReservoir

__all__ = ["train"]

log = logging.getLogger(__name__)


def train(
    cfg: DictConfig, run_dir: str | Path, name: str = "sapg", *, resume: bool = False, hooks: Sequence[Hook] = ()
) -> dict[str, float]:
    """One run in ``run_dir``: resolved config, ``metrics.csv``, wandb logs, checkpoints, ``result.json``.

    With ``train.record_states`` set, a reservoir of that many of the leader's visited states is kept
    during training (a hook of the runner) and saved as ``states.pt``; ``result.json`` then also holds the final
    per-block policy entropies and pairwise KLs on those states.

    Running the same experiment in the same folder again skips a finished run, extends it if
    ``total_frames`` was raised, and resumes an interrupted one from its newest checkpoint (see
    :func:`~sapg_torchrl.app.run_folder.prepare_run_dir`): ``metrics.csv`` continues after the checkpoint's iteration (later rows are moved
    to a side file), wandb continues the same run id. This is what ``resume=<run folder>`` does, and what makes
    a study sweep resumable. ``resume=True`` requires a run to resume.

    A run that diverges (non-finite losses, :class:`FloatingPointError`) is a result too: ``result.json``
    gets its last finite iteration's metrics with ``diverged: true``, ``diverged_at_iteration`` and the
    error, then the error is raised again. A run stopped by SIGTERM or SIGINT writes a checkpoint and raises
    :class:`~sapg_torchrl.errors.Preempted`.

    ``hooks`` are more of the runner's per-iteration hooks (``hook(runner, rollout)``, see
    :class:`~sapg_torchrl.training.Runner`), run by rank 0, e.g. ``benchmarks/fidelity/ours.py``'s per-episode log.
    """
    validate(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    with (
        process_group(cfg.train.distributed_backend, device_of(cfg.device).type) as ranks,
        contextlib.ExitStack() as held,  # the run folder, for this process alone until the run ends
    ):
        run_dir, start = _start_run(Path(run_dir), config, resume, ranks, held)
        if start.result is not None:
            log.info("%s already finished: skipped", run_dir)
            return start.result
        return _run(cfg, config, run_dir, name, start, ranks, hooks)


def _run(
    cfg: DictConfig, config: dict, run_dir: Path, name: str, start: RunStart, ranks: Ranks, hooks: Sequence[Hook]
) -> dict[str, float]:
    """Trains the run :func:`_start_run` prepared (new or resumed) and writes its ``result.json``."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    sinks, wandb = _open_sinks(cfg, config, run_dir, name, start) if ranks.is_main else ([], None)
    reservoir = StateReservoir(cfg.train.record_states, seed=cfg.seed) if cfg.train.record_states else None
    runner = None
    try:
        hooks = [*([reservoir] if reservoir else []), *(hooks if ranks.is_main else [])]
        runner = build_runner(cfg, run_dir, sinks, hooks=hooks, ranks=ranks)
        if start.checkpoint is not None:
            runner.load_state_dict(start.checkpoint[1])
            if runner.iteration > runner.iterations:
                raise ConfigError(
                    f"total_frames={cfg.total_frames:g} is below the {runner.frames} frames {run_dir} has done: "
                    f"use at least {runner.frames}"
                )
        if wandb is not None:
            runner.extra_state["wandb_run_id"] = wandb.run_id
        if runner.iteration < runner.iterations:
            result = runner.train()
        else:  # a run stopped between its final checkpoint and result.json has nothing left to train
            result = _last_row(run_dir / "metrics.csv") if ranks.is_main else {}
    except FloatingPointError as err:
        if runner is not None and ranks.is_main:
            diverged = {**runner.metrics, "diverged": True, "diverged_at_iteration": runner.iteration, "error": str(err)}
            (run_dir / RESULT_FILE).write_text(json.dumps(diverged, indent=1))
        raise
    finally:
        if wandb is not None:
            wandb.close()
    if not ranks.is_main:
        return result
    if reservoir is not None:
        result.update(_diversity(runner, reservoir, run_dir / "states.pt"))
    if ranks.distributed:
        result["processes"] = ranks.world_size
    (run_dir / RESULT_FILE).write_text(json.dumps(result, indent=1))
    return result


def _start_run(
    run_dir: Path, config: dict, resume: bool, ranks: Ranks, held: contextlib.ExitStack
) -> tuple[Path, RunStart]:
    """Rank 0 takes the run folder (:func:`~sapg_torchrl.app.run_folder.hold_run_folder`, released when ``held``
    closes) and prepares it (:func:`~sapg_torchrl.app.run_folder.prepare_run_dir`); the other ranks of a
    data-parallel run get its folder and decision (its error, if any), then read the same checkpoint."""
    error = decision = None
    if ranks.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            held.enter_context(hold_run_folder(run_dir))
            start = prepare_run_dir(run_dir, config, resume=resume)
            decision = (str(run_dir), start.result, None if start.checkpoint is None else str(start.checkpoint[0]))
        except ConfigError as err:
            error = str(err)
    if not ranks.distributed:
        if error is not None:
            raise ConfigError(error)
        return run_dir, start
    error, decision = ranks.broadcast_object((error, decision))
    if error is not None:
        raise ConfigError(error)
    if ranks.is_main:
        return run_dir, start
    folder, result, checkpoint = decision
    if checkpoint is not None:
        checkpoint = load_checkpoint(Path(checkpoint).parent, checkpoint)
    return Path(folder), RunStart(result=result, checkpoint=checkpoint)


def _open_sinks(cfg: DictConfig, config: dict, run_dir: Path, name: str, start: RunStart) -> tuple[list, WandbSink | None]:
    """The run's ``config.yaml``, ``metrics.csv`` and wandb, new or continued from the checkpoint it resumes."""
    config_yaml = OmegaConf.to_yaml(config)
    if start.checkpoint is None:
        (run_dir / "config.yaml").write_text(config_yaml)
        sinks = [CSVSink(run_dir / "metrics.csv")]
    else:
        path, state = start.checkpoint
        log.info("%s: resuming from %s (iteration %d)", run_dir, path.name, state["iteration"])
        if OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml")) != config:  # e.g. total_frames raised: keep the old one
            (run_dir / "config.yaml").rename(aside(run_dir / "config.yaml", f"before_iter_{state['iteration']:06d}"))
            (run_dir / "config.yaml").write_text(config_yaml)
        sinks = [CSVSink.resume(run_dir / "metrics.csv", state["iteration"])]
    wandb = None
    if cfg.logger.wandb:
        run_id = None if start.checkpoint is None else start.checkpoint[1].get("extra", {}).get("wandb_run_id")
        wandb = WandbSink(
            name, run_dir, project=cfg.logger.project, mode=cfg.logger.mode, config=config, run_id=run_id,
        )  # fmt: skip
        sinks.append(wandb)
    return sinks, wandb


def _last_row(path: Path) -> dict[str, float]:
    with path.open(newline="") as f:
        *_, last = csv.DictReader(f)
    return {key: float(value) if value != "" else math.nan for key, value in last.items()}


def _diversity(runner: Runner, reservoir: StateReservoir, path: Path) -> dict:
    """Saves the leader's visited states and measures how the final block policies differ on them."""
    reservoir.save(path)
    states, num_blocks = reservoir.states, runner.layout.num_blocks
    return {
        "diversity/entropy_per_block": per_block_entropy(runner.actor, states, num_blocks).tolist(),
        "diversity/pairwise_kl": pairwise_block_kl(runner.actor, states, num_blocks).tolist(),
    }
