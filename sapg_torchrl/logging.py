"""Per-iteration metric sinks: one CSV row per iteration, and wandb through TorchRL's logger.

TorchRL's own ``CSVLogger`` writes one file per scalar; the study reads whole iterations, so
:class:`CSVSink` writes one table with a row per iteration instead.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

__all__ = ["CSVSink", "WandbSink"]


class CSVSink:
    """Appends one row per iteration to ``path``; the columns are the first row's keys.

    Refuses to start on an existing file, so a finished run's metrics are never overwritten.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"{self.path} exists already; refusing to overwrite it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._columns: list[str] | None = None

    def __call__(self, metrics: dict, iteration: int) -> None:
        with self.path.open("a", newline="") as f:
            if self._columns is None:
                self._columns = list(metrics)
                csv.writer(f).writerow(self._columns)
            row = [metrics.get(c, math.nan) for c in self._columns]
            csv.writer(f).writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in row])


class WandbSink:
    """Logs every metric to wandb with TorchRL's :class:`~torchrl.record.loggers.WandbLogger`.

    ``mode="offline"`` (default) needs no account; ``wandb sync <run_dir>/wandb/...`` uploads later.
    """

    def __init__(self, exp_name: str, save_dir: str | Path, *, project: str, mode: str = "offline", config=None):
        from torchrl.record.loggers.wandb import WandbLogger

        self.logger = WandbLogger(
            exp_name=exp_name, offline=mode == "offline", save_dir=str(save_dir), project=project,
            log_env_packages=False, mode=mode,
        )  # fmt: skip
        if config is not None:
            self.logger.log_hparams(config)

    def __call__(self, metrics: dict, iteration: int) -> None:
        self.logger.experiment.log({k: v for k, v in metrics.items() if not math.isnan(v)}, step=iteration)

    def close(self) -> None:
        self.logger.experiment.finish()
