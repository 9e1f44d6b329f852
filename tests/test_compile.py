"""``train.compile``: the compiled loss, rollout policy and evaluation policy give the eager numbers."""

import math

import pytest
import torch

from sapg_torchrl.config import build_trainer


@pytest.mark.slow  # compiling the loss, the rollout policy and the evaluation policy takes minutes on 2 cores
def test_compiled_training_matches_eager(tiny_cfg, tmp_path, monkeypatch):
    """Two iterations with an evaluation each, eager and compiled, from the same seed: the same losses, returns and
    evaluation to float tolerance (inductor draws random numbers its own way unless told to fall back to eager's;
    with it, the action noise is the same)."""
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    metrics = {}
    for compile_ in (False, True):
        torch.manual_seed(0)
        trainer = build_trainer(tiny_cfg(f"train.compile={compile_}", "total_frames=96"), tmp_path / str(compile_))
        assert (trainer.loss_forward is trainer.loss) != compile_
        metrics[compile_] = trainer.train()
    eager, compiled = metrics[False], metrics[True]
    compared = [k for k, v in eager.items() if k.startswith(("train/loss", "return/", "eval/")) and math.isfinite(v)]
    assert "train/loss_objective" in compared and "eval/return" in compared
    for key in compared:
        assert compiled[key] == pytest.approx(eager[key], rel=1e-4, abs=1e-5), key
