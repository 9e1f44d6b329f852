"""Performance against N: the scaling sweep's config, and its report on hand-written studies of known returns."""

import shutil

import numpy as np
import pytest
import yaml
from conftest import CONFIG_DIR
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from test_report import FRAMES, _write_run

from sapg_torchrl.cli import report
from sapg_torchrl.study import load_study, scaling_summary
from sapg_torchrl.study.scaling import trend

# the PPO baseline's final return at each N: best at the middle N, then lower (a study where PPO degrades)
PPO_AT = {12: 6.0, 24: 8.0, 48: 2.0}


def _compose(name, *overrides):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(name, overrides=list(overrides), return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def test_scaling_sweep_is_the_study_at_several_n():
    """sapg and the tuned PPO baseline, 5 seeds, N over >= 4 values spanning >= 16x, each a multiple of M; every
    other setting is the study's, and each N gets its own study folder."""
    scaling, study = _compose("scaling"), _compose("study")
    params = scaling.hydra.sweeper.params
    assert params.ablation.split(",") == ["sapg", "ppo_entropy_0.25"] and params.seed == "range(5)"
    values = [int(n) for n in params["env.num_envs"].split(",")]
    assert len(values) >= 4 and max(values) / min(values) >= 16
    assert all(n % study.sapg.num_blocks == 0 for n in values)
    assert OmegaConf.to_container(scaling, resolve=False) | {"hydra": None} == OmegaConf.to_container(
        study, resolve=False
    ) | {"hydra": None}
    subdir = OmegaConf.to_container(scaling.hydra.sweep, resolve=False)["subdir"]
    assert subdir.startswith("N${env.num_envs}/") and subdir.endswith("seed${seed}")


@pytest.fixture(scope="module")
def scaling_folders(tmp_path_factory):
    """Three studies of the toy task at N = 12, 24, 48: sapg at 10 everywhere, no_split at PPO_AT[N] + seed / 10."""
    root = tmp_path_factory.mktemp("scaling")
    for n, ppo in PPO_AT.items():
        for seed in range(5):
            _write_run(root / f"N{n}" / "sapg" / f"seed{seed}", "sapg", seed, np.full(FRAMES.size, 10.0), num_envs=n)
            values = np.full(FRAMES.size, ppo + seed / 10)
            _write_run(root / f"N{n}" / "no_split" / f"seed{seed}", "no_split", seed, values, num_envs=n)
    return root


def test_scaling_numbers_and_trends(scaling_folders):
    studies = [load_study(scaling_folders / f"N{n}") for n in (48, 12, 24)]  # any order
    scaling = scaling_summary(studies, reps=200)
    assert scaling.num_envs == [12, 24, 48] and scaling.variants == ["sapg", "no_split"]
    assert list(scaling.iqm) == ["final", "eval"]  # the study's two measures
    for n, ppo in PPO_AT.items():
        assert scaling.iqm["final"]["sapg"][n][0] == pytest.approx(10.0)
        assert scaling.iqm["eval"]["sapg"][n][0] == pytest.approx(11.0)  # _write_run: eval = last value + 1
        assert scaling.iqm["final"]["no_split"][n][0] == pytest.approx(ppo + 0.2)  # IQM of 5 seeds: the middle 3
        assert scaling.iqm["eval"]["no_split"][n][0] == pytest.approx(ppo + 1.2)
        assert scaling.poi["final"]["no_split"][n][0] == scaling.poi["eval"]["no_split"][n][0] == pytest.approx(1.0)
        assert scaling.runs["no_split"][n] == scaling.scored["final"]["no_split"][n] == 5
    assert trend(scaling.iqm["final"]["no_split"]) == "degrades" and trend(scaling.iqm["final"]["sapg"]) == "flat"
    assert not any("longest episodes" in note for note in scaling.notes)  # no env.eval_steps in the toy config


def test_settings_compare_by_value(scaling_folders, tmp_path):
    """A study run before the typed schema wrote ``total_frames: 1000``, a later one ``1000.0``: the same budget."""
    shutil.copytree(scaling_folders / "N12", tmp_path / "N12")
    for config in (tmp_path / "N12").glob("*/seed*/config.yaml"):
        config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "total_frames": 1000.0}))
    scaling = scaling_summary([load_study(tmp_path / "N12"), load_study(scaling_folders / "N24")], reps=100)
    assert scaling.num_envs == [12, 24]


def test_variants_at_one_n_are_left_out_in_one_note(scaling_folders, tmp_path):
    """The ablation study added as one N brings variants the sweep does not run: one note names them all."""
    shutil.copytree(scaling_folders / "N24", tmp_path / "N24")
    for variant in ("symmetric", "disjoint"):
        for seed in range(5):
            _write_run(tmp_path / "N24" / variant / f"seed{seed}", variant, seed, np.full(FRAMES.size, 3.0), num_envs=24)
    scaling = scaling_summary([load_study(scaling_folders / "N12"), load_study(tmp_path / "N24")], reps=100)
    assert scaling.variants == ["sapg", "no_split"]
    assert [note for note in scaling.notes if "only at" in note] == ["only at N=24, left out: symmetric, disjoint"]


def test_runs_without_a_finished_episode_are_counted_and_short_budgets_flagged(scaling_folders, tmp_path):
    """At a large N an env may not finish one episode in the budget: such a run has no final training return
    (left out of that IQM, and counted), its evaluation still scores it, and the report names the N where
    training returns cover fewer than two of the longest episodes."""
    for n in PPO_AT:
        shutil.copytree(scaling_folders / f"N{n}", tmp_path / f"N{n}")
        for config in (tmp_path / f"N{n}").glob("*/seed*/config.yaml"):  # BUDGET 1000 frames; 1000 / N steps per env
            config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "env": {
                "make": {"env_name": "Toy-v0"}, "num_envs": n, "eval_steps": 30}}))  # fmt: skip
    run = tmp_path / "N48" / "sapg" / "seed0"  # sapg seed 0 at N = 48: no episode finished, evaluated at 0.5
    shutil.rmtree(run)
    _write_run(run, "sapg", 0, np.full(FRAMES.size, np.nan), num_envs=48)
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "env": {**config["env"], "eval_steps": 30}}))
    header, *rows = (run / "metrics.csv").read_text().splitlines()
    rows = [row.rsplit(",", 2) for row in rows]  # frames and return, eval/return, train/lr
    rows = [f"{head},{'0.5' if evaluation else ''},{lr}" for head, evaluation, lr in rows]  # evaluated at 0.5
    (run / "metrics.csv").write_text("\n".join([header, *rows]) + "\n")
    scaling = scaling_summary([load_study(tmp_path / f"N{n}") for n in PPO_AT], reps=100)
    assert scaling.runs["sapg"][48] == 5 and scaling.scored["final"]["sapg"][48] == 4
    assert scaling.scored["eval"]["sapg"][48] == 5 and scaling.iqm["eval"]["sapg"][48][0] == pytest.approx(11.0)
    assert scaling.episode_steps == 30
    short = "at N=24, 48 each env steps fewer than two of the longest episodes (30 steps)"  # 1000 / N < 60
    assert any(note.startswith(short) for note in scaling.notes)  # not N = 12: 83 steps


def test_scaling_report_from_the_command_line(scaling_folders, tmp_path, capsys):
    out = tmp_path / "report"
    folders = [str(scaling_folders / f"N{n}") for n in PPO_AT]
    assert report.main(["--scaling", *folders, "--out", str(out), "--reps", "100"]) == out / "scaling.md"
    assert capsys.readouterr().out.strip() == str(out / "scaling.md")
    text = (out / "scaling.md").read_text()
    assert (out / "scaling.png").stat().st_size > 0
    rows = [line for line in text.splitlines() if line.startswith("| no_split")]
    assert len(rows) == 4  # per measure: its row and its P(sapg > no_split) row
    assert "| N=12 | N=24 | N=48 | trend |" in text and rows[0].endswith("| degrades |") and "(5/5)" in rows[0]
    assert rows[1] == rows[3] == "| no_split | 1 [1, 1] | 1 [1, 1] | 1 [1, 1] |"
    assert text.index("## Training return") < text.index("## Evaluation return")
    assert "| steps per env | 83 | 42 | 21 |" in text and "--scaling" in text


@pytest.mark.parametrize(
    "case, message",
    [("one", "two or more N"), ("same_n", "two study folders have N=12"), ("other_task", "task (env.make.env_name) differs")],
)
def test_scaling_report_refuses_folders_that_do_not_compare(scaling_folders, tmp_path, capsys, case, message):
    folders = {"one": [scaling_folders / "N12"],
               "same_n": [scaling_folders / "N12", scaling_folders / "N24", tmp_path / "copy"],
               "other_task": [scaling_folders / "N12", tmp_path / "copy"]}[case]  # fmt: skip
    if case != "one":
        source = scaling_folders / "N12" / "sapg" / "seed0"
        _write_run(tmp_path / "copy" / "sapg" / "seed0", "sapg", 0, np.full(FRAMES.size, 10.0),
                   num_envs=12 if case == "same_n" else 96)  # fmt: skip
        if case == "other_task":
            config = yaml.safe_load((source / "config.yaml").read_text())
            config["env"] = {"make": {"env_name": "Other-v0"}, "num_envs": 96}
            (tmp_path / "copy" / "sapg" / "seed0" / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_:
        report.main(["--scaling", *map(str, folders), "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and message in error and len(error.strip().splitlines()) == 1, error
    assert not (tmp_path / "out").exists()
