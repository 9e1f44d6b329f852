"""Environments: the block-id transform and simulator adapters."""

from sapg_torchrl.envs.block_id import BlockIdTransform
from sapg_torchrl.envs.envpool import EnvpoolEnv

__all__ = ["BlockIdTransform", "EnvpoolEnv"]
