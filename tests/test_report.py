"""The study report: numbers on a hand-written study of known curves, and a report of a real tiny sweep."""

import itertools
import json
import math
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, TINY_OVERRIDES
from sapg_torchrl.training import StateReservoir
from sapg_torchrl.study import load_study, summarize, write_report

PLOTS = ("learning_curves.png", "final_scores.png", "pca_curves.png", "probability_of_improvement.png")
TABLES = ("## Asymptotic performance", "## Sample efficiency", "## Exploration diversity")


def _table_rows(text: str, heading: str) -> dict[str, list[str]]:
    """variant -> cells of the first markdown table after ``heading``."""
    lines = text.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    table = itertools.takewhile(lambda line: line.startswith("|"), lines[start:])
    rows = [line for line in table if line.startswith("| ")]  # not the |---| rule
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in r.strip("|").split("|")] for r in rows[1:])}


# -------------------------------------------------------------------------------- synthetic study
BUDGET = 1000
FRAMES = np.arange(0, BUDGET + 1, 100)  # 0, 100, ..., 1000
SEEDS = range(5)


def _curve(variant: str, seed: int) -> np.ndarray:
    return {
        "sapg": np.full(FRAMES.size, 10.0),  # at the best score from the first frame
        "no_split": FRAMES / 100.0,  # linear from low (0) to high (10)
        "symmetric": np.zeros(FRAMES.size),  # at low throughout: never reaches the threshold
        "no_off_policy": np.full(FRAMES.size, float(seed)),  # 0, 1, 2, 3, 4 across seeds
    }[variant]


def _write_run(run_dir, variant, seed, values, num_envs=12):
    run_dir.mkdir(parents=True)
    m = 1 if variant == "no_split" else 2
    config = {"seed": seed, "total_frames": BUDGET, "env": {"make": {"env_name": "Toy-v0"}, "num_envs": num_envs},
              "sapg": {"num_blocks": m}, "ppo": {"horizon": 4, "kl_rows": "on_policy"}}  # fmt: skip
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": {"fidelity": "code", "env": "toy"}}}})
    )
    overrides = [f"ablation={variant}", f"seed={seed}", "env=toy"]
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    evaluation = float(values[-1]) + 1.0  # the leader evaluated at the last 3 rows, the same each time
    rows = [(f, float(v), evaluation if i >= len(FRAMES) - 3 else "") for i, (f, v) in enumerate(zip(FRAMES, values))]
    lines = ["frames,return/leader,eval/return,train/lr"] + [f"{f},{v!r},{e},{5e-4 * (1 + seed)}" for f, v, e in rows]
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
    kl = [[0.0, 0.2], [0.4, 0.0]] if m == 2 else [[0.0]]
    result = {"frames": BUDGET, "eval/return": float(values[-1]) + 1.0,
              "diversity/entropy_per_block": [1.0, 2.0][:m], "diversity/pairwise_kl": kl}  # fmt: skip
    (run_dir / "result.json").write_text(json.dumps(result))
    g = torch.Generator().manual_seed(seed)
    if variant == "sapg":  # a line in 3-D: rank 1, PCA error 0 from one component on
        states = torch.randn(40, 1, generator=g) * torch.tensor([[1.0, 2.0, 3.0]])
    else:
        states = torch.randn(40, 3, generator=g)
    reservoir = StateReservoir(40)
    reservoir.update(states)
    reservoir.save(run_dir / "states.pt")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic") / "toy"
    for variant in ("sapg", "no_split", "symmetric", "no_off_policy"):
        for seed in SEEDS:
            _write_run(folder / variant / f"seed{seed}", variant, seed, _curve(variant, seed))
    (folder / "disjoint" / "seed0").mkdir(parents=True)  # an unfinished run: no result.json
    (folder / "disjoint" / "seed0" / "metrics.csv").write_text("frames,return/leader\n100,1.0\n")
    return folder


def test_synthetic_numbers_match_hand_computations(synthetic):
    with pytest.warns(UserWarning, match=r"disjoint/seed0 unfinished"):
        study = load_study(synthetic)
    assert study.variants == ["sapg", "no_split", "symmetric", "no_off_policy"]  # the spec's order
    assert [p.name for p, _ in study.skipped] == ["seed0"] and not study.mismatches
    s = summarize(study, reps=200, ae_epochs=2)
    # asymptotic: the mean over the last 10% of the budget (frames 900 and 1000)
    assert s.iqm["final"]["sapg"] == (10.0, 10.0, 10.0)
    assert s.iqm["final"]["no_split"][0] == pytest.approx(9.5)
    assert s.iqm["final"]["no_off_policy"][0] == pytest.approx(2.0)  # IQM of 0..4: mean of 1, 2, 3
    assert s.iqm["eval"]["sapg"][0] == pytest.approx(11.0)
    # sample efficiency: low = 0 (lowest curve), high = 10 (sapg's IQM), threshold 8
    assert (s.low, s.high, s.threshold, s.best_variant) == (0.0, 10.0, 8.0, "sapg")
    assert s.per_run["sapg"]["auc"] == pytest.approx([1.0] * 5)
    assert s.per_run["sapg"]["frames"].tolist() == [0.0] * 5  # reaches it at the first frame
    assert s.per_run["no_split"]["auc"] == pytest.approx([0.5] * 5)  # a linear climb from low to high
    assert s.per_run["no_split"]["frames"].tolist() == [800.0] * 5
    assert s.per_run["symmetric"]["auc"] == pytest.approx([0.0] * 5)
    assert s.per_run["symmetric"]["frames"].tolist() == [BUDGET] * 5  # never reached: counts as the budget
    assert not s.per_run["symmetric"]["reached"].any()
    assert s.iqm["auc"]["no_off_policy"][0] == pytest.approx(0.2)  # constant k/10 for k = 0..4
    # sapg beats every run of every ablation, on both measures; the effect is the difference of IQMs
    for measure in ("final", "eval"):
        assert set(s.poi[measure]) == {"no_split", "symmetric", "no_off_policy"}
        assert s.poi[measure]["symmetric"] == s.poi[measure]["no_off_policy"] == (1.0, 1.0, 1.0)
    assert s.poi["final"]["no_split"] == (1.0, 1.0, 1.0)
    assert s.poi["eval"]["no_split"][0] == 0.5  # evaluated at 10 + 1, sapg's too: every pair a tie
    assert s.effect["final"]["no_off_policy"][0] == pytest.approx(10.0 - 2.0)
    assert s.effect["eval"]["no_off_policy"][0] == pytest.approx(11.0 - 3.0)
    low, high = s.effect["final"]["no_off_policy"][1:]
    assert low <= 8.0 <= high
    # learning rates: each run's median (5e-4 (1 + seed)), the median over seeds; never at the cap
    assert s.per_run["sapg"]["lr"] == pytest.approx([5e-4 * (1 + k) for k in SEEDS])
    assert s.lr["sapg"] == (pytest.approx(5e-4 * (1 + sorted(SEEDS)[len(SEEDS) // 2])), 0.0)
    # diversity: sapg's states lie on a line (PCA error 0 from k = 1); KL (0.2 + 0.4) / 2; entropy (1 + 2) / 2
    assert s.diversity["sapg"]["pca_area"] == pytest.approx(0.0, abs=1e-9)
    assert s.diversity["symmetric"]["pca_area"] > 0.1
    assert s.diversity["sapg"]["kl"] == pytest.approx(0.3) and s.diversity["no_split"]["kl"] is None
    assert s.diversity["sapg"]["entropy"] == pytest.approx(1.5) and s.diversity["no_split"]["entropy"] == 1.0
    assert s.diversity["sapg"]["states"] == 200 and s.bottlenecks == (1, 2)


def test_a_run_written_by_two_processes_is_skipped_naming_the_row(tmp_path):
    """Rows of two writers interleave (frames go back): the run is skipped with a warning, not read as a curve."""
    _write_run(tmp_path / "sapg" / "seed0", "sapg", 0, _curve("sapg", 0))
    _write_run(tmp_path / "sapg" / "seed1", "sapg", 1, _curve("sapg", 1))
    metrics = tmp_path / "sapg" / "seed1" / "metrics.csv"
    header, *rows = metrics.read_text().splitlines()
    metrics.write_text("\n".join([header, *rows[:5], rows[3], *rows[5:]]) + "\n")  # row of frames 300 again
    with pytest.warns(UserWarning, match=r"sapg/seed1 unreadable .*frames do not increase \(row 6: 300 after 400\)"):
        study = load_study(tmp_path)
    assert [run.seed for run in study.runs["sapg"]] == [0]


def test_synthetic_report_tables_and_findings(synthetic, tmp_path):
    with pytest.warns(UserWarning):
        study = load_study(synthetic)
    path = write_report(study, tmp_path / "report", "python recipes/report.py toy", reps=200, ae_epochs=2,
                        study_command="python recipes/study.py env=toy")  # fmt: skip
    text = path.read_text()
    asymptotic = _table_rows(text, "## Asymptotic performance")
    assert asymptotic["sapg"][:3] == ["5", "0/5", "10 [10, 10]"] and asymptotic["sapg"][4] == "–"
    assert asymptotic["no_split"][2] == "9.5 [9.5, 9.5]" and asymptotic["symmetric"][3] == "1 [1, 1]"
    assert asymptotic["no_split"][4].startswith("+0.5 [")  # the effect: IQM(sapg) - IQM(no_split), 10 - 9.5
    evaluation = _table_rows(text, "### Evaluation return")
    assert evaluation["sapg"][2] == "11 [11, 11]" and evaluation["symmetric"][3] == "1 [1, 1]"
    rates = _table_rows(text, "### Learning rates")
    assert rates["sapg"] == ["0.0015", "0%"]  # the median over seeds 0..4 of 5e-4 (1 + seed)
    efficiency = _table_rows(text, "## Sample efficiency")
    assert efficiency["sapg"] == ["1 [1, 1]", "0 [0, 0]", "5/5"]
    assert efficiency["no_split"] == ["0.5 [0.5, 0.5]", "800 [800, 800]", "5/5"]
    assert efficiency["symmetric"] == ["0 [0, 0]", "1000 [1000, 1000]", "0/5"]
    diversity = _table_rows(text, "## Exploration diversity")
    assert diversity["no_split"][-1] == "–" and diversity["sapg"][-1] == "0.3"
    assert "never reach it count as the budget" in text and "disjoint/seed0" in text
    assert "`sapg` is better than `symmetric`" in text
    assert "weak difference" not in text  # every effect's interval here excludes 0: no finding is called weak
    for measure in ("training return", "evaluation return"):
        assert re.search(rf"clearly worse than `sapg`\* — on the {measure}: \*\*holds\*\*", text)
    assert re.search(r"against the paper's PPO \(`no_split`\), on the training return — \*\*holds \(sapg better\)\*\*", text)
    evaluation_claim = r"against the paper's PPO \(`no_split`\), on the evaluation return — \*\*holds \(sapg not worse; indistinguishable\)\*\*"
    assert re.search(evaluation_claim, text)  # both evaluated at 11: every pair a tie
    assert "python recipes/study.py env=toy" in text


def test_a_diverged_run_counts_at_the_floor(synthetic, tmp_path):
    """A diverged run (result.json with diverged: true) is in the study: from the iteration it diverged on, its
    return is the lowest any run logged (here 0), its eval return too; the table counts it."""
    folder = tmp_path / "toy"
    shutil.copytree(synthetic, folder)
    for seed in SEEDS:  # 25 envs x T = 4: 100 frames per iteration, so iteration k ends at frame 100 k
        _write_run(folder / "no_is_correction" / f"seed{seed}", "no_is_correction", seed, np.full(FRAMES.size, 5.0),
                   num_envs=25)  # fmt: skip
    diverged = folder / "no_is_correction" / "seed2"
    metrics = (diverged / "metrics.csv").read_text().splitlines()
    (diverged / "metrics.csv").write_text("\n".join(metrics[:6]) + "\n")  # frames 0..400, then iteration 5 diverged
    result = json.loads((diverged / "result.json").read_text())
    result.update(diverged=True, diverged_at_iteration=5, error="training diverged at iteration 5")
    (diverged / "result.json").write_text(json.dumps(result))
    with pytest.warns(UserWarning):
        study = load_study(folder)
    run = study.runs["no_is_correction"][2]
    assert run.diverged_at == 5 and study.floor == 0.0
    assert run.frames.tolist() == [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
    assert run.leader_return.tolist() == [5.0] * 5 + [0.0] * 6
    s = summarize(study, reps=200, diversity=False)
    assert s.per_run["no_is_correction"]["final"].tolist() == [5.0, 5.0, 0.0, 5.0, 5.0]
    assert s.per_run["no_is_correction"]["eval"].tolist() == [6.0, 6.0, 0.0, 6.0, 6.0]
    text = write_report(study, tmp_path / "report", "report", reps=200, diversity=False).read_text()
    assert _table_rows(text, "## Asymptotic performance")["no_is_correction"][1] == "1/5 (it. 5)"
    assert "no_is_correction (5 seeds, 1 diverged)" not in text  # the plot's legend, not the text


def test_mismatched_settings_are_reported_not_raised(synthetic, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(synthetic, folder)
    config = folder / "no_split" / "seed3" / "config.yaml"
    config.write_text(config.read_text().replace("num_envs: 12", "num_envs: 24"))
    shutil.rmtree(folder / "symmetric" / "seed4")
    with pytest.warns(UserWarning):
        study = load_study(folder)
    text = "\n".join(study.mismatches)
    assert "N (`env.num_envs`) differs" in text and "no_split/seed3" in text
    assert "different seeds" in text and "symmetric: 0, 1, 2, 3" in text


def test_a_budget_written_as_a_float_is_the_same_budget(synthetic, tmp_path):
    """``total_frames: 1000`` and ``1000.0`` (older runs stored the schema's float) are one setting, not a mismatch."""
    folder = tmp_path / "floats"
    shutil.copytree(synthetic, folder)
    config = folder / "no_split" / "seed3" / "config.yaml"
    assert "total_frames: 1000\n" in config.read_text()
    config.write_text(config.read_text().replace("total_frames: 1000\n", "total_frames: 1000.0\n"))
    assert not any("total_frames" in line for line in load_study(folder).mismatches)


def test_report_recipe_rejects_a_bad_folder(tmp_path):
    folder = tmp_path / "missing"
    done = subprocess.run([sys.executable, str(REPO / "recipes" / "report.py"), str(folder)],
                          capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(folder) in lines[0]
    with pytest.raises(ValueError, match="holds no finished run"):  # a folder without runs: also exit 2
        load_study(tmp_path)


@pytest.mark.parametrize(("option", "value"), [("--reps", "0"), ("--max-states", "-5")])
def test_report_rejects_a_count_below_one_before_writing(synthetic, tmp_path, capsys, option, value):
    from sapg_torchrl.cli.report import main

    with pytest.raises(SystemExit) as exit_:
        main([str(synthetic), "--out", str(tmp_path / "out"), option, value])
    assert exit_.value.code == 2 and not (tmp_path / "out").exists()
    assert capsys.readouterr().err.strip() == f"error: {option} must be a positive integer, got {value}"


# -------------------------------------------------------------------------------- real tiny sweep
VARIANTS = ("sapg", "no_split", "symmetric", "cpo")


@pytest.fixture(scope="module")
def real_report(tmp_path_factory):
    """A tiny real sweep (3 ablations x 3 seeds) and its report written by recipes/report.py."""
    sweep_dir = tmp_path_factory.mktemp("study") / "tiny"
    sweep = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "study.py"), *TINY_OVERRIDES, f"hydra.sweep.dir={sweep_dir}",
         f"ablation={','.join(VARIANTS)}", "seed=range(3)", "train.record_states=64"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    done = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "report.py"), str(sweep_dir), "--reps", "300",
         "--study-command", "python recipes/study.py tiny"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep_dir, done


def test_real_report_header_tables_and_plots(real_report):
    sweep_dir, done = real_report
    path = sweep_dir / "report" / "report.md"
    assert done.stdout.strip().splitlines()[-1] == str(path)
    text = path.read_text()
    for needle in ("MountainCarContinuous-v0", "| N (envs) | 12 |", "| M (`sapg`'s blocks) | 6 |",
                   "| T (horizon) | 4 |", "| frame budget | 480", "sapg: 3 (0, 1, 2)", "| fidelity | code |",
                   f"python recipes/report.py {sweep_dir} --reps 300", "python recipes/study.py tiny"):  # fmt: skip
        assert needle in text, needle
    for heading in TABLES:
        rows = _table_rows(text, heading)
        assert set(VARIANTS) <= set(rows), (heading, rows)
    assert _table_rows(text, "## Exploration diversity")["no_split"][-1] == "–"
    coupling = _table_rows(text, "## CPO's coupling")  # CPO's diagnostics, for the variant that logs them only
    assert list(coupling) == ["cpo"] and all(cell not in ("", "nan") for cell in coupling["cpo"]), coupling
    assert "## Findings" in text and "Paper: *`symmetric` and `no_off_policy`" in text
    for plot in PLOTS:
        assert (sweep_dir / "report" / plot).stat().st_size > 1000, plot
        assert f"]({plot})" in text


def test_default_study_command_reruns_the_sweep(real_report):
    sweep_dir, _ = real_report
    study = load_study(sweep_dir)
    from sapg_torchrl.study import default_study_command

    command = default_study_command(study)
    assert command.startswith("python recipes/study.py ") and "ablation=sapg,no_split,symmetric,cpo" in command
    assert "seed=0,1,2" in command and f"hydra.sweep.dir={sweep_dir}" in command and "env.num_envs=12" in command
    assert not math.isnan(summarize(study, reps=50, diversity=False).high)


def test_tuned_ppo_is_the_best_point_of_the_entropy_grid(synthetic, tmp_path):
    folder = tmp_path / "toy"
    shutil.copytree(synthetic, folder)
    for seed in SEEDS:
        run_dir = folder / "ppo_entropy" / f"seed{seed}"
        _write_run(run_dir, "no_split", seed, np.full(FRAMES.size, 9.9))  # one block, like no_split
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        config["sapg"].update(entropy_schedule="explicit", entropy_coefficients=[0.05])
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.warns(UserWarning):
        study = load_study(folder)
    assert study.ppo_grid == {"no_split": 0.0, "ppo_entropy": 0.05}
    assert not any("num_blocks" in m for m in study.mismatches), study.mismatches  # one block by design
    s = summarize(study, reps=200, diversity=False)
    # the tuned baseline per measure: ppo_entropy's training return 9.9 beats no_split's 9.5, but its evaluation
    # (9.9 + 1) does not beat no_split's (10 + 1, the climb's last value)
    assert s.tuned_ppo == {"final": "ppo_entropy", "eval": "no_split"}
    text = write_report(study, tmp_path / "report", "report", reps=200, diversity=False).read_text()
    assert "ppo_entropy (tuned PPO)" in _table_rows(text, "## Asymptotic performance")
    assert "against the tuned PPO baseline (`ppo_entropy`)" in text and "against the paper's PPO (`no_split`)" in text


def test_a_study_is_named_by_its_runs_study_name_and_two_folders_of_one_study_are_refused(synthetic, tmp_path, capsys):
    """A study's name is its runs' ``study.name`` (docs/results/<task>/runs share the folder name ``runs``), else
    its folder's name; two folders of the same name are refused in one line before any report is written."""
    from sapg_torchrl.cli.report import main

    named = tmp_path / "hopper" / "runs"
    shutil.copytree(synthetic, named)
    for config in named.glob("*/seed*/config.yaml"):
        config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "study": {"name": "hopper"}}))
    with pytest.warns(UserWarning, match="unfinished"):
        assert load_study(named).name == "hopper" and load_study(synthetic).name == "toy"
    unnamed = tmp_path / "other" / "runs"
    shutil.copytree(synthetic, unnamed)
    shutil.copytree(synthetic, tmp_path / "third" / "runs")
    with pytest.raises(SystemExit) as exit_:
        main([str(unnamed), str(tmp_path / "third" / "runs"), "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and not (tmp_path / "out").exists()
    assert error == (f"error: two study folders hold the same study (study.name): {unnamed} (runs), "
                     f"{tmp_path / 'third' / 'runs'} (runs); give one folder per task")


@pytest.mark.slow  # two full reports in a subprocess: minutes on 2 cores; the aggregate's numbers are a doctest
def test_report_across_two_tasks(synthetic, tmp_path):
    """Two study folders (tasks): a report each, and the cross-task aggregate of min-max normalised scores."""
    second = tmp_path / "toy_b"
    shutil.copytree(synthetic, second)
    done = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "report.py"), str(synthetic), str(second), "--out",
         str(tmp_path / "out"), "--reps", "100"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "toy" / "report.md").exists() and (tmp_path / "out" / "toy_b" / "report.md").exists()
    text = (tmp_path / "out" / "across_tasks.md").read_text()
    rows = _table_rows(text.split("| variant |", 1)[1].join(["## x\n| variant |", ""]), "## x")
    assert rows["sapg"][:2] == ["5", "1 [1, 1]"]  # at the best score in both tasks
    assert rows["symmetric"][1:] == ["0 [0, 0]", "1 [1, 1]"]  # at the floor in both tasks
    assert rows["tuned PPO (toy: no_split, toy_b: no_split)"] == rows["no_split"]  # the only PPO point of the grid
    assert (tmp_path / "out" / "across_tasks.png").stat().st_size > 1000
    alone = subprocess.run([sys.executable, str(REPO / "recipes" / "report.py"), str(synthetic), str(second)],
                           capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert alone.returncode == 2 and alone.stderr.strip().endswith("several study folders need --out "
                                                                    "(where the per-task and cross-task reports go)")


def test_the_tuned_ppo_row_across_tasks_takes_each_tasks_own_best_grid_point():
    """Across tasks the tuned PPO baseline is each task's own tuned variant (not one grid point for all), and
    there is no such row where a task has no PPO variant."""
    from types import SimpleNamespace as S

    from sapg_torchrl.study import aggregate_tasks
    from sapg_torchrl.study.tasks import TUNED_PPO

    def task(finals: dict, evals: dict, tuned: dict):  # floor 0, best IQM 10 on both measures, seeds 0..2
        runs = {v: [S(seed=k) for k in range(3)] for v in finals}
        per_run = {v: {"final": np.array(finals[v], dtype=float), "eval": np.array(evals[v], dtype=float)}
                   for v in finals}  # fmt: skip
        iqm = {m: {"sapg": (10.0, 10.0, 10.0)} for m in ("final", "eval")}
        return S(runs=runs, floor=0.0), S(per_run=per_run, iqm=iqm, tuned_ppo=tuned)

    finals = {"sapg": [10] * 3, "no_split": [5] * 3, "ppo_entropy": [1] * 3}
    evals = {"sapg": [10] * 3, "no_split": [1] * 3, "ppo_entropy": [6] * 3}  # on this measure the other grid point
    a = task(finals, evals, {"final": "no_split", "eval": "ppo_entropy"})
    b = task({"sapg": [10] * 3, "no_split": [2] * 3, "ppo_entropy": [8] * 3}, {"sapg": [10] * 3, "no_split": [2] * 3,
             "ppo_entropy": [8] * 3}, {"final": "ppo_entropy", "eval": "ppo_entropy"})  # fmt: skip
    cross = aggregate_tasks({"a": a, "b": b}, reps=50)
    assert cross.tuned_ppo == {"final": {"a": "no_split", "b": "ppo_entropy"}, "eval": {"a": "ppo_entropy", "b": "ppo_entropy"}}
    assert cross.scores["final"][TUNED_PPO].tolist() == [[0.5, 0.8]] * 3
    assert cross.scores["eval"][TUNED_PPO].tolist() == [[0.6, 0.8]] * 3
    assert cross.poi["final"][TUNED_PPO][0] == cross.poi["eval"][TUNED_PPO][0] == 1.0
    no_ppo = task({"sapg": [10] * 3}, {"sapg": [10] * 3}, {})
    assert TUNED_PPO not in aggregate_tasks({"a": a, "c": no_ppo}, reps=50).scores["final"]
