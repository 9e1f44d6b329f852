"""Where a run computes: the torch device of a ``device`` setting, and what CUDA-only options need."""

from __future__ import annotations

import torch

from sapg_torchrl.errors import ConfigError

__all__ = ["check_cudagraphs", "device_of"]


def device_of(name: str) -> torch.device:
    """The torch device of a ``device`` setting (``auto``: CUDA if there is one); :class:`ConfigError` if unusable.

    Examples:
        >>> device_of("cpu")
        device(type='cpu')
    """
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
