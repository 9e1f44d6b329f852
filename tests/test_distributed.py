"""Data-parallel SAPG (torch.distributed, gloo on the CPU, 2 processes under torchrun): gradients and global
statistics equal one process's on the union of the ranks' rows, a 2-process run is one run, bad input is one line."""

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from conftest import REPO, TINY_OVERRIDES
from distributed_checks import M, gradients, statistics, statistics_data

from sapg_torchrl import ConfigError
from sapg_torchrl.errors import Preempted
from sapg_torchrl.training import distributed
from sapg_torchrl.training.distributed import SINGLE, Ranks, from_environment, process_group, split_envs


def torchrun(*args, cwd, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ranks_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    done = torchrun(str(REPO / "tests" / "distributed_checks.py"), str(out), cwd=out)
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("variant", ["sapg", "disjoint"])
def test_all_reduced_gradient_equals_one_process_on_the_union(ranks_results, variant):
    """Each rank's half of the on-policy and of the relabelled rows; the averaged gradient is the whole batch's."""
    single = gradients(variant == "disjoint")
    for result in ranks_results:
        assert result["world_size"] == 2
        for got, want in zip(result[f"grads_{variant}"], single, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_global_statistics_equal_one_process(ranks_results):
    """Advantage standardisation (global and per block), the normaliser's merged statistics and the epoch KL."""
    single, data = statistics(), statistics_data()
    by_rank = [result["statistics"] for result in ranks_results]
    for key in ("global", "per_block"):  # the ranks' rows interleave back into the batch's order
        merged = torch.empty_like(single[key])
        for rank, stats in enumerate(by_rank):
            merged[rank::2] = stats[key]
        torch.testing.assert_close(merged, single[key], rtol=1e-5, atol=1e-6)
    for stats in by_rank:
        torch.testing.assert_close(stats["norm"], single["norm"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stats["kl"], data["kl"].mean(), rtol=1e-6, atol=1e-7)
    assert len(data["values"]) == 2  # two successive updates merge as one process's would


def test_ranks_that_drift_apart_are_caught(ranks_results):
    assert all(result["drift_caught"] for result in ranks_results)


def test_two_process_run_is_one_run(tmp_path):
    """``torchrun --nproc_per_node=2 recipes/sapg.py``: one run folder, frames counted once, every block's envs
    on both ranks; the ranks' parameter checksums are compared at the end (a drift fails the run)."""
    overrides = [o for o in TINY_OVERRIDES if not o.startswith(("env.num_envs", "total_frames"))]
    done = torchrun(str(REPO / "recipes" / "sapg.py"), *overrides, "env.num_envs=24", "total_frames=960",
                    "hydra.run.dir=run", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # rank 1 wrote nothing
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["processes"] == 2 and result["frames"] == 960  # 24 envs x T=4 x 10 iterations, once
    with (tmp_path / "run" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(float(r["frames"])) for r in rows] == [96 * i for i in range(1, 11)]
    assert float(rows[0]["episodes/all"]) == 24  # episodes of 3 steps: every env of both ranks finished one
    assert all(r[f"return/per_block/{b}"] != "" for r in rows for b in range(6))

    # the same command with more frames resumes it (rank 0's checkpoint, read by both ranks) and extends it
    done = torchrun(str(REPO / "recipes" / "sapg.py"), *overrides, "env.num_envs=24", "total_frames=1440",
                    "hydra.run.dir=run", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    with (tmp_path / "run" / "metrics.csv").open() as f:
        assert [int(float(r["frames"])) for r in csv.DictReader(f)] == [96 * i for i in range(1, 16)]
    assert json.loads((tmp_path / "run" / "result.json").read_text())["frames"] == 1440


def test_envs_that_cannot_be_split_are_refused(tmp_path):
    overrides = [o for o in TINY_OVERRIDES if not o.startswith("env.num_envs")]
    done = torchrun(str(REPO / "recipes" / "sapg.py"), *overrides, "env.num_envs=18", "hydra.run.dir=run", cwd=tmp_path)
    assert done.returncode != 0
    line = "error: env.num_envs=18 cannot be split over 2 processes with num_blocks=6: use a multiple of"
    assert line in done.stderr, done.stderr[-2000:]


def test_split_envs():
    assert split_envs(24624, 6, 6) == 4104  # the released code: 6 GPUs x 4104 envs, 684 of each block per GPU
    with pytest.raises(ConfigError, match=r"env.num_envs=12 cannot be split over 4 processes with num_blocks=6: .* 24"):
        split_envs(12, 6, 4)  # more ranks than the blocks' envs allow


def test_single_process_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert from_environment("auto") is SINGLE
    with pytest.raises(ConfigError, match="train.distributed_backend='mpi' is not accepted: use one of auto, nccl, gloo"):
        from_environment("mpi")
    assert M == 3


@pytest.mark.parametrize(
    "ending, left",
    [(None, True), (Preempted(signal.SIGTERM, 3, None), True), (RuntimeError("a rank failed"), False)],
    ids=["finished", "preempted", "failed"],
)
def test_a_run_leaves_the_group_it_joined(monkeypatch, ending, left):
    """Left at the run's end (at the interpreter's exit gloo can abort a finished run's process); kept after an
    error, when another rank may be inside a collective that destroying the group would wait on."""

    def join(backend, device_type):  # a one-process gloo group standing in for torchrun's
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        return Ranks(0, 2)

    monkeypatch.setattr(distributed, "from_environment", join)
    try:
        with contextlib.suppress(type(ending) if ending else ()), process_group("gloo") as ranks:
            assert ranks.distributed and dist.is_initialized()
            if ending is not None:
                raise ending
        assert dist.is_initialized() is not left
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_a_group_joined_before_the_run_is_kept(monkeypatch):
    """The caller's group (joined before ``train``) is the caller's to leave."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    monkeypatch.setattr(distributed, "from_environment", lambda backend, device_type: Ranks(0, 2))
    try:
        with process_group("gloo"):
            pass
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()
