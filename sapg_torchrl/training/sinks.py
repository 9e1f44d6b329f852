"""Per-iteration metric sinks: one CSV row per iteration, and wandb through TorchRL's logger.

TorchRL's own ``CSVLogger`` writes one file per scalar; the study reads whole iterations, so
:class:`CSVSink` writes one table with a row per iteration instead.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

__all__ = ["CSVSink", "WandbSink", "aside"]


def aside(path: Path, tag: str) -> Path:
    """A free name beside ``path`` for a copy tagged ``tag``: ``metrics.csv`` -> ``metrics.<tag>.csv`` (then
    ``metrics.<tag>-1.csv``, ...), so that nothing moved aside is ever overwritten."""
    path = Path(path)
    candidate, n = path.with_name(f"{path.stem}.{tag}{path.suffix}"), 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}.{tag}-{n}{path.suffix}")
    return candidate


class CSVSink:
    """Appends one row per iteration to ``path``; the columns are the first row's keys.

    Refuses to start on an existing file, so a finished run's metrics are never overwritten; a resumed run
    continues its file with :meth:`resume`.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"{self.path} exists already; refusing to overwrite it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._columns: list[str] | None = None

    @classmethod
    def resume(cls, path: str | Path, iteration: int) -> CSVSink:
        """Continues ``path`` after ``iteration``: rows of later iterations (written after the checkpoint a run
        resumes from) are moved to ``<stem>.after_iter_XXXXXX.csv`` beside it, then new rows are appended."""
        path = Path(path)
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
        header, body = rows[0], rows[1:]
        column = header.index("iteration")
        later = [row for row in body if int(float(row[column])) > iteration]
        if later:
            with aside(path, f"after_iter_{iteration:06d}").open("w", newline="") as f:
                csv.writer(f).writerows([header, *later])
            with path.open("w", newline="") as f:
                csv.writer(f).writerows([header, *(row for row in body if int(float(row[column])) <= iteration)])
        sink = cls.__new__(cls)
        sink.path, sink._columns = path, header
        return sink

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

    def __init__(
        self, exp_name: str, save_dir: str | Path, *, project: str, mode: str = "offline", config=None,
        run_id: str | None = None,
    ):  # fmt: skip
        from torchrl.record.loggers.wandb import WandbLogger

        resume = {} if run_id is None else {"id": run_id, "resume": "allow"}  # a resumed run continues its run
        self.logger = WandbLogger(
            exp_name=exp_name, offline=mode == "offline", save_dir=str(save_dir), project=project,
            log_env_packages=False, mode=mode, **resume,
        )  # fmt: skip
        if config is not None:
            self.logger.log_hparams(config)

    def __call__(self, metrics: dict, iteration: int) -> None:
        self.logger.experiment.log({k: v for k, v in metrics.items() if not math.isnan(v)}, step=iteration)

    @property
    def run_id(self) -> str:
        return self.logger.experiment.id

    def close(self) -> None:
        self.logger.experiment.finish()
