"""Typed settings: what a setting accepts, and the training layer's own settings (:class:`PPOSettings`,
:class:`TrainSettings`), each key with its type, default, accepted values and meaning, written once.

A setting is a dataclass field made by :func:`setting`: its default, its help text and, where the type alone says
too little, what it ``accepts`` (:class:`Number`, :class:`OneOf`, ...). :func:`check` refuses a value a field does
not accept, in one line naming the key, the value and what is accepted. The application's schema
(:mod:`sapg_torchrl.app.schema`) composes these sections with its own into the recipes' Hydra structured configs;
:class:`~sapg_torchrl.training.PPOUpdate` and :class:`~sapg_torchrl.training.Runner` take them as objects, so a
default lives here and nowhere else.

Examples:
    >>> ppo = PPOSettings(lr=1e-3)
    >>> check(ppo, "ppo.")
    >>> check(PPOSettings(lr=-0.1), "ppo.")
    Traceback (most recent call last):
    ...
    sapg_torchrl.errors.ConfigError: ppo.lr=-0.1 is not accepted: a number > 0
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Optional

from sapg_torchrl.errors import ConfigError
from sapg_torchrl.loss import KL_REFERENCES, KL_ROWS, LR_BOUNDS, LR_FACTOR
from sapg_torchrl.targets import CRITIC_TARGETS
from sapg_torchrl.training.distributed import BACKENDS

__all__ = [
    "COUNT", "NATURAL", "NON_NEGATIVE", "OBSERVATION_NORM_UPDATES", "POSITIVE", "PRECISIONS", "SHUFFLES", "UNIT",
    "VALUE_NORM_UPDATES", "OLD_VALUE_NORMS", "Either",
    "ListOf", "Matches", "Number", "OneOf", "PPOSettings", "TrainSettings", "accepted_text", "check", "field_type",
    "fields_of", "setting",
]  # fmt: skip

PRECISIONS = ("float32", "bfloat16")
OBSERVATION_NORM_UPDATES = ("after_update", "first_epoch")
"""When the observation normaliser takes in an iteration's data: once after the update, from the rollout, or before
each minibatch of the first epoch, from its rows (rl_games: its normaliser is in training mode then)."""
VALUE_NORM_UPDATES = ("targets", "values_and_targets")
OLD_VALUE_NORMS = ("after_targets", "before_targets")
"""The statistics the stored values (the clipped value loss's centre) are normalised with: those that took in the
batch's targets too, or those before the targets (the released code)."""
"""What the value normaliser takes in each iteration: the value targets, or the batch's values and then its targets
(rl_games' ``prepare_dataset``)."""
SHUFFLES = ("every_epoch", "once")
"""How an iteration's rows are shuffled into minibatches: anew every epoch (TorchRL, rsl_rl), or once, the same
minibatches every epoch (the released code's ``shuffle_batch``)."""
"""``train.precision``: the update's forward passes in float32, or under bf16 autocast."""

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



# -- the training layer's settings ------------------------------------------------------------------------------


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
        f"target of the KL-adaptive learning rate (x{LR_FACTOR:g} / ÷{LR_FACTOR:g} outside ``[kl/2, 2 kl]``, bounds "
        f"``[{LR_BOUNDS[0]:g}, {LR_BOUNDS[1]:g}]``, "
        "stepped once per epoch); ``null``: fixed",
        POSITIVE,
    )
    kl_reference: str = setting(
        "previous_epoch",
        "the KL of that schedule: ``previous_epoch`` (code: analytic, to each row's policy of the previous epoch, "
        "over ``kl_rows``) | ``behaviour`` (TorchRL's sample estimate, on-policy rows)",
        OneOf(*KL_REFERENCES),
    )
    kl_rows: str = setting(
        "all",
        "the rows of the ``previous_epoch`` KL: ``all`` (code: relabelled rows included, whose first-epoch reference "
        "is a follower's policy) | ``on_policy`` (the same kind of rows for every variant; the study's rule)",
        OneOf(*KL_ROWS),
    )
    clip_epsilon: float = setting(0.2, "PPO clip range", Number(0, 1, open_lo=True, open_hi=True))
    gamma: float = setting(0.99, "discount", UNIT)
    lmbda: float = setting(0.95, "GAE lambda", Number(0, 1))
    critic_coeff: float = setting(2.0, "weight of the squared-error critic loss (code: ``0.5 * 4``)", NON_NEGATIVE)
    clip_value: bool = setting(True, "clipped value loss")
    value_norm: bool = setting(True, "running value normalisation (the critic predicts normalised values)")
    value_norm_update: str = setting(
        "targets",
        "what the value normaliser takes in each iteration: ``targets`` | ``values_and_targets`` (code: the batch's "
        "values, then its targets, as rl_games' ``prepare_dataset``)",
        OneOf(*VALUE_NORM_UPDATES),
    )
    old_value_norm: str = setting(
        "after_targets",
        "the statistics the stored values (the centre of the clipped value loss) are normalised with: "
        "``after_targets`` (those the targets are normalised with) | ``before_targets`` (code: rl_games' "
        "``prepare_dataset`` normalises the values before the statistics take in the targets, so the centre stays at "
        "the critic's output as the statistics drift; otherwise the drift eats the clip range)",
        OneOf(*OLD_VALUE_NORMS),
    )
    value_norm_clip: Optional[float] = setting(
        None,
        "clip normalised values to ``+-value_norm_clip``: targets and stored values in the loss, and the critic's "
        "output before it is denormalised (code: 5, rl_games' ``RunningMeanStd``); ``null``: no clip",
        POSITIVE,
    )
    observation_norm: bool = setting(True, "running observation normalisation inside the network (phi is not normalised)")
    observation_norm_update: str = setting(
        "after_update",
        "when the observation normaliser takes in an iteration: ``after_update`` (once, the rollout's observations, "
        "so that the behaviour log-probs stay exact during the epochs) | ``first_epoch`` (code: before each "
        "minibatch of the first epoch, its rows, relabelled ones included, as rl_games' normaliser in training mode)",
        OneOf(*OBSERVATION_NORM_UPDATES),
    )
    shuffle: str = setting(
        "every_epoch",
        "``every_epoch``: new minibatches every epoch | ``once`` (code: one shuffle per iteration, the same "
        "minibatches every epoch, as the released code's ``shuffle_batch``)",
        OneOf(*SHUFFLES),
    )
    bounds_loss_coeff: float = setting(1.0e-4, "weight of the penalty on action means beyond ``+-1.1``", NON_NEGATIVE)
    max_grad_norm: Optional[float] = setting(1.0, "gradient-norm clip (``null``: none)", POSITIVE)
    critic_target: str = setting("gae", "``gae`` (code) | ``n_step`` (paper)", OneOf(*CRITIC_TARGETS))
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
        "numbers to float tolerance, less Python overhead per call (on a GPU, where the update waits on the host, it "
        "halved the update on an H200); the first calls compile (a minute or more each on a CPU); see "
        "``benchmarks/README.md``",
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
        OneOf(*PRECISIONS),
    )
    distributed_backend: str = setting(
        "auto",
        "under ``torchrun`` (several processes, :doc:`scaling_out`): ``auto`` (NCCL when the learner is on CUDA, gloo "
        "otherwise) | ``nccl`` | ``gloo``; unused in a single process",
        OneOf(*BACKENDS),
    )



# -- checking and describing ------------------------------------------------------------------------------------


def fields_of(schema) -> dict[str, dataclasses.Field]:
    """The fields of a settings dataclass (a class or an instance), by name."""
    return {f.name: f for f in dataclasses.fields(schema)}


def field_type(schema, name: str):
    """The type of field ``name`` of a settings dataclass (its annotation, evaluated)."""
    return typing.get_type_hints(schema if isinstance(schema, type) else type(schema))[name]


def _type_text(hint) -> str:
    nullable = type(None) in typing.get_args(hint)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if nullable else hint
    text = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(base, "any value")
    if typing.get_origin(base) is list:
        text = "a list"
    elif typing.get_origin(base) is dict:
        text = "a mapping"
    return text + (" or null" if nullable else "")


def accepted_text(schema, name: str) -> str:
    """What field ``name`` of a settings dataclass accepts, in words."""
    f, hint = fields_of(schema)[name], field_type(schema, name)
    accepts = f.metadata.get("accepts")
    if accepts is None:
        return _type_text(hint)
    return str(accepts) + (" or null" if type(None) in typing.get_args(hint) else "")


def check(settings, prefix: str = "", schema=None) -> None:
    """Checks every value of ``settings`` against its field's ``accepts``: :class:`ConfigError` ``<prefix><key>=<value>
    is not accepted: <what is>`` for the first that fails. ``settings`` is a settings dataclass instance, or a mapping
    of the values of ``schema``'s fields (nested sections as mappings; keys it lacks are not checked)."""
    schema = schema or type(settings)
    for name, f in fields_of(schema).items():
        if isinstance(settings, dict):
            if name not in settings:
                continue
            value = settings[name]
        else:
            value = getattr(settings, name)
        hint = field_type(schema, name)
        if dataclasses.is_dataclass(hint):
            check(value, f"{prefix}{name}.", hint)
            continue
        accepts = f.metadata.get("accepts")
        if accepts is None or (value is None and type(None) in typing.get_args(hint)) or value == "???":
            continue
        if not accepts(value):
            raise ConfigError(f"{prefix}{name}={value!r} is not accepted: {accepted_text(schema, name)}")
