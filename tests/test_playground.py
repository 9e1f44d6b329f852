"""The MuJoCo Playground adapter and its LEAP preset on JAX's CPU backend: per-env resets, time limits reported as
truncations, the envpool preset's specs, a run that trains, resumes and evaluates; one-line errors.

JAX compiles each task for minutes on 2 cores (LEAP: several per batch size), so all but the error checks are in
the slow suite, and skip without Playground: ``pip install -e ".[test,playground]"``."""

import csv
import importlib.util

import pytest
import torch

from sapg_torchrl import ConfigError
from sapg_torchrl.envs.playground import PlaygroundBatchEnv

needs_playground = pytest.mark.skipif(
    importlib.util.find_spec("mujoco_playground") is None, reason="pip install -e '.[playground]'"
)
slow_playground = [pytest.mark.slow, needs_playground]

# N = 12 (6 blocks of 2), T = 4, 2 iterations, an evaluation of 2 envs for 4 steps
TINY = (
    "device=cpu", "logger.wandb=false", "train.progress=false", "env.num_envs=12", "ppo.horizon=4", "ppo.epochs=1",
    "total_frames=96", "network.hidden=[16]", "env.eval_envs=2", "env.eval_steps=4", "train.eval_interval=2",
    "train.checkpoint_interval=1",
)  # fmt: skip


def test_without_playground_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mujoco_playground" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs MuJoCo Playground: pip install 'sapg-torchrl\[playground\]'"):
        PlaygroundBatchEnv(2, "LeapCubeReorient")


def test_the_preset_is_the_envpool_task_at_gpu_scale(compose_cfg):
    """The envpool preset's task, observation split, network and reward scale; N for a GPU, a multiple of M."""
    gpu, cpu = compose_cfg("env=playground_leap_cube_reorient"), compose_cfg("env=leap_cube_reorient")
    assert gpu.env.make.env_name == "LeapCubeReorient" and cpu.env.make.env_name == "LeapCubeReorient-v1"
    for key in ("observation_keys", "privileged_observation_keys"):
        assert gpu.env.make[key] == cpu.env.make[key]
    assert gpu.network == cpu.network and gpu.env.reward_scale == cpu.env.reward_scale
    assert gpu.env.eval_steps == gpu.env.make.episode_length == 1000
    assert gpu.env.num_envs >= 8192 and gpu.env.num_envs % gpu.sapg.num_blocks == 0 and gpu.device == "auto"


@pytest.fixture(scope="module")
def point_mass():
    return PlaygroundBatchEnv(4, "PointMass", episode_length=3, seed=0)


@pytest.mark.slow
@needs_playground
def test_time_limit_is_a_truncation(point_mass):
    rollout = point_mass.rollout(7, break_when_any_done=False)
    done = rollout["next", "done"].squeeze(-1)
    assert done[:, [2, 5]].all() and done.sum() == 8
    assert torch.equal(rollout["next", "truncated"], rollout["next", "done"])
    assert not rollout["next", "terminated"].any()
    assert rollout["observation"].dtype == torch.float32 and rollout["next", "reward"].shape == (4, 7, 1)


@pytest.mark.slow
@needs_playground
def test_reset_restarts_only_the_masked_envs(point_mass):
    stepped = point_mass.step(point_mass.full_action_spec.rand().update(point_mass.reset()))["next"]
    mask = torch.tensor([True, False, False, True])
    out = point_mass.reset(stepped.clone().set("_reset", mask[:, None]))
    before, after = stepped["observation"], out["observation"]
    assert torch.equal(after[~mask], before[~mask])
    assert not torch.equal(after[mask], before[mask])


@pytest.mark.slow
@needs_playground
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"env_name": "LeapCubeReorientt"}, r"unknown MuJoCo Playground env 'LeapCubeReorientt'; accepted: .*LeapCubeReorient\b"),
        ({"env_name": "PointMass", "observation_keys": ["state"]}, r"observation_keys=\['state'\] is for dict observations"),
        ({"env_name": "LeapCubeReorient", "observation_keys": ["stat"]},
         r"observation_keys=\['stat'\] names \['stat'\], which the task does not have; its observations are "
         r"\['privileged_state', 'state'\]"),
        ({"env_name": "LeapCubeReorient", "menagerie": "/nonexistent"}, r"menagerie='/nonexistent' is not a folder"),
    ],
)  # fmt: skip
def test_bad_values_get_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PlaygroundBatchEnv(2, **kwargs)


@pytest.mark.slow
@needs_playground
def test_leap_trains_resumes_and_evaluates_on_the_cpu_backend(compose_cfg, tmp_path):
    """The preset at N = 12: the envpool preset's specs, two iterations, two more resumed from the checkpoint, an
    evaluation of the final leader."""
    from sapg_torchrl.app.build import build_runner
    from sapg_torchrl.app.run import train
    from sapg_torchrl.app.trained_run import evaluate_run

    specs = {}
    for preset in ("playground_leap_cube_reorient", "leap_cube_reorient"):
        runner = build_runner(compose_cfg(f"env={preset}", *TINY), tmp_path / preset)
        try:
            data = next(iter(runner.collector))
            specs[preset] = {k: (data[k].shape, data[k].dtype) for k in ("observation", "privileged_state", "action")}
            assert torch.isfinite(data["next", "reward"]).all()
        finally:
            runner.collector.shutdown()
            runner.env.close()
    assert specs["playground_leap_cube_reorient"] == specs["leap_cube_reorient"]
    assert specs["leap_cube_reorient"]["observation"][0] == (12, 4, 57)

    run = tmp_path / "run"
    train(compose_cfg("env=playground_leap_cube_reorient", *TINY), run)
    result = train(compose_cfg("env=playground_leap_cube_reorient", *TINY, "total_frames=192"), run)
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4] and result["frames"] == 192
    assert all(r["eval/episodes"] == "0.0" for r in rows if int(r["iteration"]) % 2 == 0)  # evaluated: 4 of 1000 steps
    evaluated = evaluate_run(run, episodes=2)  # within the run's eval_steps (4)
    assert evaluated["iteration"] == 4 and list(evaluated["blocks"]) == [5]
