"""A uniform sample of the states a block visited over a whole run: a hook of the training loop, saved with every
checkpoint and, at the end of a run, as ``states.pt`` (read by :func:`sapg_torchrl.metrics.load_states` for the
diversity metrics)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from tensordict import TensorDictBase

__all__ = ["StateReservoir"]


class StateReservoir:
    """A training hook keeping a uniform random sample (reservoir) of the raw observations one block visited.

    Classic reservoir sampling (Vitter's algorithm R): after ``n`` states have been seen, the reservoir
    holds ``min(n, capacity)`` of them, each seen state with the same probability ``capacity / n``,
    without repeats. Each call is vectorised on the data's device: the ``k`` new states draw their target
    slots at once (state ``i``, 1-based over the run, goes to slot ``i - 1`` while ``i <= capacity``,
    otherwise to a uniform slot in ``[0, i)`` and is kept if that slot is ``< capacity``); when several new
    states draw the same slot the latest wins, exactly as in the sequential algorithm. The cost per call
    is ``O(k + capacity)`` tensor work and no host synchronisation.

    As a hook (``Runner(..., hooks=[reservoir])``) it reads ``data[observation_key]`` of the ``[N, T]``
    rollout (env-major, block-contiguous) and keeps the rows of one block. :meth:`update` takes states
    directly.

    Args:
        capacity (int): reservoir size.
        seed (int): seed of the slot draws. Defaults to ``0``.

    Keyword Args:
        block (int, "leader" or None): the block whose envs are sampled: ``"leader"`` (default,
            ``runner.layout.leader``), a block index, or ``None`` for all envs.
        observation_key (NestedKey): the raw observation. Defaults to ``"observation"``.

    Examples:
        >>> reservoir = StateReservoir(capacity=4, seed=0)
        >>> reservoir.update(torch.arange(10.0)[:, None])
        >>> reservoir.states.shape, reservoir.seen
        (torch.Size([4, 1]), 10)
        >>> len(set(reservoir.states.flatten().tolist()))  # no state twice
        4
    """

    def __init__(
        self, capacity: int, seed: int = 0, *, block: int | str | None = "leader", observation_key="observation"
    ):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity={capacity!r} is not accepted: it must be an integer >= 1")
        if not (block is None or block == "leader" or (isinstance(block, int) and not isinstance(block, bool))):
            raise ValueError(f"block={block!r} is not accepted: use 'leader', a block index or None")
        self.capacity = capacity
        self.seed = int(seed)
        self.block = block
        self.observation_key = observation_key
        self.seen = 0
        self._buffer: torch.Tensor | None = None
        self._generator: torch.Generator | None = None

    # ------------------------------------------------------------------------------------------- hook
    def __call__(self, runner, data: TensorDictBase) -> None:
        """Adds the chosen block's observations of the ``[N, T]`` rollout ``data``."""
        observation = data.get(self.observation_key)
        if self.block is not None:
            layout = runner.layout
            if observation.shape[0] != layout.num_envs:
                raise ValueError(
                    f"the rollout has {observation.shape[0]} envs along dim 0, the layout {layout.num_envs}"
                )
            block = layout.leader if self.block == "leader" else self.block
            if not -layout.num_blocks <= block < layout.num_blocks:
                raise ValueError(f"block={block} is out of range for num_blocks={layout.num_blocks}")
            start = (block % layout.num_blocks) * layout.block_size
            observation = observation[start : start + layout.block_size]
        self.update(observation.reshape(-1, *observation.shape[2:]))

    @torch.no_grad()
    def update(self, states: torch.Tensor) -> None:
        """Offers ``states`` (``[k, *obs_shape]``, one state per row) to the reservoir."""
        k = states.shape[0]
        if k == 0:
            return
        device = states.device
        if self._buffer is None:
            self._buffer = torch.zeros(self.capacity, *states.shape[1:], dtype=states.dtype, device=device)
        elif self._buffer.shape[1:] != states.shape[1:]:
            raise ValueError(
                f"states of shape {tuple(states.shape[1:])}, the reservoir holds {tuple(self._buffer.shape[1:])}"
            )
        if self._buffer.device != device:
            self._buffer = self._buffer.to(device)
        if self._generator is None or self._generator.device != device:
            # a fresh stream on a new device, still a function of (seed, states seen)
            self._generator = torch.Generator(device=device).manual_seed(self.seed + 1_000_003 * self.seen)
        cap = self.capacity
        order = torch.arange(k, device=device)
        index = order + (self.seen + 1)  # 1-based position of each state in the stream
        draw = (torch.rand(k, generator=self._generator, device=device, dtype=torch.float64) * index).long()
        slot = torch.where(index <= cap, index - 1, draw).clamp_max(cap)  # slot cap = discarded
        winner = torch.full((cap + 1,), -1, dtype=torch.long, device=device)
        winner.scatter_reduce_(0, slot, order, reduce="amax")  # the latest state drawing a slot wins
        winner = winner[:cap]
        taken = (winner >= 0).view(cap, *([1] * (states.dim() - 1)))
        self._buffer = torch.where(taken, states[winner.clamp_min(0)].to(self._buffer.dtype), self._buffer)
        self.seen += k

    # ------------------------------------------------------------------------------------------ state
    @property
    def states(self) -> torch.Tensor:
        """The sampled states, ``[min(seen, capacity), *obs_shape]`` (empty ``[0, 0]`` before any data)."""
        if self._buffer is None:
            return torch.empty(0, 0)
        return self._buffer[: min(self.seen, self.capacity)]

    def state_dict(self) -> dict:
        """Settings, count of states seen, the states (CPU) and the draw generator's state."""
        return {
            "capacity": self.capacity,
            "seed": self.seed,
            "block": self.block,
            "observation_key": self.observation_key,
            "seen": self.seen,
            "states": self.states.detach().cpu(),
            "device": None if self._buffer is None else str(self._buffer.device),
            "generator": None if self._generator is None else self._generator.get_state(),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restores :meth:`state_dict`'s output (onto its device when available, else CPU)."""
        self.capacity, self.seed, self.block = state["capacity"], state["seed"], state["block"]
        self.observation_key = state["observation_key"]
        self.seen = state["seen"]
        self._buffer = self._generator = None
        states = state["states"]
        if state["device"] is None:  # saved before any data
            return
        device = torch.device(state["device"])
        if device.type == "cuda" and not torch.cuda.is_available():
            device = torch.device("cpu")
        self._buffer = torch.zeros(self.capacity, *states.shape[1:], dtype=states.dtype, device=device)
        self._buffer[: states.shape[0]] = states.to(device)
        if state["generator"] is not None and torch.device(state["device"]) == device:
            self._generator = torch.Generator(device=device)
            self._generator.set_state(state["generator"])

    def save(self, path: str | Path) -> None:
        """Saves :meth:`state_dict` with :func:`torch.save`."""
        torch.save(self.state_dict(), Path(path))

    @classmethod
    def load(cls, path: str | Path) -> StateReservoir:
        """A reservoir restored from :meth:`save`'s file."""
        state = torch.load(Path(path), weights_only=False)
        reservoir = cls(state["capacity"], state["seed"], block=state["block"])
        reservoir.load_state_dict(state)
        return reservoir
