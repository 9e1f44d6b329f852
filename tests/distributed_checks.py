"""Data-parallel checks that need several processes: ``torchrun --nproc_per_node=2 tests/distributed_checks.py OUT``
(gloo) has each rank compute on its share of one batch and save what the reductions give in ``OUT/rank<r>.pt``;
``tests/test_distributed.py`` compares that with one process on the whole batch (the same builders, below)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tensordict import TensorDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sapg_torchrl import SAPGLoss, make_actor_critic  # noqa: E402
from sapg_torchrl.training.distributed import SINGLE, Ranks, update_running_norm  # noqa: E402
from sapg_torchrl.targets import standardize_advantage  # noqa: E402

OBS, ACT, M, LEADER = 3, 2, 3, 2
ON_POLICY, RELABELLED = 12, 6  # rows; each rank gets every other row of each kind


def build_loss(disjoint: bool) -> SAPGLoss:
    torch.manual_seed(0)
    actor, critic = make_actor_critic(OBS, ACT, M, hidden=(16,), disjoint=disjoint)
    return SAPGLoss(actor, critic, entropy_coeff=torch.tensor([0.02, 0.01, 0.0]))


def batch_parts(loss: SAPGLoss) -> tuple[TensorDict, TensorDict]:
    """The on-policy rows (every block) and the relabelled rows (a follower's data, as the leader's)."""
    g = torch.Generator().manual_seed(1)
    parts = []
    for n, relabelled in ((ON_POLICY, False), (RELABELLED, True)):
        block = torch.full((n,), LEADER) if relabelled else torch.arange(n) % M
        td = TensorDict(observation=torch.randn(n, OBS, generator=g), block_id=block, batch_size=[n])
        with torch.no_grad():
            loss.actor_network(td)
            loss.critic_network(td)
            td["action"] = td["action"] + 0.5 * torch.randn(n, ACT, generator=g)
            td["action_log_prob"] = loss.actor_network.get_dist(td).log_prob(td["action"]) + 0.3 * torch.randn(n, generator=g)
        td["state_value"] = td["state_value"] + 0.3 * torch.randn(n, 1, generator=g)
        td["value_target"] = td["state_value"] + torch.randn(n, 1, generator=g)
        td["advantage"] = torch.randn(n, 1, generator=g)
        td["relabelled"] = torch.full((n,), relabelled)
        parts.append(td)
    return parts[0], parts[1]


def share(parts, rank: int, world_size: int) -> TensorDict:
    """Rank ``rank``'s rows: every ``world_size``-th row of each kind (the whole batch with one process)."""
    return torch.cat([part[rank::world_size] for part in parts])


def gradients(disjoint: bool, ranks: Ranks = SINGLE) -> list[torch.Tensor]:
    loss = build_loss(disjoint)
    out = loss(share(batch_parts(loss), ranks.rank, ranks.world_size))
    sum(value for key, value in out.items() if key.startswith("loss_")).backward()
    params = [p for p in loss.parameters() if p.requires_grad]
    ranks.average_gradients(params)
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]


def statistics_data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {
        "advantage": torch.randn(20, 1, generator=g) * 3 + 1,
        "block_id": torch.arange(20) % M,
        "values": [torch.randn(16, 3, generator=g) * s + s for s in (1.0, 5.0)],  # two normaliser updates
        "kl": torch.rand(8, generator=g),  # one epoch's per-minibatch KL, minibatches split over ranks
    }


def statistics(ranks: Ranks = SINGLE) -> dict[str, torch.Tensor]:
    from torchrl.modules.value_norm import RunningValueNorm

    data, r, g = statistics_data(), ranks.rank, ranks.world_size
    kwargs = {"all_sum": ranks.all_sum} if ranks.distributed else {}
    norm = RunningValueNorm(shape=3)
    for values in data["values"]:
        update_running_norm(norm, values[r::g], ranks)
    return {
        "global": standardize_advantage(data["advantage"][r::g], **kwargs),
        "per_block": standardize_advantage(data["advantage"][r::g], data["block_id"][r::g], M, **kwargs),
        "norm": torch.cat([norm.mean, norm.m2, norm.count[None]]),
        "kl": ranks.all_mean(data["kl"][r::g].mean()),
    }


def drift_is_caught(ranks: Ranks) -> bool:
    params = [torch.ones(3)]
    ranks.check_in_sync(params, iteration=1)  # equal: passes
    params[0] += ranks.rank  # rank 1 drifts
    try:
        ranks.check_in_sync(params, iteration=2)
    except RuntimeError as err:
        return "drifted apart at iteration 2" in str(err)
    return False


if __name__ == "__main__":
    from sapg_torchrl.training.distributed import process_group

    with process_group("gloo") as ranks:
        result = {
            "world_size": ranks.world_size,
            "grads_sapg": gradients(False, ranks),
            "grads_disjoint": gradients(True, ranks),
            "statistics": statistics(ranks),
            "drift_caught": drift_is_caught(ranks),
        }
    torch.save(result, Path(sys.argv[1]) / f"rank{ranks.rank}.pt")
