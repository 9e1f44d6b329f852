"""CPO (issue 38): the released code's objective written out by hand in plain torch against CPOLoss, in value and
gradient; the aggregator's leader-to-follower rows; the config's checks. Training, resume, evaluate, export and torchrun
with ``ablation=cpo`` are in their own modules' tests."""

import pytest
import torch
from conftest import REPO as REPO_ROOT
from tensordict import TensorDict

from sapg_torchrl import BlockLayout, ConfigError, CPOLoss, SAPGLoss, make_actor_critic
from sapg_torchrl.aggregation import Aggregator
from sapg_torchrl.training.batch import TrainingBatch

M, LEADER, E_CLIP, CRITIC_COEF, BOUNDS_COEF = 3, 2, 0.2, 4.0, 1e-4
BETA, LAMBDA_AWAC, AWAC_MAX, LAMBDA_PPO = 1e-2, 0.2, 5.0, 0.3  # a low cap so that some weights are clamped
ENTROPY = [0.02, 0.01, 0.0]


def released_code_loss(actor, critic, data):
    """``Naoki04/paper-cpo-code@d1597a4``'s minibatch loss, by hand: ``actor_loss_cpo`` (``awac_alpha = awac_gamma =
    1``, ``enable_w = False``), ``critic_loss_sapg2`` with rl_games' clipped value loss, the masked per-block entropy
    and bounds loss of ``a2c_continuous.calc_gradients``, each a mean over all the minibatch's rows; rl_games' log-probs
    are negative (``neglogp``)."""
    ids, relabelled, awac = data["block_id"], data["relabelled"], data["awac"]
    off_policy_mask = relabelled & ~awac
    awac_mask = awac
    leader_online_mask = ~relabelled & (ids == LEADER)
    follower_online_mask = ~relabelled & (ids != LEADER)
    critic_mask = leader_online_mask | follower_online_mask | off_policy_mask

    out = actor(data.select("observation", "block_id").clone())
    mu, sigma = out["loc"], out["scale"]
    action = data["action"]
    neglogp = -torch.distributions.Normal(mu, sigma).log_prob(action).sum(-1)
    entropy = torch.distributions.Normal(mu, sigma).entropy().sum(-1)
    with torch.no_grad():  # the leader's conditioning, same networks
        leader = actor(TensorDict(observation=data["observation"], block_id=torch.full_like(ids, LEADER), batch_size=ids.shape))
        leader_neglogp = -torch.distributions.Normal(leader["loc"], leader["scale"]).log_prob(action).sum(-1)
    old_neglogp = -data["action_log_prob"]
    advantage = data["advantage"].squeeze(-1)

    ratio = torch.exp(old_neglogp - neglogp)
    ppo_loss = torch.max(-advantage * ratio, -advantage * torch.clamp(ratio, 1 - E_CLIP, 1 + E_CLIP))
    ppo_loss = ppo_loss * (leader_online_mask | off_policy_mask)
    awac_loss = -torch.clamp(torch.exp(advantage / LAMBDA_AWAC), max=AWAC_MAX) * (-neglogp) * awac_mask
    shaped = -(leader_neglogp - neglogp) * LAMBDA_PPO + advantage
    klppo = torch.max(-shaped * ratio, -shaped * torch.clamp(ratio, 1 - E_CLIP, 1 + E_CLIP)) * follower_online_mask
    a_loss = ppo_loss + BETA * awac_loss + klppo

    values = critic(data.select("observation", "block_id").clone())["state_value"].squeeze(-1)
    old_values, returns = data["state_value"].squeeze(-1), data["value_target"].squeeze(-1)
    clipped = old_values + (values - old_values).clamp(-E_CLIP, E_CLIP)
    c_loss = torch.max((values - returns) ** 2, (clipped - returns) ** 2) * critic_mask
    b_loss = (((mu - 1.1).clamp_min(0) ** 2 + (mu + 1.1).clamp_max(0) ** 2).sum(-1)) * critic_mask
    entropy_loss = torch.tensor(ENTROPY)[ids] * entropy * critic_mask
    return a_loss.mean() + 0.5 * c_loss.mean() * CRITIC_COEF - entropy_loss.mean() + b_loss.mean() * BOUNDS_COEF


def batch(seed=0, rows=48):
    torch.manual_seed(seed)
    actor, critic = make_actor_critic(4, 2, num_blocks=M, hidden=(16, 16))
    data = TensorDict(observation=torch.randn(rows, 4), block_id=torch.randint(0, M, (rows,)), batch_size=[rows])
    with torch.no_grad():
        data = actor(critic(data))
    data["action"] = data["action"] * 1.5  # some actions beyond the bounds loss's 1.1
    data["advantage"] = torch.randn(rows, 1)
    data["value_target"] = torch.randn(rows, 1)
    data["relabelled"] = torch.rand(rows) < 0.5
    data["awac"] = data["relabelled"] & (torch.rand(rows) < 0.5) & (data["block_id"] != LEADER)
    data["relabelled"] |= data["awac"]
    data["relabelled"] &= data["awac"] | (data["block_id"] == LEADER)  # relabelled rows train the leader, awac ones a follower
    data["action_log_prob"] += 0.3 * torch.randn(rows)  # behaviour policies differ from the current one
    return actor, critic, data


def our_loss(actor, critic, **kwargs):
    return CPOLoss(
        actor, critic, entropy_coeff=ENTROPY, clip_epsilon=E_CLIP, critic_coeff=0.5 * CRITIC_COEF, loss_critic_type="l2",
        clip_value=E_CLIP, bounds_loss_coeff=BOUNDS_COEF, leader=LEADER, awac_beta=BETA, awac_lambda=LAMBDA_AWAC,
        awac_max=AWAC_MAX, kl_coef=LAMBDA_PPO, normalize_advantage=False, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cpo_loss_is_the_released_codes_objective_in_value_and_gradient(seed):
    actor, critic, data = batch(seed)
    assert data["awac"].any() and (data["relabelled"] & ~data["awac"]).any() and (~data["relabelled"]).any()
    loss = our_loss(actor, critic)
    out = loss(data.clone())
    ours = sum(v for k, v in out.items() if k.startswith("loss_"))
    params = [p for p in loss.parameters() if p.requires_grad]
    grads = torch.autograd.grad(ours, params)
    theirs = released_code_loss(actor, critic, data.clone())
    expected = torch.autograd.grad(theirs, params)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
    weights = torch.exp(data["advantage"] / LAMBDA_AWAC)[data["awac"]]
    assert out["awac_clamped_fraction"] == pytest.approx(float((weights > AWAC_MAX).float().mean()))
    assert 0 < out["awac_clamped_fraction"] < 1


def test_without_awac_rows_and_kl_cpo_is_sapg():
    """No awac row and ``kl_coef = 0``: the same losses as SAPGLoss, term by term."""
    actor, critic, data = batch(3)
    data["awac"] = torch.zeros_like(data["awac"])
    common = dict(entropy_coeff=ENTROPY, clip_value=E_CLIP, bounds_loss_coeff=BOUNDS_COEF)
    cpo = CPOLoss(actor, critic, kl_coef=0.0, **common)(data.clone())
    sapg = SAPGLoss(actor, critic, **common)(data.clone())
    for key in sapg.keys():
        torch.testing.assert_close(cpo[key], sapg[key], equal_nan=True)
    assert cpo["loss_awac"] == 0


def test_follower_leader_kl_is_zero_for_the_leader_and_positive_for_followers():
    actor, critic, data = batch(4)
    with torch.no_grad():
        for name, p in actor.named_parameters():
            if "log_std" in name:
                p.copy_(torch.tensor([[0.0, 0.0], [0.3, -0.2], [0.0, 0.0]]))
    kl = our_loss(actor, critic)(data)["follower_leader_kl"]
    assert kl[LEADER] == 0 and (kl[:LEADER] > 0).all()


def test_the_aggregator_relabels_the_leaders_rows_to_every_follower():
    layout = BlockLayout(num_envs=6, num_blocks=3)
    actor, critic = make_actor_critic(2, 1, num_blocks=3, hidden=(8,))
    T = 4
    ids = layout.block_ids()[:, None].expand(6, T)
    data = TensorDict(
        observation=torch.randn(6, T, 2), block_id=ids,
        next=TensorDict(observation=torch.randn(6, T, 2), block_id=ids, reward=torch.randn(6, T, 1),
                        done=torch.zeros(6, T, 1, dtype=torch.bool), terminated=torch.zeros(6, T, 1, dtype=torch.bool),
                        batch_size=[6, T]),
        batch_size=[6, T])  # fmt: skip
    with torch.no_grad():
        data = actor(data)
    aggregator = Aggregator(layout, critic, off_policy_ratio=1, leader_to_followers=True)
    assert aggregator.rows_per_env_step == 3 * layout.block_size
    rows = aggregator(data)
    awac = rows["awac"][:, 0]
    assert awac.tolist() == [False] * 2 + [True] * 4
    assert rows["block_id"][awac][:, 0].tolist() == [0, 0, 1, 1]
    leader_obs = data["observation"][4:]
    torch.testing.assert_close(rows["observation"][awac], torch.cat([leader_obs, leader_obs]))
    torch.testing.assert_close(rows["action_log_prob"][awac], torch.cat([data["action_log_prob"][4:]] * 2))
    # one-step TD targets under the follower's critic
    with torch.no_grad():
        nxt = critic(rows["next"][awac].select("observation", "block_id").clone())["state_value"]
    expected = rows["next", "reward"][awac] + 0.99 * nxt
    torch.testing.assert_close(rows["value_target"][awac], expected)
    # the batch: awac flags on every row, the loss must read them
    loss = CPOLoss(actor, critic)
    made = TrainingBatch(loss, layout, aggregator=aggregator)(data)
    assert made.shape == torch.Size([(6 + 6) * T]) and int(made["awac"].sum()) == 4 * T
    with pytest.raises(ConfigError, match="use CPOLoss"):
        TrainingBatch(SAPGLoss(actor, critic), layout, aggregator=aggregator)
    with pytest.raises(ConfigError, match="leader_to_followers"):
        Aggregator(layout, critic, mode="symmetric", leader_to_followers=True)


def test_bad_settings_are_refused():
    actor, critic = make_actor_critic(2, 1, num_blocks=3, hidden=(8,))
    for kwargs, match in (
        ({"awac_lambda": 0.0}, "awac_lambda=0.0 is not accepted"),
        ({"awac_beta": -1.0}, "awac_beta=-1.0 is not accepted"),
        ({"kl_coef": -0.1}, "kl_coef=-0.1 is not accepted"),
        ({"leader": 3}, r"leader=3 is not accepted: use a block index in \[0, 2\]"),
    ):
        with pytest.raises(ConfigError, match=match):
            CPOLoss(actor, critic, **kwargs)
    one_actor, one_critic = make_actor_critic(2, 1, num_blocks=1, hidden=(8,))
    with pytest.raises(ConfigError, match="at least 2 blocks"):
        CPOLoss(one_actor, one_critic)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["ablation=cpo", "sapg.aggregation=symmetric"], "cpo.enabled=true is not accepted with sapg.aggregation=symmetric"),
        (["ablation=no_split", "cpo.enabled=true"], "CPO needs aggregation=leader_follower and num_blocks >= 2"),
        (["ablation=cpo", "cpo.awac_lambda=0"], "cpo.awac_lambda=0"),
    ],
)
def test_the_config_refuses_cpo_without_a_leader(compose_cfg, overrides, match):
    from sapg_torchrl.app.schema import validate

    with pytest.raises(ConfigError, match=match):
        validate(compose_cfg(*overrides))


@pytest.fixture(scope="module")
def cpo_run(tmp_path_factory):
    from conftest import TINY_OVERRIDES, _compose

    from sapg_torchrl.app.run import train

    folder = tmp_path_factory.mktemp("cpo") / "run"
    train(_compose(*TINY_OVERRIDES, "ablation=cpo", "train.eval_interval=0"), folder)
    return folder


def test_a_cpo_run_logs_its_terms_and_evaluates_and_exports(cpo_run):
    import csv

    from sapg_torchrl.app.trained_run import evaluate_run, export_run
    from sapg_torchrl.deploy import ExportedPolicy

    with (cpo_run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10
    for key in ("train/loss_awac", "train/awac_weight_mean", "train/awac_clamped_fraction", "train/follower_leader_kl/0"):
        assert all(r[key] != "" for r in rows), key
    assert all(float(r["train/follower_leader_kl/5"]) == 0 for r in rows)  # the leader (last block) to itself
    leader = evaluate_run(cpo_run, episodes=2)
    assert list(leader["blocks"]) == [5]
    exported = export_run(cpo_run, format="torchscript")
    (action,) = ExportedPolicy(exported["path"])(torch.zeros(1, 2))
    assert action.shape == (1, 1)


@pytest.mark.slow  # two processes under torchrun: ~40 s
def test_cpo_under_torchrun_is_one_run(tmp_path):
    import json

    from conftest import TINY_OVERRIDES
    from test_distributed import torchrun

    overrides = [o for o in TINY_OVERRIDES if not o.startswith(("env.num_envs", "total_frames"))]
    done = torchrun(str(REPO_ROOT / "recipes" / "sapg.py"), *overrides, "ablation=cpo", "env.num_envs=24",
                    "total_frames=960", "hydra.run.dir=run", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["processes"] == 2 and result["frames"] == 960


def test_the_adversarial_reward_rewards_recognisable_followers_and_learns():
    """The bonus is ``-coef * CE`` of the row's own block for followers, 0 for the leader; a pass of the discriminator
    on separable blocks lowers its loss; the on-policy targets carry the bonus, the relabelled rows' do not."""
    from sapg_torchrl.training.adversarial_reward import AdversarialReward

    N, T = 6, 8
    ids = torch.arange(3).repeat_interleave(2)[:, None].expand(N, T)
    data = TensorDict(observation=ids[..., None].float() + 0.1 * torch.randn(N, T, 1), action=torch.randn(N, T, 1),
                      block_id=ids, batch_size=[N, T])  # fmt: skip
    reward = AdversarialReward(1, 1, num_blocks=3, leader=2, coef=0.5, hidden=(32,), lr=1e-2, minibatch_size=16)
    with torch.no_grad():
        logits = reward.network(torch.cat([data["observation"], data["action"]], -1))
    expected = -0.5 * torch.nn.functional.cross_entropy(logits.reshape(-1, 3), ids.reshape(-1), reduction="none")
    bonus, first = reward(data)
    torch.testing.assert_close(bonus[:4].reshape(-1), expected.reshape(N, T)[:4].reshape(-1))
    assert (bonus[4:] == 0).all()
    for _ in range(30):
        _, last = reward(data)
    assert last["discriminator_loss"] < 0.5 * first["discriminator_loss"] and last["discriminator_accuracy"] == 1

    layout = BlockLayout(num_envs=N, num_blocks=3)
    actor, critic = make_actor_critic(1, 1, num_blocks=3, hidden=(8,))
    rollout = data.clone()
    rollout["next"] = TensorDict(observation=torch.randn(N, T, 1), block_id=ids, reward=torch.zeros(N, T, 1),
                                 done=torch.zeros(N, T, 1, dtype=torch.bool),
                                 terminated=torch.zeros(N, T, 1, dtype=torch.bool), batch_size=[N, T])  # fmt: skip
    with torch.no_grad():
        rollout = actor(rollout)
    loss = CPOLoss(actor, critic)
    aggregator = Aggregator(layout, critic, leader_to_followers=True)
    plain = TrainingBatch(loss, layout, aggregator=aggregator, advantage_norm="none")
    shaped = TrainingBatch(loss, layout, aggregator=aggregator, advantage_norm="none", adversarial_reward=reward)
    torch.manual_seed(0)
    a = plain(rollout.clone())
    torch.manual_seed(0)
    b = shaped(rollout.clone())
    on_policy = ~a["relabelled"]
    followers = on_policy & (a["block_id"] != 2)
    assert (b["value_target"][followers] < a["value_target"][followers]).all()  # the bonus is negative
    torch.testing.assert_close(b["value_target"][a["relabelled"]], a["value_target"][a["relabelled"]])
    assert set(reward.diagnostics) == {"discriminator_loss", "discriminator_accuracy", "adversarial_bonus"}


def test_the_discriminator_is_cpos():
    from sapg_torchrl.app.schema import validate

    from conftest import _compose

    with pytest.raises(ConfigError, match="cpo.discriminator_coef=0.01 is not accepted with cpo.enabled=false"):
        validate(_compose("ablation=sapg", "cpo.discriminator_coef=0.01"))
