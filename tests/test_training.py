"""End-to-end runs: every ablation and the paper fidelity train and write their run folder; SAPG learns."""

import csv
import math

import pytest
import torch
from omegaconf import OmegaConf

from sapg_torchrl.app.run import train
from sapg_torchrl.training.evaluation import BackgroundEvaluator, InlineEvaluator

VARIANTS = {
    "sapg": ["ablation=sapg"],
    "no_split": ["ablation=no_split"],
    "symmetric": ["ablation=symmetric"],
    "no_off_policy": ["ablation=no_off_policy"],
    "no_is_correction": ["ablation=no_is_correction"],
    "no_entropy": ["ablation=no_entropy"],
    "disjoint": ["ablation=disjoint"],
    "paper": ["fidelity=paper"],
    "paper_no_is_correction": ["fidelity=paper", "ablation=no_is_correction", "sapg.advantage_norm=per_block"],
    "lstm": ["network.lstm_size=8", "train.record_states=50"],
    "lstm_paper": ["network.lstm_size=8", "fidelity=paper", "ablation=no_is_correction"],
}
WITH_RELABELLED = set(VARIANTS) - {"no_split", "no_off_policy"}


def read_metrics(path):
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return [{k: float(v) if v != "" else math.nan for k, v in row.items()} for row in rows]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tiny_run_writes_its_folder(tiny_cfg, tmp_path, variant):
    """A tiny run completes and writes config.yaml, metrics.csv (finite where defined) and a checkpoint."""
    cfg = tiny_cfg(*VARIANTS[variant])
    run_dir = tmp_path / "run"
    last = train(cfg, run_dir)

    saved = OmegaConf.load(run_dir / "config.yaml")
    assert OmegaConf.to_container(saved) == OmegaConf.to_container(cfg, resolve=True)

    rows = read_metrics(run_dir / "metrics.csv")
    iterations, frames_per_iteration = 10, cfg.env.num_envs * cfg.ppo.horizon
    assert [r["iteration"] for r in rows] == list(range(1, iterations + 1))
    assert [r["frames"] for r in rows] == [i * frames_per_iteration for i in range(1, iterations + 1)]
    for row in rows:
        for key in ["train/loss_objective", "train/loss_critic", "train/loss_entropy", "train/kl_approx",
                    "train/entropy", "train/grad_norm", "train/lr", "eval/return", "episodes/leader"]:  # fmt: skip
            assert math.isfinite(row[key]), key
        assert row["eval/episodes"] == cfg.env.eval_envs  # 3-step episodes end within eval_steps = 5
        if row["episodes/leader"] > 0:
            assert math.isfinite(row["return/leader"])
        off_policy = [row[k] for k in ("train/is_ratio_mean", "train/is_ratio_max", "train/off_policy_in_clip_fraction")]
        assert all(map(math.isfinite, off_policy)) == (variant in WITH_RELABELLED)
        assert all(map(math.isnan, off_policy)) == (variant not in WITH_RELABELLED)
    assert rows[-1]["episodes/leader"] > 0 and math.isfinite(rows[-1]["return/leader"])
    assert last["return/leader"] == pytest.approx(rows[-1]["return/leader"])

    blocks = cfg.sapg.num_blocks
    assert {k for k in rows[0] if k.startswith("return/per_block/")} == {f"return/per_block/{b}" for b in range(blocks)}
    if variant == "no_entropy":
        assert all(row["train/loss_entropy"] == 0 for row in rows)

    checkpoints = sorted((run_dir / "checkpoints").glob("*.pt"))
    assert [p.name for p in checkpoints] == ["final_iter_000010.pt"]
    state = torch.load(checkpoints[0], weights_only=False)
    assert state["iteration"] == iterations and state["frames"] == cfg.total_frames
    assert any(k.startswith("actor_network_params") for k in state["loss"])


@pytest.mark.parametrize("fidelity, leader", [("code", 5), ("paper", 0)])
def test_evaluation_runs_the_leader(tiny_cfg, tmp_path, fidelity, leader):
    """The evaluation envs run the leader's block (last in the code, first in the paper), never block 0 by default."""
    from sapg_torchrl.app.build import build_runner

    runner = build_runner(tiny_cfg(f"fidelity={fidelity}"), tmp_path)
    assert runner.layout.leader == leader
    assert runner.evaluator.env.reset()["block_id"].tolist() == [leader] * 2
    assert runner.env.reset()["block_id"].tolist() == [b // 2 for b in range(12)]
    metrics = runner.evaluator.submit(0, runner.actor)
    assert metrics["eval/episodes"] == 2 and math.isfinite(metrics["eval/return"])
    runner.collector.shutdown()


def test_evaluation_stops_once_every_env_has_an_episode(tiny_cfg, tmp_path):
    """Same numbers as stepping all ``eval_steps`` (each env's first complete episode, deterministic leader), in
    fewer steps: episodes of varying length (an untrained InvertedPendulum falls within a few dozen steps)."""
    from torchrl.envs import ExplorationType, set_exploration_type

    from sapg_torchrl.app.build import build_runner

    cfg = tiny_cfg("env.make.env_name=InvertedPendulum-v4", "env.make.create_env_kwargs.max_episode_steps=1000",
                   "env.eval_envs=4", "env.eval_steps=400")  # fmt: skip
    full, early = build_runner(cfg, tmp_path / "a"), build_runner(cfg, tmp_path / "b")
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        rollout = full.evaluator.env.rollout(400, full.actor, break_when_any_done=False)
    done = rollout["next", "done"].squeeze(-1)
    first = rollout["next", "episode_reward"].squeeze(-1).gather(-1, done.int().argmax(-1, keepdim=True))
    assert done.any(-1).all() and len(set(done.int().argmax(-1).tolist())) > 1  # every env fell, not all at once
    steps = []
    step = early.evaluator.env.step
    early.evaluator.env.step = lambda td: steps.append(1) or step(td)
    metrics = early.evaluator.submit(0, early.actor)
    assert metrics == {"eval/return": pytest.approx(first.mean().item()), "eval/episodes": 4.0}
    assert len(steps) == done.int().argmax(-1).max() + 1  # up to the last env's first episode end, no further
    for runner in (full, early):
        runner.collector.shutdown()


def test_background_evaluation_gives_the_inline_numbers(tiny_cfg, tmp_path):
    """``train.eval_async``: the child process's evaluations are the inline ones (same envs, same weights), and every
    iteration's metrics reach the sinks in order with its own evaluation, as inline."""
    from sapg_torchrl.app.build import build_runner

    rows = {}
    for background in (False, True):
        cfg = tiny_cfg(f"train.eval_async={background}", "total_frames=240", "train.eval_interval=2")
        runner = build_runner(cfg, tmp_path / str(background))
        assert isinstance(runner.evaluator, BackgroundEvaluator if background else InlineEvaluator)
        logged = rows[background] = []
        runner.sinks.append(lambda m, i, logged=logged: logged.append((i, {k: v for k, v in m.items() if "eval/" in k})))
        runner.train()
    assert [i for i, row in rows[False] if row] == [1, 2, 4, 5]
    assert rows[True] == rows[False]


def test_background_evaluation_that_dies_stops_the_run_in_one_line():
    """A child that fails (here: its envs cannot be built) is reported as such, not waited for forever."""
    import functools

    from sapg_torchrl import make_actor_critic
    from sapg_torchrl.training.evaluation import BackgroundEvaluator

    actor, _ = make_actor_critic(3, 1, num_blocks=2, hidden=(8,))
    evaluator = BackgroundEvaluator(functools.partial(int, "not an env"), actor, 10)
    evaluator.submit(7, actor)
    with pytest.raises(RuntimeError, match="the evaluation process died .* evaluating iteration 7; rerun with"):
        evaluator.result(7, wait=True)
    evaluator.close()


def test_mujoco_task_trains(tiny_cfg, tmp_path):
    """A MuJoCo task (float64 observations in envpool, 1-d action) trains like the classic-control ones."""
    train(tiny_cfg("env.make.env_name=InvertedPendulum-v4", "total_frames=48"), tmp_path / "run")


def first_and_late_leader_return(rows, fraction=0.1):
    """The leader's return at the first iteration that completed one of its episodes, and its mean over the
    last ``fraction`` of the frame budget."""
    returns = [(r["frames"], r["return/leader"]) for r in rows if math.isfinite(r["return/leader"])]
    total = rows[-1]["frames"]
    late = [ret for frames, ret in returns if frames > (1 - fraction) * total]
    return returns[0][1], sum(late) / len(late)


@pytest.mark.slow
def test_sapg_learns_pendulum(compose_cfg, tmp_path):
    """On an easy task (envpool Pendulum-v1, random return about -1200, solved about -150) the default SAPG
    config's leader return over the last 10% of 300k frames is far above its first one (first 200-step
    episodes), and so is the final deterministic evaluation of the leader."""
    cfg = compose_cfg(
        "device=cpu", "logger.wandb=false", "train.progress=false",
        "env.make.env_name=Pendulum-v1", "env.num_envs=96", "total_frames=300000", "network.hidden=[64,64]",
        "train.eval_interval=1000", "env.eval_envs=8", "env.eval_steps=200",
    )  # fmt: skip
    train(cfg, tmp_path / "run")
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    first, late = first_and_late_leader_return(rows)
    assert late > first + 500 and late > -600, (first, late)
    evaluations = [r["eval/return"] for r in rows if math.isfinite(r["eval/return"])]
    assert len(evaluations) == 2  # the first and the last iteration
    assert evaluations[-1] > evaluations[0] + 500 and evaluations[-1] > -600, evaluations


def test_block_return_waits_for_every_env_of_the_block(tiny_cfg):
    """return/per_block is NaN until every env of the block has completed an episode, then their mean."""
    import math

    import torch
    from tensordict import TensorDict

    from sapg_torchrl.app.build import build_runner

    runner = build_runner(tiny_cfg())
    runner.collector.shutdown()
    B = runner.layout.block_size
    runner.last_return[:B] = torch.arange(B, dtype=torch.float32) + 1  # block 0: every env finished one
    runner.last_return[B] = 100.0  # block 1: one env finished, the others not yet
    metrics = runner._iteration_metrics(TensorDict({}, []))
    assert metrics["return/per_block/0"] == pytest.approx((B + 1) / 2)
    assert math.isnan(metrics["return/per_block/1"])
    assert math.isnan(metrics["return/all"]) and math.isnan(metrics["return/leader"])
    runner.last_return[:] = 2.0
    metrics = runner._iteration_metrics(TensorDict({}, []))
    assert metrics["return/all"] == metrics["return/leader"] == 2.0


def test_divergence_stops_with_a_message_naming_the_iteration(tiny_cfg, monkeypatch):
    """Non-finite losses stop the run with one line naming the iteration and the importance ratios."""
    from sapg_torchrl.app.build import build_runner
    from sapg_torchrl.loss import SAPGLoss

    forward = SAPGLoss.forward
    monkeypatch.setattr(SAPGLoss, "forward", lambda self, td: forward(self, td).set("kl_approx", torch.tensor(math.nan)))
    runner = build_runner(tiny_cfg("train.eval_interval=0"))
    with pytest.raises(FloatingPointError, match=r"training diverged at iteration 1: the policy's KL is nan .*is_ratio_max"):
        runner.train()
    # one block, no relabelled rows: no hint about their importance ratios
    runner = build_runner(tiny_cfg("train.eval_interval=0", "ablation=no_split"))
    with pytest.raises(FloatingPointError) as error:
        runner.train()
    assert str(error.value) == "training diverged at iteration 1: the policy's KL is nan (non-finite losses)"


def test_a_diverged_run_writes_its_result(tiny_cfg, tmp_path, monkeypatch):
    """A run that diverges is a result: result.json holds its last finite metrics, diverged: true and the
    iteration, and the error still stops the run."""
    import json

    from sapg_torchrl.loss import SAPGLoss

    forward, calls = SAPGLoss.forward, []
    minibatches_before_nan = 2 * tiny_cfg().ppo.epochs  # two iterations of one minibatch per epoch

    def diverging(self, td):
        calls.append(1)
        out = forward(self, td)
        return out.set("kl_approx", torch.tensor(math.nan)) if len(calls) > minibatches_before_nan else out

    monkeypatch.setattr(SAPGLoss, "forward", diverging)
    with pytest.raises(FloatingPointError, match="training diverged at iteration 3"):
        train(tiny_cfg("train.eval_interval=0"), tmp_path / "run")
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["diverged"] is True and result["diverged_at_iteration"] == 3
    assert result["iteration"] == 2 and math.isfinite(result["train/loss_objective"])
    assert "training diverged at iteration 3" in result["error"]
