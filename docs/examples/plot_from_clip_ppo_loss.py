"""
From ``ClipPPOLoss`` to ``SAPGLoss``
====================================

A plain TorchRL PPO script (a :class:`~torchrl.collectors.Collector`, :class:`~torchrl.objectives.value.GAE`,
:class:`~torchrl.objectives.ClipPPOLoss`, Adam), and the same script turned into SAPG. The diff is four changes: the
env writes each env's block id, the networks are conditioned on it, the loss is :class:`~sapg_torchrl.SAPGLoss` with
one entropy coefficient per block, and :class:`~sapg_torchrl.training.TrainingBatch` turns each rollout into the
batch (GAE under each env's own block, the followers' rows relabelled to the leader, the advantages standardised
once). The optimisation loop is untouched: ``SAPGLoss`` takes ``ClipPPOLoss``'s arguments with its defaults, and
returns its outputs plus SAPG's. Both scripts below run as written.
"""

# %%
# The two scripts, as text: what runs below is exactly what the diff shows.
import difflib

import matplotlib.pyplot as plt
import torch

PPO = """\
env = TransformedEnv(EnvpoolEnv(N, "Pendulum-v1", seed=0, create_env_kwargs={"max_episode_steps": 64}), RewardSum())
actor = ProbabilisticActor(
    TensorDictModule(nn.Sequential(MLP(3, 2, num_cells=[64, 64]), NormalParamExtractor()),
                     in_keys=["observation"], out_keys=["loc", "scale"]),
    in_keys=["loc", "scale"], distribution_class=IndependentNormal, return_log_prob=True)
critic = ValueOperator(MLP(3, 1, num_cells=[64, 64]), in_keys=["observation"])
loss = ClipPPOLoss(actor, critic)
gae = GAE(gamma=0.99, lmbda=0.95, value_network=critic)
optim = torch.optim.Adam(loss.parameters(), lr=1e-3)
for data in Collector(env, actor, frames_per_batch=N * T, total_frames=N * T * ITERATIONS):
    with torch.no_grad():
        gae(data)
    batch = data.reshape(-1)
    for epoch in range(EPOCHS):
        for minibatch in batch[torch.randperm(batch.numel())].split(batch.numel() // 4):
            out = loss(minibatch)
            total = sum(value for key, value in out.items() if key.startswith("loss_"))
            optim.zero_grad(); total.backward(); optim.step()
    log(data, leader=slice(None))
"""

SAPG = """\
layout = BlockLayout(num_envs=N, num_blocks=4)  # the leader: the last block
env = make_sapg_env(EnvpoolEnv(N, "Pendulum-v1", seed=0, create_env_kwargs={"max_episode_steps": 64}), layout.block_ids())
actor, critic = make_actor_critic(3, 1, layout.num_blocks, hidden=(64, 64))
loss = SAPGLoss(actor, critic, entropy_coeff=block_entropy_coefficients(4, layout.leader, scale=0.005))
make_batch = TrainingBatch(loss, layout, aggregator=Aggregator(layout, critic), gamma=0.99, lmbda=0.95)
optim = torch.optim.Adam(loss.parameters(), lr=1e-3)
for data in Collector(env, actor, frames_per_batch=N * T, total_frames=N * T * ITERATIONS):
    batch = make_batch(data)
    for epoch in range(EPOCHS):
        for minibatch in batch[torch.randperm(batch.numel())].split(batch.numel() // 4):
            out = loss(minibatch)
            total = sum(value for key, value in out.items() if key.startswith("loss_"))
            optim.zero_grad(); total.backward(); optim.step()
    log(data, leader=slice(3 * N // 4, N))
"""

print("\n".join(difflib.unified_diff(PPO.splitlines(), SAPG.splitlines(), "ppo.py", "sapg.py", lineterm="", n=1)))

# %%
# What both scripts import, and the per-iteration log: the mean return of the episodes that ended in the
# leader's envs (every env for PPO). ``N = 64`` Pendulum envs, episodes cut to 64 steps.
# (the two scripts use these names through exec: they are not unused)
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.collectors import Collector
from torchrl.envs import RewardSum, TransformedEnv
from torchrl.modules import MLP, IndependentNormal, ProbabilisticActor, ValueOperator
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from sapg_torchrl import BlockLayout, SAPGLoss, block_entropy_coefficients, make_actor_critic
from sapg_torchrl.aggregation import Aggregator
from sapg_torchrl.envs import EnvpoolEnv, make_sapg_env
from sapg_torchrl.training import TrainingBatch

N, T, ITERATIONS, EPOCHS = 64, 16, 24, 3


def run(script: str) -> tuple[list[float], dict]:
    returns = []

    def log(data, leader):
        done = data["next", "done"][leader].squeeze(-1)
        finished = data["next", "episode_reward"][leader].squeeze(-1)[done]
        returns.append(finished.mean().item() if finished.numel() else float("nan"))

    torch.manual_seed(0)
    namespace = {**globals(), "log": log}
    exec(script, namespace)
    return returns, namespace["out"]


ppo_returns, ppo_out = run(PPO)
sapg_returns, sapg_out = run(SAPG)
print("ClipPPOLoss's outputs:", sorted(ppo_out.keys()))
print("SAPGLoss adds:", sorted(set(sapg_out.keys()) - set(ppo_out.keys())))

# %%
# The leader's return in both runs. 24 iterations (25k frames) show that both scripts train, not which learns
# better: the study (:doc:`/results`) answers that, with millions of frames and 5 seeds.
frames = torch.arange(1, ITERATIONS + 1) * N * T
fig, ax = plt.subplots(figsize=(7, 4))
for label, returns in (("ClipPPOLoss (every env)", ppo_returns), ("SAPGLoss (the leader's envs)", sapg_returns)):
    returns = torch.tensor(returns)
    seen = ~returns.isnan()
    ax.plot(frames[seen], returns[seen], marker="o", label=label)
ax.set(xlabel="env frames", ylabel="episode return", title="Pendulum: the same loop, two losses")
ax.legend()
fig.tight_layout()
