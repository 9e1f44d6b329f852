"""The rollout's state values (one critic pass, or none with the collector's values), n-step returns and advantage
standardisation."""

import pytest
import torch

from sapg_torchrl.targets import n_step_return, rollout_state_values, standardize_advantage

POINT_MASS = (
    "env.make._target_=point_mass.PointMassEnv", "~env.make.env_name", "~env.make.create_env_kwargs",
    "+env.make.episode_length=3",  # episodes end inside the rollout: final states that are not a next step's
)  # fmt: skip


@pytest.mark.parametrize("shared_trunk", [True, False])
def test_rollout_values_are_the_critics_on_every_state(tiny_cfg, shared_trunk):
    """On a collected rollout with episode ends, ``V(s_t)`` and ``V(s_{t+1})`` are what the critic gives on each
    state and each next state (the true final state where an episode ended), whether ``V(s_t)`` comes from the
    collector's policy (a shared trunk: rollout_policy) or from the critic's one pass over the rollout."""
    from sapg_torchrl.app.build import build_runner

    runner = build_runner(tiny_cfg(*POINT_MASS, f"network.shared_trunk={shared_trunk}", "train.eval_interval=0"))
    try:
        data = runner.collect()
    finally:
        runner.collector.shutdown()
    assert runner.values_in_rollout == shared_trunk and ("state_value" in data.keys()) == shared_trunk
    assert data["next", "done"].any() and not data["next", "done"].all()
    critic = runner.update.critic
    with torch.no_grad():
        expected = critic(data.select(*critic.in_keys).clone())["state_value"]
        expected_next = critic(data["next"].select(*critic.in_keys).clone())["state_value"]
    rollout_state_values(critic, data, values_in_data=runner.values_in_rollout)
    torch.testing.assert_close(data["state_value"], expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(data["next", "state_value"], expected_next, rtol=1e-6, atol=1e-6)


def brute_force_n_step(reward, next_value, done, terminated, gamma, n):
    """Per env and start step: sum rewards until n steps, an episode end or the rollout's end, then bootstrap
    from V(s_{t+k}) unless the episode terminated."""
    envs, T, _ = reward.shape
    out = torch.zeros_like(reward)
    for e in range(envs):
        for t in range(T):
            total, discount = 0.0, 1.0
            for k in range(n):
                i = t + k
                total += discount * reward[e, i, 0].item()
                discount *= gamma
                if terminated[e, i, 0]:
                    break
                if done[e, i, 0] or i == T - 1 or k == n - 1:
                    total += discount * next_value[e, i, 0].item()
                    break
            out[e, t, 0] = total
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_n_step_return_matches_brute_force(n):
    """Vectorised n-step returns equal a loop over envs and steps, with terminations and truncations."""
    g = torch.Generator().manual_seed(n)
    envs, T = 7, 11
    reward = torch.randn(envs, T, 1, generator=g)
    next_value = torch.randn(envs, T, 1, generator=g)
    terminated = torch.rand(envs, T, 1, generator=g) < 0.15
    truncated = (torch.rand(envs, T, 1, generator=g) < 0.15) & ~terminated
    done = terminated | truncated
    assert terminated.any() and truncated.any()
    got = n_step_return(reward, next_value, done, terminated, gamma=0.9, n=n)
    expected = brute_force_n_step(reward, next_value, done, terminated, 0.9, n)
    torch.testing.assert_close(got, expected)


def test_n_step_return_one_is_td0_and_rejects_zero():
    """n = 1 is r + gamma * V(s') * (1 - terminated); n < 1 is refused."""
    reward, next_value = torch.randn(3, 4, 1), torch.randn(3, 4, 1)
    terminated = torch.zeros(3, 4, 1, dtype=torch.bool)
    terminated[1, 2] = True
    got = n_step_return(reward, next_value, terminated, terminated, gamma=0.99, n=1)
    torch.testing.assert_close(got, reward + 0.99 * next_value * (~terminated))
    with pytest.raises(ValueError, match="n=0"):
        n_step_return(reward, next_value, terminated, terminated, gamma=0.99, n=0)


def test_standardize_advantage_global():
    """Global: zero mean, unit (population) std over the whole batch."""
    adv = torch.randn(40, 1) * 3 + 2
    out = standardize_advantage(adv)
    torch.testing.assert_close(out, (adv - adv.mean()) / adv.std(correction=0), rtol=1e-5, atol=1e-5)
    assert out.shape == adv.shape


def test_standardize_advantage_per_block():
    """Per block: every block's rows are standardised with that block's own mean and std."""
    g = torch.Generator().manual_seed(0)
    block_id = torch.randint(0, 3, (60,), generator=g)
    scales = torch.tensor([1.0, 10.0, 100.0])
    adv = (torch.randn(60, 1, generator=g) + block_id[:, None]) * scales[block_id][:, None]
    out = standardize_advantage(adv, block_id, num_blocks=3)
    for b in range(3):
        rows = adv[block_id == b]
        expected = (rows - rows.mean()) / rows.std(correction=0)
        torch.testing.assert_close(out[block_id == b], expected, rtol=1e-5, atol=1e-5)


def test_standardize_advantage_per_block_keeps_shape_and_skips_empty_blocks():
    """Per block over a [rows, T, 1] batch with an absent block: same shape, finite values."""
    block_id = torch.tensor([0, 0, 2, 2])[:, None].expand(4, 5)
    adv = torch.randn(4, 5, 1)
    out = standardize_advantage(adv, block_id, num_blocks=4)
    assert out.shape == adv.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out[:2].mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
