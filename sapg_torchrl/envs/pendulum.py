"""A batched pure-torch Pendulum that lives on any device and resets itself: the GPU-resident env of the GPU check.

Written here, not taken from TorchRL: TorchRL's :class:`~torchrl.envs.PendulumEnv` is the stateless tutorial env
(unbatched specs, its parameters carried in every tensordict), and its reset goes through TorchRL's
``maybe_reset``, which reads the done flags on the host every step. This one steps ``N`` pendulums in a few
tensor ops and resets finished episodes inside its step without branching (TorchRL's native-autoreset
convention), so a rollout on a GPU has no host sync at all.
"""

from __future__ import annotations

import math

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from sapg_torchrl.errors import ConfigError

__all__ = ["TorchPendulumEnv"]


class TorchPendulumEnv(EnvBase):
    """``num_envs`` swing-up pendulums with Gymnasium's ``Pendulum-v1`` dynamics, batch size ``[num_envs]``.

    Observation ``[cos th, sin th, th_dot]``, action a torque in ``[-2, 2]``, reward
    ``-(th^2 + 0.1 th_dot^2 + 0.001 u^2)`` (``th`` normalised to ``[-pi, pi]``), episodes of ``episode_length``
    steps ended by truncation (never a termination), initial state uniform in ``th in [-pi, pi]``,
    ``th_dot in [-1, 1]``.

    Resets are native (``_torchrl_native_autoreset``): an env whose episode ends restarts inside the same step,
    and its ``("next", "observation")`` is the first observation of the new episode. TorchRL then sets that
    next observation to NaN in the rollout (the final observation is not kept) and carries the new one to the
    next step; SAPG's update bootstraps such a truncated step from ``V(s_t)`` (see
    :func:`~sapg_torchrl.targets.fill_lost_final_observations`), the released code's time-out handling.

    Args:
        num_envs (int): batch size.

    Keyword Args:
        device: where the state, the specs and every output live. Defaults to ``"cpu"``.
        episode_length (int): steps per episode. Defaults to ``200`` (Gymnasium's time limit).
        seed (int): seeds the env's own generator. Defaults to ``0``.

    Examples:
        >>> env = TorchPendulumEnv(4, episode_length=3)
        >>> rollout = env.rollout(4, break_when_any_done=False)
        >>> rollout["next", "truncated"].squeeze(-1).tolist()[0]
        [False, False, True, False]
        >>> bool(rollout["next", "observation"][:, 2].isnan().all()), bool(rollout["observation"].isnan().any())
        (True, False)
    """

    G, MASS, LENGTH, DT, MAX_SPEED, MAX_TORQUE = 10.0, 1.0, 1.0, 0.05, 8.0, 2.0

    def __init__(self, num_envs: int, *, device="cpu", episode_length: int = 200, seed: int = 0):
        if isinstance(episode_length, bool) or not isinstance(episode_length, int) or episode_length < 1:
            raise ConfigError(f"env.make.episode_length={episode_length!r} is not accepted: an integer >= 1")
        super().__init__(batch_size=torch.Size([num_envs]), device=device)
        self._torchrl_native_autoreset = True
        self.episode_length = episode_length
        n = (num_envs,)
        self.observation_spec = Composite(
            observation=Bounded(-self.MAX_SPEED, self.MAX_SPEED, (*n, 3), device=device), shape=n
        )
        self.action_spec = Bounded(-self.MAX_TORQUE, self.MAX_TORQUE, (*n, 1), device=device)
        self.reward_spec = Unbounded((*n, 1), device=device)
        flag = Categorical(2, (*n, 1), dtype=torch.bool, device=device)
        self.done_spec = Composite(done=flag, terminated=flag.clone(), truncated=flag.clone(), shape=n)
        self.generator = torch.Generator(device=self.device)
        self._set_seed(seed)
        self.angle = torch.zeros(n, device=self.device)
        self.speed = torch.zeros(n, device=self.device)
        self.steps = torch.zeros(n, dtype=torch.long, device=self.device)

    def _initial(self) -> tuple[torch.Tensor, torch.Tensor]:
        uniform = torch.rand((2, *self.batch_size), generator=self.generator, device=self.device) * 2 - 1
        return uniform[0] * math.pi, uniform[1]

    def _output(self, **extra) -> TensorDict:
        observation = torch.stack([self.angle.cos(), self.angle.sin(), self.speed], -1)
        return TensorDict(observation=observation, **extra, batch_size=self.batch_size, device=self.device)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        reset = None if tensordict is None else tensordict.get("_reset", None)
        mask = torch.ones_like(self.steps, dtype=torch.bool) if reset is None else reset.reshape(self.batch_size)
        angle, speed = self._initial()
        self.angle = torch.where(mask, angle, self.angle)
        self.speed = torch.where(mask, speed, self.speed)
        self.steps = torch.where(mask, 0, self.steps)
        flag = torch.zeros((*self.batch_size, 1), dtype=torch.bool, device=self.device)
        return self._output(done=flag, terminated=flag.clone(), truncated=flag.clone())

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        torque = tensordict.get("action").reshape(self.batch_size).clamp(-self.MAX_TORQUE, self.MAX_TORQUE)
        angle = torch.remainder(self.angle + math.pi, 2 * math.pi) - math.pi
        cost = angle.square() + 0.1 * self.speed.square() + 0.001 * torque.square()
        gravity = 3 * self.G / (2 * self.LENGTH) * self.angle.sin()
        speed = (self.speed + (gravity + 3.0 / (self.MASS * self.LENGTH**2) * torque) * self.DT).clamp(
            -self.MAX_SPEED, self.MAX_SPEED
        )
        self.steps = self.steps + 1
        done = self.steps >= self.episode_length
        start_angle, start_speed = self._initial()
        self.angle = torch.where(done, start_angle, self.angle + speed * self.DT)
        self.speed = torch.where(done, start_speed, speed)
        self.steps = torch.where(done, 0, self.steps)
        done = done.unsqueeze(-1)
        return self._output(reward=-cost.unsqueeze(-1), done=done, terminated=torch.zeros_like(done), truncated=done)

    def _set_seed(self, seed: int | None) -> None:
        self.generator.manual_seed(0 if seed is None else seed)
