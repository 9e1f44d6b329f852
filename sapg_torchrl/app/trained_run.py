"""A trained run, evaluated, watched and exported: its leader (or every block) on fresh envs, a video of an
episode, and the leader as an ONNX or TorchScript file.

:func:`evaluate_run` loads a run folder's config and a checkpoint (the newest readable one by default), runs the
chosen blocks' policies (or an exported file) for one episode on each of ``episodes`` fresh envs per block and
returns per-block returns; :func:`record_video` renders one episode of a block's policy through gymnasium's
off-screen renderer; :func:`export_run` writes a block's deterministic policy to ``<run>/export/``
(:mod:`sapg_torchrl.deploy`). ``recipes/evaluate.py`` and ``recipes/export.py`` are the command lines.

Rendering works where gymnasium can render the task off-screen: the envpool presets whose task is also a
gymnasium task, i.e. ``mountaincar`` (classic control, needs ``pygame``), ``halfcheetah``, ``ant`` and
``humanoid`` (MuJoCo; set ``MUJOCO_GL=egl`` on a machine without a display). It does not work for
``adroit_pen``, ``hand_block_rotate`` and ``leap_cube_reorient`` (no gymnasium renderer installed), ``brax_ant``
nor the IsaacGym and Isaac Lab presets (their own viewers).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from torchrl.envs import ExplorationType, set_exploration_type
from torchrl.envs.transforms import InitTracker

from sapg_torchrl.app.build import Agent, build_agent, simulator_factory
from sapg_torchrl.app.run_folder import saved_config
from sapg_torchrl.blocks import BlockLayout
from sapg_torchrl.deploy import EXPORT_FORMATS, DeployedPolicy, ExportedPolicy, export_policy
from sapg_torchrl.envs.factory import make_sapg_env
from sapg_torchrl.errors import ConfigError
from sapg_torchrl.training.checkpoint import load_checkpoint
from sapg_torchrl.training.device import device_of
from sapg_torchrl.training.evaluation import at_episode_end
from sapg_torchrl.training.sinks import aside

__all__ = ["RENDERABLE_PRESETS", "deployed_policy", "evaluate_run", "export_run", "load_run", "record_video"]

RENDERABLE_PRESETS = ("mountaincar", "halfcheetah", "ant", "humanoid")


def load_run(run_dir: str | Path, checkpoint: str | None = None) -> tuple[DictConfig, Path, dict]:
    """The run's resolved config and a checkpoint (``checkpoint``: a file name in ``checkpoints/`` or a path;
    ``None``: the newest readable one). Bad folders and checkpoints: :class:`ConfigError` naming them."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"run={run_dir}: not a run folder (no config.yaml)")
    found = load_checkpoint(run_dir / "checkpoints", checkpoint)
    if found is None:
        raise ConfigError(f"run={run_dir}: no readable checkpoint in {run_dir / 'checkpoints'}")
    path, state = found
    return OmegaConf.create(saved_config(run_dir)), path, state


def _layout(cfg: DictConfig) -> BlockLayout:
    return BlockLayout(cfg.env.num_envs, cfg.sapg.num_blocks, cfg.sapg.leader)


def _agent(cfg: DictConfig, state: dict, env, device) -> Agent:
    agent = build_agent(cfg, env, _layout(cfg), device)
    agent.loss.load_state_dict(state["loss"])
    return agent


def _one_block(spec: str | int, layout: BlockLayout) -> int | None:
    """``"leader"`` or a valid block index as a block index; ``None`` for anything else."""
    if spec == "leader":
        return layout.leader
    if isinstance(spec, int) and not isinstance(spec, bool) and 0 <= spec < layout.num_blocks:
        return spec
    return None


def _block(spec: str | int, layout: BlockLayout) -> int:
    """One block (``block=``): ``"leader"`` or an index."""
    chosen = _one_block(spec, layout)
    if chosen is None:
        raise ConfigError(f"block={spec!r} is not accepted: use 'leader' or a block index in [0, {layout.num_blocks})")
    return chosen


def _blocks(spec: str | int, layout: BlockLayout) -> list[int]:
    """Blocks to evaluate (``blocks=``): ``"leader"``, ``"all"`` or an index."""
    if spec == "all":
        return list(range(layout.num_blocks))
    chosen = _one_block(spec, layout)
    if chosen is None:
        raise ConfigError(f"blocks={spec!r} is not accepted: use 'leader', 'all' or a block index in [0, {layout.num_blocks})")
    return [chosen]


@torch.no_grad()
def evaluate_run(
    run_dir: str | Path,
    *,
    checkpoint: str | None = None,
    episodes: int = 10,
    blocks: str | int = "leader",
    deterministic: bool = True,
    seed: int = 0,
    device: str = "cpu",
    policy: str | Path | None = None,
) -> dict:
    """Runs the chosen blocks of a trained run (or an exported file of it) for one episode on each of ``episodes``
    fresh envs per block.

    Args:
        run_dir (path): a run folder (``config.yaml``, ``checkpoints/``).

    Keyword Args:
        checkpoint (str, optional): a file of ``checkpoints/`` or a path; the newest readable one by default.
        episodes (int): episodes (fresh envs) per block. Defaults to ``10``.
        blocks (str or int): ``"leader"`` (default), ``"all"`` or a block index.
        deterministic (bool): the policy's mean action (default) or sampled actions.
        seed (int): seed of the envs and of the sampled actions. Defaults to ``0``.
        device (str): where the policy runs. Defaults to ``"cpu"``.
        policy (path, optional): an exported file (:func:`export_run`) to run instead of the checkpoint's actor,
            on the run's task; its block is the one evaluated (``blocks`` must be left at ``"leader"`` or name
            it) and it acts deterministically. ``checkpoint`` then only names the reported iteration's source.

    Returns:
        A dict with ``checkpoint``, ``iteration``, ``frames``, ``episodes``, ``deterministic`` and ``blocks``:
        block -> ``return_mean``, ``return_std``, ``completed``, ``success_rate``, over the first complete
        episode of each env; ``completed`` counts
        the envs that completed one within the preset's ``eval_steps``; ``success_rate`` where the env reports a
        ``success`` entry (``None`` otherwise).
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ConfigError(f"episodes={episodes!r} is not accepted: use an integer >= 1")
    cfg, path, state = load_run(run_dir, checkpoint)
    torch.manual_seed(seed)
    device = device_of(device)
    exported = None if policy is None else ExportedPolicy(policy)
    if exported is not None:
        device = torch.device("cpu")
        if not deterministic:
            raise ConfigError(f"deterministic=false is not accepted with policy={policy}: an exported policy acts with its mean")
        if blocks not in ("leader", exported.metadata["block"]):
            raise ConfigError(f"blocks={blocks!r} is not accepted with policy={policy}: the file holds block {exported.metadata['block']} only")
        chosen = [exported.metadata["block"]]
    else:
        chosen = _blocks(blocks, _layout(cfg))
    block_ids = torch.tensor(chosen).repeat_interleave(episodes)
    make_base = simulator_factory(cfg.env.make, device)
    env = make_sapg_env(make_base(num_envs=len(block_ids), seed=seed + 2_000_000), block_ids,
                        reward_scale=cfg.env.reward_scale)  # fmt: skip
    if exported is not None:
        if exported.state_shape is not None:
            env.append_transform(InitTracker())
        actor = _ExportedActor(exported)
    else:
        actor = _agent(cfg, state, env, device).actor
    exploration = ExplorationType.DETERMINISTIC if deterministic else ExplorationType.RANDOM
    with set_exploration_type(exploration):
        rollout = env.rollout(cfg.env.eval_steps, actor, break_when_any_done=False)
    env.close()
    returns, finished = at_episode_end(rollout)
    success = at_episode_end(rollout, "success")[0] if ("next", "success") in rollout.keys(True) else None
    out = {}
    for i, block in enumerate(chosen):
        rows = slice(i * episodes, (i + 1) * episodes)
        completed = finished[rows]
        values = returns[rows][completed]
        rate = None
        if success is not None:
            hit = success[rows][completed]
            rate = float(hit.float().mean()) if hit.numel() else math.nan
        out[block] = {
            "return_mean": float(values.mean()) if values.numel() else math.nan,
            "return_std": float(values.std(correction=0)) if values.numel() else math.nan,
            "completed": int(completed.sum()),
            "success_rate": rate,
        }
    source = {"checkpoint": path.name} if exported is None else {"checkpoint": exported.metadata.get("checkpoint"), "policy": str(policy)}
    return {
        **source, "iteration": state["iteration"] if exported is None else exported.metadata.get("iteration"),
        "frames": state["frames"] if exported is None else exported.metadata.get("frames"), "episodes": episodes,
        "deterministic": deterministic, "blocks": out,
    }  # fmt: skip


class _ExportedActor:
    """An exported file acting in a TorchRL rollout: reads ``observation``, writes ``action``; a recurrent file's
    state is kept here between steps and zeroed where an episode starts (``is_init``)."""

    def __init__(self, policy: ExportedPolicy):
        self.policy, self.state = policy, None

    def __call__(self, td):
        observation = td.get("observation")
        if self.policy.state_shape is None:
            (action,) = self.policy(observation)
        else:
            if self.state is None:
                self.state = [np.zeros((observation.shape[0], *self.policy.state_shape), np.float32) for _ in range(2)]
            starts = td.get("is_init").reshape(-1).numpy()
            for part in self.state:
                part[starts] = 0.0
            action, *self.state = self.policy(observation, *self.state)
        return td.set("action", torch.as_tensor(action))


def deployed_policy(
    run_dir: str | Path, *, block: str | int = "leader", checkpoint: str | None = None
) -> tuple[DeployedPolicy, DictConfig, Path, dict]:
    """A block's deterministic policy (the leader's by default) of a trained run, on the CPU, with the run's config,
    the checkpoint's path and its state: what :func:`export_run` writes, as a module."""
    cfg, checkpoint_path, state = load_run(run_dir, checkpoint)
    chosen = _block(block, _layout(cfg))
    make_base = simulator_factory(cfg.env.make, torch.device("cpu"))
    probe_env = make_sapg_env(make_base(num_envs=1, seed=0), torch.zeros(1, dtype=torch.long))
    agent = _agent(cfg, state, probe_env, torch.device("cpu"))
    observation_dim = probe_env.observation_spec["observation"].shape[-1]
    spec = probe_env.action_spec
    low, high = spec.space.low.reshape(-1, spec.shape[-1])[0], spec.space.high.reshape(-1, spec.shape[-1])[0]
    probe_env.close()
    return DeployedPolicy(agent.actor, observation_dim, chosen, low, high), cfg, checkpoint_path, state


def export_run(
    run_dir: str | Path, *, format: str = "onnx", block: str | int = "leader", checkpoint: str | None = None
) -> dict:
    """Writes a block's deterministic policy (the leader's by default) of a trained run to
    ``<run>/export/<leader|block<b>>.onnx`` (or ``.pt``), :class:`~sapg_torchrl.deploy.DeployedPolicy` exported by
    :func:`~sapg_torchrl.deploy.export_policy`; a file already there is moved aside (``leader.previous.onnx``).

    Returns:
        The file's self-description (``metadata``: inputs, outputs, sizes, block, action bounds, run, checkpoint,
        iteration, frames, task) and its ``path``.
    """
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"format={format!r} is not accepted: use one of {', '.join(EXPORT_FORMATS)}")
    policy, cfg, checkpoint_path, state = deployed_policy(run_dir, block=block, checkpoint=checkpoint)
    chosen = int(policy.block_id)
    name = "leader" if block == "leader" else f"block{chosen}"
    target = Path(run_dir) / "export" / f"{name}{EXPORT_FORMATS[format]}"
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.rename(aside(target, "previous"))
    provenance = {
        "run": str(Path(run_dir).resolve()), "checkpoint": checkpoint_path.name, "iteration": state["iteration"],
        "frames": state["frames"], "task": cfg.env.make.get("env_name", cfg.env.make.get("_target_")),
    }  # fmt: skip
    export_policy(policy, target, format, provenance)
    return {"path": str(target), "metadata": {**policy.describe(), **provenance}}


@torch.no_grad()
def record_video(
    run_dir: str | Path,
    path: str | Path | None = None,
    *,
    checkpoint: str | None = None,
    block: str | int = "leader",
    deterministic: bool = True,
    seed: int = 0,
    fps: int = 30,
) -> dict:
    """Renders one episode of a block's policy (the leader by default) to ``path`` (``.gif``, or ``.mp4`` with
    ``imageio-ffmpeg``; default ``<run>/videos/<checkpoint>_block<b>.gif``) through gymnasium's off-screen
    renderer; returns ``{"path", "return", "steps", "block"}``.

    Only presets whose task gymnasium can render (:data:`RENDERABLE_PRESETS`); others get :class:`ConfigError`.
    """
    import gymnasium as gym
    import imageio.v2 as imageio

    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame (classic control) renders off-screen, no display
    cfg, checkpoint_path, state = load_run(run_dir, checkpoint)
    env_name = cfg.env.make.get("env_name")
    try:
        env = gym.make(env_name, render_mode="rgb_array", max_episode_steps=cfg.env.eval_steps)
    except Exception as error:  # noqa: BLE001 (unknown to gymnasium, renderer missing: one line either way)
        raise ConfigError(
            f"video: the task {env_name!r} cannot be rendered here ({type(error).__name__}: {str(error).splitlines()[0]}); "
            f"renderable presets: {', '.join(RENDERABLE_PRESETS)}"
        ) from None
    torch.manual_seed(seed)
    make_base = simulator_factory(cfg.env.make, torch.device("cpu"))
    probe_env = make_sapg_env(make_base(num_envs=1, seed=seed), torch.zeros(1, dtype=torch.long))
    agent = _agent(cfg, state, probe_env, torch.device("cpu"))
    probe_env.close()
    chosen = _block(block, _layout(cfg))
    observation, _ = env.reset(seed=seed)
    frames, total, steps = [env.render()], 0.0, 0
    memory = TensorDict({}, batch_size=[1])
    exploration = ExplorationType.DETERMINISTIC if deterministic else ExplorationType.RANDOM
    with set_exploration_type(exploration):
        while True:
            td = TensorDict(
                observation=torch.as_tensor(observation, dtype=torch.float32)[None], block_id=torch.tensor([chosen]),
                is_init=torch.tensor([[steps == 0]]), batch_size=[1],
            ).update(memory)  # fmt: skip
            td = agent.actor(td)
            memory = td.get("next", TensorDict({}, batch_size=[1])).exclude("observation", "block_id")
            action = np.clip(td["action"][0].numpy(), env.action_space.low, env.action_space.high)  # as in training
            observation, reward, terminated, truncated, _ = env.step(action)
            total, steps = total + float(reward), steps + 1
            frames.append(env.render())
            if terminated or truncated:
                break
    env.close()
    path = Path(run_dir) / "videos" / f"{checkpoint_path.stem}_block{chosen}.gif" if path is None else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gif":
        imageio.mimsave(path, frames, duration=1000 / fps, loop=0)
    else:
        imageio.mimsave(path, frames, fps=fps)
    return {"path": str(path), "return": total, "steps": steps, "block": chosen}
