"""Checkpoint files of a run: written atomically, the newest few kept, read back newest-valid-first.

A run's ``checkpoints/`` folder holds ``iter_XXXXXX.pt`` (periodic: the newest ``keep`` are kept) and
``final_iter_XXXXXX.pt`` (written when a run reaches its budget: never deleted, also when the run is later
extended). A write goes to a temporary file in the same folder, is flushed to disk (``fsync``) and renamed
over nothing, so a kill during a write leaves every earlier checkpoint intact and no partial file under a
checkpoint's name.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

from sapg_torchrl.errors import ConfigError

__all__ = ["CHECKPOINT_PATTERN", "checkpoint_paths", "load_checkpoint", "save_checkpoint"]

log = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"(final_)?iter_(\d+)\.pt")


def checkpoint_paths(folder: str | Path) -> list[Path]:
    """The checkpoints of ``folder`` (a run's ``checkpoints/``), oldest first (by iteration; at one iteration a
    final checkpoint after a periodic one)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(m, p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.fullmatch(p.name))]
    return [p for m, p in sorted(found, key=lambda mp: (int(mp[0][2]), mp[0][1] is not None))]


def save_checkpoint(state: dict, folder: str | Path, iteration: int, *, final: bool = False, keep: int = 3) -> Path:
    """Writes ``state`` as ``folder/[final_]iter_<iteration>.pt`` atomically, then deletes the oldest periodic
    checkpoints beyond the newest ``keep`` (final ones are never deleted). An existing file is never overwritten.

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> for i in range(1, 6):
        ...     _ = save_checkpoint({"iteration": i}, folder, i, keep=2)
        >>> _ = save_checkpoint({"iteration": 6}, folder, 6, final=True, keep=2)
        >>> [p.name for p in checkpoint_paths(folder)]
        ['iter_000004.pt', 'iter_000005.pt', 'final_iter_000006.pt']
    """
    if keep < 1:
        raise ValueError(f"keep={keep} is not accepted: keep at least 1 checkpoint")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{'final_' if final else ''}iter_{iteration:06d}.pt"
    if path.exists():
        raise FileExistsError(f"{path} exists already; refusing to overwrite it")
    temporary = folder / f".{path.name}.tmp-{os.getpid()}"
    with temporary.open("wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(temporary, path)
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself reaches the disk
    finally:
        os.close(directory)
    periodic = [p for p in checkpoint_paths(folder) if not p.name.startswith("final_")]
    for old in periodic[:-keep]:
        old.unlink()
    return path


def load_checkpoint(folder: str | Path, choice: str | Path | None = None) -> tuple[Path, dict] | None:
    """A checkpoint of ``folder`` (a run's ``checkpoints/``) with its state, loaded on the CPU.

    ``choice`` ``None``: the newest checkpoint that loads, ``None`` if there is none; one that does not load
    (truncated, corrupt) is reported in one warning line and the previous one is tried; the bad file is left where it
    is. Otherwise ``choice`` names a file of ``folder`` or a path: :class:`ConfigError` naming it if it is missing or
    unreadable.
    """
    folder = Path(folder)
    if choice is None:
        for path in reversed(checkpoint_paths(folder)):
            try:
                return path, torch.load(path, map_location="cpu", weights_only=False)
            except Exception as error:  # noqa: BLE001 (any unreadable file: fall back to the previous one)
                log.warning("checkpoint %s is unreadable (%s: %s): using the previous one", path, type(error).__name__,
                            str(error).splitlines()[0] if str(error) else "")  # fmt: skip
        return None
    path = Path(choice)
    if not path.is_absolute() and not path.exists():
        path = folder / choice
    if not path.is_file():
        names = sorted(p.name for p in folder.glob("*.pt"))
        raise ConfigError(f"checkpoint={choice}: no such file; {folder} holds {names or 'none'}")
    try:
        return path, torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 (any unreadable file gets the same one line)
        raise ConfigError(f"checkpoint={path}: unreadable ({type(error).__name__})") from None
