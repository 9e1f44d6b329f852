"""SAPG (Split and Aggregate Policy Gradients, ICML 2024) as TorchRL components."""

from sapg_torchrl.actor_critic import make_actor_critic
from sapg_torchrl.blocks import BlockLayout, block_entropy_coefficients
from sapg_torchrl.cpo_loss import CPOLoss
from sapg_torchrl.errors import ConfigError
from sapg_torchrl.loss import SAPGLoss

__all__ = ["BlockLayout", "CPOLoss", "ConfigError", "SAPGLoss", "block_entropy_coefficients", "make_actor_critic"]
__version__ = "0.1.0"
