"""The benchmarks run with one command each (at tiny sizes here: their numbers are for a quiet machine, never a
test), and refuse bad values in one line."""

import argparse
import importlib.util
import subprocess
import sys

import pytest
from conftest import REPO


def _script(name):
    """A benchmark script as a module (``benchmarks/`` is not a package)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), REPO / "benchmarks" / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "benchmarks"))

RUNS = {
    "throughput.py": ["--num-envs", "12", "--rounds", "1", "--iters", "1", "--warmup", "0", "--no-disjoint", "--eval"],
    "compute_floor.py": ["--num-envs", "12", "--rounds", "1", "--iters", "1"],
    "scaling_n.py": ["--num-envs", "12,24", "--rounds", "1", "--iters", "1", "--warmup", "0"],
    "gpu_check.py": ["--device", "cpu", "--num-envs", "12", "--rounds", "1", "--iters", "1", "--no-brax"],
    "gpu_playground.py": ["--device", "cpu", "--num-envs", "12", "--seconds", "1", "--horizon", "4"],  # minutes: JAX compiles LEAP
}
PRINTS = {
    "throughput.py": ["| sapg ", "| stock ", "evaluation (sapg)", "% of training time"],
    "compute_floor.py": ["no_split  rows", "sapg      rows", "ms/step", "ratio"],
    "scaling_n.py": ["| 12 |", "| 24 |", "s/iter per 1000 envs"],
    "gpu_check.py": ["env=TorchPendulumEnv", "| sapg ", "| no_split ", "| stock ", "cuda graphs: skipped",
                     "host sync and CUDA-graph checks: passed"],
    "gpu_playground.py": ["| sapg | 12 |", "| no_split | 12 |", "JAX"],
}


@pytest.mark.slow  # 15-40 s each on 2 cores (throughput.py builds four trainers and evaluates three times)
@pytest.mark.parametrize("script", sorted(RUNS))
def test_benchmark_runs(script):
    if script == "gpu_playground.py":
        pytest.importorskip("mujoco_playground", reason="pip install -e '.[playground]'")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--threads", "1", *RUNS[script]],
                          capture_output=True, text=True, cwd=REPO, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    for text in PRINTS[script]:
        assert text in done.stdout, done.stdout


@pytest.mark.parametrize("script, args, message", [
    ("compute_floor.py", ["--ablations", "sapg,nope"], "unknown ablation 'nope'"),
    ("scaling_n.py", ["--num-envs", "12,100"], "num_envs=100 is not divisible by num_blocks=6"),
    ("scaling_n.py", ["--num-envs", "12,x"], "--num-envs='12,x' is not accepted: comma-separated integers"),
    ("throughput.py", ["--num-envs", "100"], "num_envs=100 is not divisible by num_blocks=6"),
    ("throughput.py", ["--cudagraphs", "--no-disjoint"], "train.cudagraphs=true is not accepted with the learner on cpu"),
    ("rl_games_vs_ours.py", ["--tasks", "Hopper-v4"], "'Hopper-v4' is not accepted; accepted: MountainCarContinuous-v0"),
    ("rl_games_vs_ours.py", ["--num-envs", "100"], "--num-envs=100 is not accepted: a multiple of 6"),
    ("gpu_check.py", ["--num-envs", "100"], "--num-envs=100 is not accepted: a positive multiple of 6"),
    ("gpu_check.py", ["--device", "cuda:0"], "--device=cuda:0 is not accepted here: cpu (to try it for size), or cuda"),
    ("gpu_check.py", ["--device", "cpu", "--iters", "0"], "--iters=0 is not accepted: an integer >= 1"),
    ("gpu_playground.py", ["--num-envs", "100"], "--num-envs=100 is not accepted: a positive multiple of 6"),
    ("gpu_playground.py", ["--device", "cpu", "--seconds", "0"], "--seconds=0.0 is not accepted: a number > 0"),
    ("op_count.py", ["--num-envs", "100"], "--num-envs=100 is not accepted: a positive multiple of 6"),
    ("conformance/torchrl_ppo_tests.py", ["--torchrl", "/nonexistent", "--out", "/tmp/x"],
     "--torchrl /nonexistent at --commit HEAD has no test/objectives/test_ppo.py: give a clone of pytorch/rl"),
])  # fmt: skip
def test_benchmark_refuses_bad_values(script, args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        _script(script).main(args)
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and message in error and len(error.strip().splitlines()) == 1, error


def test_operator_count_per_step_does_not_grow():
    """Operator calls per optimizer step (counted, never timed: benchmarks/op_count.py) stay within 10% of the recorded
    counts, for sapg, no_split and the stock pipeline they are measured against."""
    op_count = _script("op_count.py")
    args = argparse.Namespace(env=None, num_envs=48, device="cpu", horizon=None, epochs=None, rounds=1, warmup=1, iters=1)
    for name, recorded in op_count.RECORDED.items():
        per_step, _ = op_count.count(name, args)
        assert per_step <= recorded * (1 + op_count.TOLERANCE), (name, per_step, recorded)
