"""The asymmetric actor-critic (``network.critic_observation_keys``): the critic's privileged input makes a value
learnable that the policy's observation cannot; its own trunk and normaliser, the same phi; checkpoints, resume,
evaluation and export with it; the adapters' privileged entries; bad keys in one line."""

import pytest
import torch
from tensordict import TensorDict

from conftest import _compose
from sapg_torchrl import ConfigError, make_actor_critic
from sapg_torchrl.app.build import build_runner
from sapg_torchrl.app.run import train
from sapg_torchrl.app.trained_run import evaluate_run, export_run
from sapg_torchrl.deploy import ExportedPolicy
from sapg_torchrl.envs.gpu import BootstrapFromCurrentState
from sapg_torchrl.targets import fill_lost_final_observations
from sapg_torchrl.training.checkpoint import load_checkpoint

HIDDEN_PAYOFF = (
    "env.make._target_=hidden_payoff.HiddenPayoffEnv", "~env.make.env_name", "env.num_envs=48", "ppo.horizon=6",
    "ppo.epochs=4", "network.hidden=[32]", "train.eval_interval=0", "device=cpu", "logger.wandb=false",
    "train.progress=false", "env.eval_envs=6", "env.eval_steps=6",
)  # fmt: skip
ASYMMETRIC = "network.critic_observation_keys=[observation,privileged]"


def explained_variances(*overrides, iterations=40):
    rows = []
    cfg = _compose(*HIDDEN_PAYOFF, f"total_frames={48 * 6 * iterations}", *overrides)
    build_runner(cfg, sinks=[lambda metrics, iteration: rows.append(dict(metrics))]).train()
    return [row["train/explained_variance"] for row in rows]


def test_only_the_privileged_critic_learns_the_value():
    """The payoff is hidden from the policy: the value is 0 on average given its observation, exact given the
    privileged entry."""
    symmetric, asymmetric = explained_variances(), explained_variances(ASYMMETRIC)
    assert max(symmetric[-10:]) < 0.3, symmetric
    assert min(asymmetric[-10:]) > 0.9, asymmetric


@pytest.mark.parametrize("lstm_size", [None, 8])
def test_own_trunk_and_normaliser_same_phi(lstm_size):
    from torchrl.modules.value_norm import RunningValueNorm

    actor, critic = make_actor_critic(
        3, 2, num_blocks=4, hidden=(16,), lstm_size=lstm_size, observation_norm=RunningValueNorm(shape=3),
        critic_observation_keys=["observation", "privileged"], critic_observation_dim=5,
        critic_observation_norm=RunningValueNorm(shape=5),
    )  # fmt: skip
    assert "privileged" in critic.in_keys and "privileged" not in actor.in_keys
    embeddings = [m for net in (actor, critic) for m in net.modules() if isinstance(m, torch.nn.Embedding)]
    assert len({id(m) for m in embeddings}) == 1  # one phi, conditioning both
    actor_params = {id(p) for p in actor.parameters()}
    assert not any(id(p) in actor_params for name, p in critic.named_parameters() if "phi" not in name)
    assert not any(isinstance(m, torch.nn.LSTM) for m in critic.modules())  # feedforward beside an LSTM policy
    td = TensorDict(observation=torch.randn(6, 3), privileged=torch.randn(6, 2), block_id=torch.arange(6) % 4,
                    batch_size=[6])  # fmt: skip
    assert critic(td)["state_value"].shape == (6, 1)
    with pytest.raises(ConfigError, match="critic_observation_keys needs critic_observation_dim"):
        make_actor_critic(3, 2, num_blocks=4, critic_observation_keys=["observation"])


def test_a_key_the_env_lacks_is_one_line():
    with pytest.raises(ConfigError, match=r"network.critic_observation_keys=\['observation', 'nope'\] is not accepted: "
                                          r"the env's observation entries are \['observation', 'privileged'\]"):  # fmt: skip
        build_runner(_compose(*HIDDEN_PAYOFF, "total_frames=288", "network.critic_observation_keys=[observation,nope]"))


def test_checkpoint_resume_evaluate_and_export(tmp_path):
    run_dir = tmp_path / "run"
    train(_compose(*HIDDEN_PAYOFF, ASYMMETRIC, "total_frames=2880", "train.checkpoint_interval=5"), run_dir)
    _, state = load_checkpoint(run_dir / "checkpoints")
    critic_norm = [k for k in state["loss"] if "critic_network" in k and "norm" in k]
    assert critic_norm, "the critic's normaliser travels in the checkpoint"
    resumed = train(_compose(*HIDDEN_PAYOFF, ASYMMETRIC, "total_frames=4320", f"resume={run_dir}"), run_dir)
    assert resumed["frames"] == 4320
    _, after = load_checkpoint(run_dir / "checkpoints")
    assert after["iteration"] == 15 and not torch.equal(after["loss"][critic_norm[0]], state["loss"][critic_norm[0]])
    checkpoint = evaluate_run(run_dir, episodes=3)
    exported = export_run(run_dir)
    assert exported["metadata"]["observation_dim"] == 1  # the policy's observation alone: nothing privileged
    from_file = evaluate_run(run_dir, episodes=3, policy=exported["path"])
    assert from_file["blocks"][5]["return_mean"] == pytest.approx(checkpoint["blocks"][5]["return_mean"], abs=1e-5)
    assert ExportedPolicy(exported["path"])(torch.zeros(2, 1).numpy())[0].shape == (2, 1)


def test_lost_final_observations_are_filled_for_every_entry():
    nan = float("nan")
    data = TensorDict(observation=torch.ones(1, 2, 1), privileged=torch.full((1, 2, 1), 5.0),
                      next=TensorDict(observation=torch.tensor([[[2.0], [nan]]]), privileged=torch.tensor([[[6.0], [nan]]]),
                                      batch_size=[1, 2]), batch_size=[1, 2])  # fmt: skip
    fill_lost_final_observations(data, ["observation", "privileged"])
    assert data["next", "observation"].flatten().tolist() == [2.0, 1.0]
    assert data["next", "privileged"].flatten().tolist() == [6.0, 5.0]
    transform = BootstrapFromCurrentState(["observation", "critic"])
    current = TensorDict(observation=torch.zeros(2, 1), critic=torch.zeros(2, 3), batch_size=[2])
    following = TensorDict(observation=torch.ones(2, 1), critic=torch.ones(2, 3), truncated=torch.tensor([[True], [False]]),
                           batch_size=[2])  # fmt: skip
    out = transform._step(current, following)
    assert out["critic"][:, 0].tolist() == [0.0, 1.0] and out["observation"].flatten().tolist() == [0.0, 1.0]


@pytest.mark.filterwarnings("ignore:Nested TransformedEnvs")
@pytest.mark.parametrize("simulator, key", [("isaacgym", "states"), ("isaaclab", "critic")])
def test_gpu_adapters_pass_the_privileged_entry(simulator, key):
    """sapg_view (what isaacgym_env / isaaclab_env return) keeps IsaacGym's ``states`` and Isaac Lab's ``critic``
    group under their names, and where Isaac Lab loses the final observation, the privileged one too is taken
    from the current state."""
    from test_env_presets import time_out_env

    from sapg_torchrl.blocks import BlockLayout
    from sapg_torchrl.envs import make_sapg_env
    from sapg_torchrl.envs.gpu import sapg_view

    env = time_out_env(simulator, privileged=key)
    options = {"isaacgym": {"time_out_key": "time_outs"}, "isaaclab": {"final_observation_available": False}}
    view = sapg_view(env, "obs", **options[simulator])
    assert key in view.observation_spec.keys()
    torch.manual_seed(0)
    data = make_sapg_env(view, BlockLayout(12, 6).block_ids()).rollout(12, break_when_any_done=False)
    truncated = data["next", "truncated"][0, :, 0]
    final = data["next", key][0, :, 0]
    if simulator == "isaaclab":
        torch.testing.assert_close(final[truncated], data[key][0, :, 0][truncated])
    else:
        torch.testing.assert_close(final, 2 * data["action"][0, :, 0])
