"""``sapg-evaluate`` (``python recipes/evaluate.py`` in a checkout): evaluate and watch a trained run.

    sapg-evaluate run=runs/2026-11-27/10-00-00-000000_mountaincar_sapg_seed0
    sapg-evaluate run=<run folder> blocks=all episodes=32 deterministic=false
    sapg-evaluate run=<run folder> video=true checkpoint=iter_000050.pt
    sapg-evaluate run=<run folder> policy=<run folder>/export/leader.onnx     # an exported file (sapg-export)

Prints each block's mean return (and success rate where the task reports one) over one episode on each of
``episodes`` fresh envs, and writes them to ``<run>/eval.json`` (an earlier ``eval.json`` is kept as
``eval.previous[-n].json``). ``video=true`` renders one episode to ``<run>/videos/*.gif`` where gymnasium can
render the task (see ``sapg_torchrl.app.trained_run``). Bad input exits with status 2 and a one-line message.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from sapg_torchrl.cli import CONFIG_DIR
from sapg_torchrl.cli.checks import check_command_line, exit_on_config_error, require_run_folder


def run(cfg: DictConfig) -> dict:
    from sapg_torchrl.app.trained_run import evaluate_run, record_video
    from sapg_torchrl.errors import ConfigError
    from sapg_torchrl.training.sinks import aside

    with exit_on_config_error():
        if cfg.video and cfg.policy is not None:
            raise ConfigError(f"video=true is not accepted with policy={cfg.policy}: videos render the checkpoint's actor")
        result = evaluate_run(
            cfg.run, checkpoint=cfg.checkpoint, episodes=cfg.episodes, blocks=cfg.blocks,
            deterministic=cfg.deterministic, seed=cfg.seed, device=cfg.device, policy=cfg.policy,
        )  # fmt: skip
        kind = "deterministic" if cfg.deterministic else "stochastic"
        source = result["checkpoint"] if cfg.policy is None else f"{cfg.policy}, exported from {result['checkpoint']}"
        print(f"{cfg.run}: {source} (iteration {result['iteration']}, {result['frames']} frames), "
              f"{kind} actions, {cfg.episodes} episodes per block")  # fmt: skip
        for block, numbers in result["blocks"].items():
            success = "" if numbers["success_rate"] is None else f", success rate {numbers['success_rate']:.2f}"
            print(f"  block {block}: return {numbers['return_mean']:.2f} +- {numbers['return_std']:.2f} "
                  f"({numbers['completed']}/{cfg.episodes} episodes completed{success})")  # fmt: skip
        if cfg.video:
            block = cfg.blocks if isinstance(cfg.blocks, int) else "leader"
            video = record_video(cfg.run, cfg.video_path, checkpoint=cfg.checkpoint, block=block,
                                 deterministic=cfg.deterministic, seed=cfg.seed)  # fmt: skip
            print(f"  video: {video['path']} (block {video['block']}, return {video['return']:.2f}, {video['steps']} steps)")
            result["video"] = video
    target = Path(cfg.run) / "eval.json"
    if target.exists():
        target.rename(aside(target, "previous"))
    target.write_text(json.dumps({**result, "blocks": {str(b): v for b, v in result["blocks"].items()}}, indent=1))
    return result


_hydra_main = hydra.main(config_path=str(CONFIG_DIR), config_name="evaluate", version_base="1.3")(run)


def main() -> None:
    """The console script: ``run=`` is required and the command line checked (one-line errors), then Hydra runs
    :func:`run`."""
    require_run_folder(sys.argv[1:])
    check_command_line(sys.argv[1:], "evaluate")
    _hydra_main()
