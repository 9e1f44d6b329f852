"""Builds a :class:`~sapg_torchrl.trainer.SAPGTrainer` from the recipes' Hydra config (schema:
:mod:`sapg_torchrl.schema`) and runs it in a run folder (:func:`train`; what the folder holds and what a rerun
does with it: :mod:`sapg_torchrl.run_folder`)."""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torchrl.modules.value_norm import RunningValueNorm
from torchrl.objectives import ValueEstimators

from sapg_torchrl.actor_critic import make_actor_critic
from sapg_torchrl.aggregation import Aggregator
from sapg_torchrl.blocks import BlockLayout, block_entropy_coefficients
from sapg_torchrl.distributed import SINGLE, Ranks, from_environment, split_envs
from sapg_torchrl.envs.factory import make_sapg_env, track_recurrent_states
from sapg_torchrl.errors import ConfigError
from sapg_torchrl.evaluator import BackgroundEvaluator
from sapg_torchrl.logging import CSVSink, WandbSink, aside
from sapg_torchrl.loss import SAPGLoss
from sapg_torchrl.metrics.diversity import StateReservoir, pairwise_block_kl, per_block_entropy
from sapg_torchrl.run_folder import RESULT_FILE, RunStart, hold_run_folder, prepare_run_dir
from sapg_torchrl.schema import validate
from sapg_torchrl.trainer import SAPGTrainer

__all__ = ["Agent", "build_agent", "build_trainer", "train"]

log = logging.getLogger(__name__)


def device_of(name: str) -> torch.device:
    """The torch device of a ``device`` setting (``auto``: CUDA if there is one); :class:`ConfigError` if unusable."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not accepted: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} is not available here (no CUDA): use 'cpu' or 'auto'")
    return device


def check_cudagraphs(device: torch.device) -> None:
    """:class:`ConfigError` unless ``train.cudagraphs`` can run with the learner on ``device`` (CUDA only)."""
    if device.type != "cuda":
        raise ConfigError(
            f"train.cudagraphs=true is not accepted with the learner on {device}: CUDA graphs need device=cuda "
            "(or auto on a GPU machine)"
        )


@dataclass
class Agent:
    """The networks and the loss of a run (the loss holds every parameter and normaliser statistic)."""

    actor: object
    critic: object
    loss: SAPGLoss
    value_norm: RunningValueNorm | None
    observation_norm: RunningValueNorm | None


def build_agent(cfg: DictConfig, env, layout: BlockLayout, device: torch.device) -> Agent:
    """The actor, critic and :class:`~sapg_torchrl.SAPGLoss` of ``cfg`` for ``env`` (a SAPG env; a recurrent
    policy's state tracking is added to it). A checkpoint's ``"loss"`` entry loads into ``Agent.loss``."""
    s, net, ppo = cfg.sapg, cfg.network, cfg.ppo
    observation_dim = env.observation_spec["observation"].shape[-1]
    value_norm = RunningValueNorm().to(device) if ppo.value_norm else None
    observation_norm = RunningValueNorm(shape=observation_dim).to(device) if ppo.observation_norm else None
    actor, critic = make_actor_critic(
        observation_dim,
        env.action_spec.shape[-1],
        layout.num_blocks,
        hidden=list(net.hidden),
        phi_dim=net.phi_dim,
        shared_trunk=net.shared_trunk,
        disjoint=net.disjoint,
        activation=net.activation,
        max_log_std=net.max_log_std,
        lstm_size=net.lstm_size,
        lstm_layer_norm=net.lstm_layer_norm,
        value_norm=value_norm,
        observation_norm=observation_norm,
    )
    actor.to(device), critic.to(device)
    track_recurrent_states(env, actor)
    coefficients = None if s.entropy_coefficients is None else list(s.entropy_coefficients)
    loss = SAPGLoss(
        actor,
        critic,
        entropy_coeff=block_entropy_coefficients(
            layout.num_blocks, layout.leader, schedule=s.entropy_schedule, scale=s.entropy_scale,
            coefficients=coefficients,
        ),
        clip_epsilon=ppo.clip_epsilon,
        clip_mode=s.clip_mode,
        off_policy_weight=s.off_policy_weight,
        max_importance_ratio=s.max_importance_ratio,
        kl_reference=ppo.kl_reference,
        bounds_loss_coeff=ppo.bounds_loss_coeff,
        value_norm=value_norm,
        critic_coeff=ppo.critic_coeff,
        clip_value=ppo.clip_value,
    ).to(device)  # fmt: skip
    loss.make_value_estimator(ValueEstimators.GAE, gamma=ppo.gamma, lmbda=ppo.lmbda)
    return Agent(actor, critic, loss, value_norm, observation_norm)


RANK_SEED_STRIDE = 10_000
"""Rank ``r`` of a data-parallel run seeds its envs, action noise and minibatch shuffles with
``seed + RANK_SEED_STRIDE * r``; the parameters' initialisation and the aggregation draws use ``seed`` on every
rank."""


def simulator_factory(make: DictConfig, device: torch.device, ranks: Ranks = SINGLE):
    """``make_base(num_envs=, seed=)`` from an ``env.make`` config. A simulator with ``device: auto`` runs where the
    learner runs (``device``), and so does each rank's under NCCL; any other ``device`` is left as written."""
    if "device" in make and (make.device == "auto" or (ranks.distributed and device.type == "cuda")):
        return instantiate(make, _partial_=True, device=str(device))
    return instantiate(make, _partial_=True)


def _leader_eval_env(make_base, num_envs: int, seed: int, leader: int, reward_scale: float):
    block_ids = torch.full((num_envs,), leader)
    return make_sapg_env(make_base(num_envs=num_envs, seed=seed), block_ids, reward_scale=reward_scale)


def eval_env_factory(cfg: DictConfig, make_base, leader: int):
    """A picklable ``make_eval_env()`` (a child process can call it too): ``env.eval_envs`` fresh envs of the task,
    all in the leader's block, seeded apart from the training envs."""
    e = cfg.env
    return functools.partial(_leader_eval_env, make_base, e.eval_envs, cfg.seed + 1_000_000, leader, e.reward_scale)


def build_trainer(
    cfg: DictConfig, run_dir: str | Path | None = None, sinks=(), hooks=(), make_env=None, ranks: Ranks = SINGLE
) -> SAPGTrainer:
    """Everything one run needs, from the config of ``sapg_torchrl/configs/sapg.yaml``.

    ``make_env`` (a callable ``make_env(num_envs=, seed=)`` returning a batched TorchRL env) replaces the config's
    ``env.make``: your own env class, without an import path for Hydra. With ``ranks`` of several processes
    (:mod:`sapg_torchrl.distributed`), this process's share is built: ``N / G`` envs, every block's share equal, on
    its own GPU under NCCL; only rank 0 gets the sinks, the run folder, the evaluation envs and the progress bar.
    """
    s, ppo, e = cfg.sapg, cfg.ppo, cfg.env
    torch.manual_seed(cfg.seed)
    device = ranks.device if ranks.device.type == "cuda" else device_of(cfg.device)
    if cfg.train.cudagraphs:
        check_cudagraphs(device)
    num_envs = split_envs(e.num_envs, s.num_blocks, ranks.world_size) if ranks.distributed else e.num_envs
    layout = BlockLayout(num_envs, s.num_blocks, s.leader)
    rank_seed = cfg.seed + RANK_SEED_STRIDE * ranks.rank
    make_base = make_env or simulator_factory(e.make, device, ranks)
    env = make_sapg_env(
        make_base(num_envs=layout.num_envs, seed=rank_seed),
        layout.block_ids(),
        reward_scale=e.reward_scale,
    )
    agent = build_agent(cfg, env, layout, device)
    if ranks.distributed:  # same initial parameters on every rank, then each rank its own action noise
        torch.manual_seed(rank_seed)
    actor, critic, loss = agent.actor, agent.critic, agent.loss
    value_norm, observation_norm = agent.value_norm, agent.observation_norm
    aggregator = None
    if s.aggregation != "none":
        aggregator = Aggregator(
            layout, critic, mode=s.aggregation, off_policy_ratio=s.off_policy_ratio, gamma=ppo.gamma,
            importance_correction=s.importance_correction, clip_mode=s.clip_mode, actor=actor,
            log_prob_key=loss.tensor_keys.sample_log_prob, generator=torch.Generator().manual_seed(cfg.seed),
        )  # fmt: skip
    eval_env = evaluator = None
    if cfg.train.eval_interval and ranks.is_main:
        make_eval_env = eval_env_factory(cfg, make_base, layout.leader)
        if cfg.train.eval_async:
            evaluator = BackgroundEvaluator(make_eval_env, actor, e.eval_steps)
        else:
            eval_env = track_recurrent_states(make_eval_env(), actor)
    return SAPGTrainer(
        env=env, actor=actor, critic=critic, loss=loss, layout=layout, aggregator=aggregator,
        total_frames=cfg.total_frames, horizon=ppo.horizon, gamma=ppo.gamma, lmbda=ppo.lmbda, epochs=ppo.epochs,
        minibatch_size=ppo.minibatch_size, num_minibatches=ppo.num_minibatches, lr=ppo.lr, kl_target=ppo.kl_target,
        max_grad_norm=ppo.max_grad_norm, critic_target=ppo.critic_target, n_step=ppo.n_step,
        advantage_norm=s.advantage_norm, value_norm=value_norm, observation_norm=observation_norm, eval_env=eval_env,
        evaluator=evaluator,
        eval_interval=cfg.train.eval_interval, eval_steps=e.eval_steps, sinks=sinks if ranks.is_main else (),
        run_dir=run_dir if ranks.is_main else None, checkpoint_interval=cfg.train.checkpoint_interval,
        checkpoint_minutes=cfg.train.checkpoint_minutes, keep_checkpoints=cfg.train.keep_checkpoints,
        progress=cfg.train.progress and ranks.is_main, device=device, hooks=hooks, seed=rank_seed, ranks=ranks,
        compile=cfg.train.compile, cudagraphs=cfg.train.cudagraphs, precision=cfg.train.precision,
    )  # fmt: skip


def train(cfg: DictConfig, run_dir: str | Path, name: str = "sapg", *, resume: bool = False) -> dict[str, float]:
    """One run in ``run_dir``: resolved config, ``metrics.csv``, wandb logs, checkpoints, ``result.json``.

    With ``train.record_states`` set, a reservoir of that many of the leader's visited states is kept
    during training (a trainer hook) and saved as ``states.pt``; ``result.json`` then also holds the final
    per-block policy entropies and pairwise KLs on those states.

    Running the same experiment in the same folder again skips a finished run, extends it if
    ``total_frames`` was raised, and resumes an interrupted one from its newest checkpoint (see
    :func:`~sapg_torchrl.run_folder.prepare_run_dir`): ``metrics.csv`` continues after the checkpoint's iteration (later rows are moved
    to a side file), wandb continues the same run id. This is what ``resume=<run folder>`` does, and what makes
    a study sweep resumable. ``resume=True`` requires a run to resume.

    A run that diverges (non-finite losses, :class:`FloatingPointError`) is a result too: ``result.json``
    gets its last finite iteration's metrics with ``diverged: true``, ``diverged_at_iteration`` and the
    error, then the error is raised again. A run stopped by SIGTERM or SIGINT writes a checkpoint and raises
    :class:`~sapg_torchrl.errors.Preempted`.
    """
    validate(cfg)
    ranks = from_environment(cfg.train.distributed_backend, device_of(cfg.device).type)
    config = OmegaConf.to_container(cfg, resolve=True)
    with contextlib.ExitStack() as held:  # the run folder, for this process alone until the run ends
        run_dir, start = _start_run(Path(run_dir), config, resume, ranks, held)
        if start.result is not None:
            log.info("%s already finished: skipped", run_dir)
            return start.result
        return _run(cfg, config, run_dir, name, start, ranks)


def _run(cfg: DictConfig, config: dict, run_dir: Path, name: str, start: RunStart, ranks: Ranks) -> dict[str, float]:
    """Trains the run :func:`_start_run` prepared (new or resumed) and writes its ``result.json``."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    sinks, wandb = _open_sinks(cfg, config, run_dir, name, start) if ranks.is_main else ([], None)
    reservoir = StateReservoir(cfg.train.record_states, seed=cfg.seed) if cfg.train.record_states else None
    trainer = None
    try:
        trainer = build_trainer(cfg, run_dir, sinks, hooks=[reservoir] if reservoir else [], ranks=ranks)
        if start.checkpoint is not None:
            trainer.load_state_dict(start.checkpoint[1])
            if trainer.iteration > trainer.iterations:
                raise ConfigError(
                    f"total_frames={cfg.total_frames:g} is below the {trainer.frames} frames {run_dir} has done: "
                    f"use at least {trainer.frames}"
                )
        if wandb is not None:
            trainer.extra_state["wandb_run_id"] = wandb.run_id
        if trainer.iteration < trainer.iterations:
            result = trainer.train()
        else:  # a run stopped between its final checkpoint and result.json has nothing left to train
            result = _last_row(run_dir / "metrics.csv") if ranks.is_main else {}
    except FloatingPointError as err:
        if trainer is not None and ranks.is_main:
            diverged = {**trainer.metrics, "diverged": True, "diverged_at_iteration": trainer.iteration, "error": str(err)}
            (run_dir / RESULT_FILE).write_text(json.dumps(diverged, indent=1))
        raise
    finally:
        if wandb is not None:
            wandb.close()
    if not ranks.is_main:
        return result
    if reservoir is not None:
        result.update(_diversity(trainer, reservoir, run_dir / "states.pt"))
    if ranks.distributed:
        result["processes"] = ranks.world_size
    (run_dir / RESULT_FILE).write_text(json.dumps(result, indent=1))
    return result


def _start_run(
    run_dir: Path, config: dict, resume: bool, ranks: Ranks, held: contextlib.ExitStack
) -> tuple[Path, RunStart]:
    """Rank 0 takes the run folder (:func:`~sapg_torchrl.run_folder.hold_run_folder`, released when ``held``
    closes) and prepares it (:func:`~sapg_torchrl.run_folder.prepare_run_dir`); the other ranks of a
    data-parallel run get its folder and decision (its error, if any), then read the same checkpoint."""
    error = decision = None
    if ranks.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            held.enter_context(hold_run_folder(run_dir))
            start = prepare_run_dir(run_dir, config, resume=resume)
            decision = (str(run_dir), start.result, None if start.checkpoint is None else str(start.checkpoint[0]))
        except ConfigError as err:
            error = str(err)
    if not ranks.distributed:
        if error is not None:
            raise ConfigError(error)
        return run_dir, start
    error, decision = ranks.broadcast_object((error, decision))
    if error is not None:
        raise ConfigError(error)
    if ranks.is_main:
        return run_dir, start
    folder, result, checkpoint = decision
    if checkpoint is not None:
        checkpoint = (Path(checkpoint), torch.load(checkpoint, map_location="cpu", weights_only=False))
    return Path(folder), RunStart(result=result, checkpoint=checkpoint)


def _open_sinks(cfg: DictConfig, config: dict, run_dir: Path, name: str, start: RunStart) -> tuple[list, WandbSink | None]:
    """The run's ``config.yaml``, ``metrics.csv`` and wandb, new or continued from the checkpoint it resumes."""
    config_yaml = OmegaConf.to_yaml(config)
    if start.checkpoint is None:
        (run_dir / "config.yaml").write_text(config_yaml)
        sinks = [CSVSink(run_dir / "metrics.csv")]
    else:
        path, state = start.checkpoint
        log.info("%s: resuming from %s (iteration %d)", run_dir, path.name, state["iteration"])
        if OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml")) != config:  # e.g. total_frames raised: keep the old one
            (run_dir / "config.yaml").rename(aside(run_dir / "config.yaml", f"before_iter_{state['iteration']:06d}"))
            (run_dir / "config.yaml").write_text(config_yaml)
        sinks = [CSVSink.resume(run_dir / "metrics.csv", state["iteration"])]
    wandb = None
    if cfg.logger.wandb:
        run_id = None if start.checkpoint is None else start.checkpoint[1].get("extra", {}).get("wandb_run_id")
        wandb = WandbSink(
            name, run_dir, project=cfg.logger.project, mode=cfg.logger.mode, config=config, run_id=run_id,
        )  # fmt: skip
        sinks.append(wandb)
    return sinks, wandb


def _last_row(path: Path) -> dict[str, float]:
    with path.open(newline="") as f:
        *_, last = csv.DictReader(f)
    return {key: float(value) if value != "" else math.nan for key, value in last.items()}


def _diversity(trainer: SAPGTrainer, reservoir: StateReservoir, path: Path) -> dict:
    """Saves the leader's visited states and measures how the final block policies differ on them."""
    reservoir.save(path)
    states, num_blocks = reservoir.states, trainer.layout.num_blocks
    return {
        "diversity/entropy_per_block": per_block_entropy(trainer.actor, states, num_blocks).tolist(),
        "diversity/pairwise_kl": pairwise_block_kl(trainer.actor, states, num_blocks).tolist(),
    }
