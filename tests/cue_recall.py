"""A batched pure-torch task that needs memory, for the recurrent-policy tests.

Each episode shows a cue of +1 or -1 in the first observation only, then 0; every step pays ``action * cue``
(actions in ``[-1, 1]``). A policy without memory sees the cue on the first step only: its expected return
is at most 1, a recurrent one can earn ``episode_length``. The second observation entry is the step count
over the episode length, so both kinds know where they are in the episode.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase


class CueRecallEnv(EnvBase):
    """``num_envs`` cue-recall episodes of ``episode_length`` steps, batch size ``[num_envs]``."""

    def __init__(self, num_envs: int, seed: int = 0, episode_length: int = 4, device="cpu"):
        super().__init__(batch_size=torch.Size([num_envs]), device=device)
        self.episode_length = episode_length
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.cue = torch.zeros(num_envs, device=device)
        self.step_count = torch.zeros(num_envs, device=device)
        n = (num_envs,)
        self.observation_spec = Composite(observation=Unbounded((*n, 2), device=device), shape=n)
        self.action_spec = Bounded(-1.0, 1.0, (*n, 1), device=device)
        self.reward_spec = Unbounded((*n, 1), device=device)
        flag = Categorical(2, (*n, 1), dtype=torch.bool, device=device)
        self.done_spec = Composite(done=flag, terminated=flag.clone(), truncated=flag.clone(), shape=n)

    def _observation(self) -> torch.Tensor:
        shown = torch.where(self.step_count == 0, self.cue, torch.zeros_like(self.cue))
        return torch.stack([shown, self.step_count / self.episode_length], -1)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        mask = torch.ones(self.batch_size, dtype=torch.bool, device=self.device)
        if tensordict is not None and "_reset" in tensordict.keys():
            mask = tensordict.get("_reset").reshape(self.batch_size)
        draw = torch.randint(0, 2, self.batch_size, generator=self.generator, device=self.device) * 2.0 - 1.0
        self.cue = torch.where(mask, draw, self.cue)
        self.step_count = torch.where(mask, torch.zeros_like(self.step_count), self.step_count)
        out = TensorDict(observation=self._observation(), batch_size=self.batch_size, device=self.device)
        return out.update(self.full_done_spec.zero())

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        reward = (tensordict.get("action").clamp(-1, 1) * self.cue[:, None]).float()
        self.step_count = self.step_count + 1
        done = (self.step_count >= self.episode_length)[:, None]
        return TensorDict(
            observation=self._observation(), reward=reward, done=done, terminated=done.clone(),
            truncated=torch.zeros_like(done), batch_size=self.batch_size, device=self.device,
        )  # fmt: skip

    def _set_seed(self, seed: int | None):
        if seed is not None:
            self.generator.manual_seed(seed)
