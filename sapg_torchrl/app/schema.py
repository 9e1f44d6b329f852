"""The recipes' config schema: every key's type, default, accepted values and meaning, in one place.

The sections the training layer consumes (``ppo``, ``train``) are its own :mod:`sapg_torchrl.training.settings`;
the others (``env``, ``sapg``, ``network``, ``logger``) are defined here, and every list of choices is imported
from the module that owns it. The dataclasses below are Hydra structured configs, registered in Hydra's ConfigStore by
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
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from sapg_torchrl.aggregation import AGGREGATIONS
from sapg_torchrl.blocks import ENTROPY_SCHEDULES, LEADERS, BlockLayout
from sapg_torchrl.deploy import EXPORT_FORMATS
from sapg_torchrl.errors import ConfigError
from sapg_torchrl.loss import CLIP_MODES
from sapg_torchrl.nn import ACTIVATIONS
from sapg_torchrl.targets import ADVANTAGE_NORMS
from sapg_torchrl.training.device import check_cudagraphs, device_of
from sapg_torchrl.training.settings import (
    COUNT,
    NATURAL,
    NON_NEGATIVE,
    POSITIVE,
    Either,
    ListOf,
    Matches,
    Number,
    OneOf,
    PPOSettings,
    TrainSettings,
    accepted_text,
    check,
    field_type,
    fields_of,
    setting,
)

__all__ = [
    "EvaluateConfig",
    "SAPGConfig",
    "StudyConfig",
    "accepted",
    "reference_rst",
    "register_schemas",
    "validate",
]


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
        Either(OneOf(*LEADERS), Number(0, integer=True)),
    )
    aggregation: str = setting(
        "leader_follower",
        "``leader_follower`` | ``symmetric`` | ``none``",
        OneOf(*AGGREGATIONS),
    )
    off_policy_ratio: int = setting(1, "``K``, follower blocks relabelled to the leader per iteration, ``1..M-1``", COUNT)
    importance_correction: bool = setting(
        True, "``false``: relabelled rows use the leader's own old log-prob (the ``no_is_correction`` ablation)"
    )
    clip_mode: str = setting(
        "code",
        "``code``: clip every ratio to ``[1-eps, 1+eps]``; ``paper``: ``[mu(1-eps), mu(1+eps)]`` for relabelled rows",
        OneOf(*CLIP_MODES),
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
        OneOf(*ENTROPY_SCHEDULES),
    )
    entropy_scale: float = setting(0.005, "the code's ``scale`` or the paper's ``sigma``", NON_NEGATIVE)
    entropy_coefficients: Optional[List[float]] = setting(
        None, "one per block, with ``entropy_schedule=explicit``", ListOf(NON_NEGATIVE)
    )
    advantage_norm: str = setting(
        "global",
        "``global`` (code: once over the augmented batch) | ``per_block`` | ``none``",
        OneOf(*ADVANTAGE_NORMS),
    )


@dataclass
class CPOSettings:
    """CPO (Coupled Policy Optimization, Shitanda et al., ICLR 2026) on top of SAPG: the followers coupled to the
    leader (:class:`~sapg_torchrl.CPOLoss`; ``ablation=cpo``). Defaults: the released code's recipes."""

    enabled: bool = setting(False, "train CPO: the leader's rows relabelled to every follower, the AWAC and KL terms")
    awac_beta: float = setting(1e-3, "weight of the followers' advantage-weighted term on the leader's rows", NON_NEGATIVE)
    awac_lambda: float = setting(0.2, "its temperature: weights ``exp(A / awac_lambda)``", POSITIVE)
    awac_max: float = setting(100.0, "its weights' cap", POSITIVE)
    kl_coef: float = setting(
        0.0, "``lambda_ppo``: a follower's advantage minus ``kl_coef * (log pi_F - log pi_L)`` (0 in the shipped configs)",
        NON_NEGATIVE,
    )
    discriminator_coef: float = setting(
        0.0,
        "the adversarial reward's scale: a follower's reward gets ``-discriminator_coef * CE`` of a discriminator that "
        "tells the blocks apart from ``(s, a)`` (0: no discriminator; ``cpo_adr``: 0.01, the ShadowHand recipe's)",
        NON_NEGATIVE,
    )
    discriminator_hidden: List[int] = setting([1024, 1024, 512, 512], "the discriminator's widths", ListOf(COUNT))


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
    activation: str = setting("elu", "the trunk's activation", OneOf(*ACTIVATIONS))
    max_log_std: Optional[float] = setting(None, "optional cap of every block's log-std (``null``: none, as in the code)")
    lstm_size: Optional[int] = setting(
        None,
        "hidden size of an LSTM before the MLP (``null``: feedforward; the AllegroKuka presets: 768); training then "
        "runs on ``T``-step sequences (see :doc:`design`); not with ``disjoint``",
        COUNT,
    )
    lstm_layer_norm: bool = setting(False, "LayerNorm on the LSTM's output (the published AllegroKuka network)")
    zero_bias: bool = setting(False, "every linear layer's bias starts at zero (code: rl_games' network builder)")
    critic_observation_keys: Optional[List[str]] = setting(
        None,
        "an asymmetric critic's inputs, concatenated in this order, e.g. ``[observation, privileged_state]`` "
        "(IsaacGym: ``states``, Isaac Lab: ``critic``); ``null``: the policy's observation. The critic is then its "
        "own network (own trunk and normaliser, the same phi; feedforward beside an LSTM policy)",
        ListOf(Matches(r"[A-Za-z_][A-Za-z0-9_]*", "an observation entry's name")),
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
    cpo: CPOSettings = setting(CPOSettings(), "")
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
    policy: Optional[str] = setting(
        None, "an exported file (``sapg-export``) to evaluate instead of the checkpoint's actor, on the run's task"
    )


@dataclass
class ExportConfig:
    """An export of a trained run's policy (``recipes/export.py``, ``sapg-export``)."""

    run: str = setting("???", "the run folder (``config.yaml``, ``checkpoints/``); required")
    format: str = setting("onnx", "``onnx`` (onnxruntime) | ``torchscript`` (``torch.jit.load``, libtorch)", OneOf(*EXPORT_FORMATS))
    block: Any = setting("leader", "``leader`` | a block index", Either(OneOf("leader"), Number(0, integer=True)))
    checkpoint: Optional[str] = setting(None, "a file of ``<run>/checkpoints/`` or a path; ``null``: the newest readable one")


SCHEMAS = {"sapg": SAPGConfig, "study": StudyConfig, "evaluate": EvaluateConfig, "export": ExportConfig}


def register_schemas() -> None:
    """Stores the schemas in Hydra's ConfigStore as the ``schema`` group (package ``_global_``), the first
    entry of the recipes' defaults lists. Idempotent."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        store.store(group="schema", name=name, node=schema, package="_global_")


# -- checking and describing ----------------------------------------------------------------------------------------


def _schema_of(key: str, root=SAPGConfig):
    """The dataclass holding ``key`` (dotted) and the field's name, or ``(None, None)``."""
    *parents, leaf = key.split(".")
    schema = root
    for parent in parents:
        if not dataclasses.is_dataclass(schema) or parent not in fields_of(schema):
            return None, None
        schema = field_type(schema, parent)
    if not dataclasses.is_dataclass(schema) or leaf not in fields_of(schema):
        return schema if dataclasses.is_dataclass(schema) else None, None
    return schema, leaf


def accepted(key: str, root=SAPGConfig) -> str | None:
    """What the setting ``key`` (dotted, e.g. ``ppo.lr``) accepts, in words; None if there is no such setting."""
    schema, leaf = _schema_of(key, root)
    return None if leaf is None else accepted_text(schema, leaf)


def settings_under(key: str, root=SAPGConfig) -> list[str] | None:
    """The setting names under section ``key`` (``""``: the top level), or None if ``key`` is not a section."""
    schema = root
    for part in filter(None, key.split(".")):
        if not dataclasses.is_dataclass(schema) or part not in fields_of(schema):
            return None
        schema = field_type(schema, part)
    return sorted(fields_of(schema)) if dataclasses.is_dataclass(schema) else None


def validate(cfg, root=None) -> None:
    """Checks every value of a composed config against its field's ``accepts``
    (:func:`~sapg_torchrl.training.settings.check`): :class:`ConfigError` ``<key>=<value> is not accepted: <what is>``
    for the first that fails. Types and unknown keys were checked by OmegaConf when the config was composed on its
    schema. Also checks that ``env.num_envs`` splits into ``sapg.num_blocks`` blocks
    (:class:`~sapg_torchrl.blocks.BlockLayout`) and that ``train.cudagraphs`` has a CUDA device. ``root`` defaults
    to the schema whose top-level keys ``cfg`` has (a study config has ``study``)."""
    from omegaconf import DictConfig, OmegaConf

    if root is None:
        root = StudyConfig if "study" in cfg else SAPGConfig if "sapg" in cfg else EvaluateConfig
    if isinstance(cfg, DictConfig):  # resolved key by key: a config composed with its hydra node resolves only there
        cfg = {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v
               for k, v in cfg.items() if k != "hydra"}  # fmt: skip
    values = cfg
    check(values, "", root)
    if isinstance(values.get("env"), dict) and isinstance(values.get("sapg"), dict):  # N splits into M blocks
        BlockLayout(values["env"]["num_envs"], values["sapg"]["num_blocks"], values["sapg"].get("leader", "last"))
    cpo = values.get("cpo") if isinstance(values.get("cpo"), dict) else {}
    if cpo.get("discriminator_coef") and not cpo.get("enabled"):
        raise ConfigError(
            f"cpo.discriminator_coef={cpo['discriminator_coef']} is not accepted with cpo.enabled=false: the adversarial "
            "reward is CPO's (ablation=cpo_adr, or cpo.enabled=true)"
        )
    if cpo.get("enabled"):  # CPO couples followers to one leader
        sapg = values.get("sapg", {})
        if sapg.get("aggregation") != "leader_follower" or sapg.get("num_blocks", 2) < 2:
            raise ConfigError(
                f"cpo.enabled=true is not accepted with sapg.aggregation={sapg.get('aggregation')} and "
                f"sapg.num_blocks={sapg.get('num_blocks')}: CPO needs aggregation=leader_follower and num_blocks >= 2"
            )
    if isinstance(values.get("train"), dict) and values["train"].get("cudagraphs"):  # before any run folder exists
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
            for name, f in fields_of(schema).items()
            if not dataclasses.is_dataclass(field_type(schema, name))
        ]
        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 22 12 22 44", "",
                 "   * - key", "     - default", "     - accepts", "     - meaning"]  # fmt: skip
        for row in rows:
            lines += [f"   * - {row[0]}", *(f"     - {cell}" for cell in row[1:])]
        return lines

    out = []
    sections = [("Top level", root, "")] + [
        (f"``{name}``", field_type(root, name), f"{name}.")
        for name in fields_of(root)
        if dataclasses.is_dataclass(field_type(root, name))
    ]
    for title, schema, prefix in sections:
        doc = " ".join((schema.__doc__ or "").split()) if prefix else "Run-wide settings."
        out += [title, "-" * len(title), "", doc, "", *table(schema, prefix), ""]
    return "\n".join(out)
