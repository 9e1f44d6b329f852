"""Data-parallel SAPG over ``G`` processes with ``torch.distributed``: what is reduced across ranks, and when.

One run, not ``G`` runs. Each rank simulates ``N / G`` envs holding an equal share of every block (the released
code's multi-GPU layout), runs the same aggregation draws (same seed on every rank), and keeps identical
parameters: after every minibatch's backward pass the gradients are averaged across ranks in one flat
all-reduce. Everything the update reads from the whole batch is global: advantage standardisation
(:func:`~sapg_torchrl.targets.standardize_advantage` with ``all_sum``), the value
and observation normalisers' statistics (merged exactly: counts, sums and squared deviations), the KL that
drives the learning rate. Episode returns are gathered once per iteration for the metrics.

TorchRL's losses are functional (parameters held by the loss module, gradients taken through them), and
``DistributedDataParallel`` wraps a module's forward instead; the gradient all-reduce is therefore written here,
on one flat buffer, as DDP would do it for a single bucket.

Launch with ``torchrun``: the process group is read from its environment variables (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); NCCL on GPUs (one per local rank), gloo on CPU.
Without them (a plain ``python`` launch) :func:`from_environment` returns the single-process
:data:`SINGLE`, whose reductions do nothing. A run holds the group for its extent with :func:`process_group`,
which leaves it when the run ends.

Examples:
    >>> import torch
    >>> SINGLE.world_size, SINGLE.is_main
    (1, True)
    >>> SINGLE.all_sum(torch.tensor([1.0, 2.0]))  # one process: the tensor itself
    tensor([1., 2.])
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

from sapg_torchrl.errors import ConfigError, Preempted

__all__ = [
    "BACKENDS", "Ranks", "SINGLE", "from_environment", "process_group", "split_envs", "update_running_norm",
]  # fmt: skip

BACKENDS = ("auto", "nccl", "gloo")


class Ranks:
    """The processes of one run and the reductions the training loop needs; ``world_size == 1`` reduces nothing.

    Args:
        rank (int): this process's rank. Defaults to ``0``.
        world_size (int): the number of processes ``G``. Defaults to ``1``.
        local_rank (int): this process's rank on its node (its GPU). Defaults to ``0``.
        device (torch.device): where the collectives' tensors live (the rank's GPU under NCCL). Defaults to the
            CPU.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, device: torch.device | str = "cpu"):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.device = torch.device(device)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes the run folder, logs, checkpoints and evaluates."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def __repr__(self) -> str:
        return f"Ranks(rank={self.rank}, world_size={self.world_size}, local_rank={self.local_rank})"

    # -- reductions (all ranks must call them, in the same order) ------------------------------------------
    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of ``tensor`` (a new tensor; the input is left as it is)."""
        if not self.distributed:
            return tensor
        total = tensor.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def all_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of ``tensor``."""
        return self.all_sum(tensor) / self.world_size if self.distributed else tensor

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` stacked along a new first dimension, in rank order (``[G, *shape]``)."""
        if not self.distributed:
            return tensor.unsqueeze(0)
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(out, tensor.contiguous())
        return torch.stack(out)

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        """Replaces every parameter's gradient by its mean over ranks, in one all-reduce of a flat buffer (a
        parameter without a gradient counts as zeros, on every rank alike)."""
        if not self.distributed:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        for p, chunk in zip(params, flat.split([g.numel() for g in grads])):
            p.grad = chunk.view_as(p).clone() if p.grad is None else p.grad.copy_(chunk.view_as(p))

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` (any picklable object) on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def broadcast_(self, tensors) -> None:
        """Overwrites ``tensors`` (parameters, buffers) with rank 0's values."""
        if not self.distributed:
            return
        for tensor in tensors:
            dist.broadcast(tensor.data, src=0)

    def check_in_sync(self, tensors, iteration: int) -> None:
        """Raises ``RuntimeError`` if the ranks' ``tensors`` (the parameters) differ: a cheap checksum (sum and
        sum of squares, in float64) compared across ranks. One host sync."""
        if not self.distributed:
            return
        local = torch.stack([sum(t.detach().double().sum() for t in tensors), sum(t.detach().double().square().sum() for t in tensors)])
        gathered = self.all_gather(local)
        spread = (gathered - gathered[0]).abs().max()
        if float(spread) > 1e-6 * float(gathered[0].abs().max().clamp_min(1.0)):
            raise RuntimeError(
                f"ranks drifted apart at iteration {iteration}: parameter checksums {gathered[:, 0].tolist()} differ "
                "(the ranks no longer train one model; was a rank's gradient step skipped?)"
            )


SINGLE = Ranks()
"""One process: every reduction is the identity."""


def from_environment(backend: str = "auto", device_type: str = "cpu") -> Ranks:
    """The process group of a ``torchrun`` launch (joined here, once), or :data:`SINGLE` without one.

    Args:
        backend (str): ``auto`` (NCCL when the learner is on CUDA, gloo otherwise), ``nccl`` or ``gloo``.
        device_type (str): ``cuda`` or ``cpu``, the learner's.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"train.distributed_backend={backend!r} is not accepted: use one of {', '.join(BACKENDS)}")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "auto":
        backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl" and device_type != "cuda":
        raise ConfigError("train.distributed_backend='nccl' needs device=cuda: use gloo on the CPU")
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        # a rank that dies leaves the others in a collective: torchrun stops them, and the timeout bounds it
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=10))
    return Ranks(rank, world_size, local_rank, device=f"cuda:{local_rank}" if backend == "nccl" else "cpu")


@contextlib.contextmanager
def process_group(backend: str = "auto", device_type: str = "cpu") -> Iterator[Ranks]:
    """:func:`from_environment`'s ranks for the extent of one run: a group joined here is left
    (``destroy_process_group``) by every rank when its run ends.

    Left to the interpreter's exit instead, the group can be destroyed after the interpreter began tearing down,
    its threads still joinable: gloo then aborts the process (SIGABRT, ``terminate called without an active
    exception``) and torchrun fails a run that finished. A run stopped by a signal
    (:class:`~sapg_torchrl.errors.Preempted`: every rank stops after the same iteration) leaves it too; after any
    other error it is not left, since another rank may be inside a collective that destroying the group would
    wait on (torchrun stops the other ranks).

    Args:
        backend (str): as :func:`from_environment`'s.
        device_type (str): as :func:`from_environment`'s.

    Examples:
        >>> with process_group() as ranks:  # no torchrun: one process, no group to join or leave
        ...     ranks is SINGLE
        True
    """
    joins = not dist.is_initialized()
    ranks = from_environment(backend, device_type)
    leave = joins and ranks.distributed
    try:
        yield ranks
    except Preempted:
        if leave:
            dist.destroy_process_group()
        raise
    if leave:
        dist.destroy_process_group()


@torch.no_grad()
def update_running_norm(norm, values: torch.Tensor, ranks: Ranks) -> None:
    """Updates a TorchRL ``RunningValueNorm`` with the union of every rank's ``values`` (``[*rows, *shape]``),
    exactly as one process holding all of them would (Chan et al.'s merge of count, mean and squared deviations).

    TorchRL's ``RunningValueNorm.update`` takes the values themselves; gathering them would move the whole
    batch between ranks, so its merge is done here on the global moments instead (two small all-reduces).
    """
    if not ranks.distributed:
        norm.update(values)
        return
    values = values.detach().reshape(-1, *norm.shape)
    count = ranks.all_sum(torch.tensor(float(values.shape[0]), device=values.device))
    mean = ranks.all_sum(values.sum(0)) / count
    var = ranks.all_sum((values - mean).square().sum(0)) / count
    delta = mean - norm.mean
    total = norm.count + count
    norm.m2.copy_(norm.m2 + var * count + delta.square() * (norm.count * count / total))
    norm.mean.copy_(norm.mean + delta * (count / total))
    norm.count.fill_(float(total))


def split_envs(num_envs: int, num_blocks: int, world_size: int) -> int:
    """The envs of one rank, ``N / G``, each block's share equal: :class:`ConfigError` naming ``N``, ``M`` and ``G``
    and a valid ``N`` unless ``N`` is a multiple of ``M * G``."""
    unit = num_blocks * world_size
    if num_envs % unit:
        lower, upper = max(unit, num_envs // unit * unit), (num_envs // unit + 1) * unit
        raise ConfigError(
            f"env.num_envs={num_envs} cannot be split over {world_size} processes with num_blocks={num_blocks}: "
            f"use a multiple of num_blocks * processes = {unit} (e.g. {lower} or {upper})"
        )
    return num_envs // world_size
