"""Which entries of a dict observation SAPG sees, one rule for every simulator adapter (envpool, MuJoCo Playground):
``observation_keys`` concatenated, in order, into one flat ``observation`` (the policy's input), and
``privileged_observation_keys`` kept under their own names beside it (for an asymmetric critic:
``network.critic_observation_keys``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from sapg_torchrl.errors import ConfigError

__all__ = ["ObservationKeys"]


class ObservationKeys:
    """The entries of a dict observation that make ``observation``, and those kept beside it.

    Args:
        observation_keys (list of str, optional): the entries to concatenate into ``observation``; ``None`` keeps
            the task's own keys.
        privileged_observation_keys (list of str, optional): with ``observation_keys``, entries kept as they are.

    Examples:
        >>> keys = ObservationKeys(["state"], ["privileged_state"])
        >>> obs = {"state": torch.zeros(2, 3), "privileged_state": torch.ones(2, 5), "pixels": torch.zeros(2, 1)}
        >>> {k: v.shape[-1] for k, v in keys.select(obs).items()}
        {'observation': 3, 'privileged_state': 5}
        >>> keys.widths({"state": 3, "privileged_state": 5})
        {'observation': 3, 'privileged_state': 5}
    """

    def __init__(self, observation_keys: Iterable[str] | None = None, privileged_observation_keys=None):
        self.observation_keys = None if observation_keys is None else list(observation_keys)
        self.privileged_keys = list(privileged_observation_keys or [])
        if self.privileged_keys and self.observation_keys is None:
            raise ConfigError(
                f"privileged_observation_keys={self.privileged_keys} is not accepted without observation_keys: name "
                "the entries that make the policy's observation"
            )

    @property
    def selects(self) -> bool:
        """Whether entries are selected (else the task's own keys are kept)."""
        return self.observation_keys is not None

    def check(self, available: Iterable[str]) -> None:
        """Raises a one-line :class:`ConfigError` if a named entry is not among the task's ``available`` ones."""
        available = sorted(available)
        for name, keys in (("observation_keys", self.observation_keys), ("privileged_observation_keys", self.privileged_keys)):
            missing = [key for key in keys or () if key not in available]
            if missing:
                raise ConfigError(f"{name}={keys} names {missing}, which the task does not have; its observations are {available}")

    def widths(self, sizes: Mapping[str, int]) -> dict[str, int]:
        """The width of each output entry, from the width of each of the task's entries."""
        return {"observation": sum(sizes[key] for key in self.observation_keys), **{k: sizes[k] for k in self.privileged_keys}}

    def select(self, obs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The output entries of one dict observation."""
        flat = torch.cat([torch.as_tensor(obs[key]) for key in self.observation_keys], -1)
        return {"observation": flat, **{key: torch.as_tensor(obs[key]) for key in self.privileged_keys}}
