"""Performance against N: the scaling sweep's config, and its report on hand-written studies of known returns."""

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
    for n, ppo in PPO_AT.items():
        assert scaling.final["sapg"][n][0] == pytest.approx(10.0)
        assert scaling.final["no_split"][n][0] == pytest.approx(ppo + 0.2)  # IQM of 5 seeds: mean of the middle 3
        assert scaling.poi["no_split"][n][0] == pytest.approx(1.0)
    assert trend(scaling.final["no_split"]) == "degrades" and trend(scaling.final["sapg"]) == "flat"


def test_scaling_report_from_the_command_line(scaling_folders, tmp_path, capsys):
    out = tmp_path / "report"
    folders = [str(scaling_folders / f"N{n}") for n in PPO_AT]
    assert report.main(["--scaling", *folders, "--out", str(out), "--reps", "100"]) == out / "scaling.md"
    assert capsys.readouterr().out.strip() == str(out / "scaling.md")
    text = (out / "scaling.md").read_text()
    assert (out / "scaling.png").stat().st_size > 0
    final_row, poi_row = (line for line in text.splitlines() if line.startswith("| no_split"))
    assert "| N=12 | N=24 | N=48 | trend |" in text and final_row.endswith("| degrades |")
    assert poi_row == "| no_split | 1 [1, 1] | 1 [1, 1] | 1 [1, 1] |"
    assert "--scaling" in text


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
