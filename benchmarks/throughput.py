#!/usr/bin/env python
"""End-to-end training throughput: SAPG vs. its ``no_split`` ablation vs. TorchRL's stock PPO pipeline.

    python benchmarks/throughput.py                       # defaults of the embedded config, CPU
    python benchmarks/throughput.py --rounds 5 --iters 3 --out results.md
    python benchmarks/throughput.py --device cuda --num-envs 6144

Variants, all built in one process and measured side by side:

- ``sapg``: :func:`sapg_torchrl.app.build.build_runner` on ``sapg_torchrl/configs/sapg.yaml`` composed with
  ``ablation=sapg`` (M blocks, leader-follower relabelled rows, shared trunk + phi).
- ``no_split``: the same with ``ablation=no_split`` (M = 1, no relabelled rows: PPO at scale through
  the same trainer).
- ``stock``: TorchRL's stock PPO pipeline on the same env, ``N``, ``T``, epochs, minibatch size and MLP
  widths: :class:`~torchrl.collectors.Collector`, :class:`~torchrl.objectives.value.GAE`,
  :class:`~torchrl.objectives.ClipPPOLoss`, separate actor (``ProbabilisticActor`` + ``IndependentNormal``
  with a state-independent log-std) and critic MLPs, Adam, gradient clipping at 1.0.
- ``disjoint`` (extra line, ``--no-disjoint`` to skip): ``ablation=disjoint``, M separate networks
  (``Blockwise``: each block's network on its own rows).

One *iteration* is the full training loop body: collect ``N x T`` frames, compute the targets, run the
``epochs`` passes of minibatch updates. For SAPG it is the runner's own
:meth:`~sapg_torchrl.training.Runner.run_iteration` (what :meth:`~sapg_torchrl.training.Runner.train` runs, minus
evaluation, sinks and checkpoints), its phases timed through the runner's ``phase_clock``:

- ``collect``: the collector's next rollout (env steps + policy forward),
- ``targets``: frame and episode counts, ``PPOUpdate.make_batch`` (critic forward, GAE, relabelled rows, advantage
  standardisation) and the hooks,
- ``update``: ``PPOUpdate.learn`` (the epochs of minibatch updates, the observation-norm update) and the metrics'
  host transfer.

The minibatch steps per iteration are the update's own count (``PPOUpdate.optimizer_steps``), not a formula;

for ``stock`` they are the collector, GAE (+ one advantage standardisation), and the epochs.

Measurement: interleaved. For each of ``--rounds`` rounds, every variant (in a rotated order) runs
``--warmup`` untimed iterations and then ``--iters`` timed ones. The reported time per iteration is the
median over all timed iterations of a variant; frames/s is ``N * T`` over it (relabelled rows are not
frames). Ratios are also computed per round (each round's medians), which cancels slow drifts of the
machine's load; the spread of those per-round ratios is printed next to the headline ratio.

Threads: the library never calls ``torch.set_num_threads``, so neither does this script: every variant
runs with torch's default (printed in the header), in the same process, so they all get the same.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from tensordict.nn import AddStateIndependentNormalScale, TensorDictModule
from torch import nn
from torchrl.collectors import Collector
from torchrl.modules import MLP, IndependentNormal, ProbabilisticActor, ValueOperator
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from sapg_torchrl.app.build import build_runner, eval_env_factory, simulator_factory
from sapg_torchrl.cli import CONFIG_DIR
from sapg_torchrl.cli.checks import check_command_line, exit_on_config_error
from sapg_torchrl.envs import make_sapg_env
from sapg_torchrl.errors import ConfigError
from sapg_torchrl.nn import ACTIVATIONS
from sapg_torchrl.targets import standardize_advantage
from sapg_torchrl.training.evaluation import BackgroundEvaluator

PHASES = ("collect", "targets", "update")


# ------------------------------------------------------------------------------------------------ config
def compose_config(ablation: str, args: argparse.Namespace, extra=()) -> DictConfig:
    """``sapg_torchrl/configs/sapg.yaml`` with the benchmark's overrides (what ``recipes/sapg.py`` would get), then
    ``extra`` ones."""
    overrides = [
        f"ablation={ablation}",
        "logger.wandb=false",
        "train.progress=false",
        f"device={args.device}",
    ]
    if not getattr(args, "eval", False):
        overrides.append("train.eval_interval=0")  # no eval envs to build
    if args.env is not None:
        overrides.append(f"env={args.env}")
    if args.num_envs is not None:
        overrides.append(f"env.num_envs={args.num_envs}")
    if args.horizon is not None:
        overrides.append(f"ppo.horizon={args.horizon}")
    if args.epochs is not None:
        overrides.append(f"ppo.epochs={args.epochs}")
    overrides += list(extra)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="sapg", overrides=overrides)
    # enough frames for every iteration the benchmark runs (the collector stops at total_frames)
    frames = cfg.env.num_envs * cfg.ppo.horizon
    background_eval = 3 * cfg.train.eval_interval if getattr(args, "eval", False) else 0  # measure_background_eval's
    cfg.total_frames = frames * (args.rounds * (args.warmup + args.iters) + 2 + background_eval)
    return cfg


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------- variants
class PhaseClock:
    """A :attr:`~sapg_torchrl.training.Runner.phase_clock`: the seconds of each phase of the runner's iteration (the
    device synchronised at each phase's end, so that its kernels count in it)."""

    def __init__(self, device: torch.device):
        self.device, self.times = device, {}
        self.start()

    def start(self) -> None:
        _sync(self.device)
        self.times, self._last = {}, time.perf_counter()

    def __call__(self, phase: str) -> None:
        _sync(self.device)
        now = time.perf_counter()
        self.times[phase], self._last = now - self._last, now


class SAPGVariant:
    """A :class:`~sapg_torchrl.training.Runner`, one :meth:`~sapg_torchrl.training.Runner.run_iteration` at a time
    (the loop's own iteration, without evaluation, sinks and checkpoints), its phases timed by a :class:`PhaseClock`."""

    def __init__(self, name: str, cfg: DictConfig):
        self.name = name
        self.runner = build_runner(cfg)
        self.device = self.runner.device
        self.runner.phase_clock = self.clock = PhaseClock(self.device)
        self.frames = self.runner.frames_per_iteration
        self.params_count = sum(p.numel() for p in self.runner.update.params)
        self.rows = self.minibatches = None  # read from the first iteration

    def iteration(self) -> dict[str, float]:
        update = self.runner.update
        steps_before = update.optimizer_steps
        self.clock.start()
        self.runner.run_iteration()
        self.minibatches = update.optimizer_steps - steps_before  # the steps the update took, not a formula
        self.rows = self.rows or self._rows()
        return dict(self.clock.times)

    def _rows(self) -> int:
        aggregator, layout = self.runner.update.aggregator, self.runner.layout
        return (layout.num_envs + (0 if aggregator is None else aggregator.rows_per_env_step)) * self.runner.update.ppo.horizon

    def close(self) -> None:
        self.runner.collector.shutdown()


class StockPPO:
    """TorchRL's stock PPO pipeline on the same env and sizes as the SAPG config.

    Collector -> GAE (with the critic) -> one global advantage standardisation (what SAPG's
    ``advantage_norm=global`` does) -> ``epochs`` passes of shuffled minibatches through ``ClipPPOLoss``
    with Adam and gradient clipping. Separate actor and critic MLPs with the config's hidden widths
    and activation; the actor's log-std is state independent (``AddStateIndependentNormalScale``).
    ``adam_foreach``: Adam's ``foreach`` (``None``, the default: PyTorch's choice, foreach on a GPU only).
    """

    name = "stock"

    def __init__(self, cfg: DictConfig, device: torch.device, adam_foreach: bool | None = None):
        ppo, net, e = cfg.ppo, cfg.network, cfg.env
        torch.manual_seed(cfg.seed)
        self.device = device = torch.device(device)
        N, T = e.num_envs, ppo.horizon
        make_base = simulator_factory(e.make, device)
        # the very env SAPG trains on (same transforms); the block ids are ignored by this policy
        env = make_sapg_env(
            make_base(num_envs=N, seed=cfg.seed), torch.zeros(N, dtype=torch.long), reward_scale=e.reward_scale
        )
        obs_dim = env.observation_spec["observation"].shape[-1]
        act_dim = env.action_spec.shape[-1]
        act = ACTIVATIONS[net.activation]
        hidden = list(net.hidden)
        actor_net = nn.Sequential(
            MLP(in_features=obs_dim, out_features=act_dim, num_cells=hidden, activation_class=act),
            AddStateIndependentNormalScale(act_dim, scale_lb=1e-8),
        )
        self.actor = ProbabilisticActor(
            TensorDictModule(actor_net, in_keys=["observation"], out_keys=["loc", "scale"]),
            in_keys=["loc", "scale"],
            out_keys=["action"],
            distribution_class=IndependentNormal,
            return_log_prob=True,
        ).to(device)
        self.critic = ValueOperator(
            MLP(in_features=obs_dim, out_features=1, num_cells=hidden, activation_class=act), in_keys=["observation"]
        ).to(device)
        self.loss = ClipPPOLoss(
            self.actor,
            self.critic,
            clip_epsilon=ppo.clip_epsilon,
            entropy_coeff=cfg.sapg.entropy_scale,
            critic_coeff=ppo.critic_coeff,
            loss_critic_type="l2",
            clip_value=ppo.clip_value,
        ).to(device)
        self.gae = GAE(gamma=ppo.gamma, lmbda=ppo.lmbda, value_network=self.critic)
        self.params = [p for p in self.loss.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=ppo.lr, foreach=adam_foreach)
        self.max_grad_norm = ppo.max_grad_norm
        self.epochs = ppo.epochs
        self.minibatch_size = ppo.minibatch_size or 4 * N
        self.frames = self.rows = N * T
        self.minibatches = self.epochs * -(-self.rows // self.minibatch_size)
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.collector = Collector(
            env,
            self.actor,
            frames_per_batch=N * T,
            total_frames=cfg.total_frames,
            policy_device=device,
            storing_device=device,
            env_device=env.device,
        )
        self._data = iter(self.collector)
        self.params_count = sum(p.numel() for p in self.params)

    def iteration(self) -> dict[str, float]:
        _sync(self.device)
        t0 = time.perf_counter()
        data = self.collect()
        _sync(self.device)
        t1 = time.perf_counter()
        batch = self.targets(data)
        _sync(self.device)
        t2 = time.perf_counter()
        self.update(batch)
        _sync(self.device)
        t3 = time.perf_counter()
        return {"collect": t1 - t0, "targets": t2 - t1, "update": t3 - t2}

    def collect(self):
        return next(self._data)

    @torch.no_grad()
    def targets(self, data):
        self.gae(data)
        batch = data.reshape(-1)
        batch.set("advantage", standardize_advantage(batch.get("advantage")))
        return batch

    def update(self, batch) -> None:
        for _ in range(self.epochs):
            perm = torch.randperm(batch.numel(), device=self.device, generator=self.generator)
            for index in perm.split(self.minibatch_size):
                out = self.loss(batch[index])
                total = sum(value for key, value in out.items() if key.startswith("loss_"))
                self.optimizer.zero_grad(set_to_none=True)
                total.backward()
                torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
                self.optimizer.step()

    def close(self) -> None:
        self.collector.shutdown()


# ------------------------------------------------------------------------------------------------ runner
def measure(variants, rounds: int, warmup: int, iters: dict[str, int], log=print) -> dict[str, list[list[dict]]]:
    """Interleaved timing: ``samples[name][round]`` is that round's list of ``iters[name]`` timed iterations."""
    samples = {v.name: [] for v in variants}
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[: r % len(variants)]  # rotate: no fixed position
        for v in order:
            for _ in range(warmup):
                v.iteration()
            timed = [v.iteration() for _ in range(iters[v.name])]
            samples[v.name].append(timed)
            med = statistics.median(sum(t.values()) for t in timed)
            log(f"  round {r + 1}/{rounds}  {v.name:<9} {med:7.3f} s/iter  ({v.frames / med:9.0f} frames/s)")
    return samples


def measure_eval(variant, cfg: DictConfig, results_so_far: dict, reps: int = 3) -> dict:
    """The median time of ``reps`` evaluations of ``variant`` and their share of training time at the config's
    ``train.eval_interval``: ``eval / (eval + interval x time per iteration)``. The policy is the benchmark's
    barely trained one: on a task whose solved episodes are short (MountainCar) its episodes run to the time
    limit, the worst case of an evaluation, which stops once every env has completed an episode."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = variant.runner.evaluator.submit(0, variant.runner.actor)
        times.append(time.perf_counter() - t0)
    eval_s, interval = statistics.median(times), cfg.train.eval_interval
    per_iter = results_so_far[variant.name]["time_per_iter_s"]
    return {"eval_s": eval_s, "interval": interval, "envs": cfg.env.eval_envs, "max_steps": cfg.env.eval_steps,
            "episodes": out["eval/episodes"], "fraction": eval_s / (eval_s + interval * per_iter)}  # fmt: skip


def measure_background_eval(variant, cfg: DictConfig, results_so_far: dict, reps: int = 3) -> dict:
    """What ``train.eval_async`` costs the training loop: the same evaluation in a child process
    (:class:`~sapg_torchrl.training.evaluation.BackgroundEvaluator`) while ``variant`` trains. Per evaluation: the weights'
    hand-over, plus the iterations run until it finished minus their time without it (the median per iteration
    measured above), plus any wait at the next evaluation's turn (``interval`` iterations later); its share of
    training time is that over ``interval x time per iteration``."""
    e, runner = cfg.env, variant.runner
    make_env = eval_env_factory(cfg, simulator_factory(e.make, variant.device), runner.layout.leader)
    evaluator = BackgroundEvaluator(make_env, runner.actor, e.eval_steps)
    try:
        evaluator.submit(0, runner.actor)
        evaluator.result(0, wait=True)  # the child's start-up and first rollout, not counted
        per_iter, interval, costs = results_so_far[variant.name]["time_per_iter_s"], cfg.train.eval_interval, []
        for rep in range(1, reps + 1):
            t0 = time.perf_counter()
            evaluator.submit(rep, runner.actor)
            cost, iterations, finished = time.perf_counter() - t0, 0, None
            while finished is None and iterations < interval:
                cost += sum(variant.iteration().values()) - per_iter
                iterations += 1
                finished = evaluator.result(rep)
            if finished is None:  # still running at the next evaluation's turn: the trainer waits for it
                t0 = time.perf_counter()
                evaluator.result(rep, wait=True)
                cost += time.perf_counter() - t0
            costs.append(cost)
    finally:
        evaluator.close()
    cost = statistics.median(costs)
    return {"cost_s": cost, "fraction": max(cost, 0.0) / (interval * per_iter)}


def _median(values) -> float:
    return statistics.median(values)


def summarize(variants, samples) -> dict:
    out = {}
    for v in variants:
        flat = [t for rnd in samples[v.name] for t in rnd]
        total = _median([sum(t.values()) for t in flat])
        row = {
            "time_per_iter_s": total,
            "frames_per_s": v.frames / total,
            "frames_per_iter": v.frames,
            "rows_per_iter": v.rows,
            "minibatch_steps_per_iter": v.minibatches,
            "params": v.params_count,
            "per_round_time_s": [_median([sum(t.values()) for t in rnd]) for rnd in samples[v.name]],
        }
        for phase in PHASES:
            row[f"{phase}_s"] = _median([t[phase] for t in flat])
        out[v.name] = row
    return out


def ratio(results: dict, num: str, den: str, inverse: bool = False) -> dict | None:
    """``time[num] / time[den]`` (or its inverse, a frames/s ratio).

    ``value`` is the ratio of the overall medians; ``paired`` the median of the per-round ratios (both
    variants measured minutes apart under the same load), the steadier of the two on a shared machine.
    """
    if num not in results or den not in results:
        return None
    a, b = results[num], results[den]
    overall = a["time_per_iter_s"] / b["time_per_iter_s"]
    per_round = [x / y for x, y in zip(a["per_round_time_s"], b["per_round_time_s"])]
    if inverse:
        overall, per_round = 1 / overall, [1 / x for x in per_round]
    return {"value": overall, "paired": statistics.median(per_round), "per_round": per_round}


def render(meta: dict, results: dict, ratios: dict) -> str:
    lines = [
        f"N={meta['num_envs']} envs, T={meta['horizon']}, epochs={meta['epochs']}, minibatch={meta['minibatch_size']} "
        f"rows, env={meta['env']}, device={meta['device']}, torch threads={meta['torch_threads']}",
        f"rounds={meta['rounds']} x (warmup {meta['warmup']} + timed {meta['iters']}) iterations per variant; "
        f"median over {meta['rounds'] * meta['iters']} timed iterations"
        + f"; measured in {meta['measure_wall_s']:.0f} s; "
        f"load average before/after: {meta['loadavg_before']} / {meta['loadavg_after']}",
        "",
        "| variant       | s/iter | frames/s | collect s | targets s | update s | collect % | rows/iter "
        "| minibatch steps | params |",
        "|---------------|-------:|---------:|----------:|----------:|---------:|----------:|----------:"
        "|----------------:|-------:|",
    ]
    for name, r in results.items():
        phase_sum = sum(r[f"{p}_s"] for p in PHASES)
        lines.append(
            f"| {name:<13} | {r['time_per_iter_s']:6.3f} | {r['frames_per_s']:8.0f} | {r['collect_s']:9.3f} "
            f"| {r['targets_s']:9.3f} | {r['update_s']:8.3f} | {100 * r['collect_s'] / phase_sum:8.1f}% "
            f"| {r['rows_per_iter']:9d} | {r['minibatch_steps_per_iter']:15d} | {r['params']:6d} |"
        )
    lines += ["", "ratio: of the medians above; paired: median of the per-round ratios"]
    labels = {
        "sapg_over_stock_fps": ("sapg / stock (frames/s)", "target >= 1.00x"),
        "sapg_over_no_split_time": ("sapg / no_split (time per iteration)", "target <= 1.10x"),
        "disjoint_over_sapg_time": ("disjoint / sapg (time per iteration)", "extra, expected > 1"),
        "sapg_bf16_over_sapg_time": ("sapg_bf16 / sapg (time per iteration)", "extra, < 1 if bf16 helps"),
        "sapg_compiled_over_sapg_time": ("sapg_compiled / sapg (time per iteration)", "extra, < 1 if compiling helps"),
        "sapg_cudagraphs_over_sapg_time": ("sapg_cudagraphs / sapg (time per iteration)", "extra, < 1 if graphs help"),
    }
    if "eval" in meta:
        e = meta["eval"]
        lines.append(
            f"{'evaluation (sapg)':<38} {e['eval_s']:.3f} s each ({e['envs']} envs, <= {e['max_steps']} steps), every "
            f"{e['interval']} iterations: {100 * e['fraction']:.1f}% of training time (target <= 5%)"
        )
        if "background" in e:
            lines.append(
                f"{'  in the background (eval_async)':<38} {e['background']['cost_s']:.3f} s of training each: "
                f"{100 * e['background']['fraction']:.1f}% of training time"
            )
    for key, (label, target) in labels.items():
        r = ratios.get(key)
        if r is None:
            continue
        rounds = ", ".join(f"{x:.2f}" for x in r["per_round"])
        lines.append(
            f"{label:<38} {r['value']:.3f}x  paired {r['paired']:.3f}x  ({target}; per round: {rounds})"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-envs", type=int, default=None, help="N (env.num_envs); default: the config's (1536)")
    p.add_argument("--horizon", type=int, default=None, help="T (ppo.horizon); default: the config's (16)")
    p.add_argument("--epochs", type=int, default=None, help="ppo.epochs; default: the config's (5)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--iters", type=int, default=5, help="timed iterations per variant and round (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations per variant and round (default 1)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--env", default=None, help="env config group (sapg_torchrl/configs/env); default: the config's")
    p.add_argument("--no-disjoint", action="store_true", help="skip the disjoint ablation line")
    p.add_argument("--bf16", action="store_true", help="add a line: sapg with train.precision=bfloat16")
    p.add_argument("--compile", action="store_true",
                   help="add a line: sapg with train.compile=true (compiled during its first warm-up iteration)")
    p.add_argument("--cudagraphs", action="store_true",
                   help="add a line: sapg with train.cudagraphs=true (CUDA only; captured in its first warm-up iteration)")
    p.add_argument("--eval", action="store_true",
                   help="also time sapg's evaluation and report its share of training time at the config's interval")
    p.add_argument(
        "--threads", type=int, default=None,
        help="torch.set_num_threads for all variants (default: leave torch's default, as the library does)",
    )
    p.add_argument("--out", default=None, help="also write the result: .json for JSON, anything else markdown")
    args = p.parse_args(argv)
    for name in ("rounds", "iters"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    if args.env is not None:
        check_command_line([f"env={args.env}"], "sapg")

    if args.threads is not None:
        if args.threads < 1:
            p.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    names = ["sapg", "no_split"] + ([] if args.no_disjoint else ["disjoint"])
    with exit_on_config_error():
        cfgs = {name: compose_config(name, args) for name in names}
        for flag, name, override in (("bf16", "sapg_bf16", "train.precision=bfloat16"),
                                     ("compile", "sapg_compiled", "train.compile=true"),
                                     ("cudagraphs", "sapg_cudagraphs", "train.cudagraphs=true")):  # fmt: skip
            if getattr(args, flag):
                names.append(name)
                cfgs[name] = compose_config("sapg", args, [override])
        cfg = cfgs["sapg"]
        print(f"building {', '.join(names)} and stock ...", flush=True)
        variants = [SAPGVariant(name, cfgs[name]) for name in names]
        variants.insert(2, StockPPO(cfg, variants[0].device))  # the device build_runner resolved
    device = variants[0].device
    meta = {
        "num_envs": cfg.env.num_envs,
        "horizon": cfg.ppo.horizon,
        "epochs": cfg.ppo.epochs,
        "minibatch_size": variants[0].runner.update.minibatch_size,
        "env": cfg.env.make.get("env_name") or cfg.env.make._target_.rsplit(".", 1)[-1],
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "rounds": args.rounds,
        "warmup": args.warmup,
        "iters": args.iters,
        "loadavg_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    start = time.perf_counter()
    try:
        iters = {v.name: args.iters for v in variants}
        samples = measure(variants, args.rounds, args.warmup, iters)
        if args.eval:  # after the timed iterations, in the same warm process
            so_far = summarize(variants, samples)
            meta["eval"] = measure_eval(variants[0], cfgs["sapg"], results_so_far=so_far)
            meta["eval"]["background"] = measure_background_eval(variants[0], cfgs["sapg"], results_so_far=so_far)
    finally:
        for v in variants:
            v.close()
    meta["measure_wall_s"] = round(time.perf_counter() - start, 1)
    meta["loadavg_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results = summarize(variants, samples)
    ratios = {
        "sapg_over_stock_fps": ratio(results, "sapg", "stock", inverse=True),
        "sapg_over_no_split_time": ratio(results, "sapg", "no_split"),
        "disjoint_over_sapg_time": ratio(results, "disjoint", "sapg"),
        "sapg_bf16_over_sapg_time": ratio(results, "sapg_bf16", "sapg"),
        "sapg_compiled_over_sapg_time": ratio(results, "sapg_compiled", "sapg"),
        "sapg_cudagraphs_over_sapg_time": ratio(results, "sapg_cudagraphs", "sapg"),
    }
    ratios = {k: v for k, v in ratios.items() if v is not None}
    text = render(meta, results, ratios)
    print()
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".json":
            out.write_text(json.dumps({"meta": meta, "results": results, "ratios": ratios}, indent=2) + "\n")
        else:
            out.write_text("# Throughput\n\n```\n" + "\n".join(text.splitlines()[:2]) + "\n```\n\n"
                           + "\n".join(text.splitlines()[3:]) + "\n")
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as err:  # e.g. --num-envs not divisible by num_blocks
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
