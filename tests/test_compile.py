"""The faster paths give the eager float32 numbers: ``train.compile`` (the compiled loss, rollout policy and
evaluation policy) to float tolerance, ``train.precision=bfloat16`` (the update under autocast) to bf16's, and ``train.cudagraphs`` (the rollout policy in a CUDA graph) exactly where it passes through (no CUDA)."""

import math
import warnings

import pytest
import torch

from sapg_torchrl.app.build import build_runner


@pytest.mark.slow  # compiling the loss, the rollout policy and the evaluation policy takes minutes on 2 cores
def test_compiled_training_matches_eager(tiny_cfg, tmp_path, monkeypatch):
    """Two iterations with an evaluation each, eager and compiled, from the same seed: the same losses, returns and
    evaluation to float tolerance (inductor draws random numbers its own way unless told to fall back to eager's;
    with it, the action noise is the same)."""
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    metrics = {}
    for compile_ in (False, True):
        torch.manual_seed(0)
        runner = build_runner(tiny_cfg(f"train.compile={compile_}", "total_frames=96"), tmp_path / str(compile_))
        assert (runner.update.loss_forward is runner.update.loss) != compile_
        metrics[compile_] = runner.train()
    eager, compiled = metrics[False], metrics[True]
    compared = [k for k, v in eager.items() if k.startswith(("train/loss", "return/", "eval/")) and math.isfinite(v)]
    assert "train/loss_objective" in compared and "eval/return" in compared
    for key in compared:
        assert compiled[key] == pytest.approx(eager[key], rel=1e-4, abs=1e-5), key


def test_bfloat16_update_gives_the_float32_losses_to_bf16_tolerance(tiny_cfg):
    """The same batch and parameters through the loss, float32 and under bf16 autocast: the same losses to a few
    bf16 ulps (3 significant digits), float32 outputs, and the gradients pointing the same way."""
    runner = build_runner(tiny_cfg("train.precision=bfloat16", "network.hidden=[64, 64]", "train.eval_interval=0"))
    assert runner.update.autocast.fast_dtype == torch.bfloat16
    batch = runner.prepare(next(iter(runner.collector)))
    runner.collector.shutdown()
    outputs, grads = {}, {}
    for precision, context in (("float32", torch.autocast("cpu", enabled=False)), ("bfloat16", runner.update.autocast)):
        runner.update.optimizer.zero_grad()
        with context:
            out = runner.update.loss(batch)
        sum(v for k, v in out.items() if k.startswith("loss_")).backward()
        outputs[precision] = out.detach()
        grads[precision] = torch.cat([p.grad.flatten() for p in runner.update.params if p.grad is not None])
    for key in ("loss_objective", "loss_critic", "loss_entropy"):
        assert outputs["bfloat16"][key].dtype == torch.float32, key
        assert outputs["bfloat16"][key].item() == pytest.approx(outputs["float32"][key].item(), rel=3e-2, abs=1e-3), key
    assert torch.nn.functional.cosine_similarity(grads["float32"], grads["bfloat16"], dim=0) > 0.99


def test_bfloat16_training_runs_and_unknown_precision_is_refused(tiny_cfg, tmp_path):
    from sapg_torchrl.errors import ConfigError
    from sapg_torchrl.app.schema import validate

    result = build_runner(tiny_cfg("train.precision=bfloat16", "total_frames=96"), tmp_path).train()
    assert math.isfinite(result["train/loss_objective"]) and math.isfinite(result["train/loss_critic"])
    with pytest.raises(ConfigError, match="train.precision='fp16' is not accepted.*float32, bfloat16"):
        validate(tiny_cfg("train.precision=fp16"))


def test_cudagraph_policy_collects_the_eager_batch(tiny_cfg, monkeypatch):
    """``cudagraphs`` hands the policy to TorchRL's collector as ``cudagraph_policy``: the collector wraps it in
    tensordict's ``CudaGraphModule``, which on a machine without CUDA runs it as it is, so the wiring is checked here
    (the same rollout as eager from the same seed) and the capture itself by ``benchmarks/gpu_check.py`` on a GPU."""
    from tensordict.nn import CudaGraphModule
    from tensordict.nn.functional_modules import _exclude_td_from_pytree

    import dataclasses

    from sapg_torchrl.app import build

    runner_class = build.Runner

    def forcing(cudagraphs):  # build_runner refuses the setting on a CPU; the runner takes it
        return lambda env, actor, update, train, **kw: runner_class(
            env, actor, update, dataclasses.replace(train, cudagraphs=cudagraphs), **kw
        )

    batches = {}
    for cudagraphs in (False, True):
        monkeypatch.setattr(build, "Runner", forcing(cudagraphs))
        torch.manual_seed(0)
        # CudaGraphModule takes TensorDicts out of PyTree for the rest of the process unless they are out already:
        # out for this test only
        with warnings.catch_warnings(), _exclude_td_from_pytree():
            warnings.filterwarnings("ignore", message=".*without CUDA device available.*")
            runner = build_runner(tiny_cfg("train.eval_interval=0"))
            batches[cudagraphs] = next(iter(runner.collector))
        assert isinstance(runner.collector._wrapped_policy, CudaGraphModule) == cudagraphs
        runner.collector.shutdown()
    for key in ("action", ("next", "reward"), "sample_log_prob"):
        torch.testing.assert_close(batches[True].get(key), batches[False].get(key), msg=str(key))


def test_cudagraphs_off_cuda_is_refused_in_one_line(tiny_cfg):
    """Refused by the config check (before a run folder exists) and by ``build_runner`` (the API)."""
    from sapg_torchrl.errors import ConfigError
    from sapg_torchrl.app.schema import validate

    message = r"train.cudagraphs=true is not accepted with the learner on cpu.*device=cuda"
    for check in (validate, build_runner):
        with pytest.raises(ConfigError, match=message):
            check(tiny_cfg("train.cudagraphs=true", "device=cpu"))
