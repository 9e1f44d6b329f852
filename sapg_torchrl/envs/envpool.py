"""envpool through TorchRL's :class:`~torchrl.envs.MultiThreadedEnv`, with four fixes.

TorchRL 0.14.1's wrapper does not work with envpool 1.2 as shipped. :class:`EnvpoolEnv` subclasses it
and changes only what breaks, or what a study of many runs in one process cannot afford:

1. **gymnasium, not gym.** The wrapper builds its specs under ``set_gym_backend("gym")``, creates the
   pool with ``env_type="gym"`` and converts observations with ``treevalue``; neither ``gym`` nor
   ``treevalue`` is a dependency of envpool 1.2. All three use gymnasium here.
2. **Partial resets instead of envpool's next-step auto-reset.** envpool resets a finished env on the
   *following* ``step`` call, ignoring that step's action and returning reward 0. The wrapper's
   ``step_and_maybe_reset`` passes that reset-step through as if it were a transition, which puts a
   fake ``(terminal state -> reset state, reward 0)`` transition into every rollout. We keep
   :meth:`EnvBase.step_and_maybe_reset`, which resets exactly the finished envs right away
   (``envpool.reset(env_id)``), so every stored transition is a real one and ``("next",
   "observation")`` holds the true final observation (needed to bootstrap truncated episodes).
3. **Trailing singleton reward and done dims**, ``[N, 1]``, the shape TorchRL's value estimators and
   losses expect.
4. **A study process does not grow run after run.** A process that trains one run after another (a joblib
   worker, ``hydra.launcher.n_jobs=1``) grew by about a pool per run (4.5 GB for 6144 Hopper envs) until the
   kernel killed it, for three reasons: where Procgen's Qt runtime is missing, ``envpool.procgen`` keeps its
   ``ImportError`` for the life of the process, and that error's traceback holds every frame that was on the
   stack during the first ``import envpool``, with their locals (the first run's whole runner); the wrapper's
   ``close`` keeps the pool until the wrapper is collected; and glibc keeps the heap freed by envpool's worker
   threads. envpool is imported without the traceback (:func:`_import_envpool`), ``close`` drops the pool, and
   the freed heap goes back to the OS.

And one addition: tasks with dict observations (gymnasium-robotics' goal-conditioned hands, MuJoCo
Playground) can have the entries SAPG should see concatenated into one flat ``observation``
(``observation_keys``).
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase, MultiThreadedEnv

from sapg_torchrl.envs.observation_keys import ObservationKeys

__all__ = ["EnvpoolEnv"]


class EnvpoolEnv(MultiThreadedEnv):
    """A batch of ``num_envs`` envpool environments as one TorchRL env of batch size ``[num_envs]``.

    Args:
        num_envs (int): number of environments, the env's batch size.
        env_name (str): envpool task id, e.g. ``"MountainCarContinuous-v0"`` or ``"HalfCheetah-v4"``.

    Keyword Args:
        seed (int): seed of the pool; envpool seeds env ``i`` with ``seed + i``.
        num_threads (int, optional): worker threads; ``0`` (default) lets envpool choose.
        create_env_kwargs (dict, optional): more keyword arguments for ``envpool.make``
            (``max_episode_steps`` for instance).
        observation_keys (list of str, optional): for a task with dict observations, the entries to
            concatenate, in this order, into one flat ``observation`` (e.g. ``["observation",
            "desired_goal"]``); ``None`` keeps the task's own keys.
        privileged_observation_keys (list of str, optional): with ``observation_keys``, more entries kept as
            they are, under their own names, beside ``observation`` (e.g. ``["privileged_state"]``, for an
            asymmetric critic: ``network.critic_observation_keys``).
        device: where the tensors it returns live. Defaults to CPU.

    Examples:
        >>> env = EnvpoolEnv(4, "Pendulum-v1", seed=0)
        >>> rollout = env.rollout(3)
        >>> rollout["next", "reward"].shape
        torch.Size([4, 3, 1])
        >>> env.close()
    """

    def __init__(
        self,
        num_envs: int,
        env_name: str,
        *,
        seed: int = 0,
        num_threads: int = 0,
        create_env_kwargs: dict[str, Any] | None = None,
        observation_keys: list[str] | None = None,
        privileged_observation_keys: list[str] | None = None,
        **kwargs,
    ):
        self._keys = ObservationKeys(observation_keys, privileged_observation_keys)
        create_env_kwargs = dict(create_env_kwargs or {})
        create_env_kwargs.setdefault("seed", seed)
        create_env_kwargs.setdefault("num_threads", num_threads)
        super().__init__(num_envs, env_name, create_env_kwargs=create_env_kwargs, **kwargs)

    # 1. gymnasium instead of gym ----------------------------------------------------------------
    def _build_env(self, env_name: str, num_workers: int, create_env_kwargs: dict | None):
        pool = _import_envpool().make(
            task_id=env_name,
            env_type="gymnasium",
            num_envs=num_workers,
            gym_reset_return_info=True,
            **(create_env_kwargs or {}),
        )
        return super(MultiThreadedEnv, self)._build_env(pool)

    def _make_specs(self, env) -> None:
        from torchrl.envs.libs.gym import set_gym_backend

        with set_gym_backend("gymnasium"):
            self.action_spec = self._get_action_spec()
            output_spec = self._get_output_spec()
        self.observation_spec = self._flatten_spec(output_spec["full_observation_spec"])
        self.reward_spec = output_spec["full_reward_spec"]
        self.done_spec = output_spec["full_done_spec"]

    # 2. real partial resets -----------------------------------------------------------------------
    step_and_maybe_reset = EnvBase.step_and_maybe_reset

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        reset_mask = None if tensordict is None else tensordict.get("_reset", None)
        if reset_mask is not None:
            reset_mask = reset_mask.reshape(self.batch_size)
            if reset_mask.all():
                reset_mask = None
        if reset_mask is None:
            obs, _ = self._env.reset()
            self.obs = TensorDict(
                self._treevalue_or_numpy_to_tensor_or_dict(obs), self.batch_size, device=self.device
            )
        else:
            env_ids = np.flatnonzero(reset_mask.cpu().numpy()).astype(np.int32)
            obs, _ = self._env.reset(env_ids)
            fresh = self._treevalue_or_numpy_to_tensor_or_dict(obs)
            for key, value in fresh.items():  # (some tasks, e.g. Hopper-v4, step in float32 but reset in float64)
                stored = self.obs.get(key)
                stored[torch.as_tensor(env_ids, dtype=torch.long)] = value.to(self.device, stored.dtype)
        out = self.obs.clone()
        out.update(self.full_done_spec.zero())
        return out

    def _flatten_spec(self, spec: Composite) -> Composite:
        if not self._keys.selects:
            return spec
        # the task's own entries (TorchRL's spec conversion renames some, e.g. "state" -> "observation")
        space = self._env.observation_space.spaces
        self._keys.check(space)
        dtype = torch.as_tensor(np.zeros(0, dtype=space[self._keys.observation_keys[0]].dtype)).dtype
        widths = self._keys.widths({key: entry.shape[-1] for key, entry in space.items()})
        entries = {key: Unbounded(shape=(*self.batch_size, w), dtype=dtype, device=self.device) for key, w in widths.items()}
        return Composite(entries, shape=self.batch_size, device=self.device)

    def _treevalue_or_numpy_to_tensor_or_dict(self, obs) -> dict[str, torch.Tensor]:
        # gymnasium envpool returns an array, or a dict of arrays for dict observation spaces
        # (the base class expects the ``treevalue`` package, which envpool 1.2 no longer uses).
        if not isinstance(obs, dict):
            return {"observation": torch.as_tensor(obs)}
        if self._keys.selects:
            return self._keys.select(obs)
        return {key: torch.as_tensor(value) for key, value in obs.items()}

    # 3. [N, 1] reward and done ----------------------------------------------------------------------
    def _get_reward_spec(self):
        return Composite(
            reward=Unbounded(shape=(*self.batch_size, 1), device=self.device),
            shape=self.batch_size,
            device=self.device,
        )

    def _get_done_spec(self):
        flag = Categorical(2, shape=(*self.batch_size, 1), dtype=torch.bool, device=self.device)
        return Composite(
            done=flag,
            terminated=flag.clone(),
            truncated=flag.clone(),
            shape=self.batch_size,
            device=self.device,
        )

    def _transform_step_output(self, envpool_output) -> TensorDict:
        obs, reward, terminated, truncated, _ = envpool_output
        out = self._treevalue_or_numpy_to_tensor_or_dict(obs)
        terminated = torch.as_tensor(terminated).unsqueeze(-1)
        truncated = torch.as_tensor(truncated).unsqueeze(-1)
        out.update(
            reward=torch.as_tensor(reward, dtype=torch.float32).unsqueeze(-1),
            done=terminated | truncated,
            terminated=terminated,
            truncated=truncated,
        )
        self.obs = TensorDict(out, batch_size=self.batch_size, device=self.device)
        return self.obs

    # 4. closing frees the pool --------------------------------------------------------------------
    def close(self, *, raise_if_closed: bool = True) -> None:
        """Closes the pool, drops it (a closed wrapper still referenced, e.g. by a finished run's runner, no longer
        holds it) and returns the freed heap to the OS."""
        super().close(raise_if_closed=raise_if_closed)
        self._env = None
        _return_freed_heap()


def _return_freed_heap() -> None:
    """glibc's ``malloc_trim(0)``: the memory freed by a pool's threads goes back to the OS instead of staying in
    their arenas (a no-op where the C library is not glibc). The process's own symbols hold the C library's, so
    nothing is searched for (``ctypes.util.find_library`` would run ``ldconfig`` at every close)."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


def _import_envpool():
    """``import envpool``, then drop the traceback of the ``ImportError`` that ``envpool.procgen`` keeps where
    Procgen cannot load: it holds the frames on the stack during this first import, and their locals, forever."""
    import envpool

    error = getattr(sys.modules.get("envpool.procgen"), "_PROCGEN_IMPORT_ERROR", None)
    while error is not None:  # and the errors it was raised from
        error.__traceback__ = None
        error = error.__cause__ or error.__context__
    return envpool
