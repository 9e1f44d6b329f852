"""Value targets and advantages beyond TorchRL's estimators: the rollout's state values (recurrent critics
included), n-step returns and block-wise standardisation."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDictBase
from torchrl.modules import set_recurrent_mode

from sapg_torchrl.nn import has_memory

__all__ = [
    "ADVANTAGE_NORMS", "CRITIC_TARGETS", "fill_lost_final_observations", "n_step_return", "rollout_state_values",
    "standardize_advantage",
]  # fmt: skip

CRITIC_TARGETS = ("gae", "n_step")
"""The critic's targets: GAE's lambda-return (the released code) or :func:`n_step_return` (the paper)."""
ADVANTAGE_NORMS = ("global", "per_block", "none")
"""How :func:`standardize_advantage` is applied: once over the batch (the code), per block, or not at all."""


@torch.no_grad()
def fill_lost_final_observations(data: TensorDictBase, keys=("observation",)) -> TensorDictBase:
    """Puts ``s_t`` where ``s_{t+1}`` was lost, in place: an env that resets inside its step (TorchRL's native
    auto-reset, e.g. :class:`~sapg_torchrl.envs.pendulum.TorchPendulumEnv` or TorchRL's MJLab wrapper) leaves NaN as
    the next observation of the step that ended an episode. A truncated step then bootstraps from ``V(s_t)``, the
    released code's ``r_t += gamma V(s_t)`` at a time-out, and TorchRL's own estimators' substitution; a terminated
    one does not bootstrap at all. Branch-free (no host sync). ``keys``: the observation entries (an asymmetric
    critic's too).

    Examples:
        >>> from tensordict import TensorDict
        >>> data = TensorDict(observation=torch.ones(1, 2, 1), next=TensorDict(observation=torch.tensor([[[2.0], [float("nan")]]]),
        ...     batch_size=[1, 2]), batch_size=[1, 2])
        >>> fill_lost_final_observations(data)["next", "observation"].flatten()
        tensor([2., 1.])
    """
    following = data.get("next")
    for key in keys:
        final = following.get(key)
        following.set(key, torch.where(final.isnan(), data.get(key), final))
    return data


@torch.no_grad()
def rollout_state_values(
    critic, data: TensorDictBase, value_key="state_value", values_in_data: bool = False
) -> TensorDictBase:
    """Writes ``V(s_t)`` into ``data`` and ``V(s_{t+1})`` into ``data["next"]``, for a ``[N, T]`` rollout.

    A feedforward critic runs once over the rollout's states (not at all with ``values_in_data``: the values the
    collector's policy wrote, :func:`~sapg_torchrl.actor_critic.rollout_policy`), and ``V(s_{t+1})`` is the next step's ``V(s_t)``
    wherever the critic's inputs at ``("next", t)`` are those at ``t + 1`` (in a collected rollout: wherever the
    episode goes on); the critic runs again only on the other rows (true final states, the last step) on a CPU, or
    on every next state on another device (gathering rows would wait on the host there). A recurrent one (a TorchRL
    ``LSTMModule`` inside) gets ``V(s_t)`` over each env's sequence, from its hidden state stored at ``t = 0`` and
    reset where ``is_init`` is set, as the loss will evaluate it, and ``V(s_{t+1})`` one step on from the hidden
    state stored after step ``t``. The critic reads copies: TorchRL's recurrent mode writes placeholders over the
    stored next hidden states.

    Examples:
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> critic = TensorDictModule(torch.nn.Linear(2, 1), in_keys=["observation"], out_keys=["state_value"])
        >>> states = torch.randn(3, 5, 2)
        >>> following = states[:, 1:].clone()
        >>> following[0, 1] += 1  # env 0's episode ended at t = 1: its next state is not the state of t = 2
        >>> data = TensorDict(observation=states[:, :4], next=TensorDict(observation=following, batch_size=[3, 4]),
        ...     batch_size=[3, 4])
        >>> values = rollout_state_values(critic, data)
        >>> torch.allclose(values["next", "state_value"], critic(data["next"].clone())["state_value"])
        True
    """
    following = data.get("next")
    if has_memory(critic):
        with set_recurrent_mode(False):
            following.set(value_key, critic(following.select(*critic.in_keys, strict=False)).get(value_key))
        with set_recurrent_mode(True):
            data.set(value_key, critic(data.select(*critic.in_keys, strict=False)).get(value_key))
        return data
    inputs, next_inputs = data.select(*critic.in_keys, strict=False), following.select(*critic.in_keys, strict=False)
    value = data.get(value_key) if values_in_data else critic(inputs.clone(False)).get(value_key)
    data.set(value_key, value)
    # the rows whose next inputs are not the following step's inputs (and the last step's)
    fresh = torch.ones(data.shape, dtype=torch.bool, device=value.device)
    fresh[..., :-1] = False
    later, now = next_inputs[..., :-1], inputs[..., 1:]
    for key in later.keys(True, True):
        differs = later.get(key) != now.get(key)
        fresh[..., :-1] |= differs.reshape(*later.shape, -1).any(-1)
    next_value = torch.cat([value[..., 1:, :], value[..., -1:, :]], -2)
    if value.device.type != "cpu":
        computed = critic(next_inputs.clone(False)).get(value_key)
        following.set(value_key, torch.where(fresh.unsqueeze(-1), computed, next_value))
        return data
    rows = fresh.reshape(-1).nonzero().squeeze(-1)
    next_value.reshape(-1, next_value.shape[-1])[rows] = critic(next_inputs.reshape(-1)[rows]).get(value_key)
    following.set(value_key, next_value)
    return data


def n_step_return(
    reward: torch.Tensor,
    next_value: torch.Tensor,
    done: torch.Tensor,
    terminated: torch.Tensor,
    *,
    gamma: float,
    n: int,
) -> torch.Tensor:
    """``n``-step bootstrapped returns over a rollout, time along dim ``-2`` (``[..., T, 1]``).

    ``G_t = r_t + gamma r_{t+1} + ... + gamma^k V(s_{t+k})`` with ``k <= n``: the sum stops at an
    episode end (bootstrapping from the final state's value when the episode was truncated, not when it
    terminated) and at the end of the rollout. ``n = 1`` is the TD(0) target. The paper's critic target
    is ``n = 3``.

    Examples:
        >>> r = torch.ones(1, 4, 1); v = torch.zeros(1, 4, 1); f = torch.zeros(1, 4, 1, dtype=torch.bool)
        >>> n_step_return(r, v, f, f, gamma=0.5, n=2).flatten()
        tensor([1.5000, 1.5000, 1.5000, 1.0000])
    """
    if n < 1:
        raise ValueError(f"n={n} is not accepted: it must be >= 1")
    not_terminated = (~terminated).to(reward.dtype)
    cut = done.clone()
    cut[..., -1, :] = True  # the rollout ends: bootstrap from V(s_T)
    ret = reward + gamma * not_terminated * next_value  # n = 1
    for _ in range(n - 1):
        ahead = torch.cat([ret[..., 1:, :], torch.zeros_like(ret[..., :1, :])], dim=-2)
        ret = reward + gamma * not_terminated * torch.where(cut, next_value, ahead)
    return ret


def standardize_advantage(
    advantage: torch.Tensor,
    block_id: torch.Tensor | None = None,
    num_blocks: int | None = None,
    eps: float = 1e-8,
    all_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Zero-mean, unit-std advantages over the whole batch, or per block when ``block_id`` is given.

    Args:
        advantage (Tensor): ``[*rows, 1]``.
        block_id (Tensor, optional): ``[*rows]`` integer blocks; standardise within each block.
        num_blocks (int, optional): number of blocks (needed with ``block_id``).
        eps (float): added to the standard deviation.
        all_sum (callable, optional): sums a tensor over the processes of a data-parallel run
            (:meth:`sapg_torchrl.training.distributed.Ranks.all_sum`): the mean and standard deviation are then those of
            every process's rows together.

    Examples:
        >>> adv = torch.tensor([[1.0], [3.0], [10.0], [30.0]])
        >>> standardize_advantage(adv, torch.tensor([0, 0, 1, 1]), num_blocks=2).flatten()
        tensor([-1.,  1., -1.,  1.])
    """
    if block_id is None and all_sum is None:
        return (advantage - advantage.mean()) / (advantage.std(correction=0) + eps)
    all_sum = all_sum or (lambda x: x)
    flat = advantage.reshape(-1)
    ids = torch.zeros_like(flat, dtype=torch.long) if block_id is None else block_id.reshape(-1)
    num_blocks = 1 if block_id is None else num_blocks
    count = torch.zeros(num_blocks, device=flat.device).index_add_(0, ids, torch.ones_like(flat))
    total = torch.zeros(num_blocks, device=flat.device).index_add_(0, ids, flat)
    count, total = all_sum(torch.stack([count, total])).unbind(0)
    mean = total / count.clamp_min(1)
    centred = flat - mean[ids]
    var = all_sum(torch.zeros(num_blocks, device=flat.device).index_add_(0, ids, centred**2)) / count.clamp_min(1)
    return (centred / (var[ids].sqrt() + eps)).reshape(advantage.shape)
