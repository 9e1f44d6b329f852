"""A TorchRL transform that tags every env's data with the integer id of its block."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torchrl.data import Composite, Unbounded
from torchrl.envs.transforms import Transform

__all__ = ["BlockIdTransform"]


class BlockIdTransform(Transform):
    """Writes ``block_id`` (``torch.long``, shape ``env.batch_size``) into every reset and step output.

    The ids are a constant of the env, so they ride along in the data the collector stores and the
    policy reads them like any other observation. Works for any batched TorchRL env whose batch size
    equals ``block_ids.shape``.

    Args:
        block_ids (torch.Tensor): integer id of each env, e.g. :meth:`BlockLayout.block_ids`; use a
            constant tensor (all ``leader``) for an evaluation env that runs the leader only.
        out_key (NestedKey): where to write the ids. Defaults to ``"block_id"``.

    Examples:
        >>> from sapg_torchrl import BlockLayout
        >>> from sapg_torchrl.envs import EnvpoolEnv
        >>> from torchrl.envs import TransformedEnv
        >>> layout = BlockLayout(num_envs=4, num_blocks=2)
        >>> env = TransformedEnv(EnvpoolEnv(4, "Pendulum-v1"), BlockIdTransform(layout.block_ids()))
        >>> env.rollout(2)["next", "block_id"]
        tensor([[0, 0],
                [0, 0],
                [1, 1],
                [1, 1]])
    """

    def __init__(self, block_ids: torch.Tensor, out_key="block_id"):
        super().__init__(in_keys=[], out_keys=[out_key])
        self.register_buffer("block_ids", torch.as_tensor(block_ids, dtype=torch.long))

    def _write(self, tensordict: TensorDictBase) -> TensorDictBase:
        ids = self.block_ids
        if ids.device != tensordict.device and tensordict.device is not None:
            ids = ids.to(tensordict.device)
        return tensordict.set(self.out_keys[0], ids.expand(tensordict.batch_size))

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        return self._write(next_tensordict)

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        return self._write(tensordict_reset)

    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        if tuple(self.block_ids.shape) != tuple(observation_spec.shape):
            raise ValueError(
                f"BlockIdTransform has {self.block_ids.numel()} block ids but the env's batch size "
                f"is {tuple(observation_spec.shape)}"
            )
        observation_spec[self.out_keys[0]] = Unbounded(
            shape=observation_spec.shape, dtype=torch.long, device=observation_spec.device
        )
        return observation_spec
