"""Turns any batched TorchRL env into a SAPG env: action clipping, episode returns, reward scaling and
block ids, as stock TorchRL transforms plus :class:`BlockIdTransform`.

Observation normalisation is not an env transform here but part of the actor-critic
(:func:`~sapg_torchrl.make_actor_critic`'s ``observation_norm``): TorchRL's ``VecNormV2`` keeps per-env
statistics (or, with ``reduce_batch_dims``, the variance of batch means), while SAPG, like rl_games,
normalises with exact running statistics over all envs; in the model they also travel with checkpoints
and need no syncing with evaluation envs."""

from __future__ import annotations

import functools

import torch
from tensordict import TensorDictBase
from torchrl.envs import EnvBase, TransformedEnv
from torchrl.envs.transforms import Compose, DoubleToFloat, InitTracker, RewardSum, Transform, UnaryTransform
from torchrl.modules.utils import get_primers_from_module

from sapg_torchrl.envs.block_id import BlockIdTransform

__all__ = ["ClampAction", "make_sapg_env", "track_recurrent_states"]


class ClampAction(Transform):
    """Clamps the action to per-dimension bounds on its way into the env (the stored action is unclamped).

    TorchRL's :class:`~torchrl.envs.transforms.ClipTransform` takes scalar bounds only; action spaces may have
    different bounds per dimension.

    Args:
        low, high (Tensor): bounds, shape ``[action_dim]``.
        action_key (NestedKey): the action's key. Defaults to ``"action"``.
    """

    def __init__(self, low: torch.Tensor, high: torch.Tensor, action_key="action"):
        super().__init__(in_keys_inv=[action_key], out_keys_inv=[action_key])
        self.register_buffer("low", torch.as_tensor(low))
        self.register_buffer("high", torch.as_tensor(high))

    def _inv_apply_transform(self, action: torch.Tensor) -> torch.Tensor:
        return torch.clamp(action, self.low.to(action), self.high.to(action))

    def _inv_call(self, tensordict: TensorDictBase) -> TensorDictBase:
        key = self.in_keys_inv[0]
        return tensordict.set(key, self._inv_apply_transform(tensordict.get(key)))


def make_sapg_env(
    base_env: EnvBase,
    block_ids: torch.Tensor,
    *,
    reward_scale: float = 1.0,
    clip_actions: bool = True,
) -> TransformedEnv:
    """Wraps a batched env (batch size ``[N]``) with the transforms SAPG training expects.

    In order: float64 entries cast to float32 (envpool's MuJoCo tasks return float64); actions clipped to
    the action spec's bounds on their way in (the policy's unclipped sample and its log-prob are what is
    stored, as in rl_games); the undiscounted episode return ``episode_reward`` in the env's own reward units; rewards scaled by
    ``reward_scale``; ``block_id``.

    Args:
        base_env (EnvBase): any batched TorchRL env with an ``observation`` key and a bounded
            continuous action.
        block_ids (Tensor): block of every env, ``[N]``.

    Keyword Args:
        reward_scale (float): multiplies the reward the learner sees. Defaults to ``1.0``.
        clip_actions (bool): clip actions to the spec's bounds. Defaults to ``True``.

    Examples:
        >>> from sapg_torchrl import BlockLayout
        >>> from sapg_torchrl.envs import EnvpoolEnv
        >>> env = make_sapg_env(EnvpoolEnv(4, "Pendulum-v1"), BlockLayout(4, 2).block_ids(), reward_scale=0.1)
        >>> sorted(env.rollout(3)["next"].keys())
        ['block_id', 'done', 'episode_reward', 'observation', 'reward', 'terminated', 'truncated']
    """
    transforms = [DoubleToFloat()]
    if clip_actions:
        space = base_env.action_spec.space
        low, high = space.low.reshape(-1, space.low.shape[-1])[0], space.high.reshape(-1, space.high.shape[-1])[0]
        transforms.append(ClampAction(low.float(), high.float()))
    transforms.append(RewardSum())
    if reward_scale != 1.0:
        # not TorchRL's RewardScaling: it branches on a tensor buffer every step, a host sync on a GPU
        transforms.append(UnaryTransform(["reward"], ["reward"], fn=functools.partial(torch.mul, other=reward_scale)))
    transforms.append(BlockIdTransform(block_ids))
    return TransformedEnv(base_env, Compose(*transforms))


def track_recurrent_states(env: TransformedEnv, policy) -> TransformedEnv:
    """Adds what a recurrent ``policy`` needs from the env: TorchRL's ``InitTracker`` (``is_init``, where the
    policy resets its hidden state) and the primers of its hidden states (zeros at reset, carried from step
    to step by the rollout). A feedforward policy leaves the env as it is.

    Examples:
        >>> from sapg_torchrl import BlockLayout, make_actor_critic
        >>> from sapg_torchrl.envs import EnvpoolEnv
        >>> env = make_sapg_env(EnvpoolEnv(4, "Pendulum-v1"), BlockLayout(4, 2).block_ids())
        >>> actor, _ = make_actor_critic(3, 1, num_blocks=2, hidden=(8,), lstm_size=16)
        >>> rollout = track_recurrent_states(env, actor).rollout(3, actor)
        >>> rollout["recurrent_state_h"].shape, rollout["is_init"][:, 0].all().item()
        (torch.Size([4, 3, 1, 16]), True)
    """
    primers = get_primers_from_module(policy, warn=False)
    if primers is None:
        return env
    env.append_transform(InitTracker())
    env.append_transform(primers)
    return env
