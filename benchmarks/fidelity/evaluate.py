#!/usr/bin/env python
"""A deterministic evaluation of each run's final leader, the same for the released code's, rl_games PPO's and ours
(issue 35): one measure, computed by one loop.

    python benchmarks/fidelity/evaluate.py fid/sapg/hopper/seed0 fid/no_split/hopper/seed0          # ours
    python benchmarks/fidelity/evaluate.py --code /tmp/released/rl_games fid/released/hopper/seed*    # the released code
    python benchmarks/fidelity/evaluate.py --code stock fid/rl_games_ppo/hopper/seed*                # stock rl_games PPO

Each run's final policy acts with its mean action, clamped to ``[-1, 1]`` (as both sides clamp in training), on
``--envs`` fresh envpool envs of its task, seeded with ``--seed`` (the same envs for every run), until each env has
finished one episode; the measure is the mean return of those first episodes. The leader is the last block on
both sides (the released code's conditioning id ``0``, our ``leader: last``). Ours: the run folder's last
checkpoint through :class:`~sapg_torchrl.deploy.DeployedPolicy`; the released code and rl_games PPO: the
``last_*.pth`` checkpoint ``released.py run`` left, in the model rl_games builds for the same settings (``--code``:
the prepared copy, or ``stock``). Writes ``<run>/eval.json``; ``compare.py`` reads it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def first_episode_returns(policy, task: str, envs: int, seed: int, max_steps: int = 1000) -> list[float]:
    """``policy(observation [envs, obs]) -> action`` run on fresh envs until each has finished an episode."""
    import envpool

    env = envpool.make(task, env_type="gymnasium", num_envs=envs, seed=seed)
    observation, _ = env.reset()
    total, first = np.zeros(envs), np.full(envs, np.nan)
    for _ in range(max_steps + 1):
        with torch.no_grad():
            action = policy(torch.as_tensor(observation, dtype=torch.float32)).clamp(-1, 1).numpy()
        observation, reward, terminated, truncated, _ = env.step(action.astype(np.float64))
        total += reward
        ended = (terminated | truncated) & np.isnan(first)
        first[ended] = total[ended]
        total[terminated | truncated] = 0.0
        if not np.isnan(first).any():
            break
    env.close()
    return first.tolist()


def ours(run: Path):
    """Our run's leader as a deterministic policy (its actions clamped to the action spec's bounds), and its task."""
    from sapg_torchrl.app.trained_run import deployed_policy

    policy, cfg, _, _ = deployed_policy(run)
    return policy.eval(), cfg.env.make.env_name


def last_checkpoint(run: Path) -> Path | None:
    """The ``last_*.pth`` checkpoint a finished ``released.py run`` leaves, or ``None``."""
    found = sorted((run / "0_rl_games" / "nn").glob("last_*.pth"))
    return found[-1] if found else None


def released(run: Path, code: str, task: str):
    """A run of ``released.py run``: its final model, rebuilt by rl_games at the same settings (12 envs)."""
    if code != "stock":
        sys.path.insert(0, str(Path(code).resolve()))
    sys.path.insert(0, str(HERE))
    from released import params  # beside this script
    from rl_games.torch_runner import Runner

    checkpoint = last_checkpoint(run)
    settings = argparse.Namespace(code=code, env=task, seed=0, frames=1, num_envs=12, num_blocks=6, entropy_scale=0.05,
                                  threads=1, out=Path("/tmp/fidelity_eval"))  # fmt: skip
    runner = Runner()
    runner.load({"params": params(settings)})
    agent = runner.algo_factory.create(runner.algo_name, base_name="run", params=runner.params)
    # rl_games' own loader retries torch.load's default weights_only=True; the file is our own run's. The released
    # code saves its state under key 0 (its policy index), stock rl_games at the top level
    # (rl_games 1.6.5 compiles its model: its names start with "_orig_mod.")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    weights = {key.removeprefix("_orig_mod."): value for key, value in state.get(0, state)["model"].items()}
    model = getattr(agent.model, "_orig_mod", agent.model)
    model.load_state_dict(weights)
    model.eval()
    sapg = code != "stock"

    def policy(observation):
        if sapg:  # the leader's conditioning: the last block's id, 0 (linspace(50, 0, M))
            observation = torch.cat([observation, torch.zeros(len(observation), 1)], 1)
        return model({"is_train": False, "prev_actions": None, "obs": observation, "rnn_states": None})["mus"]

    return policy


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders of ours.py, or of released.py run with --code")
    parser.add_argument("--code", help="the prepared rl_games/ copy (released SAPG) or 'stock' (rl_games PPO)")
    parser.add_argument("--task", help="the envpool task of released.py runs (ours: from the run's config)")
    parser.add_argument("--envs", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    problem = None
    if args.code is not None and args.task is None:
        problem = "--code needs --task (the envpool task the runs trained on, e.g. Hopper-v4)"
    elif args.envs < 1:
        problem = f"--envs={args.envs} is not accepted: an integer >= 1"
    elif args.code not in (None, "stock") and not (Path(args.code) / "rl_games" / "torch_runner.py").is_file():
        problem = f"--code {args.code} is not a prepared rl_games/ folder (released.py prepare) nor 'stock'"
    else:
        for run in args.runs:
            if args.code is None and not (run / "config.yaml").is_file():
                problem = f"{run} is not a run folder of ours.py (no config.yaml); a released.py run needs --code"
            elif args.code is not None and last_checkpoint(run) is None:
                problem = f"{run} has no 0_rl_games/nn/last_*.pth: not a finished run of released.py"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    torch.set_num_threads(args.threads)
    for run in args.runs:
        if args.code is None:
            policy, task = ours(run)
        else:
            policy, task = released(run, args.code, args.task), args.task
        returns = first_episode_returns(policy, task, args.envs, args.seed)
        result = {"return": float(np.mean(returns)), "returns": returns, "envs": args.envs, "seed": args.seed, "task": task}
        (run / "eval.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"{run}: {result['return']:.1f} (mean of {args.envs} first episodes, deterministic)")


if __name__ == "__main__":
    main()
