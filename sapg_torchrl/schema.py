"""The recipes' config schema: every key's type, default, accepted values and meaning, in one place.

The dataclasses below are Hydra structured configs, registered in Hydra's ConfigStore by
:func:`register_schemas` as the ``schema`` group (``schema=sapg``, ``schema=study``, ``schema=evaluate``). The
recipes' YAML files (``sapg_torchrl/configs/``: the env presets, ``fidelity``, ``ablation``) are merged on top
of it, so OmegaConf refuses a value of the wrong type or a key that does not exist while the config is
composed. OmegaConf has no ranges or choices: those are each field's ``accepts`` (its metadata), checked by
:func:`validate` on the composed config. The docs' configuration reference is generated from this module
(:func:`reference_rst`), so it cannot drift from what is accepted.

Examples:
    >>> from omegaconf import OmegaConf
    >>> cfg = OmegaConf.structured(SAPGConfig)
    >>> cfg.ppo.lr = 1e-3
    >>> validate(cfg)
    >>> cfg.ppo.lr = -0.1
    >>> validate(cfg)
    Traceback (most recent call last):
    ...
    sapg_torchrl.errors.ConfigError: ppo.lr=-0.1 is not accepted: a number > 0
    >>> accepted("network.hidden")
    'a list of at least 1 integer >= 1'
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from sapg_torchrl.distributed import BACKENDS
from sapg_torchrl.errors import ConfigError

__all__ = [
    "EvaluateConfig",
    "SAPGConfig",
    "StudyConfig",
    "accepted",
    "reference_rst",
    "register_schemas",
    "validate",
]


# -- what a field accepts ----------------------------------------------------------------------------------------


class Number:
    """A real (or, with ``integer``, an integer) number in an interval; ``(lo, hi)`` bounds are closed unless
    ``open_lo``/``open_hi``."""

    def __init__(self, lo=None, hi=None, *, open_lo=False, open_hi=False, integer=False):
        self.lo, self.hi, self.open_lo, self.open_hi, self.integer = lo, hi, open_lo, open_hi, integer

    def __call__(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return False
        if self.integer and not (isinstance(value, int) or float(value).is_integer()):
            return False
        above = self.lo is None or (value > self.lo if self.open_lo else value >= self.lo)
        below = self.hi is None or (value < self.hi if self.open_hi else value <= self.hi)
        return above and below

    def __str__(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.lo is not None and self.hi is not None:
            return f"{kind} in {'(' if self.open_lo else '['}{self.lo:g}, {self.hi:g}{')' if self.open_hi else ']'}"
        if self.lo is not None:
            return f"{kind} {'>' if self.open_lo else '>='} {self.lo:g}"
        if self.hi is not None:
            return f"{kind} {'<' if self.open_hi else '<='} {self.hi:g}"
        return kind


class OneOf:
    """One of a fixed set of strings."""

    def __init__(self, *choices: str):
        self.choices = choices

    def __call__(self, value) -> bool:
        return value in self.choices

    def __str__(self) -> str:
        return "one of " + ", ".join(self.choices)


class Either:
    """Any of several checks (``leader``: ``first``, ``last`` or a block index)."""

    def __init__(self, *checks):
        self.checks = checks

    def __call__(self, value) -> bool:
        return any(check(value) for check in self.checks)

    def __str__(self) -> str:
        return " or ".join(map(str, self.checks))


class Matches:
    """A string matching a regular expression, described by ``text``."""

    def __init__(self, pattern: str, text: str):
        self.pattern, self.text = re.compile(pattern), text

    def __call__(self, value) -> bool:
        return isinstance(value, str) and self.pattern.fullmatch(value) is not None

    def __str__(self) -> str:
        return self.text


class ListOf:
    """A list of at least ``min_len`` items, each accepted by ``item``."""

    def __init__(self, item, min_len: int = 1):
        self.item, self.min_len = item, min_len

    def __call__(self, value) -> bool:
        return isinstance(value, (list, tuple)) and len(value) >= self.min_len and all(map(self.item, value))

    def __str__(self) -> str:
        item = str(self.item).removeprefix("an ").removeprefix("a ")
        return f"a list of at least {self.min_len} {item}"


POSITIVE = Number(0, open_lo=True)
NON_NEGATIVE = Number(0)
COUNT = Number(1, integer=True)
NATURAL = Number(0, integer=True)
UNIT = Number(0, 1, open_lo=True)  # (0, 1]


def setting(default, help: str, accepts=None):
    """A schema field: its default (lists are copied per instance), its meaning and, optionally, what it accepts
    beyond its type."""
    metadata = {"help": help, "accepts": accepts}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    if dataclasses.is_dataclass(default):
        return field(default_factory=type(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# -- the recipes' settings ---------------------------------------------------------------------------------------


@dataclass
class EnvSettings:
    """The task (set by an ``env`` preset)."""

    make: Dict[str, Any] = setting(
        {},
        "a Hydra ``_target_`` building the batched base env, called with ``num_envs`` and ``seed``: any callable "
        "returning a batched TorchRL env plugs in here",
    )
    num_envs: int = setting(1536, "``N``, the parallel envs; a multiple of ``sapg.num_blocks``", COUNT)
    reward_scale: float = setting(1.0, "multiplies the reward the learner sees (episode returns are logged unscaled)", POSITIVE)
    eval_envs: int = setting(32, "envs of the leader's evaluation", NATURAL)
    eval_steps: int = setting(999, "steps of an evaluation rollout (one episode)", COUNT)
    paper_phi_dim: int = setting(
        32, "``network.phi_dim`` under ``fidelity=paper`` (32; the two hand presets: 16)", COUNT
    )


@dataclass
class SAPGSettings:
    """Split and aggregate: the blocks, the relabelling and the per-block entropy."""

    num_blocks: int = setting(6, "``M``, the blocks (policies); must divide ``env.num_envs``", COUNT)
    leader: Any = setting(
        "last",
        "``last`` (released code) | ``first`` (the paper's \"policy 1\") | a block index",
        Either(OneOf("first", "last"), Number(0, integer=True)),
    )
    aggregation: str = setting(
        "leader_follower",
        "``leader_follower`` | ``symmetric`` | ``none``",
        OneOf("leader_follower", "symmetric", "none"),
    )
    off_policy_ratio: int = setting(1, "``K``, follower blocks relabelled to the leader per iteration, ``1..M-1``", COUNT)
    importance_correction: bool = setting(
        True, "``false``: relabelled rows use the leader's own old log-prob (the ``no_is_correction`` ablation)"
    )
    clip_mode: str = setting(
        "code",
        "``code``: clip every ratio to ``[1-eps, 1+eps]``; ``paper``: ``[mu(1-eps), mu(1+eps)]`` for relabelled rows",
        OneOf("code", "paper"),
    )
    off_policy_weight: float = setting(
        1.0, "``lambda``, multiplies every loss term of a relabelled row (1: the code's pooled mean)", NON_NEGATIVE
    )
    max_importance_ratio: Optional[float] = setting(
        None, "optional cap of ``pi_theta / pi_behaviour`` (TorchRL's ``ClipPPOLoss`` cap)", Number(1, open_lo=True)
    )
    entropy_schedule: str = setting(
        "code",
        "``code`` | ``paper`` | ``explicit`` | ``zero`` (see :func:`sapg_torchrl.block_entropy_coefficients`)",
        OneOf("code", "paper", "explicit", "zero"),
    )
    entropy_scale: float = setting(0.005, "the code's ``scale`` or the paper's ``sigma``", NON_NEGATIVE)
    entropy_coefficients: Optional[List[float]] = setting(
        None, "one per block, with ``entropy_schedule=explicit``", ListOf(NON_NEGATIVE)
    )
    advantage_norm: str = setting(
        "global",
        "``global`` (code: once over the augmented batch) | ``per_block`` | ``none``",
        OneOf("global", "per_block", "none"),
    )


@dataclass
class NetworkSettings:
    """The actor-critic."""

    hidden: List[int] = setting([256, 256, 128], "trunk widths", ListOf(COUNT))
    phi_dim: int = setting(
        32,
        "width of each block's conditioning vector (code 32; paper ``env.paper_phi_dim``); no phi with one block",
        COUNT,
    )
    shared_trunk: bool = setting(True, "one trunk for actor and critic (code) or one each, both conditioned on phi (paper)")
    disjoint: bool = setting(False, "``M`` separate networks without phi (the ``disjoint`` ablation)")
    activation: str = setting("elu", "the trunk's activation", OneOf("elu", "relu", "tanh", "silu"))
    max_log_std: Optional[float] = setting(None, "optional cap of every block's log-std (``null``: none, as in the code)")
    lstm_size: Optional[int] = setting(
        None,
        "hidden size of an LSTM before the MLP (``null``: feedforward; the AllegroKuka presets: 768); training then "
        "runs on ``T``-step sequences (see :doc:`design`); not with ``disjoint``",
        COUNT,
    )
    lstm_layer_norm: bool = setting(False, "LayerNorm on the LSTM's output (the published AllegroKuka network)")


@dataclass
class PPOSettings:
    """The PPO update every block shares."""

    horizon: int = setting(16, "``T``, steps per env per iteration", COUNT)
    epochs: int = setting(5, "passes over the batch per iteration", COUNT)
    minibatch_size: Optional[int] = setting(
        None,
        "rows per minibatch (``null``: ``4 * num_envs``); ``floor(rows / size)`` minibatches, the remainder merged "
        "into the last (rl_games)",
        COUNT,
    )
    num_minibatches: Optional[int] = setting(
        None,
        "a fixed number of minibatches per epoch instead, their size following the rows (``null``: off; the study "
        "sets 4 so that every variant takes the same optimizer steps)",
        COUNT,
    )
    lr: float = setting(5.0e-4, "initial learning rate (Adam)", POSITIVE)
    kl_target: Optional[float] = setting(
        0.016,
        "target of the KL-adaptive learning rate (x1.5 / ÷1.5 outside ``[kl/2, 2 kl]``, bounds ``[1e-6, 1e-2]``, "
        "stepped once per epoch); ``null``: fixed",
        POSITIVE,
    )
    kl_reference: str = setting(
        "previous_epoch",
        "the KL of that schedule: ``previous_epoch`` (code: analytic, to each row's policy of the previous epoch, "
        "all rows) | ``behaviour`` (TorchRL's sample estimate, on-policy rows)",
        OneOf("previous_epoch", "behaviour"),
    )
    clip_epsilon: float = setting(0.2, "PPO clip range", Number(0, 1, open_lo=True, open_hi=True))
    gamma: float = setting(0.99, "discount", UNIT)
    lmbda: float = setting(0.95, "GAE lambda", Number(0, 1))
    critic_coeff: float = setting(2.0, "weight of the squared-error critic loss (code: ``0.5 * 4``)", NON_NEGATIVE)
    clip_value: bool = setting(True, "clipped value loss")
    value_norm: bool = setting(True, "running value normalisation (the critic predicts normalised values)")
    observation_norm: bool = setting(True, "running observation normalisation inside the network (phi is not normalised)")
    bounds_loss_coeff: float = setting(1.0e-4, "weight of the penalty on action means beyond ``+-1.1``", NON_NEGATIVE)
    max_grad_norm: Optional[float] = setting(1.0, "gradient-norm clip (``null``: none)", POSITIVE)
    critic_target: str = setting("gae", "``gae`` (code) | ``n_step`` (paper)", OneOf("gae", "n_step"))
    n_step: int = setting(3, "``n`` of the ``n_step`` target (paper: 3)", COUNT)


@dataclass
class TrainSettings:
    """How a run runs: evaluation, checkpoints, progress, threads (not the experiment: a resumed run may change
    these)."""

    eval_interval: int = setting(10, "evaluate the leader every this many iterations, and at the first and last; 0: never", NATURAL)
    eval_async: bool = setting(
        False,
        "evaluate in a child process on a copy of the weights while training goes on (same numbers; each "
        "evaluation is logged at the first iteration after it finished, with ``eval/iteration``); see "
        "``benchmarks/README.md``",
    )
    checkpoint_interval: int = setting(0, "checkpoint every this many iterations; 0: only at the end", NATURAL)
    checkpoint_minutes: Optional[float] = setting(10, "also checkpoint every this many minutes (``null``: off)", POSITIVE)
    keep_checkpoints: int = setting(3, "periodic checkpoints kept, the newest; final ones are never deleted", COUNT)
    progress: bool = setting(True, "progress bar (frames, frames/s, leader return)")
    record_states: int = setting(
        0, "keep a reservoir of this many leader states (``states.pt``, diversity metrics); 0: off", NATURAL
    )
    threads: Optional[int] = setting(None, "torch threads (``null``: torch's default; the study runs use 1 each)", COUNT)
    compile: bool = setting(
        False,
        "``torch.compile`` the loss (forward and backward), the rollout policy and the evaluation policy: same "
        "numbers to float tolerance, less Python overhead per call; the first calls compile (a minute or more each "
        "on a CPU); see ``benchmarks/README.md``",
    )
    cudagraphs: bool = setting(
        False,
        "CUDA only: capture the rollout policy in a CUDA graph (TorchRL's collector ``cudagraph_policy``, "
        "tensordict's ``CudaGraphModule``), one graph replay per env step instead of the policy's kernel launches; "
        "the same actions; see ``benchmarks/README.md``",
    )
    precision: str = setting(
        "float32",
        "``float32`` | ``bfloat16``: ``bfloat16`` runs the update's forward passes under ``torch.autocast`` (matrix "
        "products in bf16; the backward follows; parameters, optimizer and the rollout stay float32); see "
        "``benchmarks/README.md`` for what it buys",
        OneOf("float32", "bfloat16"),
    )
    distributed_backend: str = setting(
        "auto",
        "under ``torchrun`` (several processes, :doc:`scaling_out`): ``auto`` (NCCL when the learner is on CUDA, gloo "
        "otherwise) | ``nccl`` | ``gloo``; unused in a single process",
        OneOf(*BACKENDS),
    )


@dataclass
class LoggerSettings:
    """Logging besides ``metrics.csv`` (not the experiment)."""

    wandb: bool = setting(True, "log to wandb too")
    mode: str = setting("offline", "``offline`` (no account needed) | ``online`` | ``disabled``", OneOf("offline", "online", "disabled"))
    project: str = setting("sapg-torchrl", "wandb project")


@dataclass
class SAPGConfig:
    """A training run (``recipes/sapg.py``, ``sapg-train``)."""

    seed: int = setting(0, "seeds torch, the envs, the aggregation draws and the minibatch shuffles", NATURAL)
    device: str = setting(
        "auto",
        "``auto`` (CUDA when available) | ``cpu`` | ``cuda`` | ``cuda:N``: where the policy and the batch live",
        Matches(r"auto|cpu|cuda(:\d+)?", "one of auto, cpu, cuda, cuda:N"),
    )
    total_frames: float = setting(
        5_000_000, "environment frames to train for (rounded up to whole iterations of ``N * T``)", POSITIVE
    )
    resume: Optional[str] = setting(None, "a run folder to continue from its newest checkpoint (see :doc:`resume`)")
    env: EnvSettings = setting(EnvSettings(), "")
    sapg: SAPGSettings = setting(SAPGSettings(), "")
    network: NetworkSettings = setting(NetworkSettings(), "")
    ppo: PPOSettings = setting(PPOSettings(), "")
    train: TrainSettings = setting(TrainSettings(), "")
    logger: LoggerSettings = setting(LoggerSettings(), "")


@dataclass
class StudySettings:
    """The study's own settings."""

    name: str = setting("${sapg_env_preset:}", "the study folder's name, ``runs/study/<name>`` (default: the env preset's)")


@dataclass
class StudyConfig(SAPGConfig):
    """A study sweep (``recipes/study.py``, ``sapg-study``): every run's settings, plus the study's own."""

    study: StudySettings = setting(StudySettings(), "")


@dataclass
class EvaluateConfig:
    """An evaluation of a trained run (``recipes/evaluate.py``, ``sapg-evaluate``)."""

    run: str = setting("???", "the run folder (``config.yaml``, ``checkpoints/``); required")
    checkpoint: Optional[str] = setting(None, "a file of ``<run>/checkpoints/`` or a path; ``null``: the newest readable one")
    episodes: int = setting(10, "episodes per block, one per fresh env", COUNT)
    blocks: Any = setting("leader", "``leader`` | ``all`` | a block index", Either(OneOf("leader", "all"), Number(0, integer=True)))
    deterministic: bool = setting(True, "the policy's mean action; ``false``: sampled actions")
    video: bool = setting(False, "also render one episode of the leader (or of ``blocks`` when it is one index)")
    video_path: Optional[str] = setting(None, "``null``: ``<run>/videos/<checkpoint>_block<b>.gif``")
    seed: int = setting(0, "seeds the evaluation envs and sampled actions", NATURAL)
    device: str = setting("cpu", "where the policy runs", Matches(r"cpu|cuda(:\d+)?", "one of cpu, cuda, cuda:N"))


SCHEMAS = {"sapg": SAPGConfig, "study": StudyConfig, "evaluate": EvaluateConfig}


def register_schemas() -> None:
    """Stores the schemas in Hydra's ConfigStore as the ``schema`` group (package ``_global_``), the first
    entry of the recipes' defaults lists. Idempotent."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        store.store(group="schema", name=name, node=schema, package="_global_")


# -- checking and describing ----------------------------------------------------------------------------------------


def _fields(schema) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(schema)}


def _field_type(schema, name: str):
    return typing.get_type_hints(schema)[name]


def _schema_of(key: str, root=SAPGConfig):
    """The dataclass holding ``key`` (dotted) and the field's name, or ``(None, None)``."""
    *parents, leaf = key.split(".")
    schema = root
    for parent in parents:
        if not dataclasses.is_dataclass(schema) or parent not in _fields(schema):
            return None, None
        schema = _field_type(schema, parent)
    if not dataclasses.is_dataclass(schema) or leaf not in _fields(schema):
        return schema if dataclasses.is_dataclass(schema) else None, None
    return schema, leaf


def _type_text(hint) -> str:
    nullable = type(None) in typing.get_args(hint)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if nullable else hint
    text = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(base, "any value")
    if typing.get_origin(base) is list:
        text = "a list"
    elif typing.get_origin(base) is dict:
        text = "a mapping"
    return text + (" or null" if nullable else "")


def accepted(key: str, root=SAPGConfig) -> str | None:
    """What the setting ``key`` (dotted, e.g. ``ppo.lr``) accepts, in words; None if there is no such setting."""
    schema, leaf = _schema_of(key, root)
    if leaf is None:
        return None
    f, hint = _fields(schema)[leaf], _field_type(schema, leaf)
    accepts = f.metadata.get("accepts")
    if accepts is None:
        return _type_text(hint)
    return str(accepts) + (" or null" if type(None) in typing.get_args(hint) else "")


def settings_under(key: str, root=SAPGConfig) -> list[str] | None:
    """The setting names under section ``key`` (``""``: the top level), or None if ``key`` is not a section."""
    schema = root
    for part in filter(None, key.split(".")):
        if not dataclasses.is_dataclass(schema) or part not in _fields(schema):
            return None
        schema = _field_type(schema, part)
    return sorted(_fields(schema)) if dataclasses.is_dataclass(schema) else None


def validate(cfg, root=None) -> None:
    """Checks every value of a composed config against its field's ``accepts``: :class:`ConfigError`
    ``<key>=<value> is not accepted: <what is>`` for the first that fails. Types and unknown keys were checked
    by OmegaConf when the config was composed on its schema. Also checks that ``env.num_envs`` splits into
    ``sapg.num_blocks`` blocks (:class:`~sapg_torchrl.blocks.BlockLayout`). ``root`` defaults to the schema whose top-level keys
    ``cfg`` has (a study config has ``study``)."""
    from omegaconf import DictConfig, OmegaConf

    if root is None:
        root = StudyConfig if "study" in cfg else SAPGConfig if "sapg" in cfg else EvaluateConfig
    if isinstance(cfg, DictConfig):  # resolved key by key: a config composed with its hydra node resolves only there
        cfg = {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v
               for k, v in cfg.items() if k != "hydra"}  # fmt: skip
    values = cfg

    def walk(schema, node, prefix):
        for name, f in _fields(schema).items():
            if name not in node:
                continue
            value, hint = node[name], _field_type(schema, name)
            if dataclasses.is_dataclass(hint):
                walk(hint, value, f"{prefix}{name}.")
                continue
            accepts = f.metadata.get("accepts")
            if accepts is None or (value is None and type(None) in typing.get_args(hint)) or value == "???":
                continue
            if not accepts(value):
                raise ConfigError(f"{prefix}{name}={value!r} is not accepted: {accepted(prefix + name, root)}")

    walk(root, values, "")
    if isinstance(values.get("env"), dict) and isinstance(values.get("sapg"), dict):  # N splits into M blocks
        from sapg_torchrl.blocks import BlockLayout

        BlockLayout(values["env"]["num_envs"], values["sapg"]["num_blocks"], values["sapg"].get("leader", "last"))
    if isinstance(values.get("train"), dict) and values["train"].get("cudagraphs"):  # before any run folder exists
        from sapg_torchrl.config import check_cudagraphs, device_of

        check_cudagraphs(device_of(values.get("device", "auto")))


def reference_rst(root=StudyConfig) -> str:
    """The configuration reference (reStructuredText): one table per section, each key with its default, what
    it accepts and its meaning; the docs include it (``docs/conf.py`` writes it at build time)."""

    def default_of(f):
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if value == "???":
            return "required"
        text = "null" if value is None else str(value).lower() if isinstance(value, bool) else value
        return f"``{text}``" if value != {} else "(the env preset's)"

    def table(schema, prefix):
        rows = [
            (f"``{prefix}{name}``", default_of(f), accepted(prefix + name, root), f.metadata["help"])
            for name, f in _fields(schema).items()
            if not dataclasses.is_dataclass(_field_type(schema, name))
        ]
        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 22 12 22 44", "",
                 "   * - key", "     - default", "     - accepts", "     - meaning"]  # fmt: skip
        for row in rows:
            lines += [f"   * - {row[0]}", *(f"     - {cell}" for cell in row[1:])]
        return lines

    out = []
    sections = [("Top level", root, "")] + [
        (f"``{name}``", _field_type(root, name), f"{name}.")
        for name in _fields(root)
        if dataclasses.is_dataclass(_field_type(root, name))
    ]
    for title, schema, prefix in sections:
        doc = " ".join((schema.__doc__ or "").split()) if prefix else "Run-wide settings."
        out += [title, "-" * len(title), "", doc, "", *table(schema, prefix), ""]
    return "\n".join(out)
