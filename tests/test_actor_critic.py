"""The block-conditioned actor-critic: where each block's gradients go."""

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.modules.value_norm import RunningValueNorm

from sapg_torchrl import make_actor_critic
from sapg_torchrl.nn import Blockwise, BlockLogStd, ConditionedMLP, Standardize

OBS, ACT, M = 5, 2, 4


def batch(block, rows=6):
    ids = torch.full((rows,), block) if isinstance(block, int) else torch.as_tensor(block)
    return TensorDict(observation=torch.randn(len(ids), OBS), block_id=ids, batch_size=[len(ids)])


def backward_all(actor, critic, td):
    """Backpropagates a loss touching the mean, the std and the value."""
    for p in {*actor.parameters(), *critic.parameters()}:
        p.grad = None
    out = actor(td.clone())
    value = critic(td.clone())["state_value"]
    (out["loc"].pow(2).sum() + out["scale"].log().sum() + value.pow(2).sum()).backward()


def only_module(net, kind):
    found = {id(m): m for m in net.modules() if isinstance(m, kind)}
    assert len(found) == 1, f"expected one {kind.__name__}, found {len(found)}"
    return next(iter(found.values()))


def nonzero_rows(grad):
    return grad.reshape(grad.shape[0], -1).abs().sum(-1).nonzero().flatten().tolist()


@pytest.mark.parametrize("shared_trunk", [True, False])
@pytest.mark.parametrize("block", [0, 2])
def test_phi_gets_gradient_only_from_its_rows(shared_trunk, block):
    """phi_b receives gradient only from rows labelled b (policy and value terms)."""
    torch.manual_seed(0)
    actor, critic = make_actor_critic(OBS, ACT, M, hidden=(16,), phi_dim=3, shared_trunk=shared_trunk)
    phi = only_module(nn.ModuleList([actor, critic]), nn.Embedding)
    backward_all(actor, critic, batch(block))
    assert nonzero_rows(phi.weight.grad) == [block]


@pytest.mark.parametrize("disjoint", [False, True])
def test_log_std_gets_gradient_only_at_its_row(disjoint):
    """Each block's log-std vector receives gradient only from its own rows."""
    actor, critic = make_actor_critic(OBS, ACT, M, hidden=(16,), disjoint=disjoint)
    log_std = only_module(actor, BlockLogStd).log_std
    assert log_std.shape == (M, ACT) and torch.all(log_std == 0)
    backward_all(actor, critic, batch([1, 1, 3]))
    assert nonzero_rows(log_std.grad) == [1, 3]


def test_disjoint_blocks_share_no_parameter():
    """Disjoint: no phi, every parameter is stacked per block and a block's rows only reach its slice."""
    torch.manual_seed(0)
    actor, critic = make_actor_critic(OBS, ACT, M, hidden=(16, 16), disjoint=True)
    nets = nn.ModuleList([actor, critic])
    assert not any(isinstance(m, nn.Embedding) for m in nets.modules())
    params = list(nets.parameters())
    assert all(p.shape[0] == M for p in params)
    stacked = [p for m in nets.modules() if isinstance(m, Blockwise) for p in m.stacked]
    assert len(stacked) == len(params) - 1  # everything but the log-std
    for block in range(M):
        backward_all(actor, critic, batch(block))
        for p in params:
            assert nonzero_rows(p.grad) == [block]


def test_disjoint_copies_are_independent_networks():
    """Disjoint: the same observation gives different outputs under different blocks (independent inits)."""
    torch.manual_seed(0)
    actor, critic = make_actor_critic(OBS, ACT, M, hidden=(16,), disjoint=True)
    obs = torch.randn(1, OBS).expand(M, OBS)
    td = TensorDict(observation=obs, block_id=torch.arange(M), batch_size=[M])
    values = critic(td)["state_value"].flatten()
    assert values.unique().numel() == M


def test_blockwise_rows_get_their_own_copy_in_any_order():
    """Blockwise: each row, wherever it sits and whatever the other rows' blocks, equals its block's copy."""
    torch.manual_seed(0)
    blockwise = Blockwise(lambda: nn.Sequential(nn.Linear(3, 8), nn.ELU(), nn.Linear(8, 2)), num_blocks=3)
    x, ids = torch.randn(2, 7, 3), torch.tensor([[2, 0, 2, 1, 0, 0, 2], [1, 1, 1, 1, 1, 1, 1]])
    out = blockwise(x, block_id=ids)
    assert out.shape == (2, 7, 2)
    for index in torch.cartesian_prod(torch.arange(2), torch.arange(7)):
        i, t = index.tolist()
        alone = blockwise(x[i, t][None], block_id=ids[i, t][None])
        torch.testing.assert_close(out[i, t], alone[0])


def test_separate_trunks_are_disjoint_but_share_phi():
    """shared_trunk=False: actor and critic trunks share no parameter, both read the same phi."""
    torch.manual_seed(0)
    actor, critic = make_actor_critic(OBS, ACT, M, hidden=(16,), shared_trunk=False)
    phi_actor, phi_critic = only_module(actor, nn.Embedding), only_module(critic, nn.Embedding)
    assert phi_actor is phi_critic
    shared = {id(p) for p in actor.parameters()} & {id(p) for p in critic.parameters()}
    assert shared == {id(phi_actor.weight)}
    # the value alone sends gradient to phi but to no actor-only parameter
    critic(batch(1))["state_value"].sum().backward()
    assert nonzero_rows(phi_actor.weight.grad) == [1]
    assert all(p.grad is None for p in actor.parameters() if p is not phi_actor.weight)


def test_shared_trunk_shares_the_body():
    """shared_trunk=True: the critic reuses the actor's trunk; only the value head is its own."""
    actor, critic = make_actor_critic(OBS, ACT, M, hidden=(16,))
    actor_ids = {id(p) for p in actor.parameters()}
    own = [p for p in critic.parameters() if id(p) not in actor_ids]
    assert sorted(p.shape for p in own) == [torch.Size([1]), torch.Size([1, 16])]


def test_observation_norm_standardises_and_clips():
    """observation_norm standardises with the running statistics and clips to +-5; phi is not normalised."""
    torch.manual_seed(0)
    norm = RunningValueNorm(shape=OBS)
    data = torch.randn(1000, OBS) * torch.tensor([1.0, 2.0, 5.0, 10.0, 0.1]) + 3.0
    norm.update(data)
    actor, critic = make_actor_critic(OBS, ACT, M, hidden=(16,), observation_norm=norm)
    std = only_module(actor, Standardize)
    assert only_module(critic, Standardize) is std
    obs = torch.cat([data[:10], torch.full((1, OBS), 1e3), torch.full((1, OBS), -1e3)])
    expected = ((obs - data.mean(0)) / data.std(0, correction=0)).clamp(-5, 5)
    torch.testing.assert_close(std(obs), expected, rtol=1e-4, atol=1e-4)
    assert torch.all(std(obs)[-2] == 5) and torch.all(std(obs)[-1] == -5)
    # the trunk's input is cat(standardised observation, phi[block]): phi is never normalised
    trunk = only_module(actor, ConditionedMLP)
    seen = []
    trunk.body.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    ids = torch.arange(len(obs)) % M
    actor(TensorDict(observation=obs, block_id=ids, batch_size=[len(obs)]))
    torch.testing.assert_close(seen[0][:, :OBS], expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(seen[0][:, OBS:], trunk.phi.weight[ids])
