"""Builds a :class:`~sapg_torchrl.trainer.SAPGTrainer` from the recipes' Hydra config."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torchrl.modules.value_norm import RunningValueNorm
from torchrl.objectives import ValueEstimators

from sapg_torchrl.actor_critic import make_actor_critic
from sapg_torchrl.aggregation import Aggregator
from sapg_torchrl.blocks import BlockLayout, block_entropy_coefficients
from sapg_torchrl.envs.factory import make_sapg_env, track_recurrent_states
from sapg_torchrl.errors import ConfigError
from sapg_torchrl.logging import CSVSink, WandbSink
from sapg_torchrl.loss import SAPGLoss
from sapg_torchrl.metrics.diversity import StateReservoir, pairwise_block_kl, per_block_entropy
from sapg_torchrl.trainer import SAPGTrainer

__all__ = ["build_trainer", "prepare_run_dir", "train"]

log = logging.getLogger(__name__)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not accepted: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} is not available here (no CUDA): use 'cpu' or 'auto'")
    return device


def build_trainer(cfg: DictConfig, run_dir: str | Path | None = None, sinks=(), hooks=()) -> SAPGTrainer:
    """Everything one run needs, from the config of ``recipes/config/sapg.yaml``."""
    s, net, ppo, e = cfg.sapg, cfg.network, cfg.ppo, cfg.env
    torch.manual_seed(cfg.seed)
    device = _device(cfg.device)
    layout = BlockLayout(e.num_envs, s.num_blocks, s.leader)
    make_base = instantiate(e.make, _partial_=True)
    env = make_sapg_env(
        make_base(num_envs=layout.num_envs, seed=cfg.seed),
        layout.block_ids(),
        reward_scale=e.reward_scale,
    )
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
    aggregator = None
    if s.aggregation != "none":
        aggregator = Aggregator(
            layout, critic, mode=s.aggregation, off_policy_ratio=s.off_policy_ratio, gamma=ppo.gamma,
            importance_correction=s.importance_correction, clip_mode=s.clip_mode, actor=actor,
            log_prob_key=loss.tensor_keys.sample_log_prob, generator=torch.Generator().manual_seed(cfg.seed),
        )  # fmt: skip
    eval_env = None
    if cfg.train.eval_interval:
        eval_env = make_sapg_env(
            make_base(num_envs=e.eval_envs, seed=cfg.seed + 1_000_000),
            torch.full((e.eval_envs,), layout.leader),
            reward_scale=e.reward_scale,
        )
        track_recurrent_states(eval_env, actor)
    return SAPGTrainer(
        env=env, actor=actor, critic=critic, loss=loss, layout=layout, aggregator=aggregator,
        total_frames=cfg.total_frames, horizon=ppo.horizon, gamma=ppo.gamma, lmbda=ppo.lmbda, epochs=ppo.epochs,
        minibatch_size=ppo.minibatch_size, num_minibatches=ppo.num_minibatches, lr=ppo.lr, kl_target=ppo.kl_target,
        max_grad_norm=ppo.max_grad_norm, critic_target=ppo.critic_target, n_step=ppo.n_step,
        advantage_norm=s.advantage_norm, value_norm=value_norm, observation_norm=observation_norm, eval_env=eval_env,
        eval_interval=cfg.train.eval_interval, eval_steps=e.eval_steps, sinks=sinks, run_dir=run_dir,
        checkpoint_interval=cfg.train.checkpoint_interval, progress=cfg.train.progress, device=device, hooks=hooks,
        seed=cfg.seed,
    )  # fmt: skip


RESULT_FILE = "result.json"
RUN_FILES = ("config.yaml", "metrics.csv", "checkpoints", "wandb", "states.pt", RESULT_FILE)


def prepare_run_dir(run_dir: Path, config_yaml: str) -> dict | None:
    """Makes ``run_dir`` ready for a run; returns the stored result if this exact run already finished.

    - finished (``result.json``) with the same resolved config: nothing to do, the result is returned;
    - finished with another config: :class:`ConfigError`, nothing is touched;
    - interrupted or failed (``metrics.csv`` but no ``result.json``): its files are moved, not deleted, to
      ``run_dir/interrupted-<n>/`` and the run starts again.
    """
    if (run_dir / RESULT_FILE).exists():
        if (run_dir / "config.yaml").read_text() != config_yaml:
            raise ConfigError(
                f"run folder {run_dir} holds a finished run with another config: pass a new hydra.run.dir "
                "(or hydra.sweep.dir)"
            )
        return json.loads((run_dir / RESULT_FILE).read_text())
    if (run_dir / "metrics.csv").exists():
        n = 0
        while (run_dir / f"interrupted-{n}").exists():
            n += 1
        aside = run_dir / f"interrupted-{n}"
        aside.mkdir()
        for name in RUN_FILES:
            if (run_dir / name).exists():
                (run_dir / name).rename(aside / name)
        log.warning("%s held an unfinished run: moved its files to %s and starting again", run_dir, aside)
    return None


def train(cfg: DictConfig, run_dir: str | Path, name: str = "sapg") -> dict[str, float]:
    """One run in ``run_dir``: resolved config, ``metrics.csv``, wandb logs, checkpoints, ``result.json``.

    With ``train.record_states`` set, a reservoir of that many of the leader's visited states is kept
    during training (a trainer hook) and saved as ``states.pt``; ``result.json`` then also holds the final
    per-block policy entropies and pairwise KLs on those states.

    Re-running the same config in the same folder skips a finished run and redoes an interrupted one
    (see :func:`prepare_run_dir`), which is what makes a study sweep resumable.

    A run that diverges (non-finite losses, :class:`FloatingPointError`) is a result too: ``result.json``
    gets its last finite iteration's metrics with ``diverged: true``, ``diverged_at_iteration`` and the
    error, then the error is raised again.
    """
    run_dir = Path(run_dir)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    finished = prepare_run_dir(run_dir, config_yaml)
    if finished is not None:
        log.info("%s already finished: skipped", run_dir)
        return finished
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    (run_dir / "config.yaml").write_text(config_yaml)
    sinks = [CSVSink(run_dir / "metrics.csv")]
    wandb = None
    if cfg.logger.wandb:
        wandb = WandbSink(
            name, run_dir, project=cfg.logger.project, mode=cfg.logger.mode,
            config=OmegaConf.to_container(cfg, resolve=True),
        )  # fmt: skip
        sinks.append(wandb)
    reservoir = StateReservoir(cfg.train.record_states, seed=cfg.seed) if cfg.train.record_states else None
    trainer = None
    try:
        trainer = build_trainer(cfg, run_dir, sinks, hooks=[reservoir] if reservoir else [])
        result = trainer.train()
    except FloatingPointError as err:
        if trainer is not None:
            diverged = {**trainer.metrics, "diverged": True, "diverged_at_iteration": trainer.iteration, "error": str(err)}
            (run_dir / RESULT_FILE).write_text(json.dumps(diverged, indent=1))
        raise
    finally:
        if wandb is not None:
            wandb.close()
    if reservoir is not None:
        result.update(_diversity(trainer, reservoir, run_dir / "states.pt"))
    (run_dir / RESULT_FILE).write_text(json.dumps(result, indent=1))
    return result


def _diversity(trainer: SAPGTrainer, reservoir: StateReservoir, path: Path) -> dict:
    """Saves the leader's visited states and measures how the final block policies differ on them."""
    reservoir.save(path)
    states, num_blocks = reservoir.states, trainer.layout.num_blocks
    return {
        "diversity/entropy_per_block": per_block_entropy(trainer.actor, states, num_blocks).tolist(),
        "diversity/pairwise_kl": pairwise_block_kl(trainer.actor, states, num_blocks).tolist(),
    }
