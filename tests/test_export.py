"""recipes/export.py: a trained run's leader as ONNX and TorchScript files that act as the trained policy does (on
recorded observations, to 1e-5; MLP and LSTM), evaluate to the checkpoint's return, and the bad inputs."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from torchrl.envs import ExplorationType, set_exploration_type

from conftest import REPO, TINY_OVERRIDES, _compose
from sapg_torchrl import ConfigError
from sapg_torchrl.app.build import simulator_factory
from sapg_torchrl.app.run import train
from sapg_torchrl.app.trained_run import _agent, _layout, evaluate_run, export_run, load_run
from sapg_torchrl.deploy import ExportedPolicy
from sapg_torchrl.envs.factory import make_sapg_env

pytest.importorskip("onnxruntime")

NETWORKS = {"mlp": (), "lstm": ("network.lstm_size=8", "network.lstm_layer_norm=true")}


@pytest.fixture(scope="module", params=sorted(NETWORKS))
def run_dir(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"export_{request.param}") / "run"
    train(_compose(*TINY_OVERRIDES, "train.eval_interval=0", *NETWORKS[request.param]), folder)
    return folder


@pytest.fixture(scope="module")
def exported(run_dir):
    """The run's leader in both formats (each test that needs a file of its own exports it itself)."""
    return {format: export_run(run_dir, format=format) for format in ("onnx", "torchscript")}


def recorded_rollout(run_dir, steps=12, envs=4):
    """The trained leader's deterministic rollout (observations, episode starts, actions as the env received them)."""
    cfg, _, state = load_run(run_dir)
    layout = _layout(cfg)
    make_base = simulator_factory(cfg.env.make, torch.device("cpu"))
    env = make_sapg_env(make_base(num_envs=envs, seed=7), torch.full((envs,), layout.leader))
    agent = _agent(cfg, state, env, torch.device("cpu"))
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        rollout = env.rollout(steps, agent.actor, break_when_any_done=False)
    env.close()
    low, high = env.action_spec.space.low[0], env.action_spec.space.high[0]
    return rollout, torch.clamp(rollout["action"], low, high)


@pytest.mark.parametrize("format", ["onnx", "torchscript"])
def test_the_file_acts_as_the_trained_policy(run_dir, exported, format):
    exported = exported[format]
    policy = ExportedPolicy(exported["path"])
    rollout, actions = recorded_rollout(run_dir)
    envs, steps = rollout.shape
    state = None
    if policy.state_shape is not None:  # step by step, the state carried and zeroed where an episode starts
        state = [np.zeros((envs, *policy.state_shape), np.float32) for _ in range(2)]
        assert rollout["is_init"][:, 1:].any(), "the recording should cross an episode start"
    for t in range(steps):
        observation = rollout["observation"][:, t].numpy()
        if state is None:
            (action,) = policy(observation)
        else:
            for part in state:
                part[rollout["is_init"][:, t, 0].numpy()] = 0.0
            action, *state = policy(observation, *state)
        np.testing.assert_allclose(action, actions[:, t].numpy(), atol=1e-5, rtol=0)
    assert exported["metadata"]["block"] == 5 and exported["metadata"]["checkpoint"] == "final_iter_000010.pt"


def test_evaluating_the_file_gives_the_checkpoints_return(run_dir, exported):
    checkpoint = evaluate_run(run_dir, episodes=3)
    for format in ("onnx", "torchscript"):
        path = exported[format]["path"]
        from_file = evaluate_run(run_dir, episodes=3, policy=path)
        assert from_file["policy"] == path and from_file["iteration"] == checkpoint["iteration"]
        for key in ("return_mean", "return_std", "completed"):
            assert from_file["blocks"][5][key] == pytest.approx(checkpoint["blocks"][5][key], abs=1e-4)


def test_an_earlier_file_is_kept_and_a_block_is_named(run_dir):
    first = export_run(run_dir, block=2)
    second = export_run(run_dir, block=2)
    assert first["path"] == second["path"] and first["path"].endswith("export/block2.onnx")
    assert (run_dir / "export" / "block2.previous.onnx").exists()
    assert ExportedPolicy(second["path"]).metadata["block"] == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"format": "tflite"}, r"format='tflite' is not accepted: use one of onnx, torchscript"),
        ({"block": 6}, r"block=6 is not accepted: use 'leader' or a block index in \[0, 6\)"),
        ({"block": "all"}, r"block='all' is not accepted: use 'leader' or a block index in \[0, 6\)"),
        ({"checkpoint": "iter_999999.pt"}, r"checkpoint=iter_999999.pt: no such file"),
    ],
)
def test_bad_export_values_get_one_line(run_dir, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        export_run(run_dir, **kwargs)


def test_bad_evaluate_values_with_a_file(run_dir, exported, tmp_path):
    path = exported["onnx"]["path"]
    with pytest.raises(ConfigError, match=r"deterministic=false is not accepted with policy=.*: an exported policy acts with its mean"):
        evaluate_run(run_dir, policy=path, deterministic=False)
    with pytest.raises(ConfigError, match=r"blocks=2 is not accepted with policy=.*: the file holds block 5 only"):
        evaluate_run(run_dir, policy=path, blocks=2)
    with pytest.raises(ConfigError, match=r"policy='.*nothing.onnx' is not accepted: an exported .onnx or .pt file"):
        evaluate_run(run_dir, policy=tmp_path / "nothing.onnx")


def test_recipe_prints_the_interface_and_refuses_a_run_without_checkpoint(run_dir, tmp_path):
    if run_dir.parent.name.startswith("export_lstm"):
        pytest.skip("the command lines are the same for both networks: checked once")
    done = subprocess.run([sys.executable, str(REPO / "recipes" / "export.py"), f"run={run_dir}", "format=torchscript"],
                          capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "export/leader.pt: block 5" in done.stdout and "in: observation [batch, 2]" in done.stdout
    evaluate = [sys.executable, str(REPO / "recipes" / "evaluate.py"), f"run={run_dir}", f"policy={run_dir}/export/leader.pt"]
    done = subprocess.run([*evaluate, "episodes=2"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0 and "export/leader.pt, exported from final_iter_000010.pt" in done.stdout, done.stderr[-2000:]
    done = subprocess.run([*evaluate, "video=true"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: video=true is not accepted with policy=")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    done = subprocess.run([sys.executable, str(REPO / "recipes" / "export.py"), f"run={empty}", "format=onnx"],
                          capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert done.returncode == 2 and done.stderr.strip().startswith("error: run=") and "no readable checkpoint" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = subprocess.run([sys.executable, str(REPO / "recipes" / "export.py"), f"run={run_dir}", "format=tflite"],
                          capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert done.returncode == 2 and done.stderr.strip() == "error: format='tflite' is not accepted: one of onnx, torchscript"


def test_the_deploy_pages_onnxruntime_snippet_runs(run_dir, exported):
    """docs/deploy.rst's snippet, on this run's file: its first action (a zero state: an episode's start) is the
    trained policy's."""
    import re
    import textwrap

    page = (REPO / "docs" / "deploy.rst").read_text()
    (snippet,) = re.findall(r"\.\. code-block:: python\n\n(.*?)\n\n(?=\S)", page, re.S)
    path = exported["onnx"]["path"]
    scope = {}
    exec(compile(textwrap.dedent(snippet).replace('"run/export/leader.onnx"', repr(path)), "deploy.rst", "exec"), scope)
    rollout, actions = recorded_rollout(run_dir, steps=1)
    action = scope["act"](rollout["observation"][0, 0].numpy())
    np.testing.assert_allclose(action, actions[0, 0].numpy(), atol=1e-5)
