#!/usr/bin/env python
"""The authors' released SAPG code, or stock rl_games PPO, at the settings of our Hopper studies, logging every
finished episode of the leader (issue 35): the other side of :mod:`ours` (beside this script).

    python benchmarks/fidelity/released.py prepare --source <sapg checkout or git dir> --out /tmp/released
    python benchmarks/fidelity/released.py run --code /tmp/released/rl_games --seed 0 --out fidelity/released/hopper/seed0
    python benchmarks/fidelity/released.py run --code stock --seed 0 --out fidelity/rl_games_ppo/hopper/seed0

``prepare`` copies ``rl_games/`` out of a copy of ``jayeshs999/sapg`` (at ``e96efae``; a checkout, or a bare git
directory such as the search tool's mirror, read with ``git show``) and edits it only so that it runs envpool on a
CPU with gym >= 0.26 (:data:`EDITS`); the released code itself never enters this repository. ``run`` trains it, or
the pip-installed rl_games 1.6.5 PPO (``--code stock``; ``pip install -e ".[bench]"`` brings rl_games and the
``gym`` the released code imports), on an envpool task with our study's settings (:func:`params`),
and writes ``<out>/episodes.csv``: one row per finished episode of the leader block (SAPG) or of any env (PPO), with
the frames collected at the end of its iteration, as ``ours.py`` writes ours, and ``<out>/run.json``: the frames
collected when it ended. ``compare.py`` reads both.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

EDITS = {  # file under rl_games/ -> [(old, new)]: gym >= 0.26's envpool API, observations already tensors
    "rl_games/common/a2c_common.py": [
        (
            "obs, rewards, dones, infos = self.vec_env.step(actions.to(self.vec_env.env.device))",
            "obs, rewards, dones, infos = self.vec_env.step(actions.to(self.vec_env.env.device) if self.is_tensor_obses else actions)",
        ),
        ("        tr_obs = self.obs_to_tensors(obs)\n", "        tr_obs = obs  # already a dict of tensors\n"),
    ],
    "rl_games/envs/envpool.py": [
        (
            "            self.observation_space = self.env.observation_space\n",
            "            sp = self.env.observation_space\n"
            "            self.observation_space = gym.spaces.Box(sp.low, sp.high, sp.shape, np.float32)\n",
        ),
        (
            "        self.action_space = self.env.action_space\n",
            "        sp = self.env.action_space\n"
            "        self.action_space = gym.spaces.Box(sp.low, sp.high, sp.shape, sp.dtype)\n",
        ),
        (
            "        next_obs, reward, is_done, info = self.env.step(action , self.ids)\n"
            "        info['time_outs'] = info['TimeLimit.truncated']\n",
            "        result = self.env.step(action, self.ids)\n"
            "        if len(result) == 5:  # gym >= 0.26\n"
            "            next_obs, reward, terminated, truncated, info = result\n"
            "            is_done = terminated | truncated\n"
            "            info['time_outs'] = truncated\n"
            "        else:\n"
            "            next_obs, reward, is_done, info = result\n"
            "            info['time_outs'] = info['TimeLimit.truncated']\n",
        ),
        (
            "        obs = self.env.reset(self.ids)\n",
            "        obs = self.env.reset(self.ids)\n"
            "        obs = obs[0] if isinstance(obs, tuple) else obs  # gym >= 0.26: (obs, info)\n",
        ),
    ],
    "rl_games/algos_torch/torch_ext.py": [  # its first "best" save otherwise sleeps 31 s retrying a missing link
        ("        safe_filesystem_op(os.remove, dst)\n", "        if os.path.lexists(dst):\n            safe_filesystem_op(os.remove, dst)\n"),
    ],
}


def prepare(source: Path, out: Path) -> Path:
    """Copies ``rl_games/`` of the released code from ``source`` to ``out`` and applies :data:`EDITS`; returns the
    folder to pass as ``run --code``."""
    target = out / "rl_games"
    if target.exists():
        raise SystemExit(f"error: {target} exists: remove it or choose another --out")
    if (source / "rl_games").is_dir():
        shutil.copytree(source / "rl_games", target)
    else:  # a git directory without a work tree
        git = ["git", "-C", str(source)]
        names = subprocess.run([*git, "ls-tree", "-r", "--name-only", "HEAD", "rl_games"], check=True,
                               capture_output=True, text=True).stdout.split()  # fmt: skip
        if not names:
            raise SystemExit(f"error: {source} has no rl_games/ folder: give a copy of jayeshs999/sapg")
        for name in names:
            shown = subprocess.run([*git, "show", f"HEAD:{name}"], capture_output=True)
            if shown.returncode == 0:  # the mirror lacks a few large pictures and notebooks
                (out / name).parent.mkdir(parents=True, exist_ok=True)
                (out / name).write_bytes(shown.stdout)
    apply_edits(target, EDITS)
    return target


def apply_edits(target: Path, edits: dict) -> None:
    """Applies ``{file under target: [(old, new)]}``, each ``old`` found exactly once, else stops naming the line."""
    for name, pairs in edits.items():
        path = target / name
        text = path.read_text()
        for old, new in pairs:
            if text.count(old) != 1:
                raise SystemExit(f"error: {path} does not hold the expected line {old.strip()!r}: not the released code?")
            text = text.replace(old, new)
        path.write_text(text)


def params(args) -> dict:
    """rl_games' configuration at our Hopper studies' settings (``config.yaml`` of ``docs/results/hopper/runs``):
    N envs, T = 16, 5 epochs, minibatch 4N, lr 5e-4 KL-adaptive at 0.016, MLP 256-256-128 ELU shared by actor and
    critic, clipped values, critic weight 4 (2 after rl_games' 0.5), bounds loss 1e-4, input and value normalisation;
    SAPG: ``M`` blocks, learned per-block log-std and conditioning, leader-follower aggregation of one block, entropy
    scale ``--entropy-scale``."""
    sapg = args.code != "stock"
    config = {
        "name": "fidelity", "env_name": "envpool", "device": "cpu", "ppo_device": "cpu", "multi_gpu": False,
        "ppo": True, "mixed_precision": False, "normalize_input": True, "normalize_value": True,
        "value_bootstrap": True, "reward_shaper": {"scale_value": 1.0}, "normalize_advantage": True,
        "gamma": 0.99, "tau": 0.95, "learning_rate": 5e-4, "lr_schedule": "adaptive", "schedule_type": "standard",
        "kl_threshold": 0.016, "grad_norm": 1.0, "entropy_coef": 0.0, "truncate_grads": True, "e_clip": 0.2,
        "clip_value": True, "num_actors": args.num_envs, "horizon_length": 16, "minibatch_size": 4 * args.num_envs,
        "mini_epochs": 5, "critic_coef": 4, "bounds_loss_coef": 1e-4, "bound_loss_type": "bound",
        "max_frames": int(args.frames), "max_epochs": -1, "save_best_after": 10**9, "save_frequency": 0,
        "games_to_track": 100, "train_dir": str(args.out), "full_experiment_name": "0_rl_games",  # the released code reads a policy index from its first token
        "env_config": {"env_name": args.env, "seed": args.seed, "num_threads": args.threads},
    }  # fmt: skip
    if sapg:
        config |= {
            "use_others_experience": "lf", "off_policy_ratio": 1.0, "expl_type": "mixed_expl_learn_param",
            "expl_reward_coef_embd_size": 32, "expl_reward_coef_scale": args.entropy_scale,
            "expl_reward_type": "entropy", "expl_coef_block_size": args.num_envs // args.num_blocks,
        }  # fmt: skip
    continuous = {"mu_activation": "None", "sigma_activation": "None", "mu_init": {"name": "default"},
                  "sigma_init": {"name": "const_initializer", "val": 0}, "fixed_sigma": "coef_cond" if sapg else True}  # fmt: skip
    return {
        "seed": args.seed,
        "algo": {"name": "a2c_continuous"},
        "model": {"name": "continuous_a2c_logstd"},
        "network": {"name": "actor_critic", "separate": False, "space": {"continuous": continuous},
                    "mlp": {"units": [256, 256, 128], "activation": "elu", "initializer": {"name": "default"}}},  # fmt: skip
        "config": config,
    }


def run(args) -> None:
    if args.code != "stock":
        if not (Path(args.code) / "rl_games" / "torch_runner.py").is_file():
            raise SystemExit(f"error: --code {args.code} is not a prepared rl_games/ folder (see 'prepare') nor 'stock'")
        sys.path.insert(0, str(Path(args.code).resolve()))
    import torch
    from rl_games.common.algo_observer import DefaultAlgoObserver
    from rl_games.torch_runner import Runner

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    class EpisodeLog(DefaultAlgoObserver):
        """Every return that rl_games' own measure (``game_rewards``, the last 100) takes in: the leader's episodes
        under SAPG (``ignore_env_boundary``), every env's under PPO."""

        def after_init(self, algo):
            super().after_init(algo)
            self.trainer = algo
            file = open(args.out / "episodes.csv", "w", newline="")
            writer = csv.writer(file)
            writer.writerow(["frames", "return", "wall_s"])
            update = algo.game_rewards.update

            def logged(returns):
                frames = algo.frame + algo.batch_size_envs  # at the end of the iteration it ended in
                wall = f"{time.perf_counter() - start:.1f}"
                writer.writerows([frames, f"{r:.4f}", wall] for r in returns.flatten().tolist())
                file.flush()
                return update(returns)

            algo.game_rewards.update = logged

    log = EpisodeLog()
    runner = Runner(log)
    runner.load({"params": params(args)})
    runner.run({"train": True, "play": False})
    # where the run ended: a method's last finished episode can be well before it (long episodes)
    (args.out / "run.json").write_text(json.dumps({"frames": int(log.trainer.frame)}) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="copy and patch the released code's rl_games/")
    p.add_argument("--source", type=Path, required=True, help="a copy of jayeshs999/sapg (checkout or git directory)")
    p.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("run", help="train it (or stock rl_games PPO) and log the leader's episodes")
    r.add_argument("--code", required=True, help="the prepared rl_games/ folder, or 'stock' for pip's rl_games PPO")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--env", default="Hopper-v4", help="an envpool task id (Hopper-v4, HalfCheetah-v4, ...)")
    r.add_argument("--frames", type=float, default=3e6)
    r.add_argument("--num-envs", type=int, default=1536)
    r.add_argument("--num-blocks", type=int, default=6)
    r.add_argument("--entropy-scale", type=float, default=0.05, help="the followers' entropy scale (the studies': 0.05)")
    r.add_argument("--threads", type=int, default=2, help="torch and envpool threads")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        print(prepare(args.source, args.out))
    else:
        run(args)


if __name__ == "__main__":
    main()
