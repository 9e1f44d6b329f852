"""Env presets (``sapg_torchrl/configs/env``): every CPU preset builds, steps with block ids and trains; every GPU
preset stops with one line saying what to install; the GPU factories' post-processing works on TorchRL mocks."""

import csv
import math
import os
import subprocess
import sys

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.testing.mocking_classes import MockBatchedLockedEnv

from sapg_torchrl import BlockLayout, ConfigError
from sapg_torchrl.app.build import build_runner
from sapg_torchrl.app.run import train
from sapg_torchrl.envs.factory import make_sapg_env
from sapg_torchrl.envs.gpu import sapg_view

CPU_PRESETS = {  # preset: (envpool or Brax task, or the env class, observation dim, action dim)
    "brax_ant": ("ant", 27, 8),
    "torch_pendulum": ("TorchPendulumEnv", 3, 1),
    "halfcheetah": ("HalfCheetah-v4", 17, 6),
    "hopper": ("Hopper-v4", 11, 3),
    "walker2d": ("Walker2d-v4", 17, 6),
    "ball_in_cup_catch": ("BallInCupCatch-v1", 8, 2),
    "lunarlander": ("LunarLanderContinuous-v2", 8, 2),
    "ant": ("Ant-v4", 27, 8),
    "humanoid": ("Humanoid-v4", 376, 17),
    "adroit_pen": ("AdroitHandPen-v1", 45, 24),
    "hand_block_rotate": ("HandManipulateBlockRotateZ-v1", 75, 20),
    "leap_cube_reorient": ("LeapCubeReorient-v1", 57, 16),  # + privileged_state (128) for its asymmetric critic
    "playground_leap_cube_reorient": ("LeapCubeReorient", 57, 16),  # the same, on MJX (JAX)
}
EPISODE_LENGTH = {"adroit_pen": 200, "hand_block_rotate": 100, "torch_pendulum": 200}  # the others: 1000
GPU_PRESETS = {  # preset: (what the error must name, T, epochs, lr, clip, hidden, entropy scale)
    "isaacgym_allegrohand": ("IsaacGym", 8, 5, 5e-4, 0.2, [512, 256, 128], 0.0),
    "isaacgym_shadowhand": ("IsaacGym", 8, 5, 5e-4, 0.2, [512, 512, 256, 128], 0.005),
    "isaacgym_allegrokuka_regrasping": ("IsaacGym", 16, 2, 1e-4, 0.1, [768, 512, 256], 0.0),
    "isaacgym_allegrokuka_throw": ("IsaacGym", 16, 2, 1e-4, 0.1, [768, 512, 256], 0.0),
    "isaacgym_allegrokuka_reorientation": ("IsaacGym", 16, 2, 1e-4, 0.1, [768, 512, 256], 0.005),
    "isaaclab_allegro_repose": ("Isaac Lab", 8, 5, 5e-4, 0.2, [512, 256, 128], 0.0),
}

# 12 envs (6 blocks of 2), T = 4, 2 iterations
TINY = (
    "device=cpu", "logger.wandb=false", "train.progress=false", "train.eval_interval=0", "env.num_envs=12",
    "ppo.horizon=4", "ppo.epochs=2", "total_frames=96", "network.hidden=[16]",
)  # fmt: skip


def test_every_preset_is_covered(repo_root):
    files = {p.stem for p in (repo_root / "sapg_torchrl" / "configs" / "env").glob("*.yaml")}
    assert files == {"mountaincar", *CPU_PRESETS, *GPU_PRESETS}


@pytest.mark.parametrize("preset", sorted(CPU_PRESETS))
def test_cpu_preset_settings(compose_cfg, preset):
    """N a multiple of M = 6, the task's own episode length for evaluation, an ELU MLP."""
    cfg = compose_cfg(f"env={preset}")
    assert (cfg.env.make.get("env_name") or cfg.env.make._target_.rsplit(".", 1)[-1]) == CPU_PRESETS[preset][0]
    assert cfg.sapg.num_blocks == 6 and cfg.env.num_envs % 6 == 0
    assert cfg.env.eval_steps == EPISODE_LENGTH.get(preset, 1000)
    assert cfg.network.activation == "elu" and cfg.total_frames > 0


# JAX compiles the env first (Brax ant: about a minute on 2 cores; Playground's LEAP: minutes): these presets run in
# the slow suite; tests/test_brax.py checks Brax's env in the default one, tests/test_playground.py Playground's
JAX_PRESETS = {"brax_ant", "playground_leap_cube_reorient"}
CPU_PRESETS_TO_RUN = [pytest.param(p, marks=pytest.mark.slow) if p in JAX_PRESETS else p for p in sorted(CPU_PRESETS)]


@pytest.mark.parametrize("preset", CPU_PRESETS_TO_RUN)
def test_cpu_preset_steps_with_block_ids(compose_cfg, tmp_path, preset):
    """One collector batch: [N, T] with float32 observations of the task's size and every env's block id."""
    _, obs_dim, action_dim = CPU_PRESETS[preset]
    runner = build_runner(compose_cfg(f"env={preset}", *TINY), tmp_path)
    try:
        data = next(iter(runner.collector))
    finally:
        runner.collector.shutdown()
        runner.env.close()
    assert data.batch_size == (12, 4)
    assert data["observation"].shape == (12, 4, obs_dim) and data["observation"].dtype == torch.float32
    assert data["action"].shape == (12, 4, action_dim)
    assert data["next", "reward"].shape == (12, 4, 1) and data["next", "done"].shape == (12, 4, 1)
    assert (data["block_id"] == BlockLayout(12, 6).block_ids()[:, None]).all()
    assert torch.isfinite(data["next", "reward"]).all()
    if CPU_PRESETS[preset][0].startswith("LeapCubeReorient"):  # the asymmetric critic's privileged input, in float32 beside the observation
        assert data["privileged_state"].shape == (12, 4, 128) and data["privileged_state"].dtype == torch.float32


@pytest.mark.parametrize("preset", CPU_PRESETS_TO_RUN)
def test_cpu_preset_trains(compose_cfg, tmp_path, preset):
    """Two iterations through the same entry point as the recipe."""
    result = train(compose_cfg(f"env={preset}", *TINY), tmp_path / "run", name=preset)
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and int(float(rows[-1]["frames"])) == 96
    assert all(math.isfinite(float(v)) for k, v in result.items() if isinstance(v, float) and "loss" in k)


@pytest.mark.parametrize("preset", sorted(GPU_PRESETS))
def test_gpu_preset_published_settings(compose_cfg, preset):
    """The paper's hyperparameters: 24576 envs in 6 blocks, minibatch 4 * N, reward scale 0.01, per-task rest."""
    _, horizon, epochs, lr, clip, hidden, entropy = GPU_PRESETS[preset]
    cfg = compose_cfg(f"env={preset}")
    assert cfg.env.num_envs == 24576 and cfg.sapg.num_blocks == 6 and cfg.ppo.minibatch_size is None
    assert cfg.env.reward_scale == 0.01 and cfg.env.make.device == "cuda:0"
    assert (cfg.ppo.horizon, cfg.ppo.epochs, cfg.ppo.lr, cfg.ppo.clip_epsilon) == (horizon, epochs, lr, clip)
    assert list(cfg.network.hidden) == hidden and cfg.network.activation == "elu"
    assert cfg.sapg.entropy_scale == entropy
    assert cfg.train.eval_interval == 0  # one simulator per process


@pytest.fixture(scope="module")
def gpu_preset_runs(repo_root_module, tmp_path_factory):
    """``python recipes/sapg.py env=<preset>`` for every GPU preset, started together (each is mostly start-up)."""
    base = tmp_path_factory.mktemp("gpu")
    processes = {
        preset: subprocess.Popen(
            [sys.executable, str(repo_root_module / "recipes" / "sapg.py"), f"env={preset}",
             f"hydra.run.dir={base / preset}", "logger.wandb=false"],
            cwd=repo_root_module, env={**os.environ, "PYTHONWARNINGS": "ignore"}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for preset in sorted(GPU_PRESETS)
    }
    return {preset: (p.wait(timeout=300), p.communicate()[1]) for preset, p in processes.items()}


@pytest.mark.parametrize("preset", sorted(GPU_PRESETS))
def test_gpu_preset_without_simulator_says_what_to_install(gpu_preset_runs, preset):
    """Without the simulator: exit 2, one line naming what to install, no traceback."""
    needs = GPU_PRESETS[preset][0]
    returncode, stderr = gpu_preset_runs[preset]
    assert returncode == 2, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and f"needs {needs}" in last and "install" in last, last


def test_gpu_factories_raise_config_error_without_simulator():
    from sapg_torchrl.envs.gpu import isaacgym_env, isaaclab_env

    with pytest.raises(ConfigError, match="needs IsaacGym"):
        isaacgym_env(12, 0, "AllegroHand")
    with pytest.raises(ConfigError, match="needs Isaac Lab"):
        isaaclab_env(12, 0, "Isaac-Repose-Cube-Allegro-Direct-v0")


# --------------------------------------------------------------------- post-processing on TorchRL mocks
class IsaacGymLikeEnv(MockBatchedLockedEnv):
    """TorchRL's batched mock, shaped like TorchRL's IsaacGym wrapper output: the observation under ``"obs"``,
    done flags and reward ``[N]``. Env 0 finishes every 3rd step; the partial-reset masks it gets are kept."""

    def __init__(self, batch_size, **specs):
        super().__init__(batch_size=batch_size)
        self.reset_masks = []

    def _out(self, obs, done):
        return TensorDict({"obs": obs, "done": done, "terminated": done.clone()}, self.batch_size)

    def _reset(self, tensordict=None, **kwargs):
        if tensordict is not None and "_reset" in tensordict.keys():
            self.reset_masks.append(tensordict["_reset"].clone())
        self.counter = 0
        return self._out(torch.zeros(*self.batch_size, 1), torch.zeros(self.batch_size, dtype=torch.bool))

    def _step(self, tensordict):
        self.counter += 1
        done = torch.zeros(self.batch_size, dtype=torch.bool)
        done[0] = self.counter % 3 == 0
        out = self._out(tensordict["action"].clone(), done)
        return out.set("reward", torch.full(self.batch_size, float(self.counter)))


def isaacgym_like(n=12):
    b = torch.Size([n])
    flag = Categorical(2, dtype=torch.bool, shape=b)
    return IsaacGymLikeEnv(
        batch_size=b,
        observation_spec=Composite(obs=Unbounded((n, 1)), shape=b),
        action_spec=Bounded(-1, 1, (n, 1)),
        state_spec=Composite(shape=b),
        reward_spec=Composite(reward=Unbounded(b), shape=b),
        done_spec=Composite(done=flag, terminated=flag.clone(), shape=b),
    )


@pytest.mark.filterwarnings("ignore:Nested TransformedEnvs")
def test_sapg_view_renames_and_reshapes():
    """"obs" -> "observation"; reward and done [N] -> [N, 1]; the SAPG env on top rolls out with block ids."""
    from torchrl.envs.utils import check_env_specs

    base = isaacgym_like()
    view = sapg_view(base, observation_key="obs")
    assert set(view.observation_spec.keys()) == {"observation"}
    assert view.full_done_spec["done"].shape == (12, 1) and view.full_done_spec["terminated"].shape == (12, 1)
    assert view.full_reward_spec["reward"].shape == (12, 1)
    env = make_sapg_env(view, BlockLayout(12, 6).block_ids())
    check_env_specs(env)
    rollout = env.rollout(7, break_when_any_done=False)
    assert rollout["next", "observation"].shape == (12, 7, 1) and rollout["next", "reward"].shape == (12, 7, 1)
    assert rollout["next", "done"].shape == (12, 7, 1) and rollout.device == torch.device("cpu")
    assert rollout["next", "done"][0, :, 0].tolist() == [False, False, True, False, False, True, False]
    assert (rollout["block_id"] == BlockLayout(12, 6).block_ids()[:, None]).all()
    # the partial-reset mask reaches the simulator in its own [N] shape, for env 0 only
    assert base.reset_masks and all(m.shape == (12,) and m.tolist() == [True] + [False] * 11 for m in base.reset_masks)


def test_sapg_view_leaves_a_sapg_shaped_env_alone():
    env = MockBatchedLockedEnv(batch_size=torch.Size([6]))
    assert sapg_view(env) is env


def test_sapg_view_names_a_missing_observation():
    with pytest.raises(ConfigError, match="no observation 'policy'.*'obs'"):
        sapg_view(isaacgym_like(), observation_key="policy")


# ------------------------------------------------------------------------------ time-outs on the GPU simulators
class TimeOutEnv(IsaacGymLikeEnv):
    """Env 0 is done every 3rd step: a time-out at steps 3, 9, ... and a real termination at 6, 12, ...

    ``simulator="isaacgym"``: like TorchRL's IsaacGym wrapper, every done is ``terminated`` and the time-outs are
    only in ``"time_outs"`` (where TorchRL's info-dict reader puts ``info["time_outs"]``); the final observation
    is returned. ``simulator="isaaclab"``: like TorchRL's Isaac Lab wrapper, ``terminated`` and ``truncated`` are
    right, but the final observation is lost (zeros). ``privileged``: the key of a privileged entry (twice the
    observation, lost with it), as IsaacGym's ``states`` or Isaac Lab's ``critic`` group."""

    def __init__(self, batch_size, simulator, privileged=None, **specs):
        super().__init__(batch_size=batch_size, **specs)
        self.simulator, self.privileged = simulator, privileged
        self.steps = 0  # not reset with the episode counter

    def _with_privileged(self, out):
        return out if self.privileged is None else out.set(self.privileged, 2 * out["obs"])

    def _reset(self, tensordict=None, **kwargs):
        out = self._with_privileged(super()._reset(tensordict, **kwargs))
        if self.simulator == "isaacgym":  # TorchRL's info-dict reader fills it with zeros at a reset
            return out.set("time_outs", torch.zeros_like(out["done"]))
        return out.set("truncated", torch.zeros_like(out["done"]))

    def _step(self, tensordict):
        out = super()._step(tensordict)
        self.steps += 1
        done = out["done"]
        time_out = done & torch.tensor(self.steps % 6 == 3)
        if self.simulator == "isaacgym":
            return self._with_privileged(out.set("time_outs", time_out))
        out.set("terminated", done & ~time_out).set("truncated", time_out)
        return self._with_privileged(out.set("obs", torch.where(done[:, None], torch.zeros_like(out["obs"]), out["obs"])))


def time_out_env(simulator, n=12, privileged=None):
    b = torch.Size([n])
    flag = Categorical(2, dtype=torch.bool, shape=b)
    observation = Composite(obs=Unbounded((n, 1)), shape=b)
    if privileged is not None:
        observation[privileged] = Unbounded((n, 1))
    done = Composite(done=flag, terminated=flag.clone(), shape=b)
    if simulator == "isaacgym":
        observation["time_outs"] = flag.clone()
    else:
        done["truncated"] = flag.clone()
    return TimeOutEnv(
        b, simulator, privileged, observation_spec=observation, action_spec=Bounded(-1, 1, (n, 1)), state_spec=Composite(shape=b),
        reward_spec=Composite(reward=Unbounded(b), shape=b), done_spec=done,
    )  # fmt: skip


@pytest.mark.filterwarnings("ignore:Nested TransformedEnvs")
@pytest.mark.parametrize("simulator", ["isaacgym", "isaaclab"])
def test_time_outs_bootstrap_and_terminations_do_not(simulator):
    """What isaacgym_env / isaaclab_env put on top of TorchRL's wrappers: a time-out is a truncation, and the
    TD(0) target (as the relabelled rows get it; GAE reads the same flags) bootstraps from V(s_{t+1}) there,
    from the current state where the simulator lost the final one, and not at a real termination."""
    from torchrl.envs.utils import check_env_specs
    from torchrl.objectives.value import TD0Estimator

    options = {"isaacgym": {"time_out_key": "time_outs"}, "isaaclab": {"final_observation_available": False}}
    make = lambda: make_sapg_env(sapg_view(time_out_env(simulator), "obs", **options[simulator]), BlockLayout(12, 6).block_ids())  # noqa: E731
    check_env_specs(make())
    env = make()
    torch.manual_seed(0)
    data = env.rollout(12, break_when_any_done=False)
    truncated, terminated = data["next", "truncated"][0, :, 0], data["next", "terminated"][0, :, 0]
    assert truncated.nonzero().flatten().tolist() == [2, 8]  # steps 3 and 9
    assert terminated.nonzero().flatten().tolist() == [5, 11]  # steps 6 and 12
    final = data["next", "observation"][0, :, 0]
    if simulator == "isaaclab":  # bootstraps from s_t where the final state is lost
        torch.testing.assert_close(final[truncated], data["observation"][0, :, 0][truncated])
    else:  # the final state itself (the action, in this mock)
        torch.testing.assert_close(final, data["action"][0, :, 0])

    value = lambda td: td["observation"] + 10.0  # noqa: E731  (any critic: V(s) = s + 10)
    data["state_value"] = value(data)
    data["next", "state_value"] = value(data["next"])
    TD0Estimator(gamma=0.9, value_network=None)(data)
    reward, target = data["next", "reward"][0, :, 0], data["value_target"][0, :, 0]
    torch.testing.assert_close(target[truncated], reward[truncated] + 0.9 * (final[truncated] + 10))
    torch.testing.assert_close(target[terminated], reward[terminated])
