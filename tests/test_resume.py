"""Runs survive: exact resume from a checkpoint, kill -9 and SIGTERM mid-run, extension, bad resume inputs."""

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, TINY_OVERRIDES

from sapg_torchrl import ConfigError
from sapg_torchrl.training.checkpoint import checkpoint_paths, load_checkpoint, save_checkpoint
from sapg_torchrl.app.run import train
from sapg_torchrl.training.sinks import CSVSink

POINT_MASS = (
    "env.make._target_=point_mass.PointMassEnv", "~env.make.env_name", "~env.make.create_env_kwargs",
    "+env.make.episode_length=3",  # the checkpoint of iteration 5 (20 steps) falls mid-episode
)  # fmt: skip
TIMING = {"time_s", "fps"}


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def without_timing(table):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in table]


def at_row(monkeypatch, iteration, action):
    """Makes the metrics sink call ``action()`` right after writing the row of ``iteration`` (a crash, a signal);
    returns the function that undoes it."""
    write = CSVSink.__call__

    def patched(self, metrics, it):
        write(self, metrics, it)
        if it == iteration:
            action()

    monkeypatch.setattr(CSVSink, "__call__", patched)
    return lambda: monkeypatch.setattr(CSVSink, "__call__", write)


def crash():
    raise RuntimeError("killed")


def final_state(run_dir):
    (path,) = [p for p in checkpoint_paths(run_dir / "checkpoints") if p.name.startswith("final_")]
    return torch.load(path, weights_only=False)


@pytest.mark.parametrize("variant", [["ablation=sapg"], ["network.lstm_size=8", "ablation=no_is_correction"], ["ablation=cpo_adr"]],
                         ids=["sapg", "lstm", "cpo_adr"])  # fmt: skip
def test_resume_is_exact(tiny_cfg, tmp_path, monkeypatch, variant):
    """A run stopped after iteration 6 (its checkpoint is from iteration 5) and resumed gives bit-identical
    parameters and metrics.csv rows (timing aside) to the same run uninterrupted; the row written after the
    checkpoint is moved to a side file, not lost."""
    cfg = tiny_cfg(*POINT_MASS, "train.checkpoint_interval=1", "train.record_states=20", *variant)
    train(cfg, tmp_path / "whole")

    undo = at_row(monkeypatch, 6, crash)
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, tmp_path / "cut")
    undo()
    assert [p.name for p in checkpoint_paths(tmp_path / "cut" / "checkpoints")] == [
        "iter_000003.pt", "iter_000004.pt", "iter_000005.pt"
    ]  # fmt: skip
    train(cfg, tmp_path / "cut")

    assert without_timing(rows(tmp_path / "cut" / "metrics.csv")) == without_timing(rows(tmp_path / "whole" / "metrics.csv"))
    (side,) = (tmp_path / "cut").glob("metrics.after_iter_000005.csv")
    assert [r["iteration"] for r in rows(side)] == ["6"]
    whole, cut = final_state(tmp_path / "whole"), final_state(tmp_path / "cut")
    for key, value in whole["loss"].items():
        assert torch.equal(value, cut["loss"][key]), key
    assert torch.equal(whole["optimizer"]["state"][0]["exp_avg"], cut["optimizer"]["state"][0]["exp_avg"])
    results = [json.loads((tmp_path / run / "result.json").read_text()) for run in ("whole", "cut")]
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in results][0] == {
        k: v for k, v in results[1].items() if k not in TIMING
    }
    assert torch.equal(torch.load(tmp_path / "whole" / "states.pt")["states"], torch.load(tmp_path / "cut" / "states.pt")["states"])


def test_extending_a_finished_run(tiny_cfg, tmp_path):
    """total_frames raised: the run continues from its final checkpoint; nothing of the first part is lost."""
    cfg = tiny_cfg(*POINT_MASS)
    train(cfg, tmp_path / "run")
    longer = tiny_cfg(*POINT_MASS, "total_frames=960")
    result = train(longer, tmp_path / "run")
    assert result["iteration"] == 20 and result["frames"] == 960
    assert [r["iteration"] for r in rows(tmp_path / "run" / "metrics.csv")] == [str(i) for i in range(1, 21)]
    assert (tmp_path / "run" / "result.iter_000010.json").exists()
    assert (tmp_path / "run" / "config.before_iter_000010.yaml").exists()
    names = [p.name for p in checkpoint_paths(tmp_path / "run" / "checkpoints")]
    assert names == ["final_iter_000010.pt", "final_iter_000020.pt"]
    assert train(longer, tmp_path / "run") == result  # finished: skipped


def test_checkpoints_are_pruned_but_final_ones_kept(tmp_path):
    for i in range(1, 6):
        save_checkpoint({"iteration": i}, tmp_path, i, keep=2)
    save_checkpoint({"iteration": 5}, tmp_path, 5, final=True, keep=2)
    assert [p.name for p in checkpoint_paths(tmp_path)] == ["iter_000004.pt", "iter_000005.pt", "final_iter_000005.pt"]
    with pytest.raises(FileExistsError):
        save_checkpoint({"iteration": 5}, tmp_path, 5, keep=2)
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    save_checkpoint({"iteration": 1}, tmp_path, 1)
    save_checkpoint({"iteration": 2}, tmp_path, 2)
    (tmp_path / "iter_000002.pt").write_bytes((tmp_path / "iter_000002.pt").read_bytes()[:50])  # truncated
    path, state = load_checkpoint(tmp_path)
    assert path.name == "iter_000001.pt" and state["iteration"] == 1
    assert "iter_000002.pt is unreadable" in caplog.text and "using the previous one" in caplog.text
    assert (tmp_path / "iter_000002.pt").exists()  # left where it is


def test_a_different_experiment_in_the_folder_is_refused(tiny_cfg, tmp_path):
    train(tiny_cfg(*POINT_MASS), tmp_path / "run")
    with pytest.raises(ConfigError, match=r"another experiment \(env.num_envs: 12 -> 24\)"):
        train(tiny_cfg(*POINT_MASS, "env.num_envs=24"), tmp_path / "run")


# ------------------------------------------------------------------------------------ real processes
def recipe(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, str(REPO / "recipes" / "sapg.py"), *args], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, **kwargs,
    )  # fmt: skip


def wait_for_rows(path, count, process, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(rows(path)) >= count:
            return
        assert process.poll() is None, process.communicate()[1][-2000:]
        time.sleep(0.05)
    raise TimeoutError(f"{path} did not reach {count} rows")


LONG_TINY = (*TINY_OVERRIDES, "total_frames=9600", "train.checkpoint_interval=1", "train.eval_interval=50")


def check_complete(run_dir, iterations=200):
    table = rows(run_dir / "metrics.csv")
    assert [int(r["iteration"]) for r in table] == list(range(1, iterations + 1))  # none missing or twice
    assert int(table[-1]["frames"]) == iterations * 48
    result = json.loads((run_dir / "result.json").read_text())
    assert result["frames"] == iterations * 48
    for name in ("config.yaml", "metrics.csv", "result.json", ".hydra"):
        assert (run_dir / name).exists(), name
    assert not (run_dir / "run.lock").exists()  # removed by the process that held the folder


def test_a_folder_another_process_runs_is_refused(tmp_path):
    """Two processes on one run folder interleave their rows in metrics.csv (it happened: a study restarted while
    a worker of the stopped one still ran). The second is refused in one line naming the first and writes none of
    the run's files; once the first has died, even by SIGKILL, the folder is free."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    hold = (
        "import sys; from pathlib import Path; from sapg_torchrl.app.run_folder import hold_run_folder\n"
        f"with hold_run_folder(Path({str(run_dir)!r})):\n    print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    refused = recipe(*TINY_OVERRIDES, f"hydra.run.dir={run_dir}")
    _, err = refused.communicate(timeout=120)
    assert refused.returncode == 2
    (line,) = err.strip().splitlines()
    assert f"run folder {run_dir} is being run by process {holder.pid} on " in line, line
    assert not {"config.yaml", "metrics.csv", "checkpoints"} & {p.name for p in run_dir.iterdir()}  # nothing of ours
    holder.kill()
    holder.communicate()
    done = recipe(*TINY_OVERRIDES, f"hydra.run.dir={run_dir}")
    _, err = done.communicate(timeout=300)
    assert done.returncode == 0, err[-3000:]
    assert (run_dir / "result.json").exists() and not (run_dir / "run.lock").exists()


def test_kill_9_then_resume(tmp_path):
    """A real training process killed with SIGKILL at a random moment (checkpoints are written every iteration,
    so the kill often lands in one), then resume=: the run completes with every iteration once."""
    run_dir = tmp_path / "run"
    process = recipe(*LONG_TINY, f"hydra.run.dir={run_dir}")
    wait_for_rows(run_dir / "metrics.csv", random.Random(0).randint(5, 40), process)
    time.sleep(random.Random(1).random() * 0.2)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    done = recipe(f"resume={run_dir}", f"hydra.run.dir={tmp_path / 'resume'}")
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err[-3000:]
    check_complete(run_dir)


def test_sigterm_writes_a_checkpoint_and_exits_non_zero(tmp_path):
    run_dir = tmp_path / "run"
    process = recipe(*LONG_TINY, "train.checkpoint_interval=0", f"hydra.run.dir={run_dir}")
    wait_for_rows(run_dir / "metrics.csv", 5, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: stopped by SIGTERM after iteration ") and f"resume={run_dir}" in line
    stopped_at = int(line.split("after iteration ")[1].split(",")[0])
    assert checkpoint_paths(run_dir / "checkpoints")[-1].name == f"iter_{stopped_at:06d}.pt"
    done = recipe(f"resume={run_dir}", f"hydra.run.dir={tmp_path / 'resume'}")
    _, err = done.communicate(timeout=300)
    assert done.returncode == 0, err[-3000:]
    check_complete(run_dir)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "resume={d}: no such run folder"),
        ("empty", "resume={d}: not a run folder (no config.yaml)"),
        ("no_checkpoint", "resume={d}: no readable checkpoint in {d}/checkpoints"),
        ("experiment", "resume={d}: env.num_envs=24, ablation=disjoint would change the experiment"),
        ("lower_budget", "total_frames=96 is below the 480 frames {d} has done: use at least 480"),
    ],
)
def test_bad_resume_inputs_are_refused(tiny_cfg, tmp_path, case, message):
    from sapg_torchrl.app.run_folder import resume_config

    run_dir = tmp_path / "run"
    overrides = {"experiment": ["env.num_envs=24", "ablation=disjoint"], "lower_budget": ["total_frames=96"]}
    if case == "empty":
        run_dir.mkdir()
    elif case != "missing":
        train(tiny_cfg(), run_dir)
        if case == "no_checkpoint":
            (run_dir / "result.json").unlink()
            for path in checkpoint_paths(run_dir / "checkpoints"):
                path.unlink()
        if case == "lower_budget":
            (run_dir / "result.json").unlink()
    with pytest.raises(ConfigError) as error:
        train(resume_config(run_dir, overrides.get(case, [])), run_dir, resume=True)
    assert str(error.value).startswith(message.format(d=run_dir))


def test_a_bad_resume_is_one_line_on_the_command_line(tmp_path):
    done = recipe(f"resume={tmp_path / 'nothing'}", f"hydra.run.dir={tmp_path / 'resume'}")
    _, err = done.communicate(timeout=120)
    assert done.returncode == 2 and err.strip().splitlines() == [f"error: resume={tmp_path / 'nothing'}: no such run folder"]


def test_under_submitit_the_preemption_signal_checkpoints_then_goes_to_submitit(tiny_cfg, tmp_path, monkeypatch):
    """Under submitit (SUBMITIT_EXECUTOR set), USR2 is caught at the end of the iteration, a checkpoint written,
    then submitit's own handler (here a stand-in) gets the signal, as it requeues the job."""
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    handed = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: handed.append(signum))
    undo = at_row(monkeypatch, 3, lambda: os.kill(os.getpid(), signal.SIGUSR2))
    try:
        from sapg_torchrl.errors import Preempted

        with pytest.raises(Preempted, match="stopped by SIGUSR2 after iteration 3"):
            train(tiny_cfg(), tmp_path / "run")
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert handed == [signal.SIGUSR2]
    assert checkpoint_paths(tmp_path / "run" / "checkpoints")[-1].name == "iter_000003.pt"
    undo()
    assert train(tiny_cfg(), tmp_path / "run")["iteration"] == 10


def test_wandb_continues_the_same_run(tiny_cfg, tmp_path, monkeypatch):
    cfg = tiny_cfg(*POINT_MASS, "logger.wandb=true", "logger.mode=offline", "train.checkpoint_interval=1")
    undo = at_row(monkeypatch, 4, crash)
    with pytest.raises(RuntimeError):
        train(cfg, tmp_path / "run")
    undo()
    first = load_checkpoint(tmp_path / "run" / "checkpoints")[1]["extra"]["wandb_run_id"]
    train(cfg, tmp_path / "run")
    assert final_state(tmp_path / "run")["extra"]["wandb_run_id"] == first


def test_a_run_folder_written_before_the_restructuring_resumes_and_evaluates(tmp_path):
    """``tests/data/run_0_1``: a finished 5-iteration run written by the code before the layered package (commit
    ba6bdf4). Extended to 10 iterations by today's code, it continues with the rows that code wrote when it extended
    the same folder (``run_0_1_extended_metrics.csv``), timing columns aside; ``evaluate_run`` reads it too."""
    import shutil

    from sapg_torchrl.app.run_folder import resume_config
    from sapg_torchrl.app.trained_run import evaluate_run

    folder = tmp_path / "run_0_1"
    shutil.copytree(REPO / "tests" / "data" / "run_0_1", folder)
    assert evaluate_run(folder, episodes=2)["blocks"][5]["completed"] == 2
    train(resume_config(folder, ["total_frames=480"]), folder, resume=True)
    got, want = rows(folder / "metrics.csv"), rows(REPO / "tests" / "data" / "run_0_1_extended_metrics.csv")
    assert len(got) == len(want) == 10
    for mine, theirs in zip(got, want, strict=True):
        assert mine.keys() == theirs.keys()
        for key in mine.keys() - TIMING:
            assert float(mine[key] or "nan") == pytest.approx(float(theirs[key] or "nan"), rel=1e-4, abs=1e-6, nan_ok=True), key


def test_a_setting_added_after_a_run_was_written_takes_its_default_there(tmp_path):
    """A run folder written before a setting existed (``ppo.kl_rows`` here) ran with the setting's default: it is the
    same experiment as a config with that default, and another one than a config that changes it."""
    import shutil

    from omegaconf import OmegaConf

    from sapg_torchrl.app.run_folder import experiment_changes, saved_config

    folder = tmp_path / "run_0_1"
    shutil.copytree(REPO / "tests" / "data" / "run_0_1", folder)
    assert "kl_rows" not in OmegaConf.load(folder / "config.yaml").ppo
    saved = saved_config(folder)
    assert saved["ppo"]["kl_rows"] == "all"
    changed = {**saved, "ppo": {**saved["ppo"], "kl_rows": "on_policy"}}
    assert experiment_changes(saved, saved) == []
    assert experiment_changes(saved, changed) == ["ppo.kl_rows: all -> on_policy"]
