"""SAPGLoss as a drop-in TorchRL loss (issue 37): ClipPPOLoss's defaults and outputs, every input checked once with
one clear error, one key configuration, and the one-call batch builder."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.objectives import ClipPPOLoss

from sapg_torchrl import BlockLayout, ConfigError, SAPGLoss, make_actor_critic
from sapg_torchrl.aggregation import Aggregator
from sapg_torchrl.training import TrainingBatch

OBS, ACT, ROWS = 3, 2, 16


def batch(actor, critic, blocks=1, *, block_key="block_id", seed=0):
    g = torch.Generator().manual_seed(seed)
    td = TensorDict(observation=torch.randn(ROWS, OBS, generator=g), batch_size=[ROWS])
    td[block_key] = torch.arange(ROWS) % blocks
    with torch.no_grad():
        actor(critic(td))
    td["action_log_prob"] = td["action_log_prob"] + 0.3 * torch.randn(ROWS, generator=g)
    td["advantage"] = torch.randn(ROWS, 1, generator=g)
    td["value_target"] = td["state_value"] + torch.randn(ROWS, 1, generator=g)
    return td


@pytest.fixture
def one_block():
    torch.manual_seed(0)
    return make_actor_critic(OBS, ACT, 1, hidden=(16,))


@pytest.fixture
def four_blocks():
    torch.manual_seed(0)
    return make_actor_critic(OBS, ACT, 4, hidden=(16,))


def test_defaults_are_clip_ppo_losses(one_block):
    """Built with no keyword, SAPGLoss is ClipPPOLoss: the same settings, and on one block the same outputs."""
    actor, critic = one_block
    ours, theirs = SAPGLoss(actor, critic), ClipPPOLoss(actor, critic)
    assert ours.loss_critic_type == theirs.loss_critic_type == "smooth_l1"
    assert float(ours.critic_coeff) == float(theirs.critic_coeff) == 1.0
    assert float(ours.entropy_coeff) == float(theirs.entropy_coeff) == pytest.approx(0.01)
    assert ours.clip_value is None and theirs.clip_value is None
    assert ours.entropy_bonus and theirs.entropy_bonus
    td = batch(actor, critic)
    out, ref = ours(td.clone()), theirs(td.clone())
    assert set(ref.keys()) <= set(out.keys())  # ClipPPOLoss's outputs, then SAPG's extras
    assert set(theirs.out_keys) <= set(ours.out_keys)
    for key in ref.keys():  # explained_variance: a scalar here, [1] there
        torch.testing.assert_close(out[key].reshape(ref[key].shape), ref[key], msg=key)


def test_released_code_values_are_passed_explicitly(tiny_cfg):
    """The recipes pass rl_games' critic (2.0 on a squared error, clipped) rather than relying on defaults."""
    from sapg_torchrl.app.build import build_runner

    runner = build_runner(tiny_cfg("train.eval_interval=0"))
    loss = runner.update.loss
    runner.collector.shutdown()
    assert loss.loss_critic_type == "l2" and float(loss.critic_coeff) == 2.0 and loss.clip_value == pytest.approx(0.2)


@pytest.mark.parametrize("blocks", [1, 4])
def test_advantage_without_trailing_dim_is_refused(blocks):
    """A flat advantage gave a silently wrong loss with one block and a reshape error with four."""
    actor, critic = make_actor_critic(OBS, ACT, blocks, hidden=(16,))
    td = batch(actor, critic, blocks)
    td["advantage"] = td["advantage"].squeeze(-1)
    with pytest.raises(ValueError, match=r"advantage has shape \[16\]: expected \[16, 1\].*outer product"):
        SAPGLoss(actor, critic)(td)


def test_value_target_without_trailing_dim_is_refused(one_block):
    actor, critic = one_block
    td = batch(actor, critic)
    td["value_target"] = td["value_target"].squeeze(-1)
    with pytest.raises(ValueError, match=r"value_target has shape \[16\]: expected \[16, 1\]"):
        SAPGLoss(actor, critic)(td)


@pytest.mark.parametrize(
    "make_bad, message",
    [
        (lambda ids: ids[:, None], r"block_id has shape \[16, 1\]: expected \[16\]"),
        (lambda ids: ids.float(), r"block_id has dtype torch.float32: expected an integer dtype"),
        (lambda ids: ids + 1, r"block_id holds 4: expected ids in \[0, 3\] \(4 blocks\)"),
        (lambda ids: ids - 1, r"block_id holds -1: expected ids in \[0, 3\]"),
    ],
)
def test_bad_block_ids_are_refused_on_entry(four_blocks, make_bad, message):
    actor, critic = four_blocks
    td = batch(actor, critic, 4)
    td["block_id"] = make_bad(td["block_id"])
    with pytest.raises(ConfigError, match=message):
        SAPGLoss(actor, critic)(td)


def test_missing_block_id_names_the_key(four_blocks):
    actor, critic = four_blocks
    td = batch(actor, critic, 4).exclude("block_id")
    with pytest.raises(KeyError, match="needs 'block_id'"):
        SAPGLoss(actor, critic)(td)


@pytest.mark.parametrize("count", [3, 5])
def test_entropy_coefficients_are_checked_against_the_actor(four_blocks, count):
    """Three coefficients for a 4-block actor failed at the first forward; five were accepted."""
    actor, critic = four_blocks
    with pytest.raises(ConfigError, match=f"entropy_coeff has {count} values but the actor has 4 blocks"):
        SAPGLoss(actor, critic, entropy_coeff=[0.01] * count)
    with pytest.raises(ConfigError, match="num_blocks=3 but the actor has 4 blocks"):
        SAPGLoss(actor, critic, num_blocks=3)


def test_blocks_default_to_the_actors(four_blocks):
    actor, critic = four_blocks
    loss = SAPGLoss(actor, critic)
    assert loss.num_blocks == 4
    assert loss(batch(actor, critic, 4))["entropy_per_block"].shape == (4,)


def test_paper_clip_without_its_center_names_the_key(four_blocks):
    actor, critic = four_blocks
    with pytest.raises(KeyError, match="needs 'log_clip_center'.*clip_mode='paper'"):
        SAPGLoss(actor, critic, clip_mode="paper")(batch(actor, critic, 4))


def test_entropy_bonus_false_is_honoured(four_blocks):
    actor, critic = four_blocks
    td = batch(actor, critic, 4)
    out = SAPGLoss(actor, critic, entropy_coeff=[0.5] * 4, entropy_bonus=False)(td)
    assert "loss_entropy" not in out.keys() and "entropy" in out.keys()  # the entropy stays as a diagnostic
    with_bonus = SAPGLoss(actor, critic, entropy_coeff=[0.5] * 4)(td)
    torch.testing.assert_close(out["loss_objective"], with_bonus["loss_objective"])


def test_a_renamed_relabelled_key_must_be_present(four_blocks):
    """Renamed and absent, the rows were silently all on-policy; the default key absent still means none."""
    actor, critic = four_blocks
    td = batch(actor, critic, 4)
    loss = SAPGLoss(actor, critic)
    loss(td)  # no "relabelled": every row is on-policy
    loss.set_keys(relabelled="rel")
    with pytest.raises(KeyError, match="needs 'rel'.*renamed"):
        loss(td)
    td["rel"] = torch.zeros(ROWS, dtype=torch.float32)
    with pytest.raises(ConfigError, match="rel has dtype torch.float32: expected torch.bool"):
        loss(td)
    td["rel"] = torch.arange(ROWS) >= 12
    assert loss(td)["is_ratio_mean"].isfinite()


def test_block_id_is_named_once_where_the_networks_are_built(four_blocks):
    """The loss reads the key the networks read; set_keys cannot send it elsewhere (it ended in a reshape error)."""
    actor, critic = four_blocks
    with pytest.raises(ConfigError, match=r"set_keys\(block_id='blk'\).*make_actor_critic\(\.\.\., block_id_key='blk'\)"):
        SAPGLoss(actor, critic).set_keys(block_id="blk")
    actor, critic = make_actor_critic(OBS, ACT, 4, hidden=(16,), block_id_key="blk")
    loss = SAPGLoss(actor, critic, entropy_coeff=[0.01, 0.01, 0.01, 0.0])
    assert loss.tensor_keys.block_id == "blk" and "blk" in loss.in_keys
    out = loss(batch(actor, critic, 4, block_key="blk"))
    assert out["entropy_per_block"].isfinite().all()
    assert Aggregator(BlockLayout(8, 4), critic).block_id_key == "blk"


@pytest.mark.parametrize("shape", [(8 * 4,), (4, 8), (6, 4)])
def test_aggregator_and_batch_builder_want_n_by_t(shape):
    layout = BlockLayout(num_envs=8, num_blocks=4)
    actor, critic = make_actor_critic(OBS, ACT, 4, hidden=(8,))
    data = TensorDict(observation=torch.randn(*shape, OBS), batch_size=shape)
    for call in (Aggregator(layout, critic), TrainingBatch(SAPGLoss(actor, critic), layout)):
        with pytest.raises(ConfigError, match=rf"the rollout has shape \[{', '.join(map(str, shape))}\]: expected \[N, T\] = \[8, T\]"):
            call(data)


def rollout(layout, actor, T=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    N, ids = layout.num_envs, layout.block_ids()[:, None].expand(layout.num_envs, T)
    following = TensorDict(
        observation=torch.randn(N, T, OBS, generator=g), block_id=ids, reward=torch.randn(N, T, 1, generator=g),
        done=torch.zeros(N, T, 1, dtype=torch.bool), terminated=torch.zeros(N, T, 1, dtype=torch.bool), batch_size=[N, T],
    )  # fmt: skip
    data = TensorDict(observation=torch.randn(N, T, OBS, generator=g), block_id=ids, next=following, batch_size=[N, T])
    with torch.no_grad():
        return actor(data)


def test_training_batch_is_one_call_and_the_runners(tiny_cfg):
    """One call from a rollout to a batch the loss takes; the runner's PPOUpdate builds its batches with it."""
    layout = BlockLayout(num_envs=8, num_blocks=4)
    actor, critic = make_actor_critic(OBS, ACT, 4, hidden=(8,))
    loss = SAPGLoss(actor, critic)
    batch = TrainingBatch(loss, layout, aggregator=Aggregator(layout, critic, off_policy_ratio=2))(rollout(layout, actor))
    assert batch.shape == ((8 + 2 * 2) * 4,) and int(batch["relabelled"].sum()) == 2 * 2 * 4
    assert (batch["block_id"][batch["relabelled"]] == layout.leader).all()
    torch.testing.assert_close(batch["advantage"].mean(), torch.tensor(0.0), atol=1e-6, rtol=0)  # standardised once
    sum(v for k, v in loss(batch).items() if k.startswith("loss_")).backward()

    from sapg_torchrl.app.build import build_runner

    runner = build_runner(tiny_cfg("train.eval_interval=0"))
    runner.collector.shutdown()
    assert isinstance(runner.update.make_batch, TrainingBatch)


def test_training_batch_refuses_mismatched_keys_and_settings():
    layout = BlockLayout(num_envs=8, num_blocks=4)
    actor, critic = make_actor_critic(OBS, ACT, 4, hidden=(8,))
    loss = SAPGLoss(actor, critic)
    loss.set_keys(relabelled="rel")
    with pytest.raises(ConfigError, match="the aggregator writes the relabelled flag as 'relabelled' but the loss reads 'rel'"):
        TrainingBatch(loss, layout, aggregator=Aggregator(layout, critic))
    batch = TrainingBatch(loss, layout, aggregator=Aggregator(layout, critic, relabelled_key="rel"))(rollout(layout, actor))
    assert int(batch["rel"].sum()) == 2 * 4
    with pytest.raises(ConfigError, match=r"advantage_norm='batch' is not accepted: use one of \['global', 'per_block', 'none'\]"):
        TrainingBatch(loss, layout, advantage_norm="batch")
