"""Command-line guards for the Hydra recipes: one-line errors instead of tracebacks."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from sapg_torchrl.errors import ConfigError

__all__ = ["check_group_choices", "exit_on_config_error"]


def check_group_choices(argv: Sequence[str], config_dir: str | Path, groups: Iterable[str]) -> None:
    """Exits with status 2 if an override like ``ablation=foo`` names no file of its config group.

    Hydra would fail too, but with a multi-line message; this names the bad value and the accepted ones
    on one line. Comma-separated multirun values (``ablation=sapg,disjoint``) are checked one by one.
    """
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key not in groups:
            continue
        accepted = sorted(p.stem for p in (Path(config_dir) / key).glob("*.yaml"))
        for choice in value.split(","):
            if choice not in accepted:
                print(f"error: unknown {key} {choice!r}; accepted: {', '.join(accepted)}", file=sys.stderr)
                raise SystemExit(2)


@contextlib.contextmanager
def exit_on_config_error():
    """Turns a :class:`~sapg_torchrl.ConfigError` into ``error: <message>`` on stderr and exit status 2."""
    try:
        yield
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
