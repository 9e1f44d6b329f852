"""
Plugging in your own batched env
================================

SAPG needs a *batched* TorchRL env: one :class:`~torchrl.envs.EnvBase` whose batch size is ``[N]``, with an
``"observation"`` entry, a bounded continuous action and ``done``/``terminated``/``truncated`` flags, resetting
only the envs that finished (``"_reset"``). That is what GPU simulators (IsaacGym, Isaac Lab, Brax) and envpool
give; here a task written in a few lines of torch, then trained with the library's runner.
"""

# %%
# The task: ``N`` points in the plane each chase their own random target. An episode lasts 40 steps and
# ends by time-out, a *truncation*: the update bootstraps the value of the last state.
import matplotlib.pyplot as plt
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase
from torchrl.envs.utils import check_env_specs


class ReachEnv(EnvBase):
    """``num_envs`` points reaching random targets; observation ``[position, target]``, action a 2-D step."""

    def __init__(self, num_envs: int, seed: int = 0, episode_length: int = 40, device="cpu"):
        super().__init__(batch_size=torch.Size([num_envs]), device=device)
        self.episode_length, n = episode_length, (num_envs,)
        self.observation_spec = Composite(observation=Unbounded((*n, 4)), shape=n)
        self.action_spec = Bounded(-1.0, 1.0, (*n, 2))
        self.reward_spec = Unbounded((*n, 1))
        flag = Categorical(2, (*n, 1), dtype=torch.bool)
        self.done_spec = Composite(done=flag, terminated=flag.clone(), truncated=flag.clone(), shape=n)
        self.position, self.target = torch.zeros(*n, 2), torch.zeros(*n, 2)
        self.steps = torch.zeros(n, dtype=torch.long)
        self._set_seed(seed)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        reset = torch.ones(self.batch_size, dtype=torch.bool)
        if tensordict is not None and "_reset" in tensordict.keys():
            reset = tensordict["_reset"].reshape(self.batch_size)
        count = int(reset.sum())
        self.position[reset] = torch.rand(count, 2, generator=self.rng) * 2 - 1
        self.target[reset] = torch.rand(count, 2, generator=self.rng) * 2 - 1
        self.steps[reset] = 0
        flag = torch.zeros(*self.batch_size, 1, dtype=torch.bool)
        observation = torch.cat([self.position, self.target], -1)
        return TensorDict(observation=observation, done=flag, terminated=flag, truncated=flag.clone(), batch_size=self.batch_size)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        self.position = (self.position + 0.1 * tensordict["action"]).clamp(-1.5, 1.5)
        self.steps += 1
        distance = (self.position - self.target).norm(dim=-1, keepdim=True)
        truncated = (self.steps >= self.episode_length).unsqueeze(-1)
        return TensorDict(
            observation=torch.cat([self.position, self.target], -1), reward=-distance, done=truncated.clone(),
            terminated=torch.zeros_like(truncated), truncated=truncated, batch_size=self.batch_size,
        )  # fmt: skip

    def _set_seed(self, seed: int | None) -> None:
        self.rng = torch.Generator().manual_seed(seed or 0)


check_env_specs(ReachEnv(12))  # TorchRL's own check that the specs and the data agree

# %%
# Train it with the recipe's config and runner. ``make_env`` replaces the config's ``env.make`` (which takes
# an import path, for the command line: ``env.make._target_=my_package.ReachEnv``); every other setting comes
# from the config, validated by its schema, here with a smaller network and batch than the default task's.
from hydra import compose, initialize_config_dir

from sapg_torchrl.cli import CONFIG_DIR
from sapg_torchrl.app.build import build_runner

overrides = [
    "env.num_envs=192", "env.eval_envs=12", "env.eval_steps=40", "ppo.horizon=8", "total_frames=46080",
    "network.hidden=[64,64]", "sapg.entropy_scale=0.005", "train.eval_interval=5", "train.progress=false",
    "device=cpu", "logger.wandb=false",
]  # fmt: skip
with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
    cfg = compose("sapg", overrides=overrides)
rows = []
runner = build_runner(cfg, make_env=ReachEnv, sinks=[lambda metrics, iteration: rows.append(dict(metrics))])
result = runner.train()
print(f"{runner.frames} frames, leader's return {result['return/leader']:.2f}, evaluation {result['eval/return']:.2f}")

# %%
# The leader's and the followers' returns per iteration, and the leader's deterministic evaluation.
frames = [row["frames"] for row in rows]
fig, ax = plt.subplots(figsize=(7, 4))
for b in range(cfg.sapg.num_blocks):
    ax.plot(frames, [row[f"return/per_block/{b}"] for row in rows], lw=0.8, alpha=0.6, label=f"block {b}")
ax.plot(frames, [row["return/leader"] for row in rows], lw=2.5, color="k", label="leader")
evaluated = [(row["frames"], row["eval/return"]) for row in rows if "eval/return" in row]
ax.plot(*zip(*evaluated), "s", color="k", label="leader, evaluation")
ax.set(xlabel="env frames", ylabel="episode return", title="ReachEnv, 6 blocks of 32")
ax.legend(fontsize=8, ncol=2)
fig.tight_layout()
