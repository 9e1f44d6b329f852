"""Block layout: which env belongs to which policy, and which policy leads.

SAPG splits ``N`` parallel envs into ``M`` contiguous blocks of ``B = N / M`` envs; env ``j`` belongs to
block ``j // B``. One block, the *leader*, also learns from the other blocks' data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sapg_torchrl.errors import ConfigError

__all__ = ["ENTROPY_SCHEDULES", "LEADERS", "BlockLayout", "block_entropy_coefficients"]

LEADERS = ("first", "last")
"""The leader by name (besides a block index): the paper's "policy 1" or the released code's last block."""
ENTROPY_SCHEDULES = ("code", "paper", "explicit", "zero")
"""The per-block entropy schedules of :func:`block_entropy_coefficients`."""


def _resolve_leader(leader: int | str, num_blocks: int) -> int:
    if leader == "last":
        return num_blocks - 1
    if leader == "first":
        return 0
    if isinstance(leader, bool) or not isinstance(leader, int):
        raise ConfigError(f"leader={leader!r} is not accepted: use 'first', 'last' or a block index")
    if not -num_blocks <= leader < num_blocks:
        raise ConfigError(
            f"leader={leader} is out of range for num_blocks={num_blocks}: "
            f"use 'first', 'last' or an index in [{-num_blocks}, {num_blocks - 1}]"
        )
    return leader % num_blocks


@dataclass(frozen=True)
class BlockLayout:
    """``num_envs`` envs in ``num_blocks`` contiguous blocks, one of which leads.

    Args:
        num_envs (int): total number of parallel envs ``N``.
        num_blocks (int): number of blocks ``M``; must divide ``num_envs``.
        leader (int or str): ``"last"`` (the released code's choice, default), ``"first"`` (the
            paper's "policy 1") or a block index (negative indices count from the end).

    Examples:
        >>> layout = BlockLayout(num_envs=12, num_blocks=3)
        >>> layout.leader, layout.block_size
        (2, 4)
        >>> layout.block_ids()
        tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
        >>> layout.followers
        (0, 1)
    """

    num_envs: int
    num_blocks: int
    leader: int | str = "last"

    def __post_init__(self):
        for name in ("num_envs", "num_blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} is not accepted: it must be an integer >= 1")
        if self.num_envs % self.num_blocks:
            lower = self.num_envs - self.num_envs % self.num_blocks
            hint = f"e.g. {lower} or {lower + self.num_blocks}" if lower else f"e.g. {self.num_blocks}"
            raise ConfigError(
                f"num_envs={self.num_envs} is not divisible by num_blocks={self.num_blocks}: "
                f"use a multiple of {self.num_blocks} ({hint})"
            )
        object.__setattr__(self, "leader", _resolve_leader(self.leader, self.num_blocks))

    @property
    def block_size(self) -> int:
        """Envs per block, ``B = N / M``."""
        return self.num_envs // self.num_blocks

    @property
    def followers(self) -> tuple[int, ...]:
        """Indices of the non-leader blocks, in increasing order."""
        return tuple(b for b in range(self.num_blocks) if b != self.leader)

    def check_rollout(self, shape: torch.Size) -> None:
        """Raises :class:`~sapg_torchrl.ConfigError` unless ``shape`` is a rollout's ``[N, T]`` for these envs."""
        if len(shape) != 2 or shape[0] != self.num_envs:
            raise ConfigError(
                f"the rollout has shape {list(shape)}: expected [N, T] = [{self.num_envs}, T], env-major (a "
                "collector's batch of this layout's envs)"
            )

    def block_ids(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Integer block id of every env, shape ``[num_envs]``, dtype ``torch.long``."""
        return torch.arange(self.num_blocks, device=device).repeat_interleave(self.block_size)


def block_entropy_coefficients(
    num_blocks: int,
    leader: int,
    *,
    schedule: str = "code",
    scale: float = 0.0,
    coefficients: list[float] | None = None,
) -> torch.Tensor:
    """Entropy-bonus coefficient of every block, shape ``[num_blocks]``; the leader's is 0.

    Both published schedules grow with a follower's distance ``|b - leader|`` from the leader:

    - ``"code"`` (released code): ``scale * linspace(0.5, 0, M)[b]`` with the leader last, i.e.
      ``0.5 * scale * |b - leader| / (M - 1)``: the farthest follower gets ``0.5 * scale``.
    - ``"paper"``: follower ``i`` (1-based, leader = policy 1) gets ``sigma * (i - 1)``, i.e.
      ``scale * |b - leader|`` with ``sigma = scale``.
    - ``"explicit"``: ``coefficients`` as given, one per block.
    - ``"zero"``: every block 0 (the ``no_entropy`` ablation), whatever ``scale`` is, so a task's ``scale`` set
      for the other variants does not reach it.

    Examples:
        >>> block_entropy_coefficients(6, 5, schedule="code", scale=0.005)
        tensor([0.0025, 0.0020, 0.0015, 0.0010, 0.0005, 0.0000])
        >>> block_entropy_coefficients(3, 0, schedule="paper", scale=0.01)
        tensor([0.0000, 0.0100, 0.0200])
        >>> block_entropy_coefficients(3, 2, schedule="zero", scale=0.01)
        tensor([0., 0., 0.])
    """
    if schedule == "explicit":
        if coefficients is None or len(coefficients) != num_blocks:
            got = None if coefficients is None else len(coefficients)
            raise ConfigError(
                f"entropy schedule 'explicit' needs one coefficient per block: got {got} "
                f"coefficients for num_blocks={num_blocks}"
            )
        return torch.as_tensor(list(coefficients), dtype=torch.float32)
    if schedule == "zero":
        return torch.zeros(num_blocks)
    distance = (torch.arange(num_blocks) - leader).abs().float()
    if schedule == "code":
        return 0.5 * scale * distance / max(num_blocks - 1, 1)
    if schedule == "paper":
        return scale * distance
    raise ConfigError(f"entropy schedule {schedule!r} is not accepted: use one of {list(ENTROPY_SCHEDULES)}")
