"""A run's folder: what a run writes there, whether a new command is the same experiment as the run it holds, and
what running again does with it (skip a finished run, resume or extend it from a checkpoint, or set an
unfinished one aside and start again), and which process may write it. :func:`sapg_torchrl.app.run.train` takes
the folder (:func:`hold_run_folder`), then calls :func:`prepare_run_dir`."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sapg_torchrl.app.schema import SAPGConfig, StudyConfig, accepted, validate
from sapg_torchrl.errors import ConfigError
from sapg_torchrl.training.checkpoint import load_checkpoint
from sapg_torchrl.training.sinks import aside

__all__ = [
    "NOT_THE_EXPERIMENT", "RunStart", "experiment_changes", "flat_settings", "hold_run_folder", "prepare_run_dir",
    "resume_config", "saved_config",
]  # fmt: skip

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
LOCK_FILE = "run.lock"
RUN_FILES = ("config.yaml", "metrics.csv", "checkpoints", "wandb", "states.pt", RESULT_FILE)
NOT_THE_EXPERIMENT = ("train", "logger", "total_frames", "device", "resume")
"""Top-level config keys a resumed (or re-run) run may change: how it runs and logs, where, and for how long."""


def flat_settings(node: dict, prefix: str = "") -> dict:
    """A nested config (plain dicts) as ``{"dotted.key": value}``, lists kept whole."""
    out = {}
    for key, value in node.items():
        out.update(flat_settings(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def experiment_changes(saved: dict, new: dict) -> list[str]:
    """The settings (``key: saved -> new``) in which two resolved configs are different experiments, i.e.
    differ outside :data:`NOT_THE_EXPERIMENT`."""
    a, b = ({k: v for k, v in flat_settings(node).items() if k.split(".")[0] not in NOT_THE_EXPERIMENT}
            for node in (saved, new))  # fmt: skip
    return [f"{key}: {a.get(key, '(absent)')} -> {b.get(key, '(absent)')}" for key in sorted(a.keys() | b.keys())
            if a.get(key) != b.get(key)]  # fmt: skip


def resume_config(folder: str | Path, overrides: list[str]) -> DictConfig:
    """The config of the run in ``folder`` (its ``config.yaml``) with the command line's ``overrides`` that do
    not change the experiment (``total_frames``, ``device``, ``train.*``, ``logger.*``; ``hydra.*`` and
    ``resume`` are ignored). Any other override, a missing folder or a folder with no run: :class:`ConfigError`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"resume={folder}: no such run folder")
    if not (folder / "config.yaml").exists():
        raise ConfigError(f"resume={folder}: not a run folder (no config.yaml)")
    allowed, refused = [], []
    for override in overrides:
        key = override.lstrip("+~").partition("=")[0]
        head = key.split(".")[0]
        if head in ("hydra", "resume"):
            continue
        (allowed if head in NOT_THE_EXPERIMENT else refused).append(override)
    if refused:
        raise ConfigError(
            f"resume={folder}: {', '.join(refused)} would change the experiment; a resumed run keeps its own "
            f"config (these may change: total_frames, device, train.*, logger.*)"
        )
    saved = OmegaConf.load(folder / "config.yaml")
    try:
        cfg = OmegaConf.merge(_schema_for(saved), saved, OmegaConf.from_dotlist(allowed))
    except OmegaConfBaseException as err:
        raise ConfigError(f"resume={folder}: {err.full_key}={err.value!r} is not accepted: {accepted(err.full_key)}") from None
    validate(cfg)
    return cfg


def _schema_for(saved: DictConfig) -> DictConfig:
    return OmegaConf.structured(StudyConfig if "study" in saved else SAPGConfig)


def saved_config(run_dir: Path) -> dict:
    """The resolved config of the run in ``run_dir`` (its ``config.yaml``), with the default of every setting added
    to the schema after the run was written: a setting is added with the behaviour runs had before as its default,
    so a run folder written before it still resumes as the same experiment."""
    saved = OmegaConf.load(run_dir / "config.yaml")
    return OmegaConf.to_container(OmegaConf.merge(_schema_for(saved), saved), resolve=True)


@dataclass
class RunStart:
    """What :func:`prepare_run_dir` found: a finished run's result, a checkpoint to resume from, or neither
    (a new run)."""

    result: dict | None = None
    checkpoint: tuple[Path, dict] | None = None


def prepare_run_dir(run_dir: Path, config: dict, *, resume: bool = False) -> RunStart:
    """Makes ``run_dir`` ready for the run of the resolved ``config``.

    - the folder holds a run of another experiment (see :func:`experiment_changes`): :class:`ConfigError`
      naming the differences, nothing is touched;
    - finished (``result.json``), same experiment, ``total_frames`` not raised: its result, nothing to do;
    - finished and ``total_frames`` raised: the run is extended from its newest checkpoint (``result.json``
      moved to ``result.iter_XXXXXX.json``);
    - unfinished (``metrics.csv`` but no ``result.json``) with a checkpoint that loads: resumed from it (a
      corrupt newest checkpoint is reported and the previous one used);
    - unfinished without a checkpoint: its files are moved, not deleted, to ``run_dir/interrupted-<n>/`` and
      the run starts again (with ``resume=True``: :class:`ConfigError` instead).
    """
    saved = None
    if (run_dir / "config.yaml").exists():
        saved = saved_config(run_dir)
        changes = experiment_changes(saved, config)
        if changes:
            raise ConfigError(
                f"run folder {run_dir} holds a run of another experiment ({'; '.join(changes)}): pass a new "
                "hydra.run.dir (or hydra.sweep.dir)" + (", or resume without these overrides" if resume else "")
            )
    if (run_dir / RESULT_FILE).exists():
        result = json.loads((run_dir / RESULT_FILE).read_text())
        if result.get("diverged") or float(config["total_frames"]) <= float(saved["total_frames"]):
            return RunStart(result=result)
        checkpoint = load_checkpoint(run_dir / "checkpoints")
        if checkpoint is None:
            raise ConfigError(f"run folder {run_dir} has no readable checkpoint: it cannot be extended")
        (run_dir / RESULT_FILE).rename(aside(run_dir / RESULT_FILE, f"iter_{checkpoint[1]['iteration']:06d}"))
        return RunStart(checkpoint=checkpoint)
    if (run_dir / "metrics.csv").exists():
        checkpoint = load_checkpoint(run_dir / "checkpoints")
        if checkpoint is not None:
            return RunStart(checkpoint=checkpoint)
        if resume:
            raise ConfigError(f"resume={run_dir}: no readable checkpoint in {run_dir / 'checkpoints'}")
        n = 0
        while (run_dir / f"interrupted-{n}").exists():
            n += 1
        moved = run_dir / f"interrupted-{n}"
        moved.mkdir()
        for name in RUN_FILES:
            if (run_dir / name).exists():
                (run_dir / name).rename(moved / name)
        log.warning("%s held an unfinished run without a checkpoint: moved its files to %s and starting again",
                    run_dir, moved)  # fmt: skip
    elif resume:
        raise ConfigError(f"resume={run_dir}: the folder holds no run (no metrics.csv)")
    return RunStart()


@contextlib.contextmanager
def hold_run_folder(run_dir: Path) -> Iterator[None]:
    """Held by the process that runs the run in ``run_dir``, from before :func:`prepare_run_dir` to its end.

    A second process on the same folder gets :class:`ConfigError` naming the holder instead of writing the
    same ``metrics.csv`` and checkpoints: a study started twice, a study restarted while a worker of the
    stopped one still runs (a signal to the study's main process alone leaves its joblib workers running),
    or a requeued cluster job whose predecessor has not ended. The lock is the OS's (``flock`` on
    ``run.lock``, which names the holder and is removed at the end): it ends with the process however that
    ends, so it is never stale; on a shared filesystem it holds across machines where the filesystem
    supports ``flock`` (NFS does, through its byte-range locks). Written here rather than with ``filelock``
    (installed with torch) so that the refusal names the holder, which ``filelock`` does not record.
    """
    path = run_dir / LOCK_FILE
    while True:
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConfigError(
                f"run folder {run_dir} is being run by {holder}: two processes would write the same run; stop that "
                "one (a joblib study: its whole process group) or wait for it, then run this again to resume"
            ) from None
        if path.exists() and path.stat().st_ino == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()  # the holder removed the file between our open and our lock: take the new one
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        path.unlink(missing_ok=True)  # before the lock ends, so that no one locks a file about to go
        handle.close()
