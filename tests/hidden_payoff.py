"""A batched pure-torch task whose value only a privileged critic can learn, for the asymmetric-critic tests.

Each episode draws a hidden payoff of +1 or -1 that every step pays whatever the action; the policy's
``observation`` is the step count over the episode length only, the ``privileged`` entry is the payoff. The value
of a state is the payoff times the steps left: from the observation alone it is 0 on average at every step (an
explained variance of 0), from the privileged entry it is exact.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase


class HiddenPayoffEnv(EnvBase):
    """``num_envs`` episodes of ``episode_length`` steps, batch size ``[num_envs]``."""

    def __init__(self, num_envs: int, seed: int = 0, episode_length: int = 6, device="cpu"):
        super().__init__(batch_size=torch.Size([num_envs]), device=device)
        self.episode_length = episode_length
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.payoff = torch.zeros(num_envs, device=device)
        self.step_count = torch.zeros(num_envs, device=device)
        n = (num_envs,)
        self.observation_spec = Composite(
            observation=Unbounded((*n, 1), device=device), privileged=Unbounded((*n, 1), device=device), shape=n
        )
        self.action_spec = Bounded(-1.0, 1.0, (*n, 1), device=device)
        self.reward_spec = Unbounded((*n, 1), device=device)
        flag = Categorical(2, (*n, 1), dtype=torch.bool, device=device)
        self.done_spec = Composite(done=flag, terminated=flag.clone(), truncated=flag.clone(), shape=n)

    def _observations(self) -> dict:
        return {"observation": (self.step_count / self.episode_length)[:, None], "privileged": self.payoff[:, None].clone()}

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        mask = torch.ones(self.batch_size, dtype=torch.bool, device=self.device)
        if tensordict is not None and "_reset" in tensordict.keys():
            mask = tensordict.get("_reset").reshape(self.batch_size)
        draw = torch.randint(0, 2, self.batch_size, generator=self.generator, device=self.device) * 2.0 - 1.0
        self.payoff = torch.where(mask, draw, self.payoff)
        self.step_count = torch.where(mask, torch.zeros_like(self.step_count), self.step_count)
        out = TensorDict(self._observations(), batch_size=self.batch_size, device=self.device)
        return out.update(self.full_done_spec.zero())

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        reward = self.payoff[:, None].clone()
        self.step_count = self.step_count + 1
        done = (self.step_count >= self.episode_length)[:, None]
        return TensorDict(
            {**self._observations(), "reward": reward, "done": done, "terminated": done.clone(),
             "truncated": torch.zeros_like(done)}, batch_size=self.batch_size, device=self.device,
        )  # fmt: skip

    def _set_seed(self, seed: int | None):
        if seed is not None:
            self.generator.manual_seed(seed)
