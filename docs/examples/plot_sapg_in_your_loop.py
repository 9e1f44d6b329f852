"""
SAPG in your own TorchRL loop
=============================

The library's pieces drop into a plain TorchRL training loop: a batched env with block ids, a
block-conditioned actor-critic, TorchRL's :class:`~torchrl.collectors.Collector` and
the :class:`~sapg_torchrl.aggregation.Aggregator` that relabels a follower block's data to the leader,
:class:`~sapg_torchrl.training.TrainingBatch` (targets, relabelled rows and advantages in one call) and
:class:`~sapg_torchrl.SAPGLoss`. This is what :class:`~sapg_torchrl.training.Runner` and
:class:`~sapg_torchrl.training.PPOUpdate` do, without their normalisers, adaptive learning rate, evaluation and
checkpoints.
"""

# %%
# The env: ``N = 96`` Pendulum envs (envpool, episodes cut to 64 steps so that returns come often) in ``M = 6``
# blocks of 16. :func:`~sapg_torchrl.envs.make_sapg_env` adds the block id of every env and the running episode
# return.
import matplotlib.pyplot as plt
import torch
from torchrl.collectors import Collector

from sapg_torchrl import BlockLayout, SAPGLoss, block_entropy_coefficients, make_actor_critic
from sapg_torchrl.aggregation import Aggregator
from sapg_torchrl.envs import EnvpoolEnv, make_sapg_env
from sapg_torchrl.training import TrainingBatch

torch.manual_seed(0)
N, M, T, ITERATIONS, EPOCHS, MINIBATCHES = 96, 6, 16, 36, 3, 4
layout = BlockLayout(num_envs=N, num_blocks=M)  # the leader is the last block, as in the released code
base = EnvpoolEnv(N, "Pendulum-v1", seed=0, create_env_kwargs={"max_episode_steps": 64})
env = make_sapg_env(base, layout.block_ids(), reward_scale=0.1)
print(layout, "envs per block:", layout.block_ids().bincount().tolist())

# %%
# One network runs every block, conditioned on a learned vector ``phi`` per block. The followers get larger
# entropy bonuses than the leader (the released code's schedule). The loss's critic is the released code's (a
# squared error, weight 2, clipped); without those arguments it is ``ClipPPOLoss``'s.
actor, critic = make_actor_critic(3, 1, M, hidden=(64, 64))
coefficients = block_entropy_coefficients(M, layout.leader, scale=0.005)
loss = SAPGLoss(actor, critic, entropy_coeff=coefficients, critic_coeff=2.0, loss_critic_type="l2", clip_value=True)
aggregate = Aggregator(layout, critic, off_policy_ratio=1)  # one follower block relabelled to the leader
make_batch = TrainingBatch(loss, layout, aggregator=aggregate, gamma=0.99, lmbda=0.95)
optim = torch.optim.Adam(loss.parameters(), lr=1e-3)
print("entropy coefficient per block:", [round(c, 4) for c in coefficients.tolist()])

# %%
# The loop. Each iteration collects ``[N, T]``; ``make_batch`` computes the on-policy GAE targets, adds the
# relabelled rows (the followers' data as the leader's, with one-step TD targets and the behaviour log-probs for
# the importance ratio) and standardises the advantages; a few epochs of minibatches then run through the loss.
# The episode returns that ended in the batch are averaged per block.
returns = []  # per iteration: mean episode return of each block
collector = Collector(env, actor, frames_per_batch=N * T, total_frames=N * T * ITERATIONS)
for data in collector:
    batch = make_batch(data)  # [(N + K * B) * T] rows
    for _ in range(EPOCHS):
        for minibatch in batch[torch.randperm(batch.numel())].split(batch.numel() // MINIBATCHES):
            out = loss(minibatch)
            total = sum(value for key, value in out.items() if key.startswith("loss_"))
            optim.zero_grad()
            total.backward()
            torch.nn.utils.clip_grad_norm_(loss.parameters(), 1.0)
            optim.step()
    done = data["next", "done"].squeeze(-1)
    finished = data["next", "episode_reward"].squeeze(-1)[done]
    blocks = data["block_id"][done]
    returns.append([finished[blocks == b].mean().item() if (blocks == b).any() else float("nan") for b in range(M)])
collector.shutdown()
print("last minibatch's diagnostics:", {k: round(out[k].item(), 3) for k in ("is_ratio_mean", "clip_fraction")})

# %%
# Every block's return over training (a block's return is measured every ``64 / T`` iterations, when its
# episodes end). The leader learns from its own data and from one follower block's. 55k frames are far too
# few to solve Pendulum: the page shows the mechanics; ``sapg-train`` (with normalisers, the KL-adaptive
# learning rate and millions of frames) is the way to train.
returns = torch.tensor(returns)
frames = torch.arange(1, ITERATIONS + 1) * N * T
fig, ax = plt.subplots(figsize=(7, 4))
for b in range(M):
    seen = ~returns[:, b].isnan()
    label = f"block {b}" + (" (leader)" if b == layout.leader else "")
    ax.plot(frames[seen], returns[seen, b], marker="o", lw=2.5 if b == layout.leader else 1, label=label)
ax.set(xlabel="env frames", ylabel="episode return", title="Pendulum: per-block returns")
ax.legend(fontsize=8)
fig.tight_layout()
