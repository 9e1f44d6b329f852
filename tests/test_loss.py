"""SAPGLoss: ClipPPOLoss with per-block entropy, relabelled-row clipping and weighting, diagnostics."""

import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictSequential
from torchrl.modules.value_norm import RunningValueNorm
from torchrl.objectives import ClipPPOLoss

from sapg_torchrl import ConfigError, SAPGLoss, make_actor_critic
from sapg_torchrl.nn import BlockLogStd

OBS, ACT = 3, 2
LOSSES = ("loss_objective", "loss_critic", "loss_entropy")


def rollout_batch(actor, critic, block_id, *, seed=0, value_scale=1.0):
    """Rows collected by the actor, then perturbed so that ratios differ from 1 on both sides and values move."""
    g = torch.Generator().manual_seed(seed)
    n = len(block_id)
    td = TensorDict(observation=torch.randn(n, OBS, generator=g), block_id=block_id, batch_size=[n])
    with torch.no_grad():
        actor(td)
        critic(td)
        td["action"] = td["action"] + 0.5 * torch.randn(n, ACT, generator=g)
        logp = actor.get_dist(td).log_prob(td["action"])
    td["action_log_prob"] = logp + 0.3 * torch.randn(n, generator=g)
    td["state_value"] = td["state_value"] + 0.3 * value_scale * torch.randn(n, 1, generator=g)
    td["value_target"] = td["state_value"] + value_scale * torch.randn(n, 1, generator=g)
    td["advantage"] = torch.randn(n, 1, generator=g)
    td["relabelled"] = torch.zeros(n, dtype=torch.bool)
    return td


def params_of(*modules):
    return list(dict.fromkeys(p for m in modules for p in m.parameters()))


def grads(out, params, keys=LOSSES):
    total = sum(out[k] for k in keys)
    return torch.autograd.grad(total, params, allow_unused=True)


def set_log_weight(actor, td, log_weight):
    """Sets the behaviour log-prob so that log pi_theta(a|s, b) - behaviour log-prob == log_weight."""
    with torch.no_grad():
        logp = actor.get_dist(td).log_prob(td["action"])
    td["action_log_prob"] = logp - torch.as_tensor(log_weight, dtype=torch.float32)


@pytest.mark.parametrize("with_value_norm", [False, True])
def test_one_block_equals_clip_ppo_loss(with_value_norm):
    """M = 1 and no relabelled rows: same loss values and gradients as TorchRL's ClipPPOLoss."""
    torch.manual_seed(0)
    value_norm = None
    if with_value_norm:
        value_norm = RunningValueNorm()
        value_norm.update(torch.randn(500, 1) * 3.0 + 1.0)
    actor, critic = make_actor_critic(OBS, ACT, 1, hidden=(16,), value_norm=value_norm)
    td = rollout_batch(actor, critic, torch.zeros(64, dtype=torch.long), value_scale=3.0 if value_norm else 1.0)
    kwargs = dict(clip_epsilon=0.2, entropy_coeff=0.01, critic_coeff=2.0, loss_critic_type="l2", clip_value=True)
    ours = SAPGLoss(actor, critic, value_norm=value_norm, **kwargs)

    if value_norm is None:
        reference, ref_td = ClipPPOLoss(actor, critic, **kwargs), td
    else:  # ClipPPOLoss regressing the critic's normalised output on normalised targets
        normalised_critic = TensorDictSequential(*critic.module[:-1], selected_out_keys=["state_value"])
        reference = ClipPPOLoss(actor, normalised_critic, **kwargs)
        ref_td = td.clone()
        ref_td["state_value"] = value_norm.normalize(td["state_value"])
        ref_td["value_target"] = value_norm.normalize(td["value_target"])

    out, ref = ours(td), reference(ref_td)
    assert 0 < ref["clip_fraction"] < 1 and ref["value_clip_fraction"] > 0  # clipping happens, not everywhere
    for key in LOSSES:
        torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["clip_fraction"], ref["clip_fraction"])
    torch.testing.assert_close(out["kl_approx"], ref["kl_approx"])
    params = params_of(actor, critic)
    for mine, theirs in zip(grads(out, params), grads(ref, params)):
        assert mine is not None and theirs is not None
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


def test_entropy_coefficient_is_gathered_by_block_id():
    """loss_entropy = -mean(coef[block_id] * entropy); relabelled rows use their (target) block's coefficient."""
    torch.manual_seed(0)
    actor, critic = make_actor_critic(OBS, ACT, 3, hidden=(16,))
    log_std = next(m for m in actor.modules() if isinstance(m, BlockLogStd)).log_std
    with torch.no_grad():
        log_std.copy_(torch.tensor([[0.1, 0.2], [-0.5, 0.3], [0.7, 0.7]]))
    block_id = torch.tensor([0, 1, 2, 2, 1, 0, 2, 1, 1])
    td = rollout_batch(actor, critic, block_id)
    td["relabelled"] = torch.tensor([False] * 7 + [True] * 2)
    coef = torch.tensor([0.0, 0.05, 0.0])
    out = SAPGLoss(actor, critic, entropy_coeff=coef)(td)
    entropy = (0.5 * math.log(2 * math.pi * math.e) + log_std.detach()).sum(-1)  # Gaussian, per block
    expected = -(coef[block_id] * entropy[block_id]).mean()
    torch.testing.assert_close(out["loss_entropy"], expected)
    torch.testing.assert_close(out["entropy_per_block"], entropy)


def test_paper_clip_mode_centres_relabelled_rows():
    """Paper mode clips a relabelled row's log-ratio to [c + log(1-eps), c + log(1+eps)], c = log_clip_center;
    on-policy rows keep [log(1-eps), log(1+eps)] whatever their log_clip_center."""
    torch.manual_seed(0)
    eps, c = 0.2, math.log(2.0)
    actor, critic = make_actor_critic(OBS, ACT, 2, hidden=(16,))
    td = rollout_batch(actor, critic, torch.tensor([1, 0, 1, 1, 1, 1]))
    log_weight = torch.tensor([0.0, 0.05, c, c + 0.1, 0.0, c + 0.5])
    set_log_weight(actor, td, log_weight)
    td["relabelled"] = torch.tensor([False, False, True, True, True, True])
    td["log_clip_center"] = torch.tensor([5.0, -5.0, c, c, c, c])  # on-policy rows' centres are ignored
    advantage = td["advantage"].squeeze(-1)

    out = SAPGLoss(actor, critic, num_blocks=2, clip_epsilon=eps, clip_mode="paper")(td)
    # relabelled rows: c and c + 0.1 inside the centred range, 0 and c + 0.5 outside
    assert out["clip_fraction_on_policy"] == 0
    assert out["clip_fraction_off_policy"] == pytest.approx(0.5)
    assert out["off_policy_in_clip_fraction"] == pytest.approx(0.5)
    centre = torch.where(td["relabelled"], td["log_clip_center"], torch.zeros(6))
    clipped = torch.minimum(torch.maximum(log_weight, centre + math.log(1 - eps)), centre + math.log(1 + eps))
    gain = torch.minimum(log_weight.exp() * advantage, clipped.exp() * advantage)
    torch.testing.assert_close(out["loss_objective"], -gain.mean(), rtol=1e-5, atol=1e-6)

    code = SAPGLoss(actor, critic, num_blocks=2, clip_epsilon=eps, clip_mode="code")(td)  # every row around 1
    assert code["clip_fraction_off_policy"] == pytest.approx(0.75)
    assert code["off_policy_in_clip_fraction"] == pytest.approx(0.25)


@pytest.mark.parametrize("clip_mode", ["code", "paper"])
def test_in_keys_name_the_sapg_inputs(clip_mode):
    """A new loss lists block_id, relabelled and (paper mode) log_clip_center among its in_keys."""
    actor, critic = make_actor_critic(OBS, ACT, 2, hidden=(16,))
    loss = SAPGLoss(actor, critic, num_blocks=2, clip_mode=clip_mode)
    expected = {"block_id", "relabelled"} | ({"log_clip_center"} if clip_mode == "paper" else set())
    assert expected <= set(loss.in_keys)


def test_in_keys_after_set_keys():
    """After set_keys, in_keys hold the SAPG inputs: log_clip_center only in paper mode."""
    actor, critic = make_actor_critic(OBS, ACT, 2, hidden=(16,))
    paper, code = (SAPGLoss(actor, critic, num_blocks=2, clip_mode=mode) for mode in ("paper", "code"))
    paper.set_keys(), code.set_keys()
    assert {"block_id", "relabelled", "log_clip_center"} <= set(paper.in_keys)
    assert {"block_id", "relabelled"} <= set(code.in_keys) and "log_clip_center" not in code.in_keys


def test_off_policy_weight_scales_relabelled_rows():
    """Weight 0 leaves the on-policy rows' loss times n_on / n; every term is linear in the weight."""
    torch.manual_seed(0)
    actor, critic = make_actor_critic(OBS, ACT, 2, hidden=(16,))
    block_id = torch.tensor([0, 1, 0, 1, 0, 1, 1, 1, 1, 1])
    td = rollout_batch(actor, critic, block_id)
    td["relabelled"] = torch.tensor([False] * 6 + [True] * 4)
    n_on, n = 6, 10
    kwargs = dict(entropy_coeff=[0.02, 0.01], bounds_loss_coeff=1.0, action_bound=0.05)
    keys = (*LOSSES, "loss_bounds")
    out = {w: SAPGLoss(actor, critic, off_policy_weight=w, **kwargs)(td) for w in (0.0, 1.0, 2.0)}
    on_only = SAPGLoss(actor, critic, **kwargs)(td[:n_on])
    assert on_only["loss_bounds"] > 0
    for key in keys:
        torch.testing.assert_close(out[0.0][key], on_only[key] * n_on / n)
        torch.testing.assert_close(out[2.0][key] - out[1.0][key], out[1.0][key] - out[0.0][key])
    params = params_of(actor, critic)
    for g0, g_on in zip(grads(out[0.0], params, keys), grads(on_only, params, keys)):
        torch.testing.assert_close(g0, g_on * n_on / n)


@pytest.mark.parametrize("bad", [1.0, 0.5, -2.0])
def test_max_importance_ratio_must_exceed_one(bad):
    """max_importance_ratio <= 1 is refused with a message naming it and the accepted values."""
    actor, critic = make_actor_critic(OBS, ACT, 1, hidden=(16,))
    with pytest.raises(ConfigError) as err:
        SAPGLoss(actor, critic, max_importance_ratio=bad)
    assert f"max_importance_ratio={bad}" in str(err.value) and "None" in str(err.value) and "> 1" in str(err.value)


def test_max_importance_ratio_caps_relabelled_ratios():
    """With a cap, the reported importance ratio of relabelled rows never exceeds it, and gradients remain."""
    torch.manual_seed(0)
    actor, critic = make_actor_critic(OBS, ACT, 2, hidden=(16,))
    td = rollout_batch(actor, critic, torch.tensor([0, 1, 1, 1]))
    set_log_weight(actor, td, torch.tensor([0.0, math.log(3.0), math.log(10.0), 0.0]))
    td["relabelled"] = torch.tensor([False, True, True, True])
    uncapped = SAPGLoss(actor, critic, num_blocks=2)(td)
    assert uncapped["is_ratio_max"] == pytest.approx(10.0, rel=1e-4)
    capped = SAPGLoss(actor, critic, num_blocks=2, max_importance_ratio=2.0)(td)
    assert capped["is_ratio_max"] == pytest.approx(2.0, rel=1e-4)
    assert capped["is_ratio_mean"] == pytest.approx((2.0 + 2.0 + 1.0) / 3, rel=1e-4)
    assert any(g is not None and g.abs().sum() > 0 for g in grads(capped, params_of(actor)[:1], ("loss_objective",)))


@pytest.mark.parametrize(
    "kwargs, must_contain",
    [
        (dict(clip_mode="mixed"), ["'mixed'", "'code'", "'paper'"]),
        (dict(off_policy_weight=-1.0), ["off_policy_weight=-1.0", ">= 0"]),
        (dict(entropy_coeff=[0.1, 0.2], num_blocks=3), ["2 values", "3 blocks"]),
    ],
)
def test_bad_settings_raise_config_error(kwargs, must_contain):
    """Bad loss settings raise ConfigError naming the value and the accepted ones."""
    actor, critic = make_actor_critic(OBS, ACT, 3, hidden=(16,))
    with pytest.raises(ConfigError) as err:
        SAPGLoss(actor, critic, **kwargs)
    for text in must_contain:
        assert text in str(err.value)


@pytest.mark.parametrize("with_relabelled", [False, True])
def test_diagnostics_present_and_detached(with_relabelled):
    """Every out key is returned; diagnostics carry no graph; off-policy statistics are NaN without relabelled rows."""
    torch.manual_seed(0)
    M = 3
    actor, critic = make_actor_critic(OBS, ACT, M, hidden=(16,))
    td = rollout_batch(actor, critic, torch.arange(12) % M)
    if with_relabelled:
        td["relabelled"][-4:] = True
    else:
        del td["relabelled"]  # a missing flag means no relabelled rows
    loss = SAPGLoss(actor, critic, entropy_coeff=[0.01, 0.02, 0.0])
    out = loss(td)
    assert set(out.keys()) == set(loss.out_keys)
    for key, value in out.items():
        assert value.requires_grad == key.startswith("loss_"), key
        assert value.shape == ((M,) if key == "entropy_per_block" else ()), key
    off_policy = ("is_ratio_mean", "is_ratio_max", "clip_fraction_off_policy", "off_policy_in_clip_fraction")
    for key in off_policy:
        assert out[key].isnan().item() != with_relabelled, key
    for key in set(out.keys()) - set(off_policy):
        assert torch.isfinite(out[key]).all(), key


def test_entropy_per_block_is_nan_for_absent_block():
    """A block without rows in the batch has no entropy to report: NaN, like the off-policy statistics."""
    actor, critic = make_actor_critic(OBS, ACT, 3, hidden=(16,))
    td = rollout_batch(actor, critic, torch.tensor([0, 0, 2, 2]))
    per_block = SAPGLoss(actor, critic, num_blocks=3)(td)["entropy_per_block"]
    assert torch.isfinite(per_block[[0, 2]]).all()
    assert per_block[1].isnan()


def test_set_keys_block_id():
    """set_keys(block_id='bid') makes the loss read the block ids (and the networks) from 'bid'."""
    torch.manual_seed(0)
    actor, critic = make_actor_critic(OBS, ACT, 2, hidden=(16,))
    td = rollout_batch(actor, critic, torch.tensor([0, 1, 1, 0, 1, 1]))
    reference = SAPGLoss(actor, critic, entropy_coeff=[0.03, 0.0])(td)

    bid_actor, bid_critic = make_actor_critic(OBS, ACT, 2, hidden=(16,), block_id_key="bid")
    bid_actor.load_state_dict(actor.state_dict())
    bid_critic.load_state_dict(critic.state_dict())
    loss = SAPGLoss(bid_actor, bid_critic, entropy_coeff=[0.03, 0.0])
    loss.set_keys(block_id="bid")
    assert "bid" in loss.in_keys and "block_id" not in loss.in_keys
    renamed = td.clone().rename_key_("block_id", "bid")
    out = loss(renamed)
    for key in (*LOSSES, "entropy_per_block"):
        torch.testing.assert_close(out[key], reference[key])


def test_shared_trunk_runs_once_per_loss_call_with_unchanged_gradients():
    """With a shared trunk the loss evaluates it once; losses and gradients equal two evaluations."""
    from sapg_torchrl.nn import ConditionedMLP

    torch.manual_seed(0)
    actor, critic = make_actor_critic(3, 2, num_blocks=2, hidden=(16,))
    data = TensorDict(observation=torch.randn(32, 3), block_id=torch.arange(2).repeat(16), batch_size=[32])
    with torch.no_grad():
        data = actor(critic(data))
    data["advantage"], data["value_target"] = torch.randn(32, 1), torch.randn(32, 1)
    calls = []
    trunk = next(m for m in actor.modules() if isinstance(m, ConditionedMLP))
    trunk.register_forward_hook(lambda *args: calls.append(1))

    def grads(loss):
        actor.zero_grad(), critic.zero_grad()
        out = loss(data.clone())
        (out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]).backward()
        return out, {n: p.grad.clone() for n, p in loss.named_parameters() if p.grad is not None}

    once = SAPGLoss(actor, critic, entropy_coeff=[0.01, 0.0])
    out_once, g_once = grads(once)
    assert len(calls) == 1
    twice = SAPGLoss(actor, critic, entropy_coeff=[0.01, 0.0])
    twice._shared_trunks = []  # the unshared path: each head runs the trunk
    calls.clear()
    out_twice, g_twice = grads(twice)
    assert len(calls) == 2
    for key in ("loss_objective", "loss_critic", "loss_entropy"):
        torch.testing.assert_close(out_once[key], out_twice[key])
    assert g_once.keys() == g_twice.keys()
    for name in g_once:
        torch.testing.assert_close(g_once[name], g_twice[name])
