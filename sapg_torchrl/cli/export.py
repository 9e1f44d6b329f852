"""``sapg-export`` (``python recipes/export.py`` in a checkout): a trained run's policy as a file for a robot.

    sapg-export run=runs/2026-11-27/10-00-00-000000_mountaincar_sapg_seed0              # <run>/export/leader.onnx
    sapg-export run=<run folder> format=torchscript                                    # <run>/export/leader.pt
    sapg-export run=<run folder> block=2 checkpoint=iter_000050.pt                     # <run>/export/block2.onnx

Writes the block's deterministic policy (observation normaliser, block conditioning, LSTM, mean action clamped to
the action bounds) with torch's exporters, and prints the file's interface; an earlier file of the same name is
kept as ``<name>.previous.<ext>``. ``sapg-evaluate run=<run folder> policy=<file>`` runs the file on the run's
task. ONNX needs the ``export`` extra (``pip install -e ".[export]"``). Bad input exits with status 2 and one line.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from sapg_torchrl.cli import CONFIG_DIR
from sapg_torchrl.cli.checks import check_command_line, exit_on_config_error, require_run_folder


def run(cfg: DictConfig) -> dict:
    from sapg_torchrl.app.trained_run import export_run

    with exit_on_config_error():
        result = export_run(cfg.run, format=cfg.format, block=cfg.block, checkpoint=cfg.checkpoint)
    meta = result["metadata"]
    state = "" if meta["state_shape"] is None else f", {', '.join(meta['inputs'][1:])}: [batch, {meta['state_shape'][0]}, {meta['state_shape'][1]}] (zeros at an episode's start)"
    print(f"{result['path']}: block {meta['block']} of {cfg.run} ({meta['checkpoint']}, iteration {meta['iteration']})")
    print(f"  in: observation [batch, {meta['observation_dim']}]{state}")
    print(f"  out: {', '.join(meta['outputs'])}; action [batch, {meta['action_dim']}] between low {meta['action_low']} and high {meta['action_high']}")
    return result


_hydra_main = hydra.main(config_path=str(CONFIG_DIR), config_name="export", version_base="1.3")(run)


def main() -> None:
    """The console script: ``run=`` is required and the command line checked (one-line errors), then Hydra runs
    :func:`run`."""
    require_run_folder(sys.argv[1:])
    check_command_line(sys.argv[1:], "export")
    _hydra_main()
