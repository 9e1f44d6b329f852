"""GPU simulators (IsaacGym, Isaac Lab) as SAPG base envs: thin factories over TorchRL's wrappers.

These are the ``env.make`` targets of the ``isaacgym_*`` and ``isaaclab_*`` presets (the paper's tasks).
**They are untested against the real simulators**: neither simulator can be installed on the machines this
library is developed on (no GPU, and IsaacGym is not on PyPI). What is tested is the part that is ours:
the one-line :class:`~sapg_torchrl.ConfigError` when a simulator is missing, and :func:`sapg_view`, the key
and shape post-processing, against TorchRL's mock batched envs.

Known caveats of the simulators themselves (from their documentation, not checked here):

- time-outs: IsaacGym reports them only in ``info["time_outs"]`` (TorchRL's wrapper calls every ``done``
  ``terminated``): :func:`isaacgym_env` reads them with TorchRL's info-dict reader and
  :class:`TimeOutsAsTruncation` marks them ``truncated``, so GAE and the relabelled TD(0) targets bootstrap
  from ``V(s_{t+1})`` there, as the released code does (``value_bootstrap: True``) on the hand tasks. The
  observation IsaacGym returns at a done step is the final one (it resets in the next step's
  ``pre_physics_step``). Isaac Lab reports ``truncated`` itself but resets inside its step, so the final
  observation is not available (TorchRL's wrapper gives zeros or NaN in its place):
  :class:`BootstrapFromCurrentState` puts the current observation there, i.e. a truncated step bootstraps from
  ``V(s_t)``, which is the released code's reward folding ``r_t += gamma V(s_t)`` at a time-out;
- one simulator per process: the presets set ``train.eval_interval: 0`` so that no second (evaluation) env
  is created; the leader's training episodes are the learning curve, as in the paper;
- IsaacGym wants ``import isaacgym`` before ``import torch``; the recipe imports torch first, so you may need
  ``python -c "import isaacgym, runpy; runpy.run_path('recipes/sapg.py', run_name='__main__')" env=...``
  or an ``import isaacgym`` at the top of your own launcher.
"""

from __future__ import annotations

import importlib.util

import torch
from tensordict import TensorDictBase
from torchrl.data import Composite
from torchrl.envs import EnvBase, TransformedEnv
from torchrl.envs.transforms import Compose, RenameTransform, Transform, UnsqueezeTransform

from sapg_torchrl.errors import ConfigError

__all__ = ["isaacgym_env", "isaaclab_env", "sapg_view", "TrailingDoneDim", "TimeOutsAsTruncation", "BootstrapFromCurrentState"]

ISAACGYM_INSTALL = (
    "IsaacGym task {task!r} needs IsaacGym and IsaacGymEnvs (not on PyPI; Linux, NVIDIA GPU, Python 3.6-3.8): "
    "download Isaac Gym Preview 4 from https://developer.nvidia.com/isaac-gym, `pip install -e isaacgym/python`, "
    "then `git clone https://github.com/isaac-sim/IsaacGymEnvs && pip install -e IsaacGymEnvs`"
)
ISAACLAB_INSTALL = (
    "Isaac Lab task {task!r} needs Isaac Lab with Isaac Sim (Linux or Windows, NVIDIA GPU, Python 3.10/3.11): "
    "`pip install 'isaaclab[isaacsim,all]' --extra-index-url https://pypi.nvidia.com` "
    "(see https://isaac-sim.github.io/IsaacLab for other ways)"
)


def _require(modules: tuple[str, ...], message: str) -> None:
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"{message} (missing: {', '.join(missing)})")
    if not torch.cuda.is_available():
        raise ConfigError(f"{message.split(' needs ')[0]} needs an NVIDIA GPU with CUDA: none found here")


class TrailingDoneDim(Transform):
    """Gives ``done``/``terminated``/``truncated`` a trailing singleton dim (``[N]`` -> ``[N, 1]``).

    TorchRL's IsaacGym wrapper squeezes its done flags to ``[N]``; SAPG's value estimators and losses expect
    ``[N, 1]``, like the reward. Flags that already have it are left alone. A partial-reset mask
    (``"_reset"``, ``[N, 1]``) is reshaped back to ``[N]`` on its way into the base env.
    """

    DONE_KEYS = ("done", "terminated", "truncated")

    def __init__(self, keys=DONE_KEYS):
        super().__init__(in_keys=list(keys), out_keys=list(keys))

    def _unsqueeze(self, tensordict: TensorDictBase) -> TensorDictBase:
        for key in self.in_keys:
            value = tensordict.get(key, None)
            if value is not None and value.shape == tensordict.batch_size:
                tensordict.set(key, value.unsqueeze(-1))
        return tensordict

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        return self._unsqueeze(next_tensordict)

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        return self._unsqueeze(tensordict_reset)

    def _reset_env_preprocess(self, tensordict: TensorDictBase | None) -> TensorDictBase | None:
        # the partial-reset mask arrives as [N, 1] (our done spec); the base env expects its own [N]
        if tensordict is not None and "_reset" in tensordict.keys():
            reset = tensordict.get("_reset")
            if reset.shape != tensordict.batch_size:
                tensordict = tensordict.clone(False).set("_reset", reset.reshape(tensordict.batch_size))
        return tensordict

    def transform_done_spec(self, done_spec: Composite) -> Composite:
        for key in self.in_keys:
            if key in done_spec.keys() and done_spec[key].shape == done_spec.shape:
                done_spec[key] = done_spec[key].unsqueeze(-1)
        return done_spec


class TimeOutsAsTruncation(Transform):
    """Splits ``done`` into ``terminated`` and ``truncated`` by a time-out flag that the env writes
    (IsaacGym's ``info["time_outs"]``, read into the step's output by TorchRL's info-dict reader):
    ``truncated = done & time_out``, ``terminated = done & ~time_out``. Value estimators then bootstrap at
    time-outs and not at real terminations.

    Args:
        time_out_key (NestedKey): where the time-out flag is. Defaults to ``"time_outs"``.
    """

    def __init__(self, time_out_key="time_outs"):
        super().__init__(in_keys=[time_out_key], out_keys=["terminated", "truncated"])

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        done = next_tensordict.get("done")
        time_out = next_tensordict.get(self.in_keys[0]).reshape(done.shape).bool() & done
        next_tensordict.set("truncated", time_out)
        return next_tensordict.set("terminated", done & ~time_out)

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        if "truncated" not in tensordict_reset.keys():
            tensordict_reset.set("truncated", torch.zeros_like(tensordict_reset.get("done")))
        return tensordict_reset

    def transform_done_spec(self, done_spec: Composite) -> Composite:
        if "truncated" not in done_spec.keys():
            done_spec["truncated"] = done_spec["done"].clone()
        return done_spec


class BootstrapFromCurrentState(Transform):
    """For envs whose final observation is lost at a truncation (Isaac Lab resets inside its step): puts the
    current observation in its place, so a truncated step bootstraps from ``V(s_t)`` (the released code's
    ``r_t += gamma V(s_t)`` at a time-out) instead of from a zero or reset observation. Terminated steps
    do not bootstrap, so their next observation is left alone.

    Args:
        observation_keys (list of NestedKey): the observation entries (an asymmetric critic's too). Defaults to
            ``["observation"]``.
    """

    def __init__(self, observation_keys=("observation",)):
        super().__init__(in_keys=list(observation_keys), out_keys=list(observation_keys))

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        truncated = next_tensordict.get("truncated")
        for key in self.in_keys:
            final = next_tensordict.get(key)
            current = tensordict.get(key)
            where = truncated.reshape(*truncated.shape[:1], *[1] * (final.ndim - 1))
            next_tensordict.set(key, torch.where(where, current, final))
        return next_tensordict


def sapg_view(
    env: EnvBase,
    observation_key: str = "observation",
    *,
    time_out_key: str | None = None,
    final_observation_available: bool = True,
) -> EnvBase:
    """What SAPG reads from a batched GPU env: the policy observation as ``"observation"``, reward and done
    flags as ``[N, 1]``, time-outs as ``truncated``.

    Args:
        env (EnvBase): a batched TorchRL env (batch size ``[N]``).
        observation_key (str): the key of the policy observation in ``env`` (``"obs"`` for IsaacGym,
            ``"policy"`` for Isaac Lab when the wrapper has not already renamed it). Other observation
            entries (privileged ones: IsaacGym's ``"states"``, Isaac Lab's ``"critic"``) pass through under their
            own names, for an asymmetric critic (``network.critic_observation_keys``).

    Keyword Args:
        time_out_key (str, optional): a time-out flag the env writes (IsaacGym: ``"time_outs"``); done steps
            with it set become ``truncated`` (:class:`TimeOutsAsTruncation`).
        final_observation_available (bool): ``False`` where the env loses the final observation at a
            truncation (Isaac Lab): :class:`BootstrapFromCurrentState` then bootstraps from ``V(s_t)``.

    Returns:
        ``env`` itself if nothing needs changing, else ``env`` in a :class:`~torchrl.envs.TransformedEnv`.
    """
    transforms = []
    observation_keys = set(env.observation_spec.keys())
    if "observation" not in observation_keys:
        if observation_key not in observation_keys:
            found = sorted(map(str, observation_keys))
            raise ConfigError(f"the env has no observation {observation_key!r}; its observations are {found}")
        transforms.append(RenameTransform([observation_key], ["observation"]))
    flat_done = [k for k in env.full_done_spec.keys() if env.full_done_spec[k].shape == env.batch_size]
    if flat_done:
        transforms.append(TrailingDoneDim(flat_done))
    reward_shape = env.full_reward_spec["reward"].shape
    if reward_shape == env.batch_size:
        transforms.append(UnsqueezeTransform(-1, in_keys=["reward"], out_keys=["reward"]))
    if time_out_key is not None:
        transforms.append(TimeOutsAsTruncation(time_out_key))
    if not final_observation_available:  # every observation entry: the policy's and the privileged ones
        entries = ["observation", *sorted(k for k in observation_keys if k not in ("observation", observation_key))]
        transforms.append(BootstrapFromCurrentState(entries))
    if not transforms:
        return env
    return TransformedEnv(env, Compose(*transforms))


def isaacgym_env(
    num_envs: int,
    seed: int,
    task: str,
    *,
    device: str = "cuda:0",
    headless: bool = True,
    overrides: list[str] | None = None,
) -> EnvBase:
    """An IsaacGymEnvs task through TorchRL's :class:`~torchrl.envs.libs.isaacgym.IsaacGymWrapper`. Untested here.

    Args:
        num_envs (int): number of parallel envs (the simulator's ``num_envs``).
        seed (int): simulator seed.
        task (str): IsaacGymEnvs task name, e.g. ``"AllegroHand"``, ``"ShadowHand"``, ``"AllegroKukaLSTM"``.

    Keyword Args:
        device (str): simulation and RL device of the simulator. Defaults to ``"cuda:0"``.
        headless (bool): no viewer. Defaults to ``True``.
        overrides (list of str, optional): extra overrides of IsaacGymEnvs' own Hydra config, e.g.
            ``["task/env=regrasping"]`` for the AllegroKuka sub-tasks.

    Raises:
        ConfigError: IsaacGym or IsaacGymEnvs is not installed, or there is no CUDA GPU.
    """
    _require(("isaacgym", "isaacgymenvs"), ISAACGYM_INSTALL.format(task=task))
    from torchrl.envs.libs.isaacgym import IsaacGymEnv, IsaacGymWrapper

    cfg = _isaacgymenvs_cfg(task, num_envs, seed, device, headless, list(overrides or []))
    envs = IsaacGymEnv._make_envs(
        task=task, num_envs=num_envs, device=device, seed=seed, headless=headless, virtual_screen_capture=False,
        cfg=cfg,
    )  # fmt: skip
    from torchrl.data import Unbounded
    from torchrl.envs import default_info_dict_reader

    wrapper = IsaacGymWrapper(envs)
    time_outs = Unbounded(shape=wrapper.batch_size, dtype=torch.bool, device=wrapper.device)
    wrapper.set_info_dict_reader(default_info_dict_reader(["time_outs"], spec={"time_outs": time_outs}))
    return sapg_view(wrapper, observation_key="obs", time_out_key="time_outs")


def _isaacgymenvs_cfg(task, num_envs, seed, device, headless, overrides):
    """IsaacGymEnvs' composed config with ``overrides`` (``None`` without: ``isaacgymenvs.make`` composes it)."""
    if not overrides:
        return None
    import isaacgymenvs  # noqa: F401  (registers the OmegaConf resolvers its config uses)
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    outer = GlobalHydra.instance().hydra  # the recipe's own Hydra: put it back afterwards
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("isaacgymenvs.cfg", version_base="1.1"):
            return compose(
                "config",
                overrides=[f"task={task}", f"num_envs={num_envs}", f"seed={seed}", f"sim_device={device}",
                           f"rl_device={device}", f"headless={headless}", *overrides],
            )  # fmt: skip
    finally:
        GlobalHydra.instance().clear()
        GlobalHydra.instance().hydra = outer


def isaaclab_env(num_envs: int, seed: int, task: str, *, device: str = "cuda:0", headless: bool = True) -> EnvBase:
    """An Isaac Lab task through TorchRL's :class:`~torchrl.envs.libs.isaac_lab.IsaacLabWrapper`. Untested here.

    Starts the Isaac Sim app (headless by default) if it is not running, builds the task's registered config
    with ``num_envs`` and ``seed`` and wraps the env.

    Args:
        num_envs (int): number of parallel envs.
        seed (int): simulator seed.
        task (str): a registered Isaac Lab task id, e.g. ``"Isaac-Repose-Cube-Allegro-Direct-v0"``.

    Keyword Args:
        device (str): simulation device. Defaults to ``"cuda:0"``.
        headless (bool): no viewer. Defaults to ``True``.

    Raises:
        ConfigError: Isaac Lab is not installed, or there is no CUDA GPU.
    """
    _require(("isaaclab", "isaaclab_tasks"), ISAACLAB_INSTALL.format(task=task))
    from isaaclab.app import AppLauncher

    global _ISAAC_APP
    if _ISAAC_APP is None:
        _ISAAC_APP = AppLauncher(headless=headless, device=device)  # must exist before isaaclab_tasks is imported
    import gymnasium as gym
    import isaaclab_tasks  # noqa: F401  (registers the tasks)
    from isaaclab_tasks.utils import parse_env_cfg
    from torchrl.envs.libs.isaac_lab import IsaacLabWrapper

    cfg = parse_env_cfg(task, device=device, num_envs=num_envs)
    cfg.seed = seed
    env = IsaacLabWrapper(gym.make(task, cfg=cfg), device=torch.device(device))
    return sapg_view(env, observation_key="policy", final_observation_available=False)


_ISAAC_APP = None
