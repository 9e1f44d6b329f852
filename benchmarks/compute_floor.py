#!/usr/bin/env python
"""Our update's time per minibatch step against the compute floor: a bare-torch step of the same network on the
same rows, in one process.

    python benchmarks/compute_floor.py                    # no_split and sapg at the embedded default config
    python benchmarks/compute_floor.py --threads 2 --rounds 3 --env halfcheetah
    python benchmarks/compute_floor.py --profile          # also: where an update's time goes (torch profiler)

*Ours*: :meth:`PPOUpdate.epochs` on a batch from the runner's own rollout and :meth:`Runner.prepare`, divided by
its ``epochs x minibatches`` optimizer steps. Everything an update does is in it: the shuffled
tensordict gathers, the TensorDict modules, the distribution, the loss's diagnostics, the KL reference written
back, the per-epoch learning-rate KL.

*Floor*: the same computation in plain torch on plain tensors, with nothing SAPG does not need: for each
minibatch, an index gather of the rows (observation, block id, action, old log-prob, advantage, value target),
the trunk (``obs [+ phi]`` -> the config's MLP) with a loc and a value head, the per-block log-std, the
Gaussian log-prob, the clipped surrogate, the value loss, the entropy, backward, gradient clipping at the
config's norm and Adam. Its parameters have the shapes of the runner's (the counts are printed).

Rounds interleave ours and the floor (``--rounds``, each with ``--iters`` updates after a warm-up one); the
ratio is of the medians, and per round. Prints the machine's load before and after: time only on a quiet one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch
from hydra import compose, initialize_config_dir
from torch import nn

from sapg_torchrl.app.build import build_runner
from sapg_torchrl.cli import CONFIG_DIR
from sapg_torchrl.cli.checks import check_command_line, exit_on_config_error
from sapg_torchrl.nn import ACTIVATIONS


class BareActorCritic(nn.Module):
    """The runner's network in plain torch: a shared trunk over ``obs [+ phi(block)]``, a loc and a value head,
    a log-std per block."""

    def __init__(self, obs_dim: int, action_dim: int, hidden, activation: str, num_blocks: int, phi_dim: int):
        super().__init__()
        self.phi = nn.Embedding(num_blocks, phi_dim) if num_blocks > 1 else None
        layers, width = [], obs_dim + (phi_dim if self.phi is not None else 0)
        for h in hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.loc, self.value = nn.Linear(width, action_dim), nn.Linear(width, 1)
        self.log_std = nn.Parameter(torch.zeros(num_blocks, action_dim))

    def forward(self, obs, block):
        x = obs if self.phi is None else torch.cat([obs, self.phi(block)], -1)
        h = self.trunk(x)
        return self.loc(h), self.log_std[block].exp(), self.value(h).squeeze(-1)


class Floor:
    """``epochs`` passes of bare-torch PPO minibatch steps over ``rows`` rows shuffled and split into ``sizes``
    (the runner's own partition)."""

    def __init__(self, runner, cfg, rows: int, epochs: int, sizes: list[int]):
        obs_dim = runner.env.observation_spec["observation"].shape[-1]
        action_dim = runner.env.action_spec.shape[-1]
        num_blocks = runner.layout.num_blocks
        self.model = BareActorCritic(obs_dim, action_dim, cfg.network.hidden, cfg.network.activation, num_blocks,
                                     cfg.network.phi_dim)  # fmt: skip
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.ppo.lr)
        self.clip, self.max_grad_norm = cfg.ppo.clip_epsilon, cfg.ppo.max_grad_norm
        self.epochs, self.sizes = epochs, sizes
        g = torch.Generator().manual_seed(0)
        self.data = {
            "obs": torch.randn(rows, obs_dim, generator=g),
            "block": torch.randint(num_blocks, (rows,), generator=g),
            "action": torch.randn(rows, action_dim, generator=g),
            "old_log_prob": torch.randn(rows, generator=g) - action_dim,
            "advantage": torch.randn(rows, generator=g),
            "target": torch.randn(rows, generator=g),
        }
        self.params = sum(p.numel() for p in self.model.parameters())

    def update(self) -> None:
        for _ in range(self.epochs):
            for index in torch.randperm(self.data["obs"].shape[0]).split(self.sizes):
                self._step({k: v[index] for k, v in self.data.items()})

    def _step(self, d: dict) -> None:
        loc, scale, value = self.model(d["obs"], d["block"])
        dist = torch.distributions.Normal(loc, scale)
        log_prob = dist.log_prob(d["action"]).sum(-1)
        ratio = (log_prob - d["old_log_prob"]).exp()
        surrogate = torch.minimum(ratio * d["advantage"], ratio.clamp(1 - self.clip, 1 + self.clip) * d["advantage"])
        loss = -surrogate.mean() + 0.5 * (value - d["target"]).pow(2).mean() - 1e-3 * dist.entropy().sum(-1).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()


def _cfg(ablation: str, args) -> object:
    overrides = [f"ablation={ablation}", "logger.wandb=false", "train.progress=false", "train.eval_interval=0",
                 "device=cpu"] + ([f"env={args.env}"] if args.env else [])  # fmt: skip
    overrides += [f"env.num_envs={args.num_envs}"] if args.num_envs else []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="sapg", overrides=overrides)
    cfg.total_frames = cfg.env.num_envs * cfg.ppo.horizon * 4
    return cfg


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(ablation: str, args, log=print) -> dict:
    cfg = _cfg(ablation, args)
    runner = build_runner(cfg)
    try:
        batch = runner.prepare(next(iter(runner.collector)))
    finally:
        runner.collector.shutdown()
    rows = batch.numel()
    sizes = runner.update.minibatch_sizes(batch.shape[0], rows // batch.shape[0])
    steps = runner.update.ppo.epochs * len(sizes)
    floor = Floor(runner, cfg, rows, runner.update.ppo.epochs, sizes)
    ours_params = sum(p.numel() for p in runner.update.params)

    def ours():
        runner.update.epochs(batch.clone())

    ours(), floor.update()  # warm-up
    samples = {"ours": [], "floor": []}
    for r in range(args.rounds):
        for name, fn in (("ours", ours), ("floor", floor.update))[:: 1 if r % 2 == 0 else -1]:
            samples[name].append(statistics.median(_time(fn) for _ in range(args.iters)))
    per_step = {k: statistics.median(v) / steps for k, v in samples.items()}
    per_round = [o / f for o, f in zip(samples["ours"], samples["floor"], strict=True)]
    log(f"{ablation:<9} rows {rows:6d}  steps {steps:3d} of <= {max(sizes):5d} rows  params ours {ours_params} / floor "
        f"{floor.params}  ours {1e3 * per_step['ours']:7.2f} ms/step  floor {1e3 * per_step['floor']:7.2f} ms/step  "
        f"ratio {per_step['ours'] / per_step['floor']:.3f}x (per round: {', '.join(f'{x:.2f}' for x in per_round)})")  # fmt: skip
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            ours()
        log(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return {"ablation": ablation, "rows": rows, "steps": steps, "minibatch": max(sizes), "ours_ms_per_step":
            1e3 * per_step["ours"], "floor_ms_per_step": 1e3 * per_step["floor"],
            "ratio": per_step["ours"] / per_step["floor"], "per_round": per_round}  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ablations", default="no_split,sapg", help="comma-separated (default: no_split,sapg)")
    p.add_argument("--env", default=None, help="env preset (sapg_torchrl/configs/env); default: the config's")
    p.add_argument("--num-envs", type=int, default=None, help="N (env.num_envs); default: the config's")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--iters", type=int, default=3, help="timed updates per round and side (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--profile", action="store_true", help="print a torch profile of one of our updates")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.iters < 1 or (args.threads is not None and args.threads < 1):
        p.error("--rounds, --iters and --threads must be >= 1")
    ablations = args.ablations.split(",")
    check_command_line([f"ablation={','.join(ablations)}"] + ([f"env={args.env}"] if args.env else [])
                       + ([f"env.num_envs={args.num_envs}"] if args.num_envs else []), "sapg")  # fmt: skip
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print(f"torch threads {torch.get_num_threads()}, load average before: {os.getloadavg()[0]:.2f}")
    with exit_on_config_error():
        for ablation in ablations:
            measure(ablation, args)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
