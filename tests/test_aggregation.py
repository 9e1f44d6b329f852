"""Aggregation: relabelled rows for the leader (or every block), their targets and log-probs; frames."""

import pytest
import torch
from tensordict import TensorDict

from sapg_torchrl import BlockLayout, ConfigError, make_actor_critic
from sapg_torchrl.aggregation import Aggregator

N, M, T, OBS, ACT, GAMMA = 12, 6, 5, 3, 2, 0.9
B = N // M


@pytest.fixture
def nets():
    torch.manual_seed(0)
    return make_actor_critic(OBS, ACT, M, hidden=(16,))


@pytest.fixture
def layout():
    return BlockLayout(num_envs=N, num_blocks=M)


@pytest.fixture
def rollout(nets, layout):
    """An [N, T] rollout collected by every env's own block, with terminations and truncations."""
    actor, _ = nets
    g = torch.Generator().manual_seed(1)
    ids = layout.block_ids()[:, None].expand(N, T)
    terminated = torch.rand(N, T, 1, generator=g) < 0.2
    truncated = (torch.rand(N, T, 1, generator=g) < 0.2) & ~terminated  # truncation still bootstraps
    data = TensorDict(
        observation=torch.randn(N, T, OBS, generator=g),
        block_id=ids,
        next=TensorDict(
            observation=torch.randn(N, T, OBS, generator=g),
            block_id=ids,
            reward=torch.randn(N, T, 1, generator=g),
            done=terminated | truncated,
            terminated=terminated,
            batch_size=[N, T],
        ),
        batch_size=[N, T],
    )
    with torch.no_grad():
        actor(data)
    return data


def source_envs(rows, data):
    """Index of the env each relabelled [T]-row was copied from (observations are unique)."""
    match = (rows["observation"][:, None] == data["observation"][None]).all(-1).all(-1)  # [rows, N]
    assert torch.all(match.sum(-1) == 1)
    return match.int().argmax(-1)


def leader_value(critic, observation, leader):
    td = TensorDict(observation=observation, block_id=torch.full(observation.shape[:-1], leader), batch_size=observation.shape[:-1])
    with torch.no_grad():
        return critic(td)["state_value"]


@pytest.mark.parametrize("K", [1, 3, 5])
def test_leader_follower_rows(nets, layout, rollout, K):
    """K follower blocks copied whole, relabelled to the leader, one-step TD targets under the leader's critic."""
    _, critic = nets
    L = layout.leader
    rows = Aggregator(layout, critic, off_policy_ratio=K, gamma=GAMMA, generator=torch.Generator().manual_seed(0))(
        rollout
    )
    assert rows.shape == (K * B, T)
    src = source_envs(rows, rollout)
    blocks = (src // B).tolist()
    assert L not in blocks
    assert len(set(blocks)) == K  # K distinct blocks: drawn without replacement
    assert all(blocks.count(b) == B for b in set(blocks))  # whole blocks
    assert torch.all(rows["block_id"] == L) and torch.all(rows["next", "block_id"] == L)
    assert rows["block_id"].dtype == torch.long
    assert rows["relabelled"].dtype == torch.bool and rows["relabelled"].all()
    source = rollout[src]
    torch.testing.assert_close(rows["action_log_prob"], source["action_log_prob"])  # behaviour log-prob kept
    torch.testing.assert_close(rows["action"], source["action"])

    v_now = leader_value(critic, source["observation"], L)
    v_next = leader_value(critic, source["next", "observation"], L)
    not_terminated = (~source["next", "terminated"]).float()
    target = source["next", "reward"] + GAMMA * v_next * not_terminated
    torch.testing.assert_close(rows["value_target"], target)
    torch.testing.assert_close(rows["advantage"], target - v_now)
    torch.testing.assert_close(rows["state_value"], v_now)
    assert not rows["advantage"].requires_grad
    # the rollout itself is untouched
    assert torch.all(rollout["block_id"] == torch.arange(M).repeat_interleave(B)[:, None])


def test_targets_use_pre_update_critic(nets, layout, rollout):
    """Targets are computed with the critic as it is when the rows are built; a later update does not change them."""
    _, critic = nets
    rows = Aggregator(layout, critic, gamma=GAMMA, generator=torch.Generator().manual_seed(0))(rollout)
    source = rollout[source_envs(rows, rollout)]
    v_next = leader_value(critic, source["next", "observation"], layout.leader)
    expected = source["next", "reward"] + GAMMA * v_next * (~source["next", "terminated"])
    before = rows["value_target"].clone()
    with torch.no_grad():
        for p in critic.parameters():
            p.add_(1.0)
    torch.testing.assert_close(rows["value_target"], before)
    torch.testing.assert_close(before, expected)


def test_fresh_draw_each_call(nets, layout, rollout):
    """Each call draws again: over several calls different followers appear; the same seed repeats the draws."""
    _, critic = nets

    def draws(seed, calls=12, K=2):
        aggregator = Aggregator(layout, critic, off_policy_ratio=K, generator=torch.Generator().manual_seed(seed))
        return [tuple(sorted(set((source_envs(aggregator(rollout), rollout) // B).tolist()))) for _ in range(calls)]

    first = draws(0)
    assert len(set(first)) > 2
    assert all(len(d) == 2 and layout.leader not in d for d in first)
    assert set().union(*first) == set(layout.followers)
    assert draws(0) == first


def test_symmetric_every_block_receives_a_shifted_block(nets, layout, rollout):
    """Symmetric: block b receives the data of block (b + r) % M, one r in 1..M-1 per call, relabelled as b."""
    _, critic = nets
    aggregator = Aggregator(layout, critic, mode="symmetric", generator=torch.Generator().manual_seed(0))
    assert aggregator.rows_per_env_step == N
    shifts = set()
    for _ in range(15):
        rows = aggregator(rollout)
        assert rows.shape == (M * B, T)
        target = rows["block_id"][:, 0]
        assert torch.all(rows["block_id"] == target[:, None]) and torch.all(rows["next", "block_id"] == target[:, None])
        assert sorted(target.tolist()) == sorted(layout.block_ids().tolist())
        shift = (source_envs(rows, rollout) // B - target) % M
        assert shift.unique().numel() == 1
        assert 1 <= int(shift[0]) <= M - 1
        shifts.add(int(shift[0]))
        assert rows["relabelled"].all()
    assert len(shifts) > 2


def test_none_mode_adds_no_rows(nets, layout, rollout):
    """aggregation='none' (no_off_policy): no relabelled rows."""
    aggregator = Aggregator(layout, nets[1], mode="none")
    assert aggregator(rollout) is None and aggregator.rows_per_env_step == 0


def test_no_is_correction_uses_leader_log_prob(nets, layout, rollout):
    """importance_correction=False: the behaviour log-prob becomes the leader's own pre-update log-prob."""
    actor, critic = nets
    L = layout.leader
    rows = Aggregator(
        layout, critic, off_policy_ratio=2, importance_correction=False, actor=actor,
        generator=torch.Generator().manual_seed(0),
    )(rollout)  # fmt: skip
    source = rollout[source_envs(rows, rollout)]
    as_leader = source.clone().set("block_id", torch.full((2 * B, T), L))
    with torch.no_grad():
        expected = actor.get_dist(as_leader).log_prob(source["action"])
    torch.testing.assert_close(rows["action_log_prob"], expected)
    assert not torch.allclose(rows["action_log_prob"], source["action_log_prob"])
    assert "log_clip_center" not in rows.keys()


def test_paper_clip_mode_writes_log_clip_center(nets, layout, rollout):
    """clip_mode='paper': log_clip_center = leader's old log-prob - behaviour log-prob (which is kept)."""
    actor, critic = nets
    L = layout.leader
    rows = Aggregator(
        layout, critic, off_policy_ratio=2, clip_mode="paper", actor=actor, generator=torch.Generator().manual_seed(0)
    )(rollout)
    source = rollout[source_envs(rows, rollout)]
    with torch.no_grad():
        leader_logp = actor.get_dist(source.clone().set("block_id", torch.full((2 * B, T), L))).log_prob(source["action"])
    torch.testing.assert_close(rows["action_log_prob"], source["action_log_prob"])
    torch.testing.assert_close(rows["log_clip_center"], leader_logp - source["action_log_prob"])


@pytest.mark.parametrize("K", [0, M, M + 3, -1])
def test_bad_off_policy_ratio(nets, layout, K):
    """K outside [1, M-1] raises ConfigError naming K and the accepted range."""
    with pytest.raises(ConfigError) as err:
        Aggregator(layout, nets[1], off_policy_ratio=K)
    assert f"off_policy_ratio={K}" in str(err.value) and f"[1, {M - 1}]" in str(err.value)


@pytest.mark.parametrize("mode", ["leader_follower", "symmetric"])
def test_single_block_needs_no_aggregation(mode):
    """M = 1 with an aggregation raises ConfigError naming num_blocks=1 and the accepted 'none'."""
    _, critic = make_actor_critic(OBS, ACT, 1, hidden=(8,))
    with pytest.raises(ConfigError) as err:
        Aggregator(BlockLayout(num_envs=4, num_blocks=1), critic, mode=mode)
    assert "num_blocks=1" in str(err.value) and mode in str(err.value) and "'none'" in str(err.value)


def test_bad_mode_and_missing_actor(nets, layout):
    """Unknown mode names the accepted ones; no_is_correction / paper clipping without the actor is refused."""
    with pytest.raises(ConfigError) as err:
        Aggregator(layout, nets[1], mode="ring")
    assert "'ring'" in str(err.value) and "'leader_follower'" in str(err.value)
    with pytest.raises(ConfigError):
        Aggregator(layout, nets[1], importance_correction=False)


@pytest.mark.parametrize("aggregation, K, extra_rows", [("leader_follower", 2, 2 * B), ("symmetric", 1, N)])
def test_runner_counts_frames_once(tiny_cfg, tmp_path, aggregation, K, extra_rows):
    """Relabelled rows are not frames: frames = iterations * N * T while each batch holds (N + extra) * T rows,
    whose advantages are standardised together."""
    from sapg_torchrl.app.build import build_runner

    cfg = tiny_cfg(f"sapg.aggregation={aggregation}", f"sapg.off_policy_ratio={K}", "train.eval_interval=0")
    runner = build_runner(cfg, tmp_path)
    batch_rows = []
    make_batch = runner.update.make_batch

    def spy(data, *args):
        assert data.shape == (N, cfg.ppo.horizon)
        batch = make_batch(data, *args)
        batch_rows.append((batch.numel(), int(batch["relabelled"].sum())))
        # advantages standardised once over the whole augmented batch (code)
        advantage = batch["advantage"]
        torch.testing.assert_close(advantage.mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
        torch.testing.assert_close(advantage.std(correction=0), torch.tensor(1.0), atol=1e-4, rtol=0)
        return batch

    runner.update.make_batch = spy
    metrics = runner.train()
    frames = runner.iterations * N * cfg.ppo.horizon
    assert runner.iterations == 10 and frames == cfg.total_frames
    assert runner.frames == frames and metrics["frames"] == frames
    assert batch_rows == [((N + extra_rows) * cfg.ppo.horizon, extra_rows * cfg.ppo.horizon)] * 10
