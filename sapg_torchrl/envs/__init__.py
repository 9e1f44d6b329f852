"""Environments: the block-id transform and simulator adapters."""

from sapg_torchrl.envs.block_id import BlockIdTransform
from sapg_torchrl.envs.envpool import EnvpoolEnv
from sapg_torchrl.envs.factory import make_sapg_env, track_recurrent_states

__all__ = ["BlockIdTransform", "EnvpoolEnv", "make_sapg_env", "track_recurrent_states"]
