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
            run_dir = tmp_path / "N24" / variant / f"seed{seed}"
            _write_run(run_dir, variant, seed, np.full(FRAMES.size, 3.0), num_envs=24)
    scaling = scaling_summary([load_study(scaling_folders / "N12"), load_study(tmp_path / "N24")], reps=100)
    assert scaling.variants == ["sapg", "no_split"]
    assert [note for note in scaling.notes if "only at" in note] == ["only at N=24, left out: symmetric, disjoint"]


def test_runs_without_a_finished_episode_are_counted_and_short_budgets_flagged(scaling_folders, tmp_path):
    """At a large N an env may not finish one episode in the budget: such a run has no final training return
    (left out of that IQM, and counted), its evaluation still scores it, and the report names the N where
    training returns cover fewer than two of the longest episodes."""
    for n in PPO_AT:
        shutil.copytree(scaling_folders / f"N{n}", tmp_path / f"N{n}")
        for config in (tmp_path / f"N{n}").glob("*/seed*/config.yaml"):  # BUDGET 1000 frames, whole iterations of N x 4
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
    assert "| steps per env | 84 | 44 | 24 |" in text  # whole iterations of N x 4 and "--scaling" in text


@pytest.mark.parametrize(
    "case, message",
    [("one", "two or more N"), ("same_n", "two study folders have N=12"),
     ("other_task", "task (env.make.env_name) differs"),
     ("other_budget", "neither one frame budget nor one number of iterations")],
)
def test_scaling_report_refuses_folders_that_do_not_compare(scaling_folders, tmp_path, capsys, case, message):
    folders = {"one": [scaling_folders / "N12"],
               "same_n": [scaling_folders / "N12", scaling_folders / "N24", tmp_path / "copy"],
               "other_task": [scaling_folders / "N12", tmp_path / "copy"],
               "other_budget": [scaling_folders / "N12", tmp_path / "copy"]}[case]  # fmt: skip
    if case != "one":
        source = scaling_folders / "N12" / "sapg" / "seed0"
        _write_run(tmp_path / "copy" / "sapg" / "seed0", "sapg", 0, np.full(FRAMES.size, 10.0),
                   num_envs=12 if case == "same_n" else 96)  # fmt: skip
        if case in ("other_task", "other_budget"):
            config = yaml.safe_load((source / "config.yaml").read_text())
            if case == "other_task":
                config["env"] = {"make": {"env_name": "Other-v0"}, "num_envs": 96}
            else:  # 1500 frames at N = 96: 4 iterations, where N = 12's 1000 frames are 21
                config |= {"env": {**config["env"], "num_envs": 96}, "total_frames": 1500}
            (tmp_path / "copy" / "sapg" / "seed0" / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_:
        report.main(["--scaling", *map(str, folders), "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and message in error and len(error.strip().splitlines()) == 1, error
    assert not (tmp_path / "out").exists()


def test_a_sweep_at_a_fixed_number_of_iterations_compares_with_budgets_that_grow_with_n(scaling_folders, tmp_path):
    """The budget grows with N at one number of iterations (``scaling_hopper``): accepted, reported as such, and
    each N's learning curve spans the frames of that N's runs."""
    for n in PPO_AT:  # N = 12's 1000 frames are 21 iterations of 12 x 4; the others get the frames of 21 iterations
        shutil.copytree(scaling_folders / f"N{n}", tmp_path / f"N{n}")
        for config in (tmp_path / f"N{n}").glob("*/seed*/config.yaml"):
            frames = 1000 if n == 12 else 21 * n * 4
            config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "total_frames": frames}))
    studies = {n: load_study(tmp_path / f"N{n}") for n in PPO_AT}
    scaling = scaling_summary(list(studies.values()), reps=100)
    assert scaling.budget is None and scaling.iterations == 21
    assert scaling.budgets == {12: 1008.0, 24: 2016.0, 48: 4032.0}  # N = 12's 1000 frames: 21 whole iterations
    for variant in scaling.variants:  # each N's curve spans the frames that N's runs collected
        ends = {n: curve[0][-1] for n, curve in scaling.curves[variant].items()}
        assert ends == {n: max(run.budget for run in studies[n].all_runs) for n in PPO_AT}, (variant, ends)
    out = tmp_path / "report"
    assert report.main(["--scaling", *(str(tmp_path / f"N{n}") for n in PPO_AT), "--out", str(out), "--reps", "100"])
    text = (out / "scaling.md").read_text()
    assert "Each run runs 21 iterations, so the frames grow with N (1008 at N=12, 2016 at N=24, 4032 at N=48)" in text
    assert "| steps per env | 84 | 84 | 84 |" in text
    assert not any("not comparable across N" in note for note in scaling.notes)


def test_at_a_fixed_number_of_iterations_short_episodes_bias_every_n_alike(scaling_folders, tmp_path):
    """With fewer than two of the longest episodes per env the training return over the last 10% favours the
    episodes that end early; at a fixed number of iterations every N takes the same steps per env, so the note
    says the bias is the same at every N instead of calling the measure incomparable across N."""
    for n in PPO_AT:  # 21 iterations of N x 4 at every N: 84 steps per env, under two 60-step episodes
        shutil.copytree(scaling_folders / f"N{n}", tmp_path / f"N{n}")
        for config in (tmp_path / f"N{n}").glob("*/seed*/config.yaml"):
            config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "total_frames": 21 * n * 4,
                                              "env": {"make": {"env_name": "Toy-v0"}, "num_envs": n,
                                                      "eval_steps": 60}}))  # fmt: skip
    scaling = scaling_summary([load_study(tmp_path / f"N{n}") for n in PPO_AT], reps=100)
    assert scaling.iterations == 21
    (note,) = [note for note in scaling.notes if "longest episodes" in note]
    assert note.startswith("at N=12, 24, 48 each env steps fewer than two of the longest episodes (60 steps)")
    assert "alike at every N" in note and "not comparable" not in note


def test_the_hopper_sweeps_run_a_fixed_number_of_iterations_and_co_scale_the_minibatches():
    """``scaling_hopper``: 123 iterations at every N, the study's settings on Hopper; ``scaling_hopper_coscaled``: the
    same, with the minibatch size of N = 1536 kept (4, 8, 16 minibatches), the same for sapg and PPO."""
    cfg = _compose

    for n, minibatches in ((1536, 4), (3072, 8), (6144, 16)):
        for ablation in ("sapg", "ppo_entropy_0.25"):
            fixed = cfg("scaling_hopper", f"env.num_envs={n}", f"ablation={ablation}")
            coscaled = cfg("scaling_hopper_coscaled", f"env.num_envs={n}", f"ablation={ablation}")
            assert fixed.env.make.env_name == "Hopper-v4" and fixed.total_frames == 123 * n * 16
            assert (fixed.ppo.num_minibatches, coscaled.ppo.num_minibatches) == (4, minibatches)
            assert fixed.ppo.kl_rows == "on_policy" and fixed.network.max_log_std == 0.5
    assert cfg("scaling_hopper").hydra.sweeper.params["env.num_envs"] == "1536,3072,6144"
    assert cfg("scaling_hopper").hydra.sweeper.params["ablation"] == "sapg,ppo_entropy_0.25"  # the study's tuned PPO
    with pytest.raises(Exception, match="env.num_envs=1000 is not accepted here: 4 x N / 1536 must be a whole number"):
        _ = cfg("scaling_hopper_coscaled", "env.num_envs=1000").ppo.num_minibatches


def test_an_n_the_co_scaling_cannot_divide_is_one_line_on_the_command_line(capsys):
    from sapg_torchrl.cli.checks import check_command_line

    with pytest.raises(SystemExit) as exit_:
        check_command_line(["--config-name", "scaling_hopper_coscaled", "env.num_envs=3072,1002"], "study")
    error = capsys.readouterr().err.strip()
    assert exit_.value.code == 2
    assert error == (
        "error: env.num_envs=1002 is not accepted here: 4 x N / 1536 must be a whole number: use a multiple of 384 "
        "(e.g. 768 or 1152)"
    )
