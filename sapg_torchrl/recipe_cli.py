"""Command-line guards for the Hydra recipes: one-line errors instead of tracebacks."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from sapg_torchrl.errors import ConfigError

__all__ = ["check_group_choices", "check_override_keys", "exit_on_config_error", "register_resolvers"]


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


def check_override_keys(argv: Sequence[str], config_dir: str | Path, config_name: str, groups: Iterable[str]) -> None:
    """Exits with status 2 if an override ``key=value`` names no setting of the config.

    Hydra would refuse it too, with a multi-line message; this names the key and the settings accepted at
    its level on one line. ``+key=`` (adds a key), ``~key`` and ``hydra.*`` overrides are left to Hydra.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import DictConfig, OmegaConf

    groups = set(groups)
    overrides = [a for a in argv if "=" in a and not a.startswith(("-", "+", "~"))]
    keys = [a.partition("=")[0] for a in overrides]
    settings = [k for k in keys if k not in groups and k.split(".")[0] != "hydra"]
    if not settings:
        return
    # the first choice of each group (a sweep lists several): any one of them has the same settings
    chosen = [a.split(",")[0] for a, k in zip(overrides, keys) if k in groups]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
            cfg = compose(config_name, overrides=chosen)
    finally:
        GlobalHydra.instance().clear()
    for key in settings:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent, throw_on_missing=False) if parent else cfg
        if isinstance(node, DictConfig) and leaf in node.keys():  # (`in node` is false for a ??? value)
            continue
        where = f"under '{parent}'" if parent else "at the top level"
        accepted = ", ".join(sorted(node.keys())) if isinstance(node, DictConfig) else "none (not a section)"
        print(f"error: unknown setting {key!r}; accepted {where}: {accepted}", file=sys.stderr)
        raise SystemExit(2)


@contextlib.contextmanager
def exit_on_config_error():
    """Turns a :class:`~sapg_torchrl.ConfigError` into ``error: <message>`` on stderr and exit status 2."""
    try:
        yield
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _env_preset(*, _root_) -> str:
    # the sweeper and the launchers resolve the sweep folder from the whole config before any job's
    # HydraConfig is set (Hydra's own ``${hydra:...}`` resolver fails there); a job's config has no
    # ``hydra`` node, but its HydraConfig is set
    if "hydra" in _root_:
        return _root_.hydra.runtime.choices.env
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.env


def register_resolvers() -> None:
    """Registers ``${sapg_env_preset:}``, the chosen env preset's name, for the recipes' configs (the study's
    default name). It resolves both where Hydra's ``${hydra:runtime.choices.env}`` does and in the sweep
    folder of a multirun."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("sapg_env_preset"):
        OmegaConf.register_new_resolver("sapg_env_preset", _env_preset)
