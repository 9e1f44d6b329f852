"""A trained run, evaluated and watched: its leader (or every block) on fresh envs, and a video of an episode.

:func:`evaluate_run` loads a run folder's config and a checkpoint (the newest readable one by default), runs the
chosen blocks' policies for one episode on each of ``episodes`` fresh envs per block and returns per-block
returns; :func:`record_video` renders one episode of a block's policy through gymnasium's off-screen renderer.
``recipes/evaluate.py`` is the command line.

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

from sapg_torchrl.app.build import Agent, build_agent, simulator_factory
from sapg_torchrl.app.run_folder import saved_config
from sapg_torchrl.blocks import BlockLayout
from sapg_torchrl.envs.factory import make_sapg_env
from sapg_torchrl.errors import ConfigError
from sapg_torchrl.training.checkpoint import load_checkpoint
from sapg_torchrl.training.device import device_of
from sapg_torchrl.training.evaluation import at_episode_end

__all__ = ["RENDERABLE_PRESETS", "evaluate_run", "load_run", "record_video"]

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


def _blocks(spec: str | int, layout: BlockLayout) -> list[int]:
    if spec == "leader":
        return [layout.leader]
    if spec == "all":
        return list(range(layout.num_blocks))
    if isinstance(spec, int) and not isinstance(spec, bool) and 0 <= spec < layout.num_blocks:
        return [spec]
    raise ConfigError(f"blocks={spec!r} is not accepted: use 'leader', 'all' or a block index in [0, {layout.num_blocks})")


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
) -> dict:
    """Runs the chosen blocks of a trained run for one episode on each of ``episodes`` fresh envs per block.

    Args:
        run_dir (path): a run folder (``config.yaml``, ``checkpoints/``).

    Keyword Args:
        checkpoint (str, optional): a file of ``checkpoints/`` or a path; the newest readable one by default.
        episodes (int): episodes (fresh envs) per block. Defaults to ``10``.
        blocks (str or int): ``"leader"`` (default), ``"all"`` or a block index.
        deterministic (bool): the policy's mean action (default) or sampled actions.
        seed (int): seed of the envs and of the sampled actions. Defaults to ``0``.
        device (str): where the policy runs. Defaults to ``"cpu"``.

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
    chosen = _blocks(blocks, _layout(cfg))
    block_ids = torch.tensor(chosen).repeat_interleave(episodes)
    make_base = simulator_factory(cfg.env.make, device)
    env = make_sapg_env(make_base(num_envs=len(block_ids), seed=seed + 2_000_000), block_ids,
                        reward_scale=cfg.env.reward_scale)  # fmt: skip
    agent = _agent(cfg, state, env, device)
    exploration = ExplorationType.DETERMINISTIC if deterministic else ExplorationType.RANDOM
    with set_exploration_type(exploration):
        rollout = env.rollout(cfg.env.eval_steps, agent.actor, break_when_any_done=False)
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
    return {
        "checkpoint": path.name, "iteration": state["iteration"], "frames": state["frames"], "episodes": episodes,
        "deterministic": deterministic, "blocks": out,
    }  # fmt: skip


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
    (chosen,) = _blocks(block, _layout(cfg))
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
