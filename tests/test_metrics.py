"""Known-answer tests of the study metrics (sapg_torchrl.metrics)."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.stats
import torch
from tensordict import TensorDict

from sapg_torchrl import BlockLayout, make_actor_critic
from sapg_torchrl.training import StateReservoir
from sapg_torchrl.metrics import (
    autoencoder_reconstruction_error,
    curve_area,
    final_performance,
    frames_to_threshold,
    iqm_with_ci,
    normalized_auc,
    pairwise_block_kl,
    pca_reconstruction_error,
    per_block_entropy,
    probability_of_improvement,
)
from sapg_torchrl.nn import BlockLogStd

# ------------------------------------------------------------------------------------------ performance


def test_final_performance_known_curve():
    frames = np.arange(1, 101)
    assert final_performance(frames, frames.astype(float)) == pytest.approx(95.0)  # frames 90..100
    assert final_performance(list(frames), list(frames), fraction=1.0) == pytest.approx(50.5)
    values = frames.astype(float)
    values[[94, 99]] = np.nan  # frames 95 and 100 ignored
    assert final_performance(frames, values) == pytest.approx(np.mean([90, 91, 92, 93, 94, 96, 97, 98, 99]))
    assert final_performance(frames, values, budget=200) != final_performance(frames, values)  # window 180..200
    assert math.isnan(final_performance(frames, values, budget=200))
    with pytest.raises(ValueError):
        final_performance([2, 1], [0.0, 0.0])


def test_normalized_auc_piecewise_linear():
    # u = 0, 1, 1, 0 at 0, 10, 20, 40: 10 * 0.5 + 10 * 1 + 20 * 0.5 = 25 over 40
    assert normalized_auc([0, 10, 20, 40], [0.0, 10.0, 10.0, 0.0], 0.0, 10.0) == pytest.approx(0.625)
    assert normalized_auc([0, 10, 20, 40], [5.0, 15.0, 15.0, 5.0], 5.0, 15.0) == pytest.approx(0.625)
    # leading NaN -> low; (0, low) prepended; the NaN at 30 dropped:
    # (0, 0) (10, 0) (20, 0.5) (40, 1): 0 + 10 * 0.25 + 20 * 0.75 = 17.5 over 40
    assert normalized_auc([10, 20, 30, 40], [np.nan, 2.0, np.nan, 4.0], 0.0, 4.0) == pytest.approx(0.4375)
    assert normalized_auc([0, 5, 10], [3.0, 3.0, 3.0], 1.0, 3.0) == pytest.approx(1.0)
    assert normalized_auc([0, 5, 10], [1.0, 1.0, 1.0], 1.0, 3.0) == pytest.approx(0.0)
    assert normalized_auc([0, 10], [0.0, 1.0], 0.0, 1.0) == pytest.approx(0.5)
    assert normalized_auc([0, 10, 20], [4.0, 4.0, np.nan], 0.0, 4.0) == pytest.approx(1.0)  # last value held
    assert normalized_auc([0, 10], [0.0, 4.0], 0.0, 4.0, budget=20) == pytest.approx(0.75)  # (5 + 10) / 20
    assert normalized_auc([0, 10], [0.0, 4.0], 0.0, 4.0, budget=5) == pytest.approx(0.25)  # cut at 5
    assert normalized_auc([0, 10], [np.nan, np.nan], 0.0, 1.0) == 0.0
    with pytest.raises(ValueError):
        normalized_auc([0, 10], [0.0, 1.0], 1.0, 1.0)


def test_frames_to_threshold():
    frames, values = [10, 20, 30, 40, 50], [1.0, np.nan, 5.0, 3.0, 9.0]
    assert frames_to_threshold(frames, values, 4.0) == 30.0
    assert frames_to_threshold(frames, values, 1.0) == 10.0
    assert math.isnan(frames_to_threshold(frames, values, 100.0))


# ------------------------------------------------------------------------------------------- aggregate


def test_iqm_against_hand_computation():
    out = iqm_with_ci({"a": np.arange(1.0, 9.0), "b": np.array([10.0, 1.0, 3.0, 2.0, 100.0])}, reps=500)
    iqm, low, high = out["a"]
    assert iqm == pytest.approx(np.mean([3, 4, 5, 6]))  # 8 runs: 2 cut from each end
    assert 1.0 <= low <= iqm <= high <= 8.0 and low < high
    assert out["b"][0] == pytest.approx(np.mean([2.0, 3.0, 10.0]))  # 5 runs: int(1.25) = 1 cut from each end
    np.random.seed(123)
    global_draw = np.random.rand()
    np.random.seed(123)
    assert out == iqm_with_ci({"a": np.arange(1.0, 9.0), "b": np.array([10.0, 1.0, 3.0, 2.0, 100.0])}, reps=500)
    assert np.random.rand() == global_draw  # numpy's global generator is left as it was
    assert iqm_with_ci({"b": np.array([10.0, 1.0, 3.0, 2.0, 100.0])}, reps=500)["b"] == out["b"]  # seeded per variant
    assert iqm_with_ci({"a": np.arange(1.0, 9.0)}, reps=500, seed=1)["a"] != out["a"]
    scores = np.random.default_rng(0).normal(size=(7, 3))
    assert iqm_with_ci({"x": scores}, reps=100)["x"][0] == pytest.approx(scipy.stats.trim_mean(scores, 0.25, None))


def test_probability_of_improvement_toy():
    x, y = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 0.0])
    by_hand = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a in x for b in y])
    assert by_hand == pytest.approx(6 / 9)
    p, low, high = probability_of_improvement(x, y, reps=500, seed=0)
    assert (p, low, high) == probability_of_improvement(x, y, reps=500, seed=0)
    assert p == pytest.approx(by_hand)
    assert 0.0 <= low <= p <= high <= 1.0
    assert probability_of_improvement(np.array([5.0, 6.0]), np.array([1.0, 2.0, 3.0]), reps=200)[:2] == (1.0, 1.0)
    assert probability_of_improvement(x, x, reps=200)[0] == 0.5
    assert probability_of_improvement(y, x, reps=200)[0] == pytest.approx(1 - by_hand)


# ------------------------------------------------------------------------------------------- diversity


def test_pca_error_vanishes_at_the_data_rank():
    g = torch.Generator().manual_seed(0)
    d, n = 6, 400
    low_rank = {r: torch.randn(n, r, generator=g) @ torch.randn(r, d, generator=g) + 3.0 for r in (1, 2, 4)}
    errors = pca_reconstruction_error({f"rank{r}": x for r, x in low_rank.items()})
    for r in (1, 2, 4):
        curve = errors[f"rank{r}"]
        assert curve.shape == (d,)
        assert np.all(curve[r - 1 :] < 1e-10), (r, curve)
        assert np.all(curve[: r - 1] > 1e-3), (r, curve)
        assert np.all(np.diff(curve) <= 1e-12)  # non-increasing in k
    assert curve_area(errors["rank1"]) < curve_area(errors["rank2"]) < curve_area(errors["rank4"])
    assert pca_reconstruction_error({"a": low_rank[4]}, max_components=3)["a"].shape == (3,)


def test_pca_error_hand_computed_and_shared_normalisation():
    # standardised: (+-sqrt 2, 0), (0, +-sqrt 2): unit variance per feature, uncorrelated -> error(1) = 1 / 2
    plus = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    np.testing.assert_allclose(pca_reconstruction_error({"plus": plus})["plus"], [0.5, 0.0], atol=1e-12)
    # one normalisation for all: a variant 10x wider has 100x the error (each alone would have the same)
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(1)) * torch.arange(1.0, 6.0)
    errors = pca_reconstruction_error({"narrow": x, "wide": 10 * x})
    np.testing.assert_allclose(errors["wide"][:-1], 100 * errors["narrow"][:-1], rtol=1e-8)
    # equal counts: a variant with more states is subsampled to the smaller count
    more = pca_reconstruction_error({"small": x[:50], "big": torch.cat([x, x])})
    assert set(more) == {"small", "big"}


def test_curve_area():
    assert curve_area([0.6, 0.3, 0.0]) == pytest.approx(0.3)
    assert curve_area({"a": np.array([1.0, 0.0]), "b": [0.5]}) == {"a": 0.5, "b": 0.5}


def test_autoencoder_error_decreases_with_width():
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(2000, 3, generator=g)
    states = latent @ torch.randn(3, 8, generator=g) + 0.02 * torch.randn(2000, 8, generator=g)
    states = states / states.std(0)  # the same per-feature scale as the noise below
    noise = torch.randn(1500, 8, generator=g)
    errors = autoencoder_reconstruction_error({"structured": states, "noise": noise}, bottlenecks=(1, 2, 4), seed=0)
    e = errors["structured"]
    assert sorted(e) == [1, 2, 4] and all(math.isfinite(v) for v in e.values())
    assert e[1] > e[2] > e[4]
    assert e[4] < 0.2 * e[1]
    # isotropic noise is the more diverse: a 2-wide code explains little of it
    assert errors["noise"][2] > e[2]


class _Trainer(SimpleNamespace):
    pass


def _rollouts(layout, T, iterations, obs_dim=2):
    """Observation = (env's block, running index of the state over the run, ...)."""
    counter = 0
    for _ in range(iterations):
        index = torch.arange(counter, counter + layout.num_envs * T, dtype=torch.float32).reshape(layout.num_envs, T)
        counter += layout.num_envs * T
        block = layout.block_ids()[:, None].expand(-1, T).float()
        obs = torch.stack([block, index] + [torch.zeros_like(index)] * (obs_dim - 2), -1)
        yield TensorDict(observation=obs, block_id=layout.block_ids()[:, None].expand(-1, T), batch_size=[layout.num_envs, T])


def test_state_reservoir_keeps_capacity_states_of_one_block():
    layout = BlockLayout(num_envs=12, num_blocks=3)  # leader 2, 4 envs per block
    runner = _Trainer(layout=layout)
    leader, first, everyone = StateReservoir(50, seed=1), StateReservoir(50, seed=1, block=0), StateReservoir(50, block=None)
    for data in _rollouts(layout, T=5, iterations=20):
        for hook in (leader, first, everyone):
            hook(runner, data)
    assert leader.seen == first.seen == 20 * 4 * 5 and everyone.seen == 20 * 12 * 5
    for reservoir, blocks in [(leader, {2}), (first, {0}), (everyone, {0, 1, 2})]:
        states = reservoir.states
        assert states.shape == (50, 2)
        assert set(states[:, 0].tolist()) <= blocks
        assert len(set(states[:, 1].tolist())) == 50  # no state twice
    assert set(everyone.states[:, 0].tolist()) == {0, 1, 2}


def test_state_reservoir_fills_in_order_then_stays_uniform():
    reservoir = StateReservoir(8)
    reservoir.update(torch.arange(5.0)[:, None])
    assert reservoir.states.flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    # a 0..K-1 ramp offered in uneven chunks: the sample's mean is close to the ramp's
    K, capacity = 100_000, 2000
    ramp = StateReservoir(capacity, seed=3)
    chunks = torch.arange(float(K)).split([1, 999, 5000, 44_000, 37, 49_963])
    for chunk in chunks:
        ramp.update(chunk[:, None])
    sample = ramp.states.flatten()
    assert sample.shape == (capacity,) and sample.unique().numel() == capacity
    assert abs(sample.mean().item() - (K - 1) / 2) < 0.05 * K  # std of the mean ~ 0.0065 K
    assert abs((sample < K / 2).float().mean().item() - 0.5) < 0.05


def test_state_reservoir_inclusion_probability_is_capacity_over_seen():
    # capacity 3, 10 states in chunks of 4, 4, 2: every state is kept with probability 0.3
    runs, hits = 1000, torch.zeros(10)
    for seed in range(runs):
        reservoir = StateReservoir(3, seed=seed)
        for chunk in torch.arange(10.0).split([4, 4, 2]):
            reservoir.update(chunk[:, None])
        hits[reservoir.states.flatten().long()] += 1
    assert torch.allclose(hits / runs, torch.full((10,), 0.3), atol=0.06), hits / runs


def test_state_reservoir_save_and_resume(tmp_path):
    a = StateReservoir(10, seed=5)
    a.update(torch.arange(30.0).reshape(15, 2))
    a.save(tmp_path / "reservoir.pt")
    b = StateReservoir.load(tmp_path / "reservoir.pt")
    assert b.seen == 15 and torch.equal(a.states, b.states)
    more = torch.arange(100.0, 160.0).reshape(30, 2)
    a.update(more)
    b.update(more)
    assert torch.equal(a.states, b.states)  # the draw stream resumes too
    empty = StateReservoir(3)
    assert empty.states.numel() == 0
    empty.load_state_dict(empty.state_dict())
    assert empty.seen == 0


def test_state_reservoir_as_a_trainer_hook(tiny_cfg):
    """In a real (tiny) run, the leader's reservoir holds observations of the leader's envs only."""
    from sapg_torchrl.app.build import build_runner

    runner = build_runner(tiny_cfg("train.eval_interval=0"))
    leader_rows = []
    reservoir = StateReservoir(16)
    L, B = runner.layout.leader, runner.layout.block_size
    runner.hooks += [reservoir, lambda t, data: leader_rows.append(data["observation"][L * B : (L + 1) * B].flatten(0, 1))]
    runner.train()
    visited = {tuple(row) for row in torch.cat(leader_rows).tolist()}
    assert reservoir.seen == sum(rows.shape[0] for rows in leader_rows) > 16
    assert reservoir.states.shape[0] == 16
    assert all(tuple(row) in visited for row in reservoir.states.tolist())
    entropy = per_block_entropy(runner.actor, reservoir.states, runner.layout.num_blocks)
    kl = pairwise_block_kl(runner.actor, reservoir.states, runner.layout.num_blocks)
    assert entropy.shape == (runner.layout.num_blocks,) and torch.isfinite(entropy).all()
    assert kl.shape == (runner.layout.num_blocks,) * 2 and torch.isfinite(kl).all()


# ---------------------------------------------------------------------------------------------- policies


def _actor(num_blocks=4, action_dim=3, **kwargs):
    torch.manual_seed(0)
    actor, _ = make_actor_critic(5, action_dim, num_blocks=num_blocks, hidden=(16,), **kwargs)
    (log_std,) = [m for m in actor.modules() if isinstance(m, BlockLogStd)]
    with torch.no_grad():
        log_std.log_std.copy_(torch.linspace(-1.0, 0.5, num_blocks * action_dim).reshape(num_blocks, action_dim))
    return actor, log_std.log_std.detach()


def test_per_block_entropy_is_the_gaussian_entropy():
    actor, log_std = _actor()
    states = torch.randn(300, 5)
    analytic = (0.5 * math.log(2 * math.pi * math.e) + log_std).sum(-1)
    torch.testing.assert_close(per_block_entropy(actor, states, 4), analytic, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(per_block_entropy(actor, states, 4, chunk_size=7), analytic, rtol=1e-5, atol=1e-5)


def test_pairwise_block_kl():
    actor, log_std = _actor()
    states = torch.randn(200, 5)
    kl = pairwise_block_kl(actor, states, 4)
    assert kl.shape == (4, 4)
    assert torch.all(kl.diagonal() == 0)
    off = kl[~torch.eye(4, dtype=torch.bool)]
    assert torch.all(off > 1e-3)  # different phi and log-std
    torch.testing.assert_close(pairwise_block_kl(actor, states, 4, chunk_size=33), kl, rtol=1e-5, atol=1e-6)
    # the same phi for every block: the means agree, KL is that of the stds alone, per action dim
    # KL(N(m, s1) || N(m, s2)) = log(s2 / s1) + s1^2 / (2 s2^2) - 1/2
    (phi,) = [m for m in actor.modules() if isinstance(m, torch.nn.Embedding)]
    with torch.no_grad():
        phi.weight.copy_(phi.weight[:1].expand_as(phi.weight))
    s = log_std.exp()
    expected = (log_std[None] - log_std[:, None] + s[:, None] ** 2 / (2 * s[None] ** 2) - 0.5).sum(-1)
    torch.testing.assert_close(pairwise_block_kl(actor, states, 4), expected, rtol=1e-4, atol=1e-5)


def test_policy_metrics_take_raw_observations():
    """With observation_norm the actor standardises the raw states itself: KL equals the direct one."""
    from torchrl.modules.value_norm import RunningValueNorm

    norm = RunningValueNorm(shape=5)
    norm.update(torch.randn(1000, 5) * 100 + 50)
    actor, _ = _actor(observation_norm=norm)
    raw = torch.randn(50, 5) * 100 + 50

    def dist(block):
        return actor.get_dist(TensorDict(observation=raw, block_id=torch.full((50,), block), batch_size=[50]))

    with torch.no_grad():
        direct = torch.distributions.kl_divergence(dist(1), dist(3)).mean()
    assert pairwise_block_kl(actor, raw, 4)[1, 3].item() == pytest.approx(direct.item(), rel=1e-4)
