"""The LSTM option: hidden states carried through rollouts, reset on done, recomputed exactly for training."""

import pytest
import torch
from torchrl.collectors import Collector
from torchrl.modules import set_recurrent_mode

from cue_recall import CueRecallEnv
from sapg_torchrl import BlockLayout, ConfigError, make_actor_critic
from sapg_torchrl.aggregation import Aggregator
from sapg_torchrl.app.build import build_runner
from sapg_torchrl.envs import make_sapg_env, track_recurrent_states
from sapg_torchrl.targets import rollout_state_values

LAYOUT = BlockLayout(num_envs=6, num_blocks=3)
EPISODE, T = 4, 10  # episodes end inside the rollout: resets mid-sequence


def recurrent_setup(shared_trunk=True, seed=0):
    torch.manual_seed(seed)
    actor, critic = make_actor_critic(2, 1, LAYOUT.num_blocks, hidden=(16,), lstm_size=8, shared_trunk=shared_trunk)
    env = make_sapg_env(CueRecallEnv(LAYOUT.num_envs, seed=seed, episode_length=EPISODE), LAYOUT.block_ids())
    return track_recurrent_states(env, actor), actor, critic


def collect(env, actor, batches=2):
    """The last of ``batches`` collector batches ([N, T]): its first steps continue the previous batch."""
    collector = Collector(env, actor, frames_per_batch=LAYOUT.num_envs * T, total_frames=batches * LAYOUT.num_envs * T)
    for data in collector:
        pass
    collector.shutdown()
    return data


def test_rollout_carries_the_hidden_state_and_resets_it_at_episode_starts():
    env, actor, _ = recurrent_setup()
    data = collect(env, actor)
    h, next_h = data["recurrent_state_h"], data["next", "recurrent_state_h"]
    is_init = data["is_init"].squeeze(-1)
    assert h.shape == (LAYOUT.num_envs, T, 1, 8)
    assert is_init.any() and not is_init.all()
    assert torch.all(h[is_init] == 0)  # a new episode starts from a zero state
    assert torch.all(next_h.abs().sum((-1, -2)) > 0)
    carried = ~is_init[:, 1:]
    torch.testing.assert_close(h[:, 1:][carried], next_h[:, :-1][carried])  # step t starts where t-1 ended


@pytest.mark.parametrize("shared_trunk", [True, False])
def test_training_sequences_reproduce_the_rollout(shared_trunk):
    """Recomputed over whole sequences (from the state stored at their start, reset where is_init), the policy
    gives back the behaviour log-probs exactly, and the critic's next values match the next step's values."""
    env, actor, critic = recurrent_setup(shared_trunk)
    data = collect(env, actor)
    with torch.no_grad(), set_recurrent_mode(True):
        log_prob = actor.get_dist(data.select(*actor.in_keys)).log_prob(data["action"])
    torch.testing.assert_close(log_prob, data["action_log_prob"], rtol=0, atol=1e-5)

    rollout_state_values(critic, data)
    value, next_value = data["state_value"], data["next", "state_value"]
    same_episode = ~data["next", "done"][:, :-1]
    torch.testing.assert_close(next_value[:, :-1][same_episode], value[:, 1:][same_episode], rtol=0, atol=1e-5)
    assert data["next", "recurrent_state_h"].abs().sum() > 0  # the stored states are not overwritten


def test_relabelled_rows_start_from_the_followers_stored_states():
    """The LSTM reads the observation only (phi comes after it), so the leader's memory on a follower's
    history is the follower's stored memory: the relabelled rows' values are the leader's exact values."""
    env, actor, critic = recurrent_setup()
    data = collect(env, actor)
    aggregator, twin = (Aggregator(LAYOUT, critic, generator=torch.Generator().manual_seed(0)) for _ in range(2))
    rows = aggregator(data)
    source, _ = twin.draw()  # the same draw: which follower block was copied
    relabelled = data.reshape(LAYOUT.num_blocks, LAYOUT.block_size, T)[source].reshape(-1, T).clone()
    relabelled["block_id"] = torch.full_like(relabelled["block_id"], LAYOUT.leader)
    with torch.no_grad():  # step by step from the stored states, as the rollout would have run the leader
        stepwise = torch.stack([critic(relabelled[:, t].clone())["state_value"] for t in range(T)], 1)
    torch.testing.assert_close(rows["state_value"], stepwise, rtol=0, atol=1e-5)


def test_disjoint_has_no_recurrent_variant():
    with pytest.raises(ConfigError, match=r"lstm_size=8 is not accepted with disjoint=True"):
        make_actor_critic(2, 1, 3, lstm_size=8, disjoint=True)


CUE_RECALL = (
    "env.make._target_=cue_recall.CueRecallEnv", "~env.make.env_name", "+env.make.episode_length=4",
    "env.num_envs=96", "env.eval_envs=256", "env.eval_steps=4", "ablation=no_split", "ppo.horizon=8",
    "ppo.epochs=4", "ppo.lr=3e-3", "network.hidden=[32]", "network.max_log_std=null", "train.eval_interval=10",
    "device=cpu", "logger.wandb=false", "train.progress=false",
)  # fmt: skip


def late_eval_return(compose_cfg, *overrides, frames=96 * 8 * 150):
    cfg = compose_cfg(*CUE_RECALL, f"total_frames={frames}", *overrides)
    runner = build_runner(cfg)
    runner.train()
    return runner.evaluator.submit(0, runner.actor)["eval/return"]


@pytest.mark.slow  # about a minute; the exactness of the sequences is checked in the default suite
def test_lstm_learns_the_memory_task_the_mlp_cannot(compose_cfg):
    """Cue recall (4 steps): the MLP can earn about 1 (the first step), the LSTM up to 4."""
    mlp = late_eval_return(compose_cfg)
    lstm = late_eval_return(compose_cfg, "network.lstm_size=32")
    assert mlp < 1.5, (mlp, lstm)
    assert lstm > 3.0, (mlp, lstm)
