"""envpool adapter, block-id transform and the SAPG env wrapper."""

import pytest
import torch
from torchrl.envs import TransformedEnv
from torchrl.envs.utils import check_env_specs

from sapg_torchrl import BlockLayout, ConfigError
from sapg_torchrl.envs import BlockIdTransform, EnvpoolEnv, make_sapg_env

SHORT = {"max_episode_steps": 3}


def constant_policy(value):
    def policy(td):
        return td.set("action", torch.full((*td.batch_size, 1), float(value)))

    return policy


@pytest.mark.parametrize(
    "env_name, kwargs",
    [("Pendulum-v1", {}), ("MountainCarContinuous-v0", SHORT), ("Pendulum-v1", SHORT)],
)
def test_envpool_env_specs(env_name, kwargs):
    """check_env_specs passes, including across episode ends; reward and done are [N, 1]."""
    env = EnvpoolEnv(3, env_name, seed=1, create_env_kwargs=kwargs)
    try:
        check_env_specs(env, return_contiguous=False)
        rollout = env.rollout(7, break_when_any_done=False)
        assert rollout["next", "reward"].shape == (3, 7, 1)
        assert rollout["next", "done"].shape == (3, 7, 1) and rollout["next", "done"].dtype == torch.bool
    finally:
        env.close()


def test_mountaincar_resets_are_real_transitions():
    """After a done the next root observation is a fresh reset and its step gives a real reward (not 0)."""
    env = EnvpoolEnv(2, "MountainCarContinuous-v0", seed=0, create_env_kwargs=SHORT)
    try:
        rollout = env.rollout(9, constant_policy(1.0), break_when_any_done=False)
    finally:
        env.close()
    done = rollout["next", "done"].squeeze(-1)
    # episodes of exactly 3 steps: the elapsed-step counter restarts right after every done
    assert done.tolist() == [[False, False, True] * 3] * 2
    assert rollout["next", "truncated"].squeeze(-1).tolist() == done.tolist()
    assert not rollout["next", "terminated"].any()
    # every step is a real transition: reward -0.1 * a^2 with a = 1
    torch.testing.assert_close(rollout["next", "reward"], torch.full((2, 9, 1), -0.1))
    obs, next_obs = rollout["observation"], rollout["next", "observation"]
    for t in range(8):
        if t % 3 == 2:  # after a done: a reset state (position in [-0.6, -0.4], velocity 0)
            assert torch.all(obs[:, t + 1, 1] == 0)
            assert torch.all((obs[:, t + 1, 0] >= -0.6) & (obs[:, t + 1, 0] <= -0.4))
            assert torch.all(next_obs[:, t, 1] != 0)  # the true final observation is kept in "next"
        else:
            torch.testing.assert_close(obs[:, t + 1], next_obs[:, t])


def test_pendulum_reward_after_done_is_real():
    """Pendulum with 3-step episodes: the step after a done has a real (negative) reward, all steps do."""
    env = EnvpoolEnv(4, "Pendulum-v1", seed=3, create_env_kwargs=SHORT)
    try:
        rollout = env.rollout(7, constant_policy(0.5), break_when_any_done=False)
    finally:
        env.close()
    assert rollout["next", "done"][:, 2].all() and rollout["next", "done"][:, 5].all()
    assert torch.all(rollout["next", "reward"] < 0)


def test_partial_reset_only_resets_finished_envs():
    """A partial reset (one env flagged) resets that env in the pool at once; the others keep their state."""
    env = EnvpoolEnv(3, "MountainCarContinuous-v0", seed=0)
    try:
        td = env.rollout(2, constant_policy(1.0), break_when_any_done=False)[:, -1]["next"].clone()
        before = td["observation"].clone()
        td["_reset"] = torch.tensor([[False], [True], [False]])
        reset = env.reset(td)
        after = env.step(constant_policy(1.0)(reset.exclude("_reset")))["next", "observation"]
    finally:
        env.close()
    torch.testing.assert_close(reset["observation"][[0, 2]], before[[0, 2]])
    assert reset["observation"][1, 1] == 0 and before[1, 1] != 0
    # the untouched envs go on accelerating; the reset one starts from rest
    assert torch.all(after[[0, 2], 1] > before[[0, 2], 1])
    assert 0 < after[1, 1] < before[1, 1]


def test_block_id_transform_writes_long_ids():
    """BlockIdTransform writes the ids on reset and on every step, as torch.long, and declares them in the spec."""
    ids = BlockLayout(num_envs=4, num_blocks=2).block_ids()
    env = TransformedEnv(EnvpoolEnv(4, "Pendulum-v1"), BlockIdTransform(ids))
    try:
        assert env.observation_spec["block_id"].dtype == torch.long
        reset = env.reset()
        assert reset["block_id"].dtype == torch.long and reset["block_id"].tolist() == [0, 0, 1, 1]
        rollout = env.rollout(3)
        for key in ["block_id", ("next", "block_id")]:
            assert rollout[key].dtype == torch.long
            assert torch.equal(rollout[key], ids[:, None].expand(4, 3))
        check_env_specs(env)
    finally:
        env.close()


def test_block_id_transform_rejects_wrong_count():
    """More or fewer ids than envs is refused."""
    with pytest.raises(ValueError, match="3 block ids"):
        TransformedEnv(EnvpoolEnv(4, "Pendulum-v1"), BlockIdTransform(torch.tensor([0, 0, 1]))).observation_spec


def test_make_sapg_env_clips_actions_and_reports_episode_reward():
    """Actions are clipped to the bounds on the way in (stored unclipped); episode_reward is the unscaled return."""
    ids = torch.tensor([0, 1])
    base = EnvpoolEnv(2, "MountainCarContinuous-v0", create_env_kwargs=SHORT)
    env = make_sapg_env(base, ids, reward_scale=0.5)
    try:
        check_env_specs(env)
        rollout = env.rollout(5, constant_policy(3.0), break_when_any_done=False)
        # the env saw a = 1 (reward -0.1 * 1^2, scaled by 0.5), not a = 3 (-0.9)
        torch.testing.assert_close(rollout["next", "reward"], torch.full((2, 5, 1), -0.05))
        assert torch.all(rollout["action"] == 3.0)
        episode = rollout["next", "episode_reward"].squeeze(-1)
        torch.testing.assert_close(episode, torch.tensor([-0.1, -0.2, -0.3, -0.1, -0.2]).expand(2, 5))
        assert torch.equal(rollout["next", "block_id"], ids[:, None].expand(2, 5))
    finally:
        env.close()


def test_unclipped_base_env_sees_the_raw_action():
    """Control for the clipping test: without clipping, action 3 costs -0.1 * 9 per step."""
    env = make_sapg_env(EnvpoolEnv(2, "MountainCarContinuous-v0"), torch.tensor([0, 0]), clip_actions=False)
    try:
        rollout = env.rollout(2, constant_policy(3.0))
    finally:
        env.close()
    torch.testing.assert_close(rollout["next", "reward"], torch.full((2, 2, 1), -0.9))


def test_make_sapg_env_clips_multidimensional_actions():
    """An env with a 6-d action (HalfCheetah) is wrapped; out-of-bounds actions reach it clipped to [-1, 1]."""
    env = make_sapg_env(EnvpoolEnv(2, "HalfCheetah-v4"), torch.tensor([0, 1]))
    try:
        action = torch.full((2, 6), 5.0, dtype=env.action_spec.dtype)
        rollout = env.rollout(2, lambda td: td.set("action", action), break_when_any_done=False)
    finally:
        env.close()
    # control cost 0.1 * |a|^2 is 0.6 for the clipped action, 15 for the raw one
    assert torch.all(rollout["next", "reward"] > -3)


def test_dict_observations_are_concatenated_in_the_given_order():
    env = EnvpoolEnv(2, "HandManipulateBlockRotateZ-v1", observation_keys=["desired_goal", "observation"])
    rollout = env.rollout(2, break_when_any_done=False)
    assert set(env.observation_spec.keys()) == {"observation"} and env.observation_spec["observation"].shape == (2, 68)
    assert rollout["observation"].shape == (2, 2, 68)
    env.close()


def test_unknown_observation_keys_name_the_tasks_own():
    with pytest.raises(ConfigError, match=r"names \['goal'\].*\['achieved_goal', 'desired_goal', 'observation'\]"):
        EnvpoolEnv(2, "HandManipulateBlockRotateZ-v1", observation_keys=["observation", "goal"])


def test_torch_pendulum_steps_like_gymnasiums_pendulum():
    """Same dynamics and reward as Gymnasium's Pendulum-v1, from the same states and torques."""
    gym = pytest.importorskip("gymnasium")
    from sapg_torchrl.envs.pendulum import TorchPendulumEnv

    env = TorchPendulumEnv(5)
    check_env_specs(env)
    start = env.reset()
    reference = gym.make("Pendulum-v1").unwrapped
    reference.reset(seed=0)
    angle, speed = env.angle.clone(), env.speed.clone()
    torque = torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0])  # -3 is clipped to -2, as in Gymnasium
    out = env.step(start.set("action", torque[:, None]))["next"]
    for i in range(5):
        reference.state = [angle[i].item(), speed[i].item()]
        observation, reward, *_ = reference.step([torque[i].item()])
        torch.testing.assert_close(out["observation"][i], torch.as_tensor(observation, dtype=torch.float32), atol=1e-5, rtol=1e-5)
        assert out["reward"][i].item() == pytest.approx(reward, abs=1e-4)


def test_torch_pendulum_resets_inside_its_step_and_training_bootstraps_from_the_current_state(tiny_cfg):
    """Native auto-reset: no TorchRL reset call, episodes truncated on time, the lost final observation (NaN in the
    rollout) replaced by the current one before any critic sees it."""
    from sapg_torchrl.app.build import build_runner

    env = ("env=torch_pendulum", "env.num_envs=12", "~env.make.create_env_kwargs", "+env.make.episode_length=3")
    runner = build_runner(tiny_cfg(*env, "train.eval_interval=0"))
    data = next(iter(runner.collector))
    truncated = data["next", "truncated"].squeeze(-1)
    assert truncated[:, 2].all() and not data["next", "terminated"].any()
    assert data["next", "observation"][truncated].isnan().all()
    assert runner.final_observation_lost
    batch = runner.prepare(data)
    torch.testing.assert_close(data["next", "observation"][truncated], data["observation"][truncated])
    assert not batch.isnan().any()
    runner.collector.shutdown()


def test_torch_pendulum_refuses_an_episode_length_below_one():
    from sapg_torchrl.envs.pendulum import TorchPendulumEnv

    for bad in (0, -3, 2.5):
        with pytest.raises(ConfigError, match=f"env.make.episode_length={bad!r} is not accepted: an integer >= 1"):
            TorchPendulumEnv(4, episode_length=bad)
