"""Command-line guards for the recipes: one-line errors instead of Hydra's and OmegaConf's tracebacks."""

from __future__ import annotations

import contextlib
import importlib.util
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from sapg_torchrl.errors import ConfigError

__all__ = ["check_command_line", "exit_on_config_error", "register_resolvers", "require_extra"]

# Hydra flags that print something instead of running (nothing to check), and flags that take a value
_INFO_FLAGS = ("-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "-i", "--info", "--shell-completion", "-sc")
_ABLATION_ONLY = "_sapg_ablation_only"  # an in-memory config of the ablation group alone
# the Hydra launcher plugins' configs that the [study] extra installs
_STUDY_EXTRA_LAUNCHERS = ("joblib", "submitit_local", "submitit_slurm")
_VALUE_FLAGS = ("-cd", "--config-dir", "-cp", "--config-path", "-cn", "--config-name", "-p", "--package")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def install_extra(extra: str) -> str:
    """How to install one of the package's extras (``pyproject.toml``), for an error message."""
    return f"pip install 'sapg-torchrl[{extra}]' (pip install -e '.[{extra}]' in a checkout)"


def require_extra(extra: str, modules: Sequence[str], job: str) -> None:
    """Exits with status 2 and one line naming the extra to install if one of ``modules`` cannot be imported."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        _fail(f"{job} needs the [{extra}] extra ({', '.join(missing)} not installed): {install_extra(extra)}")


def _split_argv(argv: Sequence[str]) -> tuple[list[str], list[str], str | None]:
    """The task overrides of a Hydra command line, its extra config folders (``--config-dir``) and the config
    it names (``--config-name``, else ``None``)."""
    overrides, config_dirs, config_name, args = [], [], None, list(argv)
    while args:
        arg = args.pop(0)
        flag, eq, value = arg.partition("=")
        if flag in ("-cd", "--config-dir"):
            config_dirs.append(value if eq else args.pop(0) if args else "")
        elif flag in ("-cn", "--config-name"):
            config_name = value if eq else args.pop(0) if args else ""
        elif flag in _VALUE_FLAGS:
            if not eq and args:
                args.pop(0)  # its value
        elif arg.startswith("-"):
            continue  # -m, --multirun, ...
        elif arg.lstrip("+~").startswith("hydra.") and not arg.startswith("hydra.searchpath"):
            continue  # Hydra's own settings (launcher options, folders): Hydra checks them
        else:  # a task setting, or a choice of Hydra's groups (hydra/launcher=slurm), which decides what loads
            overrides.append(arg)
    return overrides, config_dirs, config_name


def _variants(overrides: list[str]) -> list[list[str]]:
    """The command line's configs to check: the first value of every sweep (``a,b``, ``range(5)``), then each
    other value of each sweep with the others at their first."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as err:
        _fail(str(err).strip().splitlines()[0])
    values = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [o.input_line]
        for o in parsed
    ]
    first = [v[0] for v in values if v]
    variants = [first]
    for i, choices in enumerate(values):
        variants += [first[:i] + [choice] + first[i + 1 :] for choice in choices[1:]]
    return variants


def _message(err: Exception, root) -> str:
    """One line for a Hydra composition error: an unknown group option or setting, or a value of the wrong type.

    OmegaConf's error is the cause of Hydra's for a command-line override; for a value in a config file Hydra
    keeps only its text (``In 'ablation/mine': ...``, then ``full_key: ...``), which is parsed instead.
    """
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    from sapg_torchrl.app.schema import accepted, settings_under

    if isinstance(err, MissingConfigException) and err.missing_cfg_file and "/" in err.missing_cfg_file:
        group, _, choice = err.missing_cfg_file.rpartition("/")
        if group == "hydra/launcher" and choice in _STUDY_EXTRA_LAUNCHERS:  # our presets build on them
            return (f"{group} {choice!r} comes from a Hydra plugin that is not installed: {install_extra('study')}, "
                    "or run one run at a time with hydra/launcher=basic")
        return f"unknown {group} {choice!r}; accepted: {', '.join(sorted(err.options or []))}"
    text = str(err)
    cause = err
    while cause is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    if refused := re.search(r"ConfigError raised while resolving interpolation: (.*)", text):  # one of our resolvers
        return refused.group(1)
    if cause is not None and getattr(cause, "full_key", None):
        key, value, unknown = cause.full_key, cause.value, isinstance(cause, ConfigKeyError)
    elif (found := re.search(r"full_key: (\S+)", text)) is not None:
        key, unknown = found.group(1), "ConfigKeyError" in text
        value = (re.search(r"Value '(.*?)' of type", text) or [None, "?"])[1]
    else:
        return text.strip().splitlines()[0]
    origin = re.match(r"In '([^']+)'", text)
    where_from = f" (in {origin.group(1)}.yaml)" if origin else ""
    parent = key.rpartition(".")[0]
    if unknown or accepted(key, root) is None:
        if origin and key == origin.group(1).split("/")[0]:
            return f"{origin.group(1)}.yaml sets its keys under '{key}': a group file starts with '# @package _global_'"
        names = settings_under(parent, root)
        where = f"under '{parent}'" if parent else "at the top level"
        return f"unknown setting {key!r}{where_from}; accepted {where}: {', '.join(names) if names else 'none'}"
    return f"{key}={value!r}{where_from} is not accepted: {accepted(key, root)}"


def _overridden_ablation_setting(cfg, ablation: str, variant: list[str], search: list[str]) -> str | None:
    """The message for a command-line setting that changes what ``ablation`` sets, else ``None``.

    Such a run would carry the ablation's name without being it: e.g. ``ablation=no_split sapg.num_blocks=6``, or
    a study's ``sapg.entropy_scale=0.05`` reaching an ablation defined by its entropy scale (the command line wins
    over every config file in Hydra, so ``cfg``, composed from ``variant``, holds its values whatever the
    ablation). An override that repeats the ablation's own value is accepted.
    """
    from hydra import compose
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from sapg_torchrl.app.run_folder import flat_settings

    # the ablation's file alone, with its own defaults, wherever on the search path (--config-dir) it is
    ConfigStore.instance().store(name=_ABLATION_ONLY, node={"defaults": [{"ablation": "sapg"}, "_self_"]})
    sets = flat_settings(OmegaConf.to_container(compose(_ABLATION_ONLY, overrides=[*search, f"ablation={ablation}"])))
    choices = cfg.hydra.runtime.choices
    for override in variant:
        key = override.lstrip("+~").partition("=")[0]
        if key in choices or key.startswith("hydra"):
            continue  # a group choice (env=hopper), or Hydra's own
        for name, value in sets.items():
            final = OmegaConf.select(cfg, name)
            final = OmegaConf.to_container(final) if OmegaConf.is_config(final) else final
            if (name == key or name.startswith(f"{key}.")) and final != value:
                return (
                    f"{override} changes what ablation={ablation} sets ({name}: {value}), so the run would not be "
                    f"{ablation}: drop the override, or give this variant its own file (--config-dir DIR with "
                    "DIR/ablation/<name>.yaml)"
                )
    return None


def _ablations(cfg, variant: list[str]) -> list[str]:
    """The ablations a command line runs: its own, or every value of the config's sweep of them (the study's)."""
    chosen = cfg.hydra.runtime.choices.get("ablation")
    swept = (cfg.hydra.sweeper.get("params") or {}).get("ablation")
    if chosen is None or swept is None or any(o.lstrip("+~").startswith("ablation=") for o in variant):
        return [] if chosen is None else [chosen]
    return [v.partition("=")[2] for (v,) in _variants([f"ablation={swept}"])]


def check_command_line(argv: Sequence[str], config_name: str) -> None:
    """Exits with status 2 and one line (``error: ...``) if the config a recipe's command line asks for would be
    refused, before Hydra creates any folder or anything is built.

    The config is composed (on its schema, see :mod:`sapg_torchrl.app.schema`) once per value of every sweep, so
    each value of ``ablation=sapg,foo`` or ``ppo.lr=1e-3,abc`` is checked. Refused: an unknown group option
    (``ablation=foo``), an unknown setting (``ppo.lrr=1``), a value of the wrong type (``ppo.lr=abc``) or out of
    range (``ppo.lr=-0.1``), a setting that changes what the chosen ablation sets (``ablation=no_split
    sapg.num_blocks=6``; every ablation of the config's own sweep, the study's, is checked); each message names
    the key, the value and what is accepted. ``hydra.*`` overrides and Hydra's informational flags (``--help``,
    ``--cfg``) are left to Hydra.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from sapg_torchrl.cli import CONFIG_DIR
    from sapg_torchrl.app.schema import SCHEMAS, validate

    if any(arg.partition("=")[0] in _INFO_FLAGS for arg in argv):
        return
    overrides, config_dirs, named = _split_argv(argv)
    search = [f"hydra.searchpath=[{','.join('file://' + str(Path(d).resolve()) for d in config_dirs)}]"] if config_dirs else []
    root = SCHEMAS[config_name]  # for the messages; a config named with --config-name is checked on its own schema
    if named is not None:
        configs = sorted({p.stem for d in (CONFIG_DIR, *map(Path, config_dirs)) for p in Path(d).glob("*.yaml")})
        if named not in configs:
            _fail(f"unknown config {named!r} (--config-name); accepted: {', '.join(configs)}")
        config_name = named
    for variant in _variants(overrides):
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
                cfg = compose(config_name, overrides=search + variant, return_hydra_config=True)
                conflicts = (_overridden_ablation_setting(cfg, a, variant, search) for a in _ablations(cfg, variant))
                conflict = next((c for c in conflicts if c is not None), None)
            root = SCHEMAS.get(cfg.hydra.runtime.choices.get("schema"), root)
            validate(cfg, root)
            if conflict is not None:
                _fail(conflict)
        except ConfigError as err:
            _fail(str(err))
        except (HydraException, OmegaConfBaseException) as err:
            _fail(_message(err, root))
        finally:
            GlobalHydra.instance().clear()


def require_run_folder(argv: Sequence[str]) -> None:
    """Exits with status 2 and one line unless ``argv`` names ``run=`` (the jobs on a trained run's folder), or asks
    for help."""
    help_asked = any(arg in ("-h", "--help", "--hydra-help") for arg in argv)
    if not help_asked and not any(arg.startswith("run=") for arg in argv):
        _fail("run=<run folder> is required (the folder of a training run)")


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


def _hydra_subdir(*, _root_) -> str:
    # Hydra writes a job's config files before the job runs: a rerun of a run folder (a resumed or skipped run of a
    # study, a run refused because the folder holds another experiment or another process runs it) writes them one
    # level down, so the first job's record is never overwritten
    return ".hydra/rerun" if (Path(_root_.hydra.runtime.output_dir) / ".hydra").is_dir() else ".hydra"


def _frames_of_iterations(iterations, *, _root_) -> int:
    return int(iterations) * int(_root_.env.num_envs) * int(_root_.ppo.horizon)


def _scaled_with_n(count, num_envs, *, _root_) -> int:
    n, count, num_envs = int(_root_.env.num_envs), int(count), int(num_envs)
    if (count * n) % num_envs:
        step = num_envs // math.gcd(count, num_envs)
        nearest = " or ".join(str(x) for x in sorted({max(step, n // step * step), (n // step + 1) * step}))
        raise ConfigError(f"env.num_envs={n} is not accepted here: {count} x N / {num_envs} must be a whole number: "
                          f"use a multiple of {step} (e.g. {nearest})")  # fmt: skip
    return count * n // num_envs


def register_resolvers() -> None:
    """Registers the recipes' resolvers:

    - ``${sapg_env_preset:}``, the chosen env preset's name (the study's default name), resolved where Hydra's
      ``${hydra:runtime.choices.env}`` is and in the sweep folder of a multirun;
    - ``${sapg_hydra_subdir:}``, where a job writes Hydra's config files (``.hydra``, or ``.hydra/rerun`` when the
      run folder already has them);
    - ``${sapg_frames_of_iterations:<k>}``, the frames of ``k`` iterations at the config's ``N`` and ``T``: a frame
      budget that grows with ``N`` (the scaling sweep at a fixed number of updates);
    - ``${sapg_scaled_with_n:<count>,<N0>}``, ``count x N / N0`` (a whole number, else an error): e.g.
      ``ppo.num_minibatches`` that keeps the minibatch size of ``N0`` as ``N`` grows (co-scaling).
    """
    from omegaconf import OmegaConf

    resolvers = {"sapg_env_preset": _env_preset, "sapg_hydra_subdir": _hydra_subdir,
                 "sapg_frames_of_iterations": _frames_of_iterations, "sapg_scaled_with_n": _scaled_with_n}  # fmt: skip
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
