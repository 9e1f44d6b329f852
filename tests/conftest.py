"""Shared fixtures: Hydra composition of the recipe config, tiny run settings, small rollouts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the package is used from the checkout, not installed
    sys.path.insert(0, str(REPO))

from sapg_torchrl.cli import CONFIG_DIR  # noqa: E402  (also registers the config schemas)

# A run of a few iterations in a few seconds on a CPU: 12 envs (6 blocks of 2), T = 4, 10 iterations,
# episodes of 3 steps so that training and evaluation returns exist.
TINY_OVERRIDES = (
    "device=cpu",
    "logger.wandb=false",
    "train.progress=false",
    "env.num_envs=12",
    "ppo.horizon=4",
    "ppo.epochs=2",
    "total_frames=480",
    "network.hidden=[16]",
    "env.eval_envs=2",
    "env.eval_steps=5",
    "train.eval_interval=1",
    "+env.make.create_env_kwargs.max_episode_steps=3",
)

torch.set_num_threads(1)  # tiny tensors, two shared cores: threads only add overhead


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("sapg", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture
def compose_cfg():
    """``compose_cfg(*overrides)``: ``sapg_torchrl/configs/sapg.yaml`` composed with Hydra overrides (no ``hydra`` node)."""
    return _compose


@pytest.fixture
def tiny_cfg():
    """``tiny_cfg(*overrides)``: the recipe config with :data:`TINY_OVERRIDES`, then ``overrides``."""
    return lambda *overrides: _compose(*TINY_OVERRIDES, *overrides)


@pytest.fixture
def tiny_overrides():
    return TINY_OVERRIDES


@pytest.fixture
def repo_root():
    return REPO


@pytest.fixture(scope="module")
def repo_root_module():
    return REPO
