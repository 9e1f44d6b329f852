"""Aggregation: which blocks' rollouts are relabelled to train which other block.

- ``"leader_follower"`` (SAPG): each iteration, ``K`` follower blocks are drawn uniformly without
  replacement (a fresh draw each time); their transitions are copied, relabelled to the leader, and get
  one-step TD targets under the leader's critic as it is before the update.
- ``"symmetric"`` (ablation): every block ``b`` receives the data of block ``(b + r) mod M``, one random
  shift ``r`` in ``1..M-1`` per iteration.
- ``"none"`` (ablation): no relabelled rows.

With ``leader_to_followers=True`` (CPO) the leader's transitions are also copied to every follower, flagged
``awac`` (:class:`~sapg_torchrl.CPOLoss`'s advantage-weighted term reads them), with one-step TD targets under each
follower's critic, as the released CPO code builds them (``augment_batch_for_cpo``).

The relabelled rows keep the behaviour log-prob of the block that collected them (the importance ratio
is taken against it). With ``importance_correction=False`` (the ``no_is_correction`` ablation) the
behaviour log-prob is replaced by the target block's own pre-update log-prob, as if the data were
on-policy. With ``clip_mode="paper"`` the rows also carry ``log_clip_center = log mu``,
``mu = pi_old(a | s, target) / pi_behaviour(a | s)``, for :class:`~sapg_torchrl.SAPGLoss`.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule
from torchrl.modules import set_recurrent_mode
from torchrl.objectives.value import TD0Estimator

from sapg_torchrl.blocks import BlockLayout
from sapg_torchrl.errors import ConfigError
from sapg_torchrl.nn import block_id_key
from sapg_torchrl.targets import rollout_state_values

__all__ = ["AGGREGATIONS", "Aggregator"]

AGGREGATIONS = ("leader_follower", "symmetric", "none")


class Aggregator:
    """Builds the relabelled rows of one iteration from the ``[N, T]`` rollout.

    Args:
        layout (BlockLayout): the block layout of the rollout's envs.
        critic (TensorDictModule): the critic; reads ``block_id``.

    Keyword Args:
        mode (str): ``"leader_follower"`` (default), ``"symmetric"`` or ``"none"``.
        off_policy_ratio (int): ``K``, follower blocks relabelled to the leader per iteration, in
            ``[1, M - 1]`` (``M - 1`` = all follower data). Defaults to ``1``.
        gamma (float): discount of the one-step TD targets. Defaults to ``0.99``.
        importance_correction (bool): keep the behaviour log-prob (default) or replace it by the target
            block's own pre-update log-prob.
        clip_mode (str): ``"code"`` (default) or ``"paper"`` (also write ``log_clip_center``).
        actor (ProbabilisticTensorDictSequential, optional): the policy; needed when
            ``importance_correction=False`` or ``clip_mode="paper"``.
        log_prob_key (NestedKey): behaviour log-prob key. Defaults to ``"action_log_prob"``.
        relabelled_key (NestedKey): where the rows are flagged relabelled. Defaults to ``"relabelled"``.
        leader_to_followers (bool): also relabel the leader's rows to every follower (CPO), flagged under
            ``awac_key`` (``mode="leader_follower"`` only). Defaults to ``False``.
        awac_key (NestedKey): that flag (``False`` on the followers-to-leader rows). Defaults to ``"awac"``.
        generator (torch.Generator, optional): source of the per-iteration draws (CPU).

    The block id is written under the key the critic reads (:func:`~sapg_torchrl.nn.block_id_key`, else
    ``"block_id"``). The rollout must be ``[N, T]`` for the layout's ``N`` envs.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from sapg_torchrl import BlockLayout, make_actor_critic
        >>> layout = BlockLayout(num_envs=6, num_blocks=3)
        >>> actor, critic = make_actor_critic(2, 1, num_blocks=3, hidden=(8,))
        >>> T = 4
        >>> ids = layout.block_ids()[:, None].expand(6, T)
        >>> data = TensorDict(
        ...     observation=torch.randn(6, T, 2), block_id=ids,
        ...     next=TensorDict(observation=torch.randn(6, T, 2), block_id=ids, reward=torch.randn(6, T, 1),
        ...                     done=torch.zeros(6, T, 1, dtype=torch.bool), terminated=torch.zeros(6, T, 1, dtype=torch.bool),
        ...                     batch_size=[6, T]),
        ...     batch_size=[6, T])
        >>> rows = Aggregator(layout, critic, off_policy_ratio=1)(data)
        >>> rows.shape, rows["block_id"].unique().tolist(), bool(rows["relabelled"].all())
        (torch.Size([2, 4]), [2], True)
    """

    def __init__(
        self,
        layout: BlockLayout,
        critic: TensorDictModule,
        *,
        mode: str = "leader_follower",
        off_policy_ratio: int = 1,
        gamma: float = 0.99,
        importance_correction: bool = True,
        clip_mode: str = "code",
        actor=None,
        log_prob_key="action_log_prob",
        relabelled_key="relabelled",
        leader_to_followers: bool = False,
        awac_key="awac",
        generator: torch.Generator | None = None,
    ):
        if mode not in AGGREGATIONS:
            raise ConfigError(f"aggregation={mode!r} is not accepted: use one of {list(AGGREGATIONS)}")
        M = layout.num_blocks
        if mode != "none" and M < 2:
            raise ConfigError(
                f"aggregation={mode!r} needs num_blocks >= 2, got num_blocks={M}: use aggregation='none'"
            )
        if mode == "leader_follower" and not 1 <= off_policy_ratio <= M - 1:
            raise ConfigError(
                f"off_policy_ratio={off_policy_ratio} is not accepted for num_blocks={M}: "
                f"use an integer in [1, {M - 1}] (K < M; {M - 1} = all follower data)"
            )
        if leader_to_followers and mode != "leader_follower":
            raise ConfigError(
                f"leader_to_followers (CPO) is not accepted with aggregation={mode!r}: it needs 'leader_follower'"
            )
        needs_actor = not importance_correction or clip_mode == "paper"
        if needs_actor and actor is None:
            raise ConfigError("importance_correction=False and clip_mode='paper' need the actor")
        self.layout = layout
        self.mode = mode
        self.off_policy_ratio = off_policy_ratio
        self.importance_correction = importance_correction
        self.clip_mode = clip_mode
        self.actor = actor if needs_actor else None
        self.log_prob_key, self.relabelled_key = log_prob_key, relabelled_key
        self.leader_to_followers, self.awac_key = leader_to_followers, awac_key
        self.block_id_key = block_id_key(critic) or "block_id"
        self.generator = generator
        self.critic = critic
        self.td0 = TD0Estimator(gamma=gamma, value_network=None)

    @property
    def rows_per_env_step(self) -> int:
        """Relabelled rows per env step of the rollout (the batch is ``(N + this) * T`` rows)."""
        blocks = {"leader_follower": self.off_policy_ratio, "symmetric": self.layout.num_blocks, "none": 0}[self.mode]
        if self.leader_to_followers:
            blocks += self.layout.num_blocks - 1
        return blocks * self.layout.block_size

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This iteration's ``(source_blocks, target_blocks)``, both ``[P]`` (CPU)."""
        M, L = self.layout.num_blocks, self.layout.leader
        if self.mode == "leader_follower":
            followers = torch.tensor(self.layout.followers)
            pick = torch.randperm(M - 1, generator=self.generator)[: self.off_policy_ratio]
            return followers[pick], torch.full((self.off_policy_ratio,), L)
        if self.mode == "symmetric":
            shift = int(torch.randint(1, M, (1,), generator=self.generator))
            targets = torch.arange(M)
            return (targets + shift) % M, targets
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)

    @torch.no_grad()
    def __call__(self, data: TensorDictBase) -> TensorDictBase | None:
        """Returns the relabelled rows ``[P * B, T]`` (``None`` for ``mode="none"``).

        ``data`` is the rollout, ``[N, T]`` env-major, with ``block_id``, ``("next", "observation")``,
        ``("next", "reward")``, ``("next", "done")``, ``("next", "terminated")`` and the behaviour
        log-prob. The rows get ``block_id`` (root and next) set to their target block, ``relabelled``
        set, and ``advantage``, ``value_target`` and ``state_value`` from the target block's critic. With
        ``leader_to_followers`` the leader's rows for every follower follow, and every row gets the ``awac`` flag.
        """
        if self.mode == "none":
            return None
        M, B = self.layout.num_blocks, self.layout.block_size
        self.layout.check_rollout(data.shape)
        source, target = self.draw()
        awac = None
        if self.leader_to_followers:  # the leader's rows copied to every follower, after the draw's rows
            followers = torch.tensor(self.layout.followers)
            awac = torch.cat([torch.zeros(len(source), dtype=torch.bool), torch.ones(len(followers), dtype=torch.bool)])
            source = torch.cat([source, torch.full_like(followers, self.layout.leader)])
            target = torch.cat([target, followers])
        T = data.shape[-1]
        source, target = (_to_device(index, data.device) for index in (source, target))
        rows = data.reshape(M, B, T)[source].reshape(-1, T)
        ids = target.repeat_interleave(B)[:, None].expand(-1, T)
        rows.set(self.block_id_key, ids)
        rows.set(("next", self.block_id_key), ids)
        # V_target(s_t) (also the "old value" of the clipped value loss) and V_target(s_{t+1}); a recurrent
        # critic starts from the stored hidden states, which do not depend on the block (see make_actor_critic)
        rollout_state_values(self.critic, rows)
        self.td0(rows)
        rows.set(self.relabelled_key, torch.ones(rows.shape, dtype=torch.bool, device=rows.device))
        if awac is not None:
            rows.set(self.awac_key, _to_device(awac.repeat_interleave(B)[:, None].expand(-1, T).contiguous(), data.device))
        if self.actor is not None:
            with set_recurrent_mode(True):
                dist = self.actor.get_dist(rows.select(*self.actor.in_keys, strict=False))
            target_log_prob = dist.log_prob(rows.get("action"))
            if not self.importance_correction:
                rows.set(self.log_prob_key, target_log_prob)
            if self.clip_mode == "paper":
                rows.set("log_clip_center", target_log_prob - rows.get(self.log_prob_key))
        return rows


def _to_device(tensor: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    """A host tensor on ``device``; on CUDA through pinned memory, non-blocking, so that the host does not wait for
    the device's queued work (a copy from pageable memory would)."""
    if device is None or device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
