"""Block layout and per-block entropy coefficients."""

import pytest
import torch

from sapg_torchrl import BlockLayout, ConfigError, block_entropy_coefficients


def test_block_ids_are_contiguous_long_blocks():
    """Env j belongs to block j // B, as an integer (never float) id."""
    layout = BlockLayout(num_envs=12, num_blocks=4)
    ids = layout.block_ids()
    assert layout.block_size == 3
    assert ids.dtype == torch.long
    assert ids.tolist() == [j // 3 for j in range(12)]


@pytest.mark.parametrize(
    "leader, expected",
    [("last", 5), ("first", 0), (2, 2), (-1, 5), (-6, 0), (-2, 4)],
)
def test_leader_choices(leader, expected):
    """'last' (default), 'first', an index and a negative index resolve to one block; the rest follow."""
    layout = BlockLayout(num_envs=12, num_blocks=6, leader=leader)
    assert layout.leader == expected
    assert layout.followers == tuple(b for b in range(6) if b != expected)


def test_default_leader_is_last():
    """The released code's choice: the last block leads."""
    assert BlockLayout(num_envs=8, num_blocks=4).leader == 3
    assert BlockLayout(num_envs=8, num_blocks=1).followers == ()


@pytest.mark.parametrize(
    "kwargs, must_contain",
    [
        (dict(num_envs=100, num_blocks=6), ["num_envs=100", "num_blocks=6", "96", "102"]),
        (dict(num_envs=12, num_blocks=0), ["num_blocks=0", ">= 1"]),
        (dict(num_envs=0, num_blocks=1), ["num_envs=0", ">= 1"]),
        (dict(num_envs=12.0, num_blocks=6), ["num_envs=12.0", "integer"]),
        (dict(num_envs=12, num_blocks=6, leader="middle"), ["'middle'", "'first'", "'last'"]),
        (dict(num_envs=12, num_blocks=6, leader=6), ["leader=6", "[-6, 5]"]),
        (dict(num_envs=12, num_blocks=6, leader=-7), ["leader=-7", "[-6, 5]"]),
        (dict(num_envs=12, num_blocks=6, leader=True), ["leader=True", "'first'"]),
    ],
)
def test_layout_errors_name_bad_and_accepted_values(kwargs, must_contain):
    """Bad layouts raise ConfigError naming the bad value and what is accepted."""
    with pytest.raises(ConfigError) as err:
        BlockLayout(**kwargs)
    for text in must_contain:
        assert text in str(err.value)


def test_code_schedule_leader_last_is_scaled_linspace():
    """Code schedule, M = 6, leader last: scale * linspace(0.5, 0, 6)."""
    coef = block_entropy_coefficients(6, 5, schedule="code", scale=0.005)
    torch.testing.assert_close(coef, 0.005 * torch.linspace(0.5, 0, 6))


@pytest.mark.parametrize("num_blocks, leader", [(6, 0), (6, 5), (4, 3), (2, 0)])
def test_code_schedule_leader_zero_farthest_half_scale(num_blocks, leader):
    """Code schedule: the leader gets 0 and the farthest follower 0.5 * scale, growing with distance."""
    coef = block_entropy_coefficients(num_blocks, leader, schedule="code", scale=0.2)
    assert coef[leader] == 0
    farthest = num_blocks - 1 if leader == 0 else 0
    assert coef[farthest].item() == pytest.approx(0.1)
    distance = (torch.arange(num_blocks) - leader).abs()
    order = distance.argsort()
    assert torch.all(coef[order].diff() > 0)


@pytest.mark.parametrize("leader", [0, 3])
def test_paper_schedule_is_sigma_times_distance(leader):
    """Paper schedule: follower i (1-based from the leader) gets sigma * (i - 1)."""
    coef = block_entropy_coefficients(4, leader, schedule="paper", scale=0.01)
    expected = 0.01 * (torch.arange(4) - leader).abs().float()
    torch.testing.assert_close(coef, expected)


def test_explicit_schedule_returns_the_list():
    """Explicit schedule: one given coefficient per block."""
    coef = block_entropy_coefficients(3, 2, schedule="explicit", coefficients=[0.3, 0.2, 0.0])
    torch.testing.assert_close(coef, torch.tensor([0.3, 0.2, 0.0]))


def test_zero_schedule_ignores_the_scale():
    """Zero schedule (no_entropy): every block 0, so a task's entropy scale cannot reach the ablation."""
    assert block_entropy_coefficients(6, 5, schedule="zero", scale=0.05).tolist() == [0.0] * 6


@pytest.mark.parametrize("schedule", ["code", "paper"])
def test_single_block_gets_zero(schedule):
    """M = 1 (no_split): the only block is the leader, coefficient 0."""
    coef = block_entropy_coefficients(1, 0, schedule=schedule, scale=0.5)
    assert coef.tolist() == [0.0]


def test_schedule_errors_name_bad_and_accepted_values():
    """Unknown schedule and wrong explicit length raise ConfigError naming the value."""
    with pytest.raises(ConfigError) as err:
        block_entropy_coefficients(6, 5, schedule="linear", scale=0.1)
    for text in ["'linear'", "'code'", "'paper'", "'explicit'", "'zero'"]:
        assert text in str(err.value)
    with pytest.raises(ConfigError) as err:
        block_entropy_coefficients(6, 5, schedule="explicit", coefficients=[0.1, 0.2])
    assert "got 2" in str(err.value) and "num_blocks=6" in str(err.value)
    with pytest.raises(ConfigError, match="got None"):
        block_entropy_coefficients(6, 5, schedule="explicit")
