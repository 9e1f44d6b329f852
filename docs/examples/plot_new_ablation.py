"""
Writing a new ablation as a config file
=======================================

Every variant of the study is a config file of the ``ablation`` group that sets only its own keys over the one
training loop (``sapg_torchrl/configs/ablation/``). Yours can live in a folder of your own, added to Hydra's
search path with ``--config-dir``::

    sapg-train --config-dir my_configs ablation=two_followers
    sapg-study --config-dir my_configs ablation=sapg,two_followers

Here: a variant in which the leader learns from *two* follower blocks per iteration instead of one.
"""

# %%
# The file. ``# @package _global_`` makes its keys top-level keys of the run's config (a group file's keys
# would otherwise land under ``ablation:``).
import contextlib
import io
import tempfile
from pathlib import Path

my_configs = Path(tempfile.mkdtemp()) / "my_configs"
(my_configs / "ablation").mkdir(parents=True)
(my_configs / "ablation" / "two_followers.yaml").write_text(
    "# @package _global_\n"
    "# the leader learns from two follower blocks per iteration (K = 2) instead of one\n"
    "sapg:\n"
    "  off_policy_ratio: 2\n"
)

# %%
# Composed as the command line composes it, the variant differs from ``sapg`` in its own key only.
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sapg_torchrl.cli import CONFIG_DIR
from sapg_torchrl.cli.checks import check_command_line


def compose_with(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("sapg", overrides=[f"hydra.searchpath=[file://{my_configs}]", *overrides])


def flat(node, prefix=""):
    out = {}
    for key, value in node.items():
        out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


base = flat(OmegaConf.to_container(compose_with("ablation=sapg"), resolve=True))
mine = flat(OmegaConf.to_container(compose_with("ablation=two_followers"), resolve=True))
print({key: (base[key], mine[key]) for key in base if base[key] != mine[key]})

# %%
# The schema checks a config file as it checks the command line: a misspelled key or a bad value is refused in
# one line before anything runs.
(my_configs / "ablation" / "typo.yaml").write_text("# @package _global_\nsapg:\n  off_policy_ration: 2\n")
for argv in (["ablation=typo"], ["ablation=two_followers", "sapg.off_policy_ratio=two"]):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.suppress(SystemExit):
        check_command_line([f"--config-dir={my_configs}", *argv], "sapg")
    print(stderr.getvalue().strip())

# %%
# Both variants, trained for a few seconds each on Pendulum (an envpool task, through the config's
# ``env.make``), to compare the leader's returns. One seed each is only a demonstration: the study runs
# five seeds per variant and reports intervals.
import matplotlib.pyplot as plt
import pandas as pd

from sapg_torchrl.app.run import train

task = [
    "env.make.env_name=Pendulum-v1", "env.num_envs=96", "env.eval_envs=6", "env.eval_steps=200",
    "env.reward_scale=0.1", "ppo.horizon=16", "ppo.epochs=3", "total_frames=30720", "network.hidden=[64,64]",
    "sapg.entropy_scale=0.005", "network.max_log_std=null", "train.eval_interval=0", "train.progress=false",
    "device=cpu", "logger.wandb=false",
]  # fmt: skip
fig, ax = plt.subplots(figsize=(7, 4))
for variant in ("sapg", "two_followers"):
    run_dir = Path(tempfile.mkdtemp()) / variant
    train(compose_with(f"ablation={variant}", *task), run_dir, name=variant)
    metrics = pd.read_csv(run_dir / "metrics.csv")
    ax.plot(metrics["frames"], metrics["return/leader"], marker=".", label=variant)
ax.set(xlabel="env frames", ylabel="leader's episode return", title="Pendulum, one seed each")
ax.legend()
fig.tight_layout()
