"""Brax through TorchRL's :class:`~torchrl.envs.BraxEnv`, with per-env resets, time limits and a lean step.

TorchRL 0.14.1's wrapper is not usable for PPO on a batch as it stands: :class:`BraxBatchEnv` subclasses it and
changes only what breaks (per-env resets, time limits reported as truncations, the physics state kept in JAX),
through :class:`~sapg_torchrl.envs.jax_batch.JaxBatchMixin`, which it shares with MuJoCo Playground's adapter.
"""

from __future__ import annotations

import functools

import torch
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs import BraxEnv

from sapg_torchrl.envs.jax_batch import JaxBatchMixin, compile_batch, import_jax
from sapg_torchrl.errors import ConfigError

__all__ = ["BraxBatchEnv"]

BRAX_INSTALL = "env {name!r} needs Brax: pip install 'sapg-torchrl[brax]' (brax and jax; jax[cuda12] for a GPU)"


class BraxBatchEnv(JaxBatchMixin, BraxEnv):
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
        try:
            jax = import_jax()
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
        self.done_spec = self._flags_spec()

    def _observations(self, state) -> dict:
        return {"observation": self._to_torch(state.obs)}


@functools.cache
def _compiled(env_name: str, backend: str | None, episode_length: int):
    """The wrapped Brax env and its jitted batch reset and step (:func:`compile_batch`), shared by every instance
    with these settings (an evaluation env, tests), so JAX compiles them once per batch size."""
    from brax import envs

    env = envs.get_environment(env_name, **({} if backend is None else {"backend": backend}))
    return compile_batch(env, episode_length)
