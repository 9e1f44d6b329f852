"""The Brax adapter: per-env resets, time limits reported as truncation, a one-line error without Brax."""

import importlib.util

import pytest
import torch

from sapg_torchrl import ConfigError
from sapg_torchrl.envs.brax import BraxBatchEnv


@pytest.fixture(scope="module")
def env():
    return BraxBatchEnv(4, "ant", backend="spring", episode_length=3, seed=0)


def test_time_limit_is_a_truncation(env):
    rollout = env.rollout(7, break_when_any_done=False)
    done = rollout["next", "done"].squeeze(-1)
    assert done[:, [2, 5]].all() and done.sum() == 8  # every 3 steps, no fall in so few steps
    assert torch.equal(rollout["next", "truncated"], rollout["next", "done"])
    assert not rollout["next", "terminated"].any()
    assert rollout["observation"].dtype == torch.float32 and rollout["next", "reward"].shape == (4, 7, 1)


def test_reset_restarts_only_the_masked_envs(env):
    stepped = env.step(env.full_action_spec.rand().update(env.reset()))["next"]
    mask = torch.tensor([True, False, False, True])
    out = env.reset(stepped.clone().set("_reset", mask[:, None]))
    before, after = stepped["observation"], out["observation"]
    assert torch.equal(after[~mask], before[~mask])  # kept their state
    assert not torch.equal(after[mask], before[mask])  # fresh states


def test_unknown_env_names_the_accepted_ones():
    with pytest.raises(ConfigError, match=r"unknown Brax env 'antt'; accepted: .*\bant\b"):
        BraxBatchEnv(2, "antt")


def test_without_brax_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "brax" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs Brax: pip install 'sapg-torchrl\[brax\]'"):
        BraxBatchEnv(2, "ant")
