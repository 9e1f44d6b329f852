"""Builds a run's parts from the recipes' config (schema: :mod:`sapg_torchrl.app.schema`): the agent (networks and
loss, :func:`build_agent`) and the training loop (:func:`build_runner`: env, aggregator, update, evaluator, runner).
The run in its folder is :mod:`sapg_torchrl.app.run`."""

from __future__ import annotations

import dataclasses
import functools
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
from sapg_torchrl.cpo_loss import CPOLoss
from sapg_torchrl.envs.factory import make_sapg_env, track_recurrent_states
from sapg_torchrl.errors import ConfigError
from sapg_torchrl.loss import SAPGLoss
from sapg_torchrl.nn import ClippedValueNorm
from sapg_torchrl.training.device import check_cudagraphs, device_of
from sapg_torchrl.training.distributed import SINGLE, Ranks, split_envs
from sapg_torchrl.training.evaluation import BackgroundEvaluator, InlineEvaluator
from sapg_torchrl.training.adversarial_reward import AdversarialReward
from sapg_torchrl.training.runner import Runner
from sapg_torchrl.training.settings import PPOSettings, TrainSettings
from sapg_torchrl.training.update import PPOUpdate

__all__ = [
    "RANK_SEED_STRIDE", "Agent", "build_agent", "build_runner", "eval_env_factory", "simulator_factory", "training_settings",
]  # fmt: skip


@dataclass
class Agent:
    """The networks and the loss of a run (the loss holds every parameter and normaliser statistic)."""

    actor: object
    critic: object
    loss: SAPGLoss  # or CPOLoss
    value_norm: RunningValueNorm | None
    observation_norm: RunningValueNorm | None
    critic_observation_norm: RunningValueNorm | None = None
    critic_observation_keys: list | None = None


def build_agent(cfg: DictConfig, env, layout: BlockLayout, device: torch.device) -> Agent:
    """The actor, critic and :class:`~sapg_torchrl.SAPGLoss` (:class:`~sapg_torchrl.CPOLoss` with ``cpo.enabled``) of
    ``cfg`` for ``env`` (a SAPG env; a recurrent policy's state tracking is added to it). A checkpoint's ``"loss"``
    entry loads into ``Agent.loss``."""
    s, net, ppo = cfg.sapg, cfg.network, cfg.ppo
    observation_dim = env.observation_spec["observation"].shape[-1]
    value_norm = None
    if ppo.value_norm:
        value_norm = ClippedValueNorm(clip=ppo.value_norm_clip).to(device)  # clip None: RunningValueNorm's numbers
    observation_norm = RunningValueNorm(shape=observation_dim).to(device) if ppo.observation_norm else None
    critic_keys = net.get("critic_observation_keys")
    critic_dim = critic_norm = None
    if critic_keys is not None:
        critic_keys = list(critic_keys)
        available = list(env.base_env.observation_spec.keys())  # the simulator's entries, not the learner's bookkeeping
        missing = [key for key in critic_keys if key not in available]
        if missing or not critic_keys:
            raise ConfigError(
                f"network.critic_observation_keys={critic_keys} is not accepted: the env's observation entries are "
                f"{sorted(map(str, available))}"
            )
        critic_dim = sum(env.observation_spec[key].shape[-1] for key in critic_keys)
        critic_norm = RunningValueNorm(shape=critic_dim).to(device) if ppo.observation_norm else None
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
        zero_bias=net.zero_bias,
        value_norm=value_norm,
        observation_norm=observation_norm,
        critic_observation_keys=critic_keys,
        critic_observation_dim=critic_dim,
        critic_observation_norm=critic_norm,
    )
    actor.to(device), critic.to(device)
    track_recurrent_states(env, actor)
    coefficients = None if s.entropy_coefficients is None else list(s.entropy_coefficients)
    cpo = cfg.cpo
    method = (
        functools.partial(
            CPOLoss, leader=layout.leader, awac_beta=cpo.awac_beta, awac_lambda=cpo.awac_lambda, awac_max=cpo.awac_max,
            kl_coef=cpo.kl_coef,
        )
        if cpo.enabled
        else SAPGLoss
    )  # fmt: skip
    loss = method(
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
        kl_rows=ppo.kl_rows,
        bounds_loss_coeff=ppo.bounds_loss_coeff,
        value_norm=value_norm,
        critic_coeff=ppo.critic_coeff,
        loss_critic_type="l2",  # the released code's squared error (SAPGLoss's default is ClipPPOLoss's smooth L1)
        clip_value=ppo.clip_value,
    ).to(device)  # fmt: skip
    # TorchRL's GAE for a loss called on data without advantages (the runner computes its own); its gamma and
    # lambda buffers are part of every checkpoint's "loss" entry
    loss.make_value_estimator(ValueEstimators.GAE, gamma=ppo.gamma, lmbda=ppo.lmbda)
    return Agent(actor, critic, loss, value_norm, observation_norm, critic_norm, critic_keys)


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


def training_settings(cfg: DictConfig) -> tuple[PPOSettings, TrainSettings]:
    """The training layer's typed settings (``ppo``, ``train``) of a composed or loaded config."""
    return PPOSettings(**OmegaConf.to_container(cfg.ppo, resolve=True)), TrainSettings(
        **OmegaConf.to_container(cfg.train, resolve=True)
    )


def build_runner(
    cfg: DictConfig, run_dir: str | Path | None = None, sinks=(), hooks=(), make_env=None, ranks: Ranks = SINGLE
) -> Runner:
    """Everything one run needs, from the config of ``sapg_torchrl/configs/sapg.yaml``: the
    :class:`~sapg_torchrl.training.Runner` of its env, agent, aggregator, :class:`~sapg_torchrl.training.PPOUpdate`
    and evaluator.

    ``make_env`` (a callable ``make_env(num_envs=, seed=)`` returning a batched TorchRL env) replaces the config's
    ``env.make``: your own env class, without an import path for Hydra. With ``ranks`` of several processes
    (:mod:`sapg_torchrl.training.distributed`), this process's share is built: ``N / G`` envs, every block's share
    equal, on its own GPU under NCCL; only rank 0 gets the sinks, the run folder, the evaluation envs and the progress
    bar.
    """
    s, e = cfg.sapg, cfg.env
    ppo, train = training_settings(cfg)
    torch.manual_seed(cfg.seed)
    device = ranks.device if ranks.device.type == "cuda" else device_of(cfg.device)
    if train.cudagraphs:
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
    aggregator = None
    if s.aggregation != "none":
        aggregator = Aggregator(
            layout, agent.critic, mode=s.aggregation, off_policy_ratio=s.off_policy_ratio, gamma=ppo.gamma,
            importance_correction=s.importance_correction, clip_mode=s.clip_mode, actor=agent.actor,
            log_prob_key=agent.loss.tensor_keys.sample_log_prob, leader_to_followers=cfg.cpo.enabled,
            generator=torch.Generator().manual_seed(cfg.seed),
        )  # fmt: skip
    evaluator = None
    if train.eval_interval and ranks.is_main:
        make_eval_env = eval_env_factory(cfg, make_base, layout.leader)
        if train.eval_async:
            evaluator = BackgroundEvaluator(make_eval_env, agent.actor, e.eval_steps)
        else:
            policy = torch.compile(agent.actor) if train.compile else agent.actor
            evaluator = InlineEvaluator(track_recurrent_states(make_eval_env(), agent.actor), policy, e.eval_steps)
    adversarial_reward = None
    if cfg.cpo.enabled and cfg.cpo.discriminator_coef > 0:
        adversarial_reward = AdversarialReward(
            env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1], layout.num_blocks, layout.leader,
            coef=cfg.cpo.discriminator_coef, hidden=list(cfg.cpo.discriminator_hidden), lr=ppo.lr,
            minibatch_size=ppo.minibatch_size or 4 * layout.num_envs, block_id_key=agent.loss.tensor_keys.block_id,
            device=device, seed=cfg.seed, ranks=ranks,
        )  # fmt: skip
    update = PPOUpdate(
        agent.loss, layout, ppo, train, advantage_norm=s.advantage_norm, aggregator=aggregator,
        adversarial_reward=adversarial_reward,
        value_norm=agent.value_norm, observation_norm=agent.observation_norm,
        critic_observation_norm=agent.critic_observation_norm, critic_observation_keys=agent.critic_observation_keys,
        device=device, seed=rank_seed, ranks=ranks,
    )  # fmt: skip
    if not ranks.is_main:
        train = dataclasses.replace(train, progress=False)
    return Runner(
        env, agent.actor, update, train, total_frames=cfg.total_frames, evaluator=evaluator,
        sinks=sinks if ranks.is_main else (), hooks=hooks, run_dir=run_dir if ranks.is_main else None,
    )  # fmt: skip
