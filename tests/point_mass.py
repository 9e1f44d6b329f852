"""A deterministic, stateless pure-torch task for the exact-resume tests: the whole env state is in its tensordict.

A point on a line starts at 0 and moves by ``0.1 * action`` per step; each step pays ``-(position - 1)^2``; an
episode lasts ``episode_length`` steps. Position and step count travel in the tensordict and the env says so
(``state_in_tensordict``), so a checkpoint of the collector's tensordict is a checkpoint of the env.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase


class PointMassEnv(EnvBase):
    """``num_envs`` point masses, batch size ``[num_envs]``."""

    state_in_tensordict = True

    def __init__(self, num_envs: int, seed: int = 0, episode_length: int = 5, device="cpu"):
        super().__init__(batch_size=torch.Size([num_envs]), device=device)
        self.episode_length = episode_length
        n = (num_envs,)
        self.observation_spec = Composite(
            observation=Unbounded((*n, 2), device=device),
            position=Unbounded((*n, 1), device=device),
            count=Unbounded((*n, 1), device=device),
            shape=n,
        )
        self.action_spec = Bounded(-1.0, 1.0, (*n, 1), device=device)
        self.reward_spec = Unbounded((*n, 1), device=device)
        flag = Categorical(2, (*n, 1), dtype=torch.bool, device=device)
        self.done_spec = Composite(done=flag, terminated=flag.clone(), truncated=flag.clone(), shape=n)

    def _state(self, position, count) -> TensorDict:
        observation = torch.cat([position, count / self.episode_length], -1)
        return TensorDict(observation=observation, position=position, count=count, batch_size=position.shape[:-1])

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        zeros = torch.zeros(*self.batch_size, 1, device=self.device)
        if tensordict is None or "position" not in tensordict.keys():
            out = self._state(zeros, zeros.clone())
        else:
            reset = tensordict.get("_reset", torch.ones_like(zeros, dtype=torch.bool)).reshape(*self.batch_size, 1)
            out = self._state(torch.where(reset, zeros, tensordict["position"]), torch.where(reset, zeros, tensordict["count"]))
        flag = torch.zeros(*self.batch_size, 1, dtype=torch.bool, device=self.device)
        return out.update(done=flag, terminated=flag.clone(), truncated=flag.clone())

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        position = tensordict["position"] + 0.1 * tensordict["action"].clamp(-1, 1)
        count = tensordict["count"] + 1
        done = count >= self.episode_length
        out = self._state(position, count)
        return out.update(reward=-((position - 1) ** 2), done=done, terminated=torch.zeros_like(done), truncated=done)

    def _set_seed(self, seed: int | None) -> None:
        pass
