"""Plain ``torch.nn`` building blocks of SAPG's actor-critic: block conditioning and block-wise copies.

Everything here takes a per-row integer ``block_id`` (any leading batch shape). The conditioned modules
serve all blocks in one batched call; :class:`Blockwise` (the disjoint ablation's separate networks) runs
each block's copy on that block's rows.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn
from tensordict import NestedKey, TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase
from torch.func import functional_call, stack_module_state
from torchrl.modules import GRUModule, LSTMModule
from torchrl.modules.value_norm import RunningValueNorm

from sapg_torchrl.errors import ConfigError

__all__ = [
    "ACTIVATIONS", "mlp", "ConditionedMLP", "BlockLogStd", "Blockwise", "Concatenate", "Standardize", "Denormalize",
    "ClippedValueNorm", "ReuseIfPresent", "block_id_key", "has_memory", "num_blocks_of",
]  # fmt: skip

ACTIVATIONS: dict[str, type[nn.Module]] = {"elu": nn.ELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}


def mlp(in_features: int, hidden: Sequence[int], activation: str = "elu") -> nn.Sequential:
    """``Linear -> activation`` for every width in ``hidden`` (the output width is ``hidden[-1]``)."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"activation={activation!r} is not accepted: use one of {sorted(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), ACTIVATIONS[activation]()]
        in_features = width
    return nn.Sequential(*layers)


class ConditionedMLP(nn.Module):
    """An MLP on ``cat(observation, phi[block_id])``: one network, conditioned per block.

    Args:
        observation_dim (int): width of the (already normalised) observation.
        hidden (sequence of int): hidden widths.
        phi (nn.Embedding): the per-block vectors, ``num_blocks x phi_dim``. Pass the same embedding to
            several trunks (actor and critic) to condition both on one vector per block.
        activation (str): ``"elu"`` (default), ``"relu"``, ``"tanh"`` or ``"silu"``.

    Examples:
        >>> phi = nn.Embedding(3, 4)
        >>> trunk = ConditionedMLP(5, [8, 8], phi)
        >>> trunk(torch.randn(10, 5), torch.randint(3, (10,))).shape
        torch.Size([10, 8])
    """

    def __init__(self, observation_dim: int, hidden: Sequence[int], phi: nn.Embedding, activation="elu"):
        super().__init__()
        self.phi = phi
        self.body = mlp(observation_dim + phi.embedding_dim, hidden, activation)

    def forward(self, observation: torch.Tensor, block_id: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([observation, self.phi(block_id)], dim=-1))


class BlockLogStd(nn.Module):
    """A state-independent, learned log-std vector per block (``num_blocks x action_dim``, init 0).

    Maps ``(loc, block_id)`` to ``(loc, scale)``. ``max_log_std`` optionally caps the log-std: with clipped
    actions a larger std changes nothing the env sees, so an entropy bonus would otherwise grow it without
    bound, and relabelled rows from such a follower get importance ratios of 0 under the leader.

    Examples:
        >>> head = BlockLogStd(num_blocks=2, action_dim=3)
        >>> loc, scale = head(torch.zeros(4, 3), torch.tensor([0, 0, 1, 1]))
        >>> scale
        tensor([[1., 1., 1.],
                [1., 1., 1.],
                [1., 1., 1.],
                [1., 1., 1.]], grad_fn=<ExpandBackward0>)
    """

    def __init__(self, num_blocks: int, action_dim: int, init: float = 0.0, max_log_std: float | None = None):
        super().__init__()
        self.log_std = nn.Parameter(torch.full((num_blocks, action_dim), float(init)))
        self.max_log_std = max_log_std

    def forward(self, loc: torch.Tensor, block_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.log_std.is_cuda:
            # On CUDA, indexing's backward is a sort-based kernel that serialises on the few distinct block ids (at
            # N = 24576 it was 42% of the update's GPU time, benchmarks/README.md); index_select's is an atomic add.
            # On the CPU indexing stays: its gradient sums are the ones every run so far was trained with.
            log_std = self.log_std.index_select(0, block_id.reshape(-1)).unflatten(0, block_id.shape)
        else:
            log_std = self.log_std[block_id]
        if self.max_log_std is not None:
            log_std = log_std.clamp(max=self.max_log_std)
        return loc, log_std.exp().expand_as(loc)


class Blockwise(nn.Module):
    """``num_blocks`` independent copies of a module, each row evaluated by its own block's copy.

    The copies' parameters are stacked (leading dim ``num_blocks``); no parameter is shared between blocks,
    so a row of block ``b`` only sends gradient to slice ``b``. Rows are sorted by block and each copy runs
    on its own rows only (one ``functional_call`` per block): the FLOPs of one network, not ``num_blocks``
    times them as a vmap of every copy over every row would cost. The price is one host sync per call (the
    rows per block), only in the ``disjoint`` ablation, which is measured for its samples, not its speed.

    Args:
        factory (callable): builds one copy; called ``num_blocks`` times (independent initialisations).
        num_blocks (int): number of copies.

    Examples:
        >>> blockwise = Blockwise(lambda: nn.Linear(3, 2), num_blocks=4)
        >>> blockwise(torch.randn(5, 3), block_id=torch.tensor([0, 1, 2, 3, 0])).shape
        torch.Size([5, 2])
    """

    def __init__(self, factory: Callable[[], nn.Module], num_blocks: int):
        super().__init__()
        copies = [factory() for _ in range(num_blocks)]
        params, buffers = stack_module_state(copies)
        if buffers:
            raise ConfigError("Blockwise copies cannot hold buffers (running statistics)")
        self._names = list(params)
        self.stacked = nn.ParameterList([nn.Parameter(params[name]) for name in self._names])
        # a parameter-free template whose structure functional_call fills with each block's slice
        self._template = [copy.deepcopy(copies[0]).to("meta")]

    def forward(self, *inputs: torch.Tensor, block_id: torch.Tensor) -> torch.Tensor:
        batch_shape = block_id.shape
        ids = block_id.reshape(-1)
        order = torch.argsort(ids, stable=True)
        rows_per_block = torch.bincount(ids, minlength=len(self.stacked[0])).tolist()  # the host sync
        grouped = [x.reshape(-1, x.shape[-1])[order].split(rows_per_block) for x in inputs]
        outs = [
            functional_call(self._template[0], {name: p[b] for name, p in zip(self._names, self.stacked)}, xs)
            for b, xs in enumerate(zip(*grouped))
        ]
        out = torch.empty_like(torch.cat(outs)).index_copy(0, order, torch.cat(outs))
        return out.reshape(*batch_shape, out.shape[-1])


class Concatenate(nn.Module):
    """Concatenates its inputs along the last dimension: an asymmetric critic's observation entries as one vector.

    Examples:
        >>> Concatenate()(torch.zeros(4, 3), torch.ones(4, 2)).shape
        torch.Size([4, 5])
    """

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.cat(inputs, dim=-1)


class Denormalize(nn.Module):
    """Maps a normalised critic output to the real value scale with a TorchRL ``ValueNorm``.

    The critic's last layer thus learns normalised values (as in rl_games) while everything downstream
    (GAE, TD targets) sees real-scale values; :class:`~sapg_torchrl.SAPGLoss` normalises again with
    the same statistics before the regression.
    """

    def __init__(self, value_norm):
        super().__init__()
        self.value_norm = value_norm

    def forward(self, normalised_value: torch.Tensor) -> torch.Tensor:
        return self.value_norm.denormalize(normalised_value)


class ClippedValueNorm(RunningValueNorm):
    """TorchRL's ``RunningValueNorm`` whose normalised values lie in ``[-clip, clip]``, as rl_games'
    ``RunningMeanStd``: :meth:`normalize` clips its result and :meth:`denormalize` its input. As the value
    normaliser (``ppo.value_norm_clip``, the released code's 5), the loss regresses clipped targets and the critic
    predicts values within ``clip`` standard deviations of the running mean. ``clip=None`` clips nothing (it is then
    ``RunningValueNorm``). Same statistics and state as ``RunningValueNorm``; :meth:`normalize_all` normalises several
    tensors with the statistics read once (``RunningValueNorm`` recomputes its variance at every call: operators a
    minibatch step pays).

    Examples:
        >>> norm = ClippedValueNorm(clip=5.0)
        >>> norm.update(torch.tensor([[0.0], [2.0]]))  # mean 1, std 1
        >>> norm.normalize(torch.tensor([[100.0]])), norm.denormalize(torch.tensor([[9.0]]))
        (tensor([[5.]]), tensor([[6.]]))
    """

    def __init__(self, *, clip: float | None, shape: int | tuple[int, ...] = 1, epsilon: float = 1e-5, device=None):
        super().__init__(shape=shape, epsilon=epsilon, device=device)
        self.clip = clip

    def normalize_all(self, *values: torch.Tensor | None) -> list[torch.Tensor | None]:
        """:meth:`normalize` of each of ``values`` (``None`` stays ``None``), the same numbers."""
        mean, scale = self.mean, self.scale()  # RunningValueNorm.normalize's (v - mean) / sqrt(var)
        out = [None if v is None else (v - mean) / scale for v in values]
        return out if self.clip is None else [None if o is None else o.clamp(-self.clip, self.clip) for o in out]

    def normalize(self, value_target: torch.Tensor) -> torch.Tensor:
        return self.normalize_all(value_target)[0]

    def denormalize(self, normalised_value: torch.Tensor) -> torch.Tensor:
        clipped = normalised_value if self.clip is None else normalised_value.clamp(-self.clip, self.clip)
        return super().denormalize(clipped)


class Standardize(nn.Module):
    """Standardises observations with running statistics (a TorchRL ``ValueNorm`` of the observation's
    shape, e.g. ``RunningValueNorm(shape=obs_dim)``: exact mean and variance over all envs and steps) and
    clips the result to ``[-clip, clip]``, as rl_games does. Nothing here updates the statistics."""

    def __init__(self, norm, clip: float = 5.0):
        super().__init__()
        self.norm = norm
        self.clip = clip

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        return self.norm.normalize(observation).clamp(-self.clip, self.clip)


class ReuseIfPresent(TensorDictModuleBase):
    """Runs ``module`` unless all its ``out_keys`` are already in the input tensordict, then reuses them.

    Wraps the trunk that the actor and the critic share: :class:`~sapg_torchrl.SAPGLoss` computes it once
    per minibatch and both heads reuse the result, instead of running the trunk twice. Elsewhere its
    output never leaves the actor or the critic (they select only their own outputs), so nothing stale is
    reused.
    """

    def __init__(self, module: TensorDictModuleBase):
        super().__init__()
        self.module = module
        self.in_keys = list(module.in_keys)
        self.out_keys = list(module.out_keys)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        keys = tensordict.keys(True)
        if all(key in keys for key in self.out_keys):
            return tensordict
        return self.module(tensordict)


def has_memory(network: nn.Module) -> bool:
    """Whether ``network`` holds a TorchRL recurrent module (``LSTMModule``, ``GRUModule``): its outputs then depend on
    a hidden state carried from step to step, not on the step's inputs alone.

    Examples:
        >>> from sapg_torchrl import make_actor_critic
        >>> has_memory(make_actor_critic(3, 2, num_blocks=2, hidden=(8,))[0])
        False
        >>> has_memory(make_actor_critic(3, 2, num_blocks=2, hidden=(8,), lstm_size=4)[0])
        True
    """
    return any(isinstance(module, (LSTMModule, GRUModule)) for module in network.modules())


def block_id_key(network: nn.Module) -> NestedKey | None:
    """The key a tensordict network feeds to its modules' ``block_id`` argument (``make_actor_critic``'s
    ``block_id_key``), or ``None`` when no module of it takes one: the one place the block id is named, which
    :class:`~sapg_torchrl.SAPGLoss` and the :class:`~sapg_torchrl.aggregation.Aggregator` follow.

    Examples:
        >>> from sapg_torchrl import make_actor_critic
        >>> actor, critic = make_actor_critic(3, 2, num_blocks=2, hidden=(8,), block_id_key="blk")
        >>> block_id_key(actor), block_id_key(critic), block_id_key(nn.Linear(2, 2))
        ('blk', 'blk', None)
    """
    for module in network.modules():
        if isinstance(module, TensorDictModule) and callable(module.module):
            function = module.module.forward if isinstance(module.module, nn.Module) else module.module
            try:
                arguments = list(inspect.signature(function).parameters)
            except (TypeError, ValueError):  # a builtin without a signature
                continue
            if "block_id" in arguments and arguments.index("block_id") < len(module.in_keys):
                return module.in_keys[arguments.index("block_id")]
    return None


def num_blocks_of(network: nn.Module) -> int | None:
    """The number of blocks of a network with a :class:`BlockLogStd` (every actor of ``make_actor_critic``), else
    ``None``."""
    for module in network.modules():
        if isinstance(module, BlockLogStd):
            return module.log_std.shape[0]
    return None
