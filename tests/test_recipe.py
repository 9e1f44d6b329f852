"""The recipe's command line: bad inputs give one line naming the value; finished runs are never overwritten."""

import json
import os
import subprocess
import sys

import pytest

from sapg_torchrl import ConfigError
from sapg_torchrl.cli.checks import check_command_line, exit_on_config_error


def start_recipe(repo_root, *args):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}  # third-party warnings are not our message
    return subprocess.Popen(
        [sys.executable, str(repo_root / "recipes" / "sapg.py"), *args],
        cwd=repo_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(process, timeout=180):
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_recipe(repo_root, *args):
    return finish(start_recipe(repo_root, *args))


def assert_one_line_error(result, *must_contain):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    for text in must_contain:
        assert text in lines[0], lines[0]


BAD_INPUTS = {  # end to end; every kind of bad value is checked in-process below
    "ablation=foo": ["'foo'", "sapg", "no_split", "disjoint"],  # refused before Hydra starts
    "env.num_envs=100": ["num_envs=100", "num_blocks=6", "96", "102"],
    "sapg.off_policy_ratio=6": ["off_policy_ratio=6", "[1, 5]"],
}


@pytest.fixture(scope="module")
def bad_runs(repo_root_module, tmp_path_factory):
    """All bad-input runs, started together (each is mostly interpreter start-up)."""
    base = tmp_path_factory.mktemp("bad")
    processes = {
        override: start_recipe(
            repo_root_module, override, f"hydra.run.dir={base / str(i)}", "logger.wandb=false", "device=cpu"
        )
        for i, override in enumerate(BAD_INPUTS)
    }
    results = {override: finish(process) for override, process in processes.items()}
    return base, results


@pytest.mark.parametrize("override", list(BAD_INPUTS))
def test_bad_input_exits_with_one_line(bad_runs, override):
    """Exit status 2, one stderr line 'error: ...' naming the bad value and accepted ones, no traceback."""
    base, results = bad_runs
    assert_one_line_error(results[override], *BAD_INPUTS[override])
    assert not list(base.glob("*/metrics.csv"))


def test_finished_run_is_skipped_and_kept(tmp_path, tiny_cfg):
    """Re-running a finished run (same config, same folder) returns its result and changes nothing."""
    from sapg_torchrl.app.run import train

    run_dir = tmp_path / "run"
    first = train(tiny_cfg(), run_dir)
    files = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert train(tiny_cfg(), run_dir) == json.loads((run_dir / "result.json").read_text())
    assert first["frames"] == json.loads((run_dir / "result.json").read_text())["frames"]
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == files


def test_finished_run_with_other_config_is_refused(repo_root, tmp_path, tiny_cfg, tiny_overrides):
    """A folder holding a finished run of another config is refused, in-process and from the CLI; nothing changes."""
    from sapg_torchrl.app.run import train

    run_dir = tmp_path / "run"
    train(tiny_cfg(), run_dir)
    files = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"another experiment \(seed: 0 -> 7\)"):
        train(tiny_cfg("seed=7"), run_dir)
    result = run_recipe(repo_root, *tiny_overrides, "seed=7", f"hydra.run.dir={run_dir}")
    assert_one_line_error(result, str(run_dir), "hydra.run.dir")
    assert {p: p.read_bytes() for p in files} == files
    hydra_record = (run_dir / ".hydra" / "overrides.yaml").read_text()  # the first command line's record
    result = run_recipe(repo_root, *tiny_overrides, "seed=8", f"hydra.run.dir={run_dir}")
    assert_one_line_error(result, str(run_dir), "hydra.run.dir")
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == hydra_record  # kept; the rerun's goes one down
    assert "seed=8" in (run_dir / ".hydra" / "rerun" / "overrides.yaml").read_text()


def test_interrupted_run_without_checkpoint_is_moved_aside_and_redone(tmp_path, tiny_cfg):
    """An unfinished run with no checkpoint has its files moved (not deleted) to interrupted-0/ and starts again
    (one with a checkpoint resumes from it: tests/test_resume.py)."""
    import shutil

    from sapg_torchrl.app.run import train

    run_dir = tmp_path / "run"
    train(tiny_cfg(), run_dir)
    (run_dir / "result.json").unlink()  # as if the run had died before its first checkpoint
    shutil.rmtree(run_dir / "checkpoints")
    partial = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    train(tiny_cfg(), run_dir)
    aside = run_dir / "interrupted-0"
    assert {p.relative_to(aside): p.read_bytes() for p in aside.rglob("*") if p.is_file()} == partial
    assert (run_dir / "result.json").exists() and (run_dir / "metrics.csv").exists()


@pytest.mark.parametrize(
    "argv, must_contain",
    [
        (["ablation=sapg,nope"], ["unknown ablation 'nope'", "symmetric"]),
        (["env=bar"], ["unknown env 'bar'", "mountaincar"]),
        (["ppo.lr=abc"], ["ppo.lr='abc'", "a number > 0"]),
        (["ppo.lr=-0.1"], ["ppo.lr=-0.1", "a number > 0"]),
        (["env.num_envs=1.5"], ["env.num_envs=1.5", "an integer >= 1"]),
        (["network.hidden=[]"], ["network.hidden=[]", "a list of at least 1 integer >= 1"]),
        (["sapg.entropy_scale=-1"], ["sapg.entropy_scale=-1", "a number >= 0"]),
        (["ppo.lrr=1e-3"], ["unknown setting 'ppo.lrr'", "accepted under 'ppo'", "lr", "kl_target"]),
        (["sapg.aggregation=max"], ["sapg.aggregation='max'", "leader_follower, symmetric, none"]),
        (["sapg.leader=middle"], ["sapg.leader='middle'", "first, last or an integer >= 0"]),
        (["ppo.clip_epsilon=1.5"], ["ppo.clip_epsilon=1.5", "(0, 1)"]),
        (["train.progress=maybe"], ["train.progress='maybe'", "true or false"]),
        (["seed=0,1,x"], ["seed='x'", "an integer >= 0"]),  # each value of a sweep is checked
        (["nonsense=1"], ["unknown setting 'nonsense'", "at the top level", "total_frames"]),
        (["env.num_envs=384,100"], ["num_envs=100 is not divisible by num_blocks=6", "96 or 102"]),
        (["--config-name", "nope"], ["unknown config 'nope' (--config-name)", "scaling", "study"]),
        (["--config-name=scaling", "ablation=sapg,nope"], ["unknown ablation 'nope'"]),
        (["--config-name=study", "hydra/launcher=nope"], ["unknown hydra/launcher 'nope'", "basic", "slurm"]),
        # a setting that undoes what the ablation is: the run would carry its name without being it
        (["ablation=no_split", "sapg.num_blocks=6"],
         ["sapg.num_blocks=6 changes what ablation=no_split sets", "sapg.num_blocks: 1", "--config-dir"]),
        (["ablation=no_entropy", "sapg.entropy_schedule=code"], ["changes what ablation=no_entropy sets"]),
        # the study's own sweep of ablations (its config, not the command line) is checked value by value
        (["--config-name=study", "sapg.entropy_schedule=paper"], ["changes what ablation=ppo_entropy_0.005 sets"]),
    ],
)
def test_bad_values_are_refused_in_one_line(argv, must_contain, capsys):
    """Every bad value is refused before anything is built, naming the key, the value and what is accepted."""
    with pytest.raises(SystemExit) as exit_info:
        check_command_line(argv, "sapg")
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error:"), line
    for text in must_contain:
        assert text in line, line


@pytest.mark.parametrize(
    "argv, config",
    [
        (["ablation=sapg,disjoint", "seed=range(3)", "fidelity=paper", "ppo.lr=1e-3"], "sapg"),
        (["sapg.leader=2", "network.hidden=[64,64]", "total_frames=2e6", "hydra.run.dir=x", "-m"], "sapg"),
        (["study.name=mine", "hydra/launcher=slurm", "--config-dir", "."], "study"),
        (["run=somewhere", "blocks=all", "episodes=3"], "evaluate"),
        (["--config-name", "scaling", "env.num_envs=384,768,3072,6144", "seed=0,1"], "study"),
        (["env=hopper", "sapg.entropy_scale=0.05"], "study"),  # the Hopper study: no_entropy has its own schedule
        (["ablation=no_split", "sapg.num_blocks=1"], "sapg"),  # repeats the ablation's own value
        (["--help"], "sapg"),
    ],
)
def test_good_command_lines_pass(argv, config):
    check_command_line(argv, config)


def test_a_missing_launcher_plugin_names_the_extra_to_install():
    """Without the [study] extra Hydra cannot find the launcher our presets build on; the line says what to install
    (and that hydra/launcher=basic needs nothing), not that the choice is unknown."""
    from hydra.errors import MissingConfigException

    from sapg_torchrl.cli.checks import _message
    from sapg_torchrl.app.schema import SCHEMAS

    missing = MissingConfigException("In 'hydra/launcher/local': ...", "hydra/launcher/joblib")
    line = _message(missing, SCHEMAS["study"])
    assert "hydra/launcher 'joblib'" in line and "sapg-torchrl[study]" in line and "hydra/launcher=basic" in line


def test_a_job_needing_an_extra_names_it(capsys):
    from sapg_torchrl.cli.checks import require_extra

    require_extra("study", ("json",), "sapg-report")  # installed: nothing happens
    with pytest.raises(SystemExit) as exit_info:
        require_extra("study", ("json", "no_such_module_here"), "sapg-report")
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "sapg-report needs the [study] extra (no_such_module_here not installed)" in line, line


def test_own_config_folder_adds_an_ablation(tmp_path, capsys):
    """``--config-dir`` adds a user's folder to the config search path: its ablation file is accepted and checked."""
    (tmp_path / "ablation").mkdir()
    header = "# @package _global_\n"
    (tmp_path / "ablation" / "mine.yaml").write_text(header + "sapg:\n  entropy_scale: 0.1\n")
    check_command_line(["--config-dir", str(tmp_path), "ablation=mine"], "sapg")
    with pytest.raises(SystemExit):  # what a user's ablation sets is guarded like the library's
        check_command_line(["--config-dir", str(tmp_path), "ablation=mine", "sapg.entropy_scale=0.2"], "sapg")
    assert "changes what ablation=mine sets (sapg.entropy_scale: 0.1)" in capsys.readouterr().err
    bad_files = {
        "typo": (header + "sapg:\n  entropy_scal: 0.1\n", "unknown setting 'sapg.entropy_scal' (in ablation/typo.yaml)"),
        "wrong": (header + "ppo:\n  lr: fast\n", "ppo.lr='fast' (in ablation/wrong.yaml) is not accepted: a number > 0"),
        "range": (header + "ppo:\n  lr: -1\n", "ppo.lr=-1.0 is not accepted: a number > 0"),
        "headless": ("sapg:\n  entropy_scale: 0.1\n", "a group file starts with '# @package _global_'"),
    }
    for name, (text, message) in bad_files.items():
        (tmp_path / "ablation" / f"{name}.yaml").write_text(text)
        with pytest.raises(SystemExit):
            check_command_line([f"--config-dir={tmp_path}", f"ablation={name}"], "sapg")
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert message in line, line


def test_config_error_becomes_one_line(capsys):
    """exit_on_config_error turns a ConfigError into 'error: <message>' and exit status 2."""
    with pytest.raises(SystemExit) as exit_info, exit_on_config_error():
        raise ConfigError("leader='middle' is not accepted: use 'first', 'last' or a block index")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: leader='middle' is not accepted: use 'first', 'last' or a block index\n"
