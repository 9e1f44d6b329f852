"""What makes the study fair and faithful: equal optimizer steps, rl_games' minibatch partition, the released
code's KL for the learning rate, a plain PPO network for no_split, the published LSTM."""

import copy
import math

import pytest
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict
from torch import nn

from sapg_torchrl import SAPGLoss, make_actor_critic
from sapg_torchrl.app.build import build_runner
from sapg_torchrl.app.schema import SAPGConfig
from sapg_torchrl.training.update import minibatch_sizes

from conftest import CONFIG_DIR, TINY_OVERRIDES
from test_study import ABLATIONS


def rl_games_minibatches(rows: int, minibatch_size: int) -> list[int]:
    """rl_games' PPODataset: ``length = rows // minibatch_size``; minibatch i is ``[i mb, (i + 1) mb)``, the last
    one runs to the end."""
    length = rows // minibatch_size
    bounds = [(i * minibatch_size, rows if i == length - 1 else (i + 1) * minibatch_size) for i in range(length)]
    return [end - start for start, end in bounds]


@pytest.mark.parametrize("rows, size", [(28672, 6144), (24576, 6144), (49152, 6144), (229376, 98304), (7, 3), (48, 48)])
def test_code_partition_matches_rl_games(rows, size):
    assert minibatch_sizes(rows, size=size) == rl_games_minibatches(rows, size)


def test_fixed_number_of_minibatches():
    assert minibatch_sizes(10, count=4) == [2, 2, 2, 4]
    assert minibatch_sizes(49152, count=4) == [12288] * 4


def study_cfg(*overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("study", overrides=[*TINY_OVERRIDES, "train.record_states=0", *overrides])
    finally:
        GlobalHydra.instance().clear()
    return cfg


def optimizer_steps_of_one_iteration(cfg) -> int:
    runner = build_runner(cfg)
    steps = []
    step = runner.update.optimizer.step
    runner.update.optimizer.step = lambda *a, **k: steps.append(1) or step(*a, **k)
    data = next(iter(runner.collector))
    runner.update.learn(runner.prepare(data), data, 1)
    runner.collector.shutdown()
    return len(steps)


def test_every_study_variant_takes_the_same_optimizer_steps():
    """Under the study config (ppo.num_minibatches) every variant takes epochs x 4 steps per iteration, although
    sapg has (N + B) T rows, symmetric 2 N T and no_split N T."""
    steps = {name: optimizer_steps_of_one_iteration(study_cfg(f"ablation={name}")) for name in sorted(ABLATIONS)}
    epochs = study_cfg().ppo.epochs
    assert steps == {name: epochs * 4 for name in ABLATIONS}


def test_code_fidelity_steps_follow_rl_games(tiny_cfg):
    """Without num_minibatches: floor(rows / (4 N)) minibatches, as rl_games (sapg: 56 rows, minibatch 48 -> 1)."""
    cfg = tiny_cfg("ppo.minibatch_size=20")
    runner = build_runner(cfg)
    runner.collector.shutdown()
    rows = (12 + 2) * 4  # N + one follower block of 2 envs, T = 4
    assert runner.update.minibatch_sizes(rows) == rl_games_minibatches(rows, 20) == [20, 36]
    assert optimizer_steps_of_one_iteration(cfg) == cfg.ppo.epochs * 2


# ------------------------------------------------------------------------------------------------ the KL
def hand_kl(loc0, scale0, loc1, scale1):
    """KL(N(loc0, scale0) || N(loc1, scale1)) summed over action dims, averaged over rows, written out."""
    total = 0.0
    for row in range(len(loc0)):
        for a in range(len(loc0[row])):
            m0, s0, m1, s1 = loc0[row][a], scale0[row][a], loc1[row][a], scale1[row][a]
            total += math.log(s1 / s0) + (s0**2 + (m0 - m1) ** 2) / (2 * s1**2) - 0.5
    return total / len(loc0)


def kl_batch(actor, critic):
    torch.manual_seed(0)
    data = TensorDict(observation=torch.randn(8, 3), block_id=torch.tensor([0, 1] * 4), batch_size=[8])
    with torch.no_grad():
        data = actor(critic(data))
    data["advantage"] = torch.randn(8, 1)
    data["value_target"] = torch.randn(8, 1)
    data["relabelled"] = torch.tensor([False] * 6 + [True] * 2)
    data["loc"] = torch.randn(8, 2)  # the reference policy: any Gaussian
    data["scale"] = torch.rand(8, 2) + 0.5
    return data


def test_previous_epoch_kl_matches_a_hand_computation():
    """kl_reference="previous_epoch": the analytic KL of the current policy to the stored loc/scale, over all rows
    (relabelled ones too, as rl_games), and the current loc/scale returned for the next epoch."""
    actor, critic = make_actor_critic(3, 2, num_blocks=2, hidden=(16,))
    loss = SAPGLoss(actor, critic, kl_reference="previous_epoch")
    data = kl_batch(actor, critic)
    out = loss(data)
    with torch.no_grad():
        current = actor(data.select("observation", "block_id").clone())
    expected = hand_kl(current["loc"].tolist(), current["scale"].tolist(), data["loc"].tolist(), data["scale"].tolist())
    assert float(out["kl_approx"]) == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(out["loc"], current["loc"])
    torch.testing.assert_close(out["scale"], current["scale"])
    assert not out["loc"].requires_grad


def test_on_policy_kl_rows_leave_the_relabelled_rows_out():
    """kl_rows="on_policy": the same analytic KL, over the rows each block collected itself (the first 6 here); the
    relabelled rows' loc/scale are still returned, for their next epoch's reference."""
    actor, critic = make_actor_critic(3, 2, num_blocks=2, hidden=(16,))
    data = kl_batch(actor, critic)
    out = SAPGLoss(actor, critic, kl_reference="previous_epoch", kl_rows="on_policy")(data)
    with torch.no_grad():
        current = actor(data.select("observation", "block_id").clone())
    rows = slice(0, 6)
    expected = hand_kl(current["loc"][rows].tolist(), current["scale"][rows].tolist(), data["loc"][rows].tolist(),
                       data["scale"][rows].tolist())  # fmt: skip
    assert float(out["kl_approx"]) == pytest.approx(expected, rel=1e-5)
    assert out["loc"].shape == (8, 2)
    with pytest.raises(ValueError, match=r"kl_rows='leader' is not accepted: use one of \['all', 'on_policy'\]"):
        SAPGLoss(actor, critic, kl_rows="leader")


@pytest.mark.parametrize("env", ["mountaincar", "hopper"])
def test_the_study_gives_every_variant_one_learning_rate_rule_and_one_exploration_limit(env):
    """The study's config: the learning rate's KL on on-policy rows for every ablation, and the same schedule, initial
    rate and log-std cap for every variant of a task (the cap is the task preset's, no ablation sets it)."""
    from test_study import _study_cfg

    rules = set()
    for ablation in sorted(ABLATIONS):
        cfg = _study_cfg(f"env={env}", f"ablation={ablation}")
        rules.add((cfg.ppo.kl_rows, cfg.ppo.kl_reference, cfg.ppo.kl_target, cfg.ppo.lr, cfg.network.max_log_std))
    assert rules == {("on_policy", "previous_epoch", 0.016, 5e-4, 0.5)}
    for ablation_file in (CONFIG_DIR / "ablation").glob("*.yaml"):
        assert "max_log_std" not in ablation_file.read_text(), ablation_file.name


def test_behaviour_kl_is_torchrl_sample_estimate_on_policy_rows():
    actor, critic = make_actor_critic(3, 2, num_blocks=2, hidden=(16,))
    data = kl_batch(actor, critic)
    data["action_log_prob"] = data["action_log_prob"] + torch.arange(8.0)  # make the estimate non-trivial
    out = SAPGLoss(actor, critic, kl_reference="behaviour")(data)
    with torch.no_grad():
        log_prob = actor.get_dist(data.select("observation", "block_id").clone()).log_prob(data["action"])
    expected = (data["action_log_prob"] - log_prob)[:6].mean()
    assert float(out["kl_approx"]) == pytest.approx(float(expected), rel=1e-5)
    assert "loc" not in out.keys()


def test_runner_makes_the_reference_the_previous_epoch(tiny_cfg):
    """Epoch 1 measures the KL to the behaviour policy; epoch e > 1, to the policy each row saw in epoch e - 1."""
    runner = build_runner(tiny_cfg("ppo.epochs=3", "train.eval_interval=0"))
    data = next(iter(runner.collector))
    runner.collector.shutdown()
    batch = runner.prepare(data)
    batch["row"] = torch.arange(batch.shape[0])
    behaviour_loc = batch["loc"].clone()
    calls = []
    forward = runner.update.loss.forward

    def recording(td):
        reference = td["loc"].clone()
        out = forward(td)
        calls.append((td["row"].clone(), reference, out["loc"].clone()))
        return out

    runner.update.loss.forward = recording
    runner.update.epochs(batch)
    per_epoch = len(calls) // 3
    seen = torch.full_like(behaviour_loc, float("nan"))
    for i, (rows, reference, current) in enumerate(calls):
        expected = behaviour_loc[rows] if i < per_epoch else seen[rows]
        torch.testing.assert_close(reference, expected)
        seen[rows] = current


# --------------------------------------------------------------------------------------------- networks
def test_no_split_network_is_a_plain_actor_critic():
    """M = 1: no phi. The parameters are exactly those of a plain PPO actor-critic of the same sizes (shared trunk,
    mean and value heads, one state-independent log-std)."""
    actor, critic = make_actor_critic(5, 2, num_blocks=1, hidden=(256, 256, 128))
    params = {id(p): p for p in [*actor.parameters(), *critic.parameters()]}.values()
    trunk = nn.Sequential(nn.Linear(5, 256), nn.ELU(), nn.Linear(256, 256), nn.ELU(), nn.Linear(256, 128), nn.ELU())
    plain = [*trunk.parameters(), *nn.Linear(128, 2).parameters(), *nn.Linear(128, 1).parameters(), torch.zeros(1, 2)]
    assert sorted(tuple(p.shape) for p in params) == sorted(tuple(p.shape) for p in plain)
    assert not any(isinstance(m, nn.Embedding) for m in actor.modules())


def test_no_split_run_builds_no_phi(tiny_cfg):
    runner = build_runner(tiny_cfg("ablation=no_split", "train.eval_interval=0"))
    runner.collector.shutdown()
    assert not any(isinstance(m, nn.Embedding) for m in runner.actor.modules())


def test_lstm_layer_norm_sits_on_the_lstm_output():
    actor, critic = make_actor_critic(3, 2, num_blocks=2, hidden=(16,), lstm_size=8, lstm_layer_norm=True)
    norms = [m for m in actor.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 1 and norms[0].normalized_shape == (8,)
    assert not any(isinstance(m, nn.LayerNorm) for m in make_actor_critic(3, 2, 2, hidden=(16,), lstm_size=8)[0].modules())


# ------------------------------------------------------------------ the released code's update (issue 35)
RELEASED_UPDATE = ("ppo.value_norm_update", "ppo.old_value_norm", "ppo.value_norm_clip", "ppo.observation_norm_update",
                   "ppo.shuffle", "network.zero_bias")  # fmt: skip


def test_code_fidelity_updates_as_the_released_code(compose_cfg):
    """fidelity=code sets rl_games' normalisers, shuffle and initialisation, and fidelity=paper keeps them (the
    paper is silent there); the schema's defaults (and so a run folder written before these keys existed) keep the
    library's earlier behaviour."""
    released = ["values_and_targets", "before_targets", 5.0, "first_epoch", "once", True]
    for fidelity in ("code", "paper"):
        assert [OmegaConf.select(compose_cfg(f"fidelity={fidelity}"), k) for k in RELEASED_UPDATE] == released
    defaults = OmegaConf.structured(SAPGConfig)
    assert [OmegaConf.select(defaults, k) for k in RELEASED_UPDATE] == ["targets", "after_targets", None, "after_update", "every_epoch", False]


def learn_one_iteration(cfg, record):
    """Builds the run, collects and prepares one batch, then learns from it with ``record(runner, minibatch)`` called
    before each minibatch's loss. Returns the runner, the batch and the observation norm's count before learning."""
    runner = build_runner(cfg)
    data = next(iter(runner.collector))
    runner.collector.shutdown()
    batch = runner.prepare(data)
    batch["row"] = torch.arange(batch.shape[0])
    forward = runner.update.loss.forward
    runner.update.loss.forward = lambda td: record(runner, td) or forward(td)
    count = runner.update.observation_norm.count.clone()
    runner.update.learn(batch, data, 1)
    return runner, batch, count


def test_first_epoch_observation_norm_takes_in_each_minibatch_before_learning_from_it(tiny_cfg):
    """rl_games' normaliser is in training mode during the first epoch: each minibatch updates the statistics and
    is then normalised with them; the rows are the batch's, relabelled ones included; nothing after the update."""
    counts = []
    runner, batch, count = learn_one_iteration(
        tiny_cfg("ppo.observation_norm_update=first_epoch", "ppo.epochs=2", "train.eval_interval=0"),
        lambda runner, td: counts.append((float(runner.update.observation_norm.count), td.shape[0])),
    )
    per_epoch = len(counts) // 2
    taken = float(count)
    for i, (seen, rows) in enumerate(counts):
        taken += rows if i < per_epoch else 0
        assert seen == taken
    assert float(runner.update.observation_norm.count) == float(count) + batch.shape[0]  # relabelled rows too


def test_after_update_observation_norm_takes_in_the_rollout_once(tiny_cfg):
    counts = []
    runner, batch, count = learn_one_iteration(
        tiny_cfg("ppo.observation_norm_update=after_update", "train.eval_interval=0"),
        lambda runner, td: counts.append(float(runner.update.observation_norm.count)),
    )
    assert set(counts) == {float(count)}
    assert float(runner.update.observation_norm.count) == float(count) + 12 * 4  # N x T rollout rows


@pytest.mark.parametrize("shuffle, same", [("once", True), ("every_epoch", False)])
def test_shuffle_once_keeps_the_minibatches_of_the_first_epoch(tiny_cfg, shuffle, same):
    rows = []
    learn_one_iteration(
        tiny_cfg(f"ppo.shuffle={shuffle}", "ppo.epochs=3", "ppo.num_minibatches=3", "train.eval_interval=0"),
        lambda runner, td: rows.append(td["row"].tolist()),
    )
    epochs = [rows[i : i + 3] for i in range(0, 9, 3)]
    assert (epochs[0] == epochs[1] == epochs[2]) is same
    assert all(sorted(sum(epoch, [])) == sorted(sum(epochs[0], [])) for epoch in epochs)  # every row once an epoch


def test_value_norm_takes_in_values_then_targets(tiny_cfg):
    for update, factor in [("targets", 1), ("values_and_targets", 2)]:
        runner = build_runner(tiny_cfg(f"ppo.value_norm_update={update}", "train.eval_interval=0"))
        data = next(iter(runner.collector))
        runner.collector.shutdown()
        batch = runner.prepare(data)
        assert float(runner.update.make_batch.value_norm.count) == factor * batch.shape[0]


@pytest.mark.parametrize("update", ["values_and_targets", "targets"])
@pytest.mark.parametrize("old_value_norm", ["before_targets", "after_targets"])
def test_stored_values_normalise_as_before_the_targets(tiny_cfg, update, old_value_norm):
    """rl_games' prepare_dataset normalises the stored values (the clipped value loss's centre) before the statistics
    take in the targets: with ``before_targets`` the loss's normalisation (the statistics after the update) of the
    batch's values gives what the statistics before the targets gave; with ``after_targets`` they are the critic's."""
    runner = build_runner(tiny_cfg(f"ppo.value_norm_update={update}", f"ppo.old_value_norm={old_value_norm}",
                                   "ppo.value_norm_clip=5", "train.eval_interval=0"))  # fmt: skip
    data = next(iter(runner.collector))
    runner.collector.shutdown()
    norm = runner.update.make_batch.value_norm
    norm.update(torch.tensor([[0.0], [3.0]]))  # statistics that this batch's targets move
    before, seen, update_norm = copy.deepcopy(norm), [], norm.update

    def recording(values):
        update_norm(values)
        seen.append((values.clone(), norm.normalize(values)))  # the values (or targets), normalised right after them

    norm.update = recording
    batch = runner.prepare(data)
    assert len(seen) == (2 if update == "values_and_targets" else 1)
    on_policy = ~batch["relabelled"]
    critic = data["state_value"].reshape(-1, 1)  # the on-policy rows come first, env-major
    stored = batch["state_value"]
    if old_value_norm == "after_targets":
        torch.testing.assert_close(stored[on_policy], critic, atol=0, rtol=0)
        return
    if update == "values_and_targets":  # every row: normalised after the values, before the targets
        expected, rows = seen[0][1], slice(None)
    else:  # the statistics before this batch
        expected, rows = before.normalize(critic), on_policy
    torch.testing.assert_close(norm.normalize(stored[rows]), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(norm.normalize(stored[on_policy]), norm.normalize(critic), atol=1e-3)  # the centre moved


def test_clipped_value_norm_bounds_the_critic_and_the_targets(tiny_cfg):
    runner = build_runner(tiny_cfg("ppo.value_norm_clip=0.5", "train.eval_interval=0"))
    runner.collector.shutdown()
    norm = runner.update.make_batch.value_norm
    norm.update(torch.tensor([[0.0], [2.0]]))  # mean 1, std 1
    assert norm.normalize(torch.tensor([[-9.0], [1.2], [9.0]])).flatten().tolist() == pytest.approx([-0.5, 0.2, 0.5])
    assert float(norm.denormalize(torch.tensor([[7.0]]))) == pytest.approx(1.5)
    loss = runner.update.loss
    assert loss.value_norm is norm and any(m.value_norm is norm for m in loss.critic_network.modules() if hasattr(m, "value_norm"))


def test_zero_bias_zeroes_every_linear_bias_and_keeps_the_weights():
    torch.manual_seed(0)
    actor, critic = make_actor_critic(5, 2, num_blocks=3, hidden=(16, 8))
    torch.manual_seed(0)
    zeroed = make_actor_critic(5, 2, num_blocks=3, hidden=(16, 8), zero_bias=True)
    for plain, zero in zip([*actor.modules(), *critic.modules()], [*zeroed[0].modules(), *zeroed[1].modules()]):
        if isinstance(plain, nn.Linear):
            assert torch.equal(plain.weight, zero.weight) and not zero.bias.any() and plain.bias.any()
