"""
Deploying a trained leader with onnxruntime
===========================================

Train a short run, export its leader to ONNX (``sapg-export run=<folder>`` on the command line), and run the file
with onnxruntime alone: no torch, no TorchRL, no block ids. The file holds the observation normaliser, the leader's
conditioning and the mean action clamped to the action bounds; it acts as the trained policy does.
"""

# %%
# A short MountainCar run (the command line: ``sapg-train env.num_envs=192 ...``), written to a run folder.
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir

from sapg_torchrl.app.run import train
from sapg_torchrl.cli import CONFIG_DIR

overrides = [
    "env.num_envs=192", "ppo.horizon=16", "total_frames=61440", "network.hidden=[64,64]", "train.eval_interval=0",
    "train.progress=false", "device=cpu", "logger.wandb=false",
]  # fmt: skip
with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
    cfg = compose("sapg", overrides=overrides)
run_dir = Path(tempfile.mkdtemp()) / "run"
train(cfg, run_dir)

# %%
# Export the leader: ``sapg-export run=<folder>`` does the same. The file describes its own interface.
from sapg_torchrl.app.trained_run import export_run

exported = export_run(run_dir, format="onnx")
print(exported["path"])
print({key: exported["metadata"][key] for key in ("inputs", "outputs", "observation_dim", "action_dim", "block")})

# %%
# What a robot's controller runs: onnxruntime and numpy, one observation per control step (a batch of 1 here;
# any batch size works). A recurrent policy also takes ``h`` and ``c`` (zeros at an episode's start) and returns
# their next values.
import gymnasium as gym
import numpy as np
import onnxruntime

session = onnxruntime.InferenceSession(exported["path"], providers=["CPUExecutionProvider"])
env = gym.make("MountainCarContinuous-v0")
observation, _ = env.reset(seed=0)
observations, actions, total = [], [], 0.0
for step in range(999):
    (action,) = session.run(None, {"observation": observation[None].astype(np.float32)})
    observations.append(observation)
    actions.append(float(action[0, 0]))
    observation, reward, terminated, truncated, _ = env.step(action[0])
    total += float(reward)
    if terminated or truncated:
        break
print(f"onnxruntime: return {total:.2f} in {step + 1} steps (a short run: the leader has not found the flag yet)")

# %%
# The same episode's actions from the checkpoint's actor (TorchRL, deterministic), on the observations the
# exported policy met: the two agree to float precision.
import matplotlib.pyplot as plt
import torch
from tensordict import TensorDict
from torchrl.envs import ExplorationType, set_exploration_type

from sapg_torchrl.app.build import build_agent, simulator_factory
from sapg_torchrl.app.trained_run import load_run
from sapg_torchrl.blocks import BlockLayout
from sapg_torchrl.envs.factory import make_sapg_env

cfg, _, state = load_run(run_dir)
layout = BlockLayout(cfg.env.num_envs, cfg.sapg.num_blocks, cfg.sapg.leader)
probe = make_sapg_env(simulator_factory(cfg.env.make, torch.device("cpu"))(num_envs=1, seed=0), torch.zeros(1, dtype=torch.long))
agent = build_agent(cfg, probe, layout, torch.device("cpu"))
agent.loss.load_state_dict(state["loss"])
steps = len(observations)
td = TensorDict(observation=torch.as_tensor(np.array(observations)), block_id=torch.full((steps,), layout.leader),
                batch_size=[steps])  # fmt: skip
with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
    torch_actions = agent.actor(td)["action"].clamp(-1, 1)[:, 0].numpy()
print(f"largest difference between the file's and the actor's actions: {np.abs(torch_actions - np.array(actions)).max():.1e}")

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(actions, lw=2.5, label="exported file (onnxruntime)")
ax.plot(torch_actions, "--", lw=1.2, color="k", label="checkpoint's actor (TorchRL)")
ax.set(xlabel="step", ylabel="action", title="The leader's actions on one MountainCar episode")
ax.legend(fontsize=8)
fig.tight_layout()
