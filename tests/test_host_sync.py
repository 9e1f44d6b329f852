"""No host sync inside an iteration but the per-iteration metrics and the per-epoch learning-rate KL: a CPU proxy
for CUDA's sync-debug mode, counting the Python-level calls that read a tensor on the host (``.item()``,
``bool()``, ``float()``, ``.tolist()``, ``.cpu()``, ``.numpy()``)."""

import collections
import traceback
from pathlib import Path

import pytest
import torch

from sapg_torchrl.app.build import build_runner

READS = ("item", "__bool__", "__float__", "__int__", "tolist", "cpu", "numpy")
LIBRARY = str(Path(__file__).resolve().parents[1] / "sapg_torchrl")


@pytest.fixture
def host_reads(monkeypatch):
    """``host_reads(fn)``: calls ``fn`` and returns the host reads it made, by the file and line that made them
    (and whether that is the learner's code: this library outside the env wrappers, whose CPU simulators live on
    the host). Adam's step counters live on the host (PyTorch's non-capturable Adam): reading them is not a
    device sync, and is not counted; nor is SAPGLoss's range check of block ids, which runs only for ids on the
    host."""
    counts, active = collections.Counter(), [False]

    def wrap(name):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, **kwargs):
            if active[0]:
                caller = traceback.extract_stack(limit=3)[-2]
                # Adam's host-side step counters, and SAPGLoss's check of block ids that are on the host already
                if "torch/optim/" not in caller.filename and caller.name != "_check_ids_on_host":
                    learner = caller.filename.startswith(LIBRARY) and "/envs/" not in caller.filename
                    counts[(Path(caller.filename).name, caller.lineno, name, learner)] += 1
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    for name in READS:
        wrap(name)

    def measure(fn):
        counts.clear()
        active[0] = True
        try:
            fn()
        finally:
            active[0] = False
        return collections.Counter(counts)

    return measure


def runner_and_batch(tiny_cfg, *overrides):
    runner = build_runner(tiny_cfg("train.eval_interval=0", "ppo.epochs=2", *overrides))
    batches = iter(runner.collector)
    return runner, batches, runner.prepare(next(batches))


@pytest.mark.parametrize("ablation", ["sapg", "no_split", "no_off_policy", "symmetric"])
def test_update_reads_the_host_once_per_epoch_not_per_minibatch(tiny_cfg, host_reads, ablation):
    """The update's host reads do not grow with the number of minibatches, and stay at the per-epoch KL's."""
    reads = {}
    for minibatches in (2, 4):
        runner, _, batch = runner_and_batch(tiny_cfg, f"ablation={ablation}", f"ppo.num_minibatches={minibatches}")
        reads[minibatches] = host_reads(lambda: runner.update.epochs(batch))
        runner.collector.shutdown()
    assert reads[2] == reads[4], reads
    assert sum(reads[4].values()) <= 3 * 2 + 2, reads[4]  # per epoch: the KL's finiteness and the schedule's step


def test_disjoint_reads_the_host_only_for_its_rows_per_block(tiny_cfg, host_reads):
    """The documented exception: ``Blockwise`` (the disjoint networks) reads its rows per block once per call."""
    runner, _, batch = runner_and_batch(tiny_cfg, "ablation=disjoint", "ppo.num_minibatches=4")
    reads = host_reads(lambda: runner.update.epochs(batch))
    runner.collector.shutdown()
    per_minibatch = {where for where, n in reads.items() if n >= 8}  # 2 epochs x 4 minibatches
    assert per_minibatch == {("nn.py", where[1], "tolist", True) for where in per_minibatch}, reads


def test_collection_adds_no_host_read_of_ours(tiny_cfg, host_reads):
    """Collecting a batch: no host read in this library's code (TorchRL's collector and env reset logic read the
    done flags each step; see benchmarks/README.md)."""
    runner, batches, _ = runner_and_batch(tiny_cfg)
    reads = host_reads(lambda: runner.prepare(next(batches)))
    runner.collector.shutdown()
    ours = {where: n for where, n in reads.items() if where[3]}
    assert not ours, ours


def test_collection_on_a_self_resetting_torch_env_reads_the_host_nowhere(tiny_cfg, host_reads):
    """On an env that resets inside its step (the GPU check's pure-torch pendulum), collecting and preparing a batch
    makes no host read at all, TorchRL's collector included, across episode ends (5-step episodes, 3 batches of 4)."""
    env = ("env=torch_pendulum", "env.num_envs=12", "~env.make.create_env_kwargs", "+env.make.episode_length=5")
    runner, batches, _ = runner_and_batch(tiny_cfg, *env)
    reads = host_reads(lambda: [runner.prepare(next(batches)) for _ in range(3)])
    runner.collector.shutdown()
    assert runner.episodes.sum() > 0
    assert not reads, reads
