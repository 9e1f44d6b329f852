"""benchmarks/fidelity/: ours logs its leader's episodes as the released code's run does, compare.py reads both by
one measure, and prepare() edits a copy of the released code only where it expects to (issue 35)."""

import csv
import gzip
import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import REPO

FIDELITY = REPO / "benchmarks" / "fidelity"


def _script(name):
    spec = importlib.util.spec_from_file_location(f"fidelity_{name}", FIDELITY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ours_logs_every_finished_leader_episode(tmp_path):
    out = tmp_path / "sapg" / "hopper" / "seed0"
    done = subprocess.run(
        [sys.executable, str(FIDELITY / "ours.py"), "--frames", "600", "--threads", "1", "--out", str(out),
         "env.num_envs=12", "network.hidden=[16]", "device=cpu"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "episodes.csv")))
    metrics = list(csv.DictReader(open(out / "metrics.csv")))
    assert rows and {float(r["frames"]) for r in rows} <= {float(m["frames"]) for m in metrics}
    # the leader's episodes only (2 of the 12 envs): as many as the metrics count (cumulative)
    assert len(rows) == float(metrics[-1]["episodes/leader"])
    assert (out / "config.yaml").read_text().count("value_norm_update: values_and_targets") == 1
    # the deterministic evaluation of its final leader: one measure for every side
    done = subprocess.run([sys.executable, str(FIDELITY / "evaluate.py"), str(out), "--envs", "2"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "eval.json").read_text())
    assert result["task"] == "Hopper-v4" and len(result["returns"]) == 2 and result["return"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--code", "stock", "{run}"], "--code needs --task"),
        (["--code", "{run}", "--task", "Hopper-v4", "{run}"], "is not a prepared rl_games/ folder"),
        (["--code", "stock", "--task", "Hopper-v4", "{run}"], "has no 0_rl_games/nn/last_*.pth"),
        (["{run}"], "is not a run folder of ours.py (no config.yaml)"),
    ],
)
def test_evaluate_refuses_a_bad_value_in_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        _script("evaluate").main([a.format(run=tmp_path) for a in args])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and message in error and len(error.strip().splitlines()) == 1


def test_ours_never_writes_into_an_existing_folder(tmp_path, capsys):
    with pytest.raises(SystemExit, match="exists"):
        _script("ours").main(["--out", str(tmp_path)])


def test_ours_refuses_a_bad_value_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        _script("ours").main(["--ablation", "nope", "--out", str(tmp_path / "run")])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and "unknown ablation 'nope'; accepted: " in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def write_run(root, method, seed, rows):
    path = root / method / "hopper" / f"seed{seed}"
    path.mkdir(parents=True)
    text = "frames,return,wall_s\n" + "".join(f"{frames},{ret},0\n" for frames, ret in rows)
    if seed == 1:  # as committed: gzipped
        with gzip.open(path / "episodes.csv.gz", "wt") as f:
            f.write(text)
    else:
        (path / "episodes.csv").write_text(text)


def test_compare_reads_both_sides_by_one_measure(tmp_path):
    for seed in range(3):
        write_run(tmp_path, "released", seed, [(100, 1.0), (200, 3.0 + seed)])
        write_run(tmp_path, "sapg", seed, [(100, 2.0), (200, 2.0)])
        write_run(tmp_path, "shorter", seed, [(100, 5.0)])
    _script("compare").main([str(tmp_path), "--out", str(tmp_path / "report"), "--points", "50", "100", "200"])
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| released | 3 | – | 1 [1, 1] (1-1) | 2 [2, 3] (2-3) |" in report  # 200: (1 + 3 + seed) / 2
    assert "| sapg | 3 | – | 2 [2, 2] (2-2) | 2 [2, 2] (2-2) |" in report
    assert "| shorter | 3 | – | 5 [5, 5] (5-5) | – |" in report  # no cell beyond its runs' end
    for seed in range(3):  # a run that went on after its last finished episode says where it ended
        (tmp_path / "shorter" / "hopper" / f"seed{seed}" / "run.json").write_text(json.dumps({"frames": 200}))
    _script("compare").main([str(tmp_path), "--out", str(tmp_path / "report"), "--points", "50", "100", "200"])
    assert "| shorter | 3 | – | 5 [5, 5] (5-5) | 5 [5, 5] (5-5) |" in (tmp_path / "report" / "report.md").read_text()
    assert (tmp_path / "report" / "hopper.png").stat().st_size > 0
    for seed in range(3):  # evaluate.py's results, where the runs have them
        (tmp_path / "sapg" / "hopper" / f"seed{seed}" / "eval.json").write_text(json.dumps({"return": 10.0 + seed}))
    _script("compare").main([str(tmp_path), "--out", str(tmp_path / "report"), "--points", "100"])
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Deterministic evaluation" in report and "| sapg | 3 | 11 [10, 12] (10-12) |" in report


def test_compare_takes_one_method_from_a_root_and_merges_seeds_by_method(tmp_path):
    for seed in range(2):
        write_run(tmp_path / "a", "released", seed, [(100, 1.0)])
        write_run(tmp_path / "a", "sapg", seed, [(100, 7.0)])  # left out: only a/released is given
        write_run(tmp_path / "b", "released", seed + 2, [(100, 3.0)])
        write_run(tmp_path / "c", "sapg", seed, [(100, 2.0)])
    roots = [tmp_path / "a" / "released", tmp_path / "b" / "released", tmp_path / "c"]
    _script("compare").main([*map(str, roots), "--out", str(tmp_path / "report"), "--points", "100"])
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| released | 4 | 2 [1, 3] (1-3) |" in report and "| sapg | 2 | 2 [2, 2] (2-2) |" in report


def test_compare_without_runs_says_what_it_expects(tmp_path):
    with pytest.raises(SystemExit, match="no <method>/<task>/seed<k>/episodes.csv"):
        _script("compare").main([str(tmp_path), "--out", str(tmp_path / "report")])


def test_prepare_edits_the_expected_lines_and_refuses_other_code(tmp_path):
    released = _script("released")
    source = tmp_path / "sapg"
    for name, edits in released.EDITS.items():  # a stand-in holding exactly the lines the edits expect
        path = source / "rl_games" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# head\n" + "".join(old for old, _ in edits) + "# tail\n")
    target = released.prepare(source, tmp_path / "out")
    for name, edits in released.EDITS.items():
        assert (target / name).read_text() == "# head\n" + "".join(new for _, new in edits) + "# tail\n"
    (source / "rl_games" / "rl_games" / "envs" / "envpool.py").write_text("something else\n")
    with pytest.raises(SystemExit, match="does not hold the expected line"):
        released.prepare(source, tmp_path / "again")
    with pytest.raises(SystemExit, match="exists"):
        released.prepare(source, tmp_path / "out")


def test_released_run_refuses_an_unprepared_folder(tmp_path):
    with pytest.raises(SystemExit, match="is not a prepared rl_games/ folder"):
        _script("released").main(["run", "--code", str(tmp_path), "--out", str(tmp_path / "o")])


def test_probe_of_ours_writes_one_row_per_optimizer_step(tmp_path):
    out = tmp_path / "probe" / "ours.csv"
    done = subprocess.run(
        [sys.executable, str(FIDELITY / "probe.py"), "ours", "--frames", "600", "--out", str(out),
         "env.num_envs=12", "network.hidden=[16]", "device=cpu"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    probe = _script("probe")
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0]) == probe.COLUMNS and len(rows) == 4 * probe.STEPS_PER_ITERATION  # 4 iterations of 192 frames
    assert all(0 <= float(r["value_clip"]) <= 1 and float(r["lr"]) > 0 and float(r["kl_on"]) >= 0 for r in rows)
    assert [int(r["step"]) for r in rows] == list(range(len(rows)))
    shown = subprocess.run([sys.executable, str(FIDELITY / "probe.py"), "show", str(out), str(out), "--every", "2"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert shown.returncode == 0 and shown.stdout.count("\n| ") == 2  # iterations 0 and 2, two columns each
    assert "| 0 | " in shown.stdout and "| 2 | " in shown.stdout and shown.stdout.count(str(out)) == 2


def test_probe_edits_a_copy_of_the_prepared_code_and_refuses_other_code(tmp_path):
    probe = _script("probe")
    code = tmp_path / "prepared"
    (code / "rl_games").mkdir(parents=True)
    (code / "rl_games" / "torch_runner.py").write_text("")
    for name, edits in probe.PROBE_EDITS.items():  # a stand-in holding exactly the lines the edits expect
        path = code / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# head\n" + "".join(old for old, _ in edits) + "# tail\n")
    target = probe.patched_copy(code, tmp_path / "copy")
    for name, edits in probe.PROBE_EDITS.items():
        assert (target / name).read_text() == "# head\n" + "".join(new for _, new in edits) + "# tail\n"
        assert (code / name).read_text().startswith("# head\n" + edits[0][0])  # the prepared copy is untouched
    assert (target / "rl_games" / "common" / "probe_log.py").is_file()
    (code / "rl_games" / "common" / "a2c_common.py").write_text("something else\n")
    with pytest.raises(SystemExit, match="does not hold the expected line"):
        probe.patched_copy(code, tmp_path / "again")
    with pytest.raises(SystemExit, match="is not a prepared rl_games/ folder"):
        probe.patched_copy(tmp_path, tmp_path / "other")


def test_schedule_reads_both_sides_gzipped_or_not(tmp_path, capsys):
    for seed, lrs in enumerate([(1e-3, 4e-3), (2e-3, 2e-3)]):
        released = tmp_path / "runs" / "released" / "hopper" / f"seed{seed}"
        released.mkdir(parents=True)
        text = "frames,lr,kl\n" + "".join(f"{i * 10},{lr},0.02\n" for i, lr in enumerate(lrs))
        with gzip.open(released / "schedule.csv.gz", "wt") as f:
            f.write(text)
        ours = tmp_path / "centre" / "sapg" / "hopper" / f"seed{seed}"
        ours.mkdir(parents=True)
        (ours / "config.yaml").write_text("seed: 0\n")
        rows = "frames,train/lr,train/kl_approx\n" + "".join(f"{i * 10},{lr},0.01\n" for i, lr in enumerate(lrs))
        (ours / ("metrics.csv" if seed else "metrics.csv.gz")).write_bytes(
            rows.encode() if seed else gzip.compress(rows.encode())
        )
    _script("schedule").main([str(tmp_path / "runs"), str(tmp_path / "centre" / "sapg"), "--until", "10"])
    out = capsys.readouterr().out
    assert "| released | 2 | 0.0020 [0.0020, 0.0020] | 0.0200 [0.0200, 0.0200] |" in out  # geometric means of 1e-3, 4e-3
    assert "| sapg | 2 | 0.0020 [0.0020, 0.0020] | 0.0100 [0.0100, 0.0100] |" in out
