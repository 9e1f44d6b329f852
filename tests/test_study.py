"""The one-command study: its sweep covers every ablation x 5 seeds, resumes, and has a SLURM preset."""

import shutil
import subprocess
import sys

import pytest
from conftest import CONFIG_DIR, REPO, TINY_OVERRIDES
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

ABLATIONS = {
    "sapg", "no_split", "symmetric", "no_off_policy", "no_is_correction", "no_is_correction_capped", "no_entropy",
    "disjoint", "ppo_entropy_0.005", "ppo_entropy", "ppo_entropy_0.25",
}  # fmt: skip
METHODS_BEYOND_SAPG = {"cpo", "cpo_adr"}  # files of the ablation group that are SAPG's successors, not variants of the study


def _study_cfg(*overrides):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("study", overrides=list(overrides), return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def test_study_sweeps_every_ablation_over_five_seeds():
    """Every ablation file (but SAPG's successors) is in the sweep, with at least 5 seeds, into a deterministic
    (resumable) folder."""
    cfg = _study_cfg()
    params = cfg.hydra.sweeper.params
    files = {p.stem for p in (CONFIG_DIR / "ablation").glob("*.yaml")}
    assert set(params.ablation.split(",")) == ABLATIONS == files - METHODS_BEYOND_SAPG
    assert params.seed == "range(5)"
    sweep = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)
    assert "now:" not in sweep["dir"] and "${seed}" in sweep["subdir"]
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.train.threads == 1


def test_slurm_launcher_preset_resolves():
    """hydra/launcher=slurm gives hydra-submitit-launcher's SLURM launcher with our defaults."""
    launcher = _study_cfg("hydra/launcher=slurm").hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.gpus_per_node == 1 and launcher.timeout_min > 0


def _sweep(sweep_dir, *extra):
    """The study command on a tiny config, 2 variants x 2 seeds (joblib: a process per run, as the study runs)."""
    return subprocess.run(
        [sys.executable, str(REPO / "recipes" / "study.py"), *TINY_OVERRIDES, f"hydra.sweep.dir={sweep_dir}",
         "ablation=sapg,no_split", "seed=0,1", *extra],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip


def test_study_reruns_skip_finished_resume_and_redo_interrupted(tmp_path):
    """A second run of the same command trains nothing new; an interrupted run with a checkpoint is resumed from
    it, one without is redone with its files kept."""
    sweep_dir = tmp_path / "study"
    in_process = "hydra/launcher=basic"  # the runs one after the other in one process: the same folder logic, faster
    first = _sweep(sweep_dir, in_process)
    assert first.returncode == 0, first.stderr
    results = sorted(sweep_dir.glob("*/seed*/result.json"))
    assert [p.relative_to(sweep_dir).parent.as_posix() for p in results] == [
        "no_split/seed0", "no_split/seed1", "sapg/seed0", "sapg/seed1",
    ]  # fmt: skip
    stamps = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/seed*/metrics.csv")}
    records = {p: p.read_bytes() for p in sweep_dir.glob("*/seed*/.hydra/*.yaml")}  # Hydra's, of the first job
    (sweep_dir / "sapg" / "seed1" / "result.json").unlink()  # killed after its final checkpoint
    redone = sweep_dir / "sapg" / "seed0"
    (redone / "result.json").unlink()  # killed before its first checkpoint
    shutil.rmtree(redone / "checkpoints")

    second = _sweep(sweep_dir, in_process)
    assert second.returncode == 0, second.stderr
    assert (redone / "result.json").exists() and (redone / "interrupted-0" / "metrics.csv").exists()
    assert (sweep_dir / "sapg" / "seed1" / "result.json").exists()
    for path, stamp in stamps.items():
        if redone not in path.parents:
            assert path.stat().st_mtime_ns == stamp  # finished (or fully checkpointed) runs were not retrained
    assert len(records) == 12 and all(path.read_bytes() == text for path, text in records.items())
    assert len(list(sweep_dir.glob("*/seed*/.hydra/rerun/overrides.yaml"))) == 4  # the rerun's own record


@pytest.mark.slow  # three processes training 125 tiny iterations: ~45 s on 2 quiet cores, the default suite's budget
def test_a_stop_signal_stops_the_sweep_and_the_same_command_resumes_it(tmp_path):
    """SIGTERM (a preemption) during a sequential sweep: the running run checkpoints, the sweep stops there with
    the signal's exit code instead of going on to its next run, and the same command finishes both runs."""
    import signal

    from test_resume import LONG_TINY, check_complete, wait_for_rows

    sweep_dir = tmp_path / "study"
    command = [sys.executable, str(REPO / "recipes" / "study.py"), *LONG_TINY, "total_frames=2400",
               f"hydra.sweep.dir={sweep_dir}", "ablation=no_split", "seed=0,1", "hydra/launcher=basic"]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = sweep_dir / "no_split" / "seed0"
    wait_for_rows(first / "metrics.csv", 5, process)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM after iteration" in (first / "sapg.log").read_text()
    assert not (first / "result.json").exists() and not (sweep_dir / "no_split" / "seed1").exists()
    again = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 0, again.stderr[-3000:]
    for seed in (0, 1):
        check_complete(sweep_dir / "no_split" / f"seed{seed}", iterations=50)


def test_a_crashed_run_loses_nothing_of_the_others(tmp_path):
    """One run failing (K >= M is only invalid for sapg) does not stop the sweep; the others finish."""
    sweep_dir = tmp_path / "study"
    result = _sweep(sweep_dir, "sapg.off_policy_ratio=6")
    assert result.returncode != 0
    assert "off_policy_ratio=6" in result.stderr
    assert sorted(p.relative_to(sweep_dir).parent.as_posix() for p in sweep_dir.glob("*/seed*/result.json")) == [
        "no_split/seed0", "no_split/seed1",
    ]  # fmt: skip


def test_default_study_folder_is_named_after_the_env_preset(tmp_path):
    """The README's command, with no folder given: runs land in runs/study/<env preset>/<ablation>/seed<k>/."""
    result = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "study.py"), *TINY_OVERRIDES, "ablation=sapg", "seed=0"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs" / "study" / "mountaincar" / "sapg" / "seed0"
    assert (run / "result.json").exists()
    assert OmegaConf.load(run / "config.yaml").study.name == "mountaincar"


_RUNS_IN_ONE_PROCESS = """
import gc, sys
sys.path.insert(0, {repo!r})
from hydra import compose, initialize_config_dir
import sapg_torchrl.cli  # registers the config schemas
from sapg_torchrl.app.run import train
from sapg_torchrl.envs import EnvpoolEnv
from sapg_torchrl.training import Runner
with initialize_config_dir(config_dir={config!r}, version_base="1.3"):
    cfg = compose("sapg", overrides={overrides!r})
assert "envpool" not in sys.modules  # imported for the first time inside the first run
for k in range(2):
    train(cfg, {folder!r} + f"/run{{k}}")
gc.collect()
runners = [o for o in gc.get_objects() if isinstance(o, Runner)]
pools = [o for o in gc.get_objects() if isinstance(o, EnvpoolEnv) and o._env is not None]
print(len(runners), len(pools))
"""


def test_a_process_that_trains_run_after_run_keeps_none_of_them(tmp_path):
    """A study worker trains one run after another in one process: a finished run's runner and env pools must not
    outlive it (envpool's kept import error once held the first run's frames, and each pool 4.5 GB at N = 6144,
    until the kernel killed the sweep). A fresh process, so that envpool's first import happens inside a run."""
    script = _RUNS_IN_ONE_PROCESS.format(repo=str(REPO), config=str(CONFIG_DIR), overrides=list(TINY_OVERRIDES),
                                         folder=str(tmp_path))  # fmt: skip
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["0", "0"], result.stdout[-2000:]
