"""Brax through TorchRL's :class:`~torchrl.envs.BraxEnv`, with per-env resets, time limits and a lean step.

TorchRL 0.14.1's wrapper is not usable for PPO on a batch as it stands. :class:`BraxBatchEnv` subclasses it
and changes only what breaks:

1. **Per-env resets.** The wrapper's ``_reset`` resets the whole batch, whatever ``_reset`` says, so one
   finished env restarts all the others. Here a reset draws fresh states for the batch in one jitted call
   and keeps them only where ``_reset`` is set (``jnp.where`` inside JAX).
2. **Time limits.** ``brax.envs.get_environment`` returns envs without one (a healthy Ant runs forever);
   brax's own ``EpisodeWrapper`` adds it, and ``truncated`` is reported apart from ``terminated``, so that
   GAE bootstraps truncated episodes.
3. **The physics state stays in JAX.** The wrapper converts the whole pipeline state (positions,
   velocities, contacts) to torch and back at every step, which dominates its cost on a CPU; here only the
   observation, reward and done flags cross, zero-copy through DLPack, on the simulator's device.

JAX preallocates most of a GPU's memory by default; this module sets ``XLA_PYTHON_CLIENT_PREALLOCATE=false``
(unless you set it) before JAX is imported, so that torch's learner fits beside it.
"""

from __future__ import annotations

import functools
import os

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import BraxEnv

from sapg_torchrl.errors import ConfigError

__all__ = ["BraxBatchEnv"]

BRAX_INSTALL = "env {name!r} needs Brax: pip install 'sapg-torchrl[brax]' (brax and jax; jax[cuda12] for a GPU)"


class BraxBatchEnv(BraxEnv):
    """``num_envs`` copies of a Brax environment as one TorchRL env of batch size ``[num_envs]``.

    Args:
        num_envs (int): number of environments, the env's batch size.
        env_name (str): a registered Brax env, e.g. ``"ant"``, ``"halfcheetah"``, ``"humanoid"``.

    Keyword Args:
        seed (int): seed of the reset keys.
        episode_length (int): time limit, in steps. Defaults to ``1000``.
        backend (str, optional): Brax pipeline, ``"spring"`` (fastest on a CPU), ``"positional"``,
            ``"generalized"`` or ``"mjx"``; ``None`` takes the env's default.
        device: torch device of the tensors; defaults to JAX's default device (``cuda`` when JAX has a GPU).

    Examples:
        >>> env = BraxBatchEnv(4, "ant", backend="spring", episode_length=3)  # doctest: +SKIP
        >>> env.rollout(3)["next", "truncated"][:, -1].all()  # doctest: +SKIP
        tensor(True)
    """

    def __init__(
        self,
        num_envs: int,
        env_name: str,
        *,
        seed: int = 0,
        episode_length: int = 1000,
        backend: str | None = None,
        device=None,
    ):
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        try:
            import jax
        except ImportError:
            raise ConfigError(BRAX_INSTALL.format(name=env_name)) from None
        if device is None:
            device = "cuda" if jax.default_backend() == "gpu" else "cpu"
        self._episode_length, self._backend = episode_length, backend
        super().__init__(env_name, batch_size=torch.Size([num_envs]), device=device)
        self.set_seed(seed)

    def _check_kwargs(self, kwargs: dict):
        if not self._has_brax():
            raise ConfigError(BRAX_INSTALL.format(name=kwargs.get("env_name")))
        super()._check_kwargs(kwargs)

    @staticmethod
    def _has_brax() -> bool:
        import importlib.util

        return importlib.util.find_spec("brax") is not None

    # 2. a time limit (brax's own EpisodeWrapper) ------------------------------------------------------
    def _build_env(self, env_name: str, **kwargs):
        from brax import envs

        if env_name not in envs._envs:
            raise ConfigError(f"unknown Brax env {env_name!r}; accepted: {', '.join(sorted(envs._envs))}")
        self.wrapper_frame_skip = 1
        self.from_pixels, self.pixels_only, self.requires_grad = False, False, False
        env, self._jax_reset, self._jax_step = _compiled(env_name, self._backend, self._episode_length)
        return env

    def _make_specs(self, env) -> None:
        n = self.batch_size
        self.action_spec = Bounded(-1.0, 1.0, (*n, env.action_size), device=self.device)
        self.reward_spec = Unbounded((*n, 1), device=self.device)
        self.observation_spec = Composite(observation=Unbounded((*n, env.observation_size), device=self.device), shape=n)
        flag = Categorical(2, (*n, 1), dtype=torch.bool, device=self.device)
        self.done_spec = Composite(done=flag, terminated=flag.clone(), truncated=flag.clone(), shape=n)

    # 3. the state stays in JAX: jitted batch reset and step (see _compiled) ---------------------------
    def _init_env(self) -> None:
        import jax

        self._state = None
        self._key = jax.random.PRNGKey(0)

    def _set_seed(self, seed: int | None) -> None:
        import jax

        self._key = jax.random.PRNGKey(0 if seed is None else seed)

    def _to_torch(self, array) -> torch.Tensor:
        return torch.from_dlpack(array).to(self.device)

    def _output(self, state, reward: bool) -> TensorDict:
        done = self._to_torch(state.done).bool().unsqueeze(-1)
        truncated = self._to_torch(state.info["truncation"]).bool().unsqueeze(-1) & done
        out = {"observation": self._to_torch(state.obs), "done": done, "terminated": done & ~truncated,
               "truncated": truncated}  # fmt: skip
        if reward:
            out["reward"] = self._to_torch(state.reward).unsqueeze(-1).float()
        return TensorDict(out, batch_size=self.batch_size, device=self.device)

    # 1. per-env resets --------------------------------------------------------------------------------
    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        import jax
        import jax.numpy as jnp

        mask = None if tensordict is None else tensordict.get("_reset", None)
        self._key, key = jax.random.split(self._key)
        if self._state is None or mask is None:
            mask = torch.ones(self.batch_size, dtype=torch.bool, device=self.device)
        fresh = jax.random.split(key, self.batch_size.numel())
        self._state = self._jax_reset(fresh, self._state, jnp.from_dlpack(mask.reshape(-1).contiguous()))
        out = self._output(self._state, reward=False)
        return out.update(self.full_done_spec.zero())

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        import jax.numpy as jnp

        action = jnp.from_dlpack(tensordict.get("action").detach().contiguous())
        self._state = self._jax_step(self._state, action)
        return self._output(self._state, reward=True)


@functools.cache
def _compiled(env_name: str, backend: str | None, episode_length: int):
    """The wrapped Brax env and its jitted batch ``reset(keys, state, mask)`` and ``step(state, action)``, shared
    by every instance with these settings (an evaluation env, tests), so JAX compiles them once per batch size."""
    import jax
    import jax.numpy as jnp
    from brax import envs
    from brax.envs.wrappers.training import EpisodeWrapper

    env = envs.get_environment(env_name, **({} if backend is None else {"backend": backend}))
    env = EpisodeWrapper(env, episode_length, action_repeat=1)

    def reset(keys, state, mask):
        fresh = jax.vmap(env.reset)(keys)
        if state is None:
            return fresh
        keep = lambda new, old: jnp.where(mask.reshape(-1, *([1] * (old.ndim - 1))), new, old)  # noqa: E731
        return jax.tree_util.tree_map(keep, fresh, state)

    return env, jax.jit(reset), jax.jit(jax.vmap(env.step))
