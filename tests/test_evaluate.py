"""recipes/evaluate.py: a trained run's blocks evaluated on fresh envs, eval.json, a video, and the bad inputs."""

import json
import subprocess
import sys

import pytest

from conftest import REPO
from sapg_torchrl import ConfigError
from sapg_torchrl.app.run import train
from sapg_torchrl.app.trained_run import evaluate_run, record_video


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import _compose, TINY_OVERRIDES

    folder = tmp_path_factory.mktemp("evaluate") / "run"
    train(_compose(*TINY_OVERRIDES, "train.eval_interval=0", "train.checkpoint_interval=5"), folder)
    return folder


def test_every_block_on_fresh_envs(run_dir):
    result = evaluate_run(run_dir, blocks="all", episodes=2)
    assert result["checkpoint"] == "final_iter_000010.pt" and result["iteration"] == 10
    assert sorted(result["blocks"]) == list(range(6))
    for numbers in result["blocks"].values():
        assert numbers["completed"] == 2 and numbers["success_rate"] is None  # 3-step episodes, no success key
        assert -10 < numbers["return_mean"] <= 0  # MountainCar pays only action costs within 3 steps
    leader = evaluate_run(run_dir, episodes=2)
    assert list(leader["blocks"]) == [5] and evaluate_run(run_dir, episodes=2) == leader  # deterministic, seeded
    named = evaluate_run(run_dir, checkpoint="iter_000005.pt", episodes=2, deterministic=False)
    assert named["iteration"] == 5


@pytest.mark.slow  # renders with pygame in a subprocess: ~30 s
def test_recipe_prints_writes_eval_json_and_a_video(run_dir):
    done = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "evaluate.py"), f"run={run_dir}", "episodes=2", "video=true"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "block 5: return" in done.stdout and "video:" in done.stdout
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved["blocks"]["5"]["completed"] == 2 and saved["video"]["steps"] == 5  # the preset's eval_steps
    video = run_dir / "videos" / "final_iter_000010_block5.gif"
    import imageio.v2 as imageio

    frames = imageio.mimread(video)
    assert len(frames) >= 2 and frames[0].shape == (400, 600, 3)
    again = subprocess.run([sys.executable, str(REPO / "recipes" / "evaluate.py"), f"run={run_dir}", "episodes=1"],
                           capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert again.returncode == 0 and (run_dir / "eval.previous.json").exists()  # the first is kept


def test_video_of_a_task_gymnasium_cannot_render(run_dir, tmp_path):
    import shutil

    other = tmp_path / "run"
    shutil.copytree(run_dir, other)
    config = (other / "config.yaml").read_text().replace("MountainCarContinuous-v0", "NoSuchTask-v0")
    (other / "config.yaml").write_text(config)
    with pytest.raises(ConfigError, match=r"video: the task 'NoSuchTask-v0' cannot be rendered here .*renderable presets"):
        record_video(other)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"blocks": "some"}, r"blocks='some' is not accepted: use 'leader', 'all' or a block index in \[0, 6\)"),
        ({"blocks": 6}, r"blocks=6 is not accepted"),
        ({"episodes": 0}, r"episodes=0 is not accepted: use an integer >= 1"),
        ({"checkpoint": "iter_999999.pt"}, r"checkpoint=iter_999999.pt: no such file; .* holds \['final_iter_000010.pt'"),
    ],
)
def test_bad_values_get_one_line(run_dir, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        evaluate_run(run_dir, **kwargs)


def test_missing_and_corrupt_runs(run_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"run=.*nothing: not a run folder \(no config.yaml\)"):
        evaluate_run(tmp_path / "nothing")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"checkpoint=.*corrupt.pt: unreadable"):
        evaluate_run(run_dir, checkpoint=str(corrupt))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    with pytest.raises(ConfigError, match=r"no readable checkpoint in .*empty/checkpoints"):
        evaluate_run(empty)


def test_recipe_without_run_is_one_line():
    done = subprocess.run([sys.executable, str(REPO / "recipes" / "evaluate.py")], capture_output=True, text=True,
                          cwd=REPO)  # fmt: skip
    assert done.returncode == 2 and done.stderr.strip() == "error: run=<run folder> is required (the folder of a training run)"
