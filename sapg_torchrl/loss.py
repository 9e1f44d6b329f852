"""SAPG's PPO loss over on-policy and relabelled (off-policy) rows, with per-block entropy bonuses."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, is_tensor_collection
from tensordict.nn import CompositeDistribution, dispatch
from tensordict.utils import NestedKey
from torch import distributions as d
from torchrl.modules.value_norm import ValueNorm
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.utils import _sum_td_features

from sapg_torchrl.errors import ConfigError
from sapg_torchrl.nn import ReuseIfPresent, block_id_key, num_blocks_of

__all__ = ["SAPGLoss", "CLIP_MODES", "KL_REFERENCES", "KL_ROWS", "LR_BOUNDS", "LR_FACTOR"]

CLIP_MODES = ("code", "paper")
KL_REFERENCES = ("previous_epoch", "behaviour")
KL_ROWS = ("all", "on_policy")
"""The rows the ``previous_epoch`` KL averages over: every row (the released code) or the on-policy rows alone."""
LR_FACTOR = 1.5
"""The KL-adaptive learning rate this KL drives (rl_games', the paper's): ``x LR_FACTOR`` below half the target KL,
``/ LR_FACTOR`` above twice it."""
LR_BOUNDS = (1e-6, 1e-2)
"""That learning rate's bounds."""


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ``mask``; NaN when the mask is empty (no host sync)."""
    mask = mask.expand_as(x)
    count = mask.sum()
    total = torch.where(mask, x, torch.zeros_like(x)).sum()
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def _masked_means(values: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[k]``: the mean of each value over its mask (NaN over none), in one pass over the stacked values, the same
    numbers as :func:`_masked_mean` of each (values and masks alike shaped)."""
    x, mask = torch.stack(list(values)), torch.stack(list(masks))
    dims = tuple(range(1, x.ndim))
    count = mask.sum(dims)
    total = torch.where(mask, x, torch.zeros_like(x)).sum(dims)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def _per_block_mean(values: torch.Tensor, block_id: torch.Tensor, num_blocks: int, weights=None) -> torch.Tensor:
    """``[num_blocks]``: the mean of ``values`` over each block's rows (weighted by ``weights`` if given), NaN for a
    block without rows."""
    ids, values = block_id.reshape(-1), values.reshape(-1)
    weights = torch.ones_like(values) if weights is None else weights.reshape(-1)
    zeros = torch.zeros(num_blocks, device=values.device)
    total, count = zeros.index_add(0, ids, values * weights), zeros.index_add(0, ids, weights)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def _mean_over(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``x.mean()``, or its mean over ``mask`` where one is given."""
    return x.mean() if mask is None else _masked_mean(x, mask)


def _masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.expand_as(x)
    out = torch.where(mask, x, torch.full_like(x, float("-inf"))).max()
    return torch.where(mask.any(), out, torch.full_like(out, float("nan")))


class SAPGLoss(ClipPPOLoss):
    """The SAPG objective: clipped PPO over every block's rows, plus the rows relabelled to other blocks.

    Each row carries the ``block_id`` of the policy it trains (for a relabelled row: the block it was copied *to*,
    e.g. the leader) and a ``relabelled`` flag. The loss is :class:`~torchrl.objectives.ClipPPOLoss`, with its
    keyword arguments and defaults (``entropy_coeff=0.01``, ``critic_coeff=1.0``, ``loss_critic_type="smooth_l1"``,
    ``clip_value=None``, ``entropy_bonus=True``, ...), plus what SAPG adds:

    - **per-block entropy bonus**: with a sequence ``entropy_coeff`` the entropy of each row is weighed by
      ``entropy_coeff[block_id]``;
    - **clipping of relabelled rows**: ``clip_mode="code"`` (released code) clips every row's ratio
      ``pi_theta(a|s, b) / pi_behaviour(a|s)`` to ``[1 - eps, 1 + eps]``; ``clip_mode="paper"`` clips a
      relabelled row to ``[mu (1 - eps), mu (1 + eps)]`` with ``mu = pi_old(a|s, leader) / pi_behaviour``,
      read from the ``log_clip_center`` key (``log mu``, computed once per iteration without gradient);
    - **off-policy weight** ``lambda``: every loss term of a relabelled row is multiplied by
      ``off_policy_weight`` before the mean over rows (``1``, the code's pooled mean, by default);
    - optional **ratio cap** (``max_importance_ratio``, ClipPPOLoss's own: caps ``pi_theta / pi_behaviour`` while
      keeping a rescaled gradient), since relabelled ratios have no upper bound otherwise;
    - optional **bounds loss** on the action mean: ``bounds_loss_coeff * sum(relu(|mu| - action_bound)^2)``;
    - a trunk shared by the actor and the critic (:class:`~sapg_torchrl.nn.ReuseIfPresent`, as built by
      :func:`~sapg_torchrl.make_actor_critic`) is evaluated once per minibatch, not once per head;
    - the **KL** reported as ``kl_approx`` (what drives a KL-adaptive learning rate):
      ``kl_reference="behaviour"`` is :class:`~torchrl.objectives.ClipPPOLoss`'s sample estimate
      ``mean(log pi_behaviour - log pi_theta)`` over the on-policy rows; ``kl_reference="previous_epoch"``
      (released code, rl_games' ``policy_kl``) is the analytic Gaussian ``KL(pi_theta || N(loc, scale))`` summed
      over action dims and averaged over the rows ``kl_rows`` names (``"all"``, the released code: relabelled ones
      included; ``"on_policy"``: the rows each block collected itself), where ``loc``/``scale`` are read
      from the batch. The loss then also returns the current ``loc`` and ``scale`` of every row (detached): a
      trainer writes them back into the batch after each minibatch, so that in the next epoch the reference is
      the policy of the previous epoch (in the first epoch it is the behaviour policy);
    - critic regression in the space of an optional :class:`~torchrl.modules.ValueNorm` (the critic
      denormalises its output with the same object; this loss does not update the statistics: call
      ``value_norm.update(value_targets)`` once per iteration).

    With one block and no relabelled rows it is ``ClipPPOLoss``: the same losses and gradients (TorchRL's own
    ``ClipPPOLoss`` tests, run against it, are recorded in the API page).

    **Inputs** (the default key names; ``B`` the batch shape, ``A`` the action width):

    ===================== ============ =========== ==========================================================
    key                   shape        dtype       read
    ===================== ============ =========== ==========================================================
    the networks' inputs  ``[*B, ..]``             always (``observation``, ``block_id``, ...)
    ``action``            ``[*B, A]``  float       always
    ``action_log_prob``   ``[*B]``     float       always: the behaviour policy's log-prob
    ``advantage``         ``[*B, 1]``  float       always (computed by the value estimator if absent)
    ``value_target``      ``[*B, 1]``  float       with a critic
    ``state_value``       ``[*B, 1]``  float       with ``clip_value``: the values at collection
    ``block_id``          ``[*B]``     integer     when the networks read it, or with per-block coefficients:
                                                   in ``[0, num_blocks)``
    ``relabelled``        ``[*B]``     bool        if present (absent: no relabelled row); required if renamed
    ``log_clip_center``   ``[*B]``     float       with ``clip_mode="paper"``
    ``loc``, ``scale``    ``[*B, A]``  float       with ``kl_reference="previous_epoch"``
    ===================== ============ =========== ==========================================================

    Every input is checked once, on entry: a missing key, a missing trailing dim, a float or out-of-range
    ``block_id`` raise one :class:`ValueError` (:class:`~sapg_torchrl.ConfigError`) or :class:`KeyError` naming
    the key, what it got and what it expects. Shapes and dtypes are checked always; the range of ``block_id``
    where it is on the host (on an accelerator that would cost a device-to-host sync per call).

    **Outputs**: ``ClipPPOLoss``'s keys (``loss_objective``, ``loss_critic``, ``loss_entropy`` without
    ``entropy_bonus=False``, ``entropy``, ``clip_fraction``, ``kl_approx``, ``value_clip_fraction``,
    ``explained_variance``, ``ESS``, ``max_ratio``, ``mean_ratio``, as ClipPPOLoss computes them but ``kl_approx``,
    see above), plus SAPG's: ``loss_bounds`` (the bounds loss, with ``bounds_loss_coeff > 0``),
    ``entropy_per_block`` (``[num_blocks]``, when the blocks are known), ``clip_fraction_on_policy`` /
    ``clip_fraction_off_policy`` (on-policy / relabelled rows), ``is_ratio_mean`` / ``is_ratio_max`` (the
    behaviour ratio of relabelled rows), ``off_policy_in_clip_fraction`` (relabelled rows inside the clip range),
    and with ``kl_reference="previous_epoch"`` the current ``loc`` and ``scale``. Statistics of an empty set of
    rows are NaN. The total loss is the sum of the ``loss_*`` entries.

    Args:
        actor_network (ProbabilisticTensorDictSequential): the policy.
        critic_network (TensorDictModule, optional): the value function.

    Keyword Args:
        entropy_coeff (float, sequence of float, Tensor or mapping, optional): a float (or ``ClipPPOLoss``'s
            mapping for composite actions) weighs every row; a sequence (see
            :func:`~sapg_torchrl.block_entropy_coefficients`) is one coefficient per block. Defaults to
            ``ClipPPOLoss``'s (``0.01``).
        num_blocks (int, optional): number of blocks, for ``entropy_per_block`` and the checks of ``block_id``.
            Defaults to the actor's (its :class:`~sapg_torchrl.nn.BlockLogStd`), else ``len(entropy_coeff)``.
        clip_epsilon (float): PPO clip range. Defaults to ``0.2``.
        clip_mode (str): ``"code"`` (default) or ``"paper"``, see above.
        off_policy_weight (float): ``lambda`` for relabelled rows. Defaults to ``1.0``.
        max_importance_ratio (float, optional): cap of the importance ratio. Defaults to ``None``.
        kl_reference (str): ``"behaviour"`` (default, as :class:`~torchrl.objectives.ClipPPOLoss`) or
            ``"previous_epoch"`` (released code), see above.
        kl_rows (str): the rows of the ``previous_epoch`` KL: ``"all"`` (default, released code) or
            ``"on_policy"``. In the first epoch a relabelled row's reference is the follower's behaviour policy, so
            with ``"all"`` the KL of ``sapg``-like variants also measures how far the leader is from a follower,
            not only the size of the update. The ``behaviour`` KL is always on the on-policy rows.
        bounds_loss_coeff (float): coefficient of the bounds loss (``1e-4`` in the code). Defaults to ``0.0``.
        action_bound (float): where the bounds loss starts. Defaults to ``1.1``.
        value_norm (ValueNorm, optional): value normaliser shared with the critic.
        **kwargs: :class:`~torchrl.objectives.ClipPPOLoss`'s (``critic_coeff``, ``loss_critic_type``,
            ``clip_value``, ``entropy_bonus``, ``normalize_advantage``, ``reduction``, ...), with its defaults. The
            released code's critic is ``critic_coeff=2.0`` (``0.5 * critic_coef`` with ``critic_coef=4``),
            ``loss_critic_type="l2"``, ``clip_value=True``: the recipes pass them.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from sapg_torchrl import SAPGLoss, make_actor_critic
        >>> actor, critic = make_actor_critic(3, 2, num_blocks=2, hidden=(16,))
        >>> loss = SAPGLoss(actor, critic, entropy_coeff=[0.01, 0.0], bounds_loss_coeff=1e-4)
        >>> data = TensorDict(observation=torch.randn(8, 3), block_id=torch.tensor([0, 1] * 4), batch_size=[8])
        >>> with torch.no_grad():
        ...     data = actor(critic(data))
        >>> data["advantage"] = torch.randn(8, 1)
        >>> data["value_target"] = torch.randn(8, 1)
        >>> data["relabelled"] = torch.tensor([False] * 6 + [True] * 2)
        >>> out = loss(data)
        >>> total = sum(value for key, value in out.items() if key.startswith("loss_"))  # objective, critic, entropy, bounds
        >>> total.backward()
        >>> out["entropy_per_block"].shape
        torch.Size([2])
        >>> data["advantage"] = torch.randn(8)  # no trailing dim
        >>> loss(data)
        Traceback (most recent call last):
          ...
        sapg_torchrl.errors.ConfigError: advantage has shape [8]: expected [8, 1] (batch shape + a trailing dim of 1, e.g. advantage.unsqueeze(-1)); without it the PPO objective would be an outer product over rows
    """

    @dataclass
    class _AcceptedKeys(ClipPPOLoss._AcceptedKeys):
        """Tensordict keys, settable with :meth:`set_keys`.

        On top of :class:`~torchrl.objectives.ClipPPOLoss`'s keys:

        Attributes:
            block_id (NestedKey): integer block of each row. Defaults to the key the networks read
                (:func:`~sapg_torchrl.nn.block_id_key`: ``make_actor_critic``'s ``block_id_key``), else
                ``"block_id"``. It is named where the networks are built; :meth:`set_keys` refuses another.
            relabelled (NestedKey): bool flag of relabelled rows; missing means none (unless renamed). Defaults to
                ``"relabelled"``.
            log_clip_center (NestedKey): ``log mu`` of relabelled rows, read when ``clip_mode="paper"``.
                Defaults to ``"log_clip_center"``.
            loc (NestedKey): mean of the reference policy, read (and returned, current) when
                ``kl_reference="previous_epoch"``. Defaults to ``"loc"`` (what the actor writes).
            scale (NestedKey): its standard deviation, likewise. Defaults to ``"scale"``.
        """

        block_id: NestedKey = "block_id"
        relabelled: NestedKey = "relabelled"
        log_clip_center: NestedKey = "log_clip_center"
        loc: NestedKey = "loc"
        scale: NestedKey = "scale"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    def __init__(
        self,
        actor_network,
        critic_network=None,
        *,
        entropy_coeff: float | Sequence[float] | torch.Tensor | Mapping | None = None,
        num_blocks: int | None = None,
        clip_epsilon: float = 0.2,
        clip_mode: str = "code",
        off_policy_weight: float = 1.0,
        max_importance_ratio: float | None = None,
        kl_reference: str = "behaviour",
        kl_rows: str = "all",
        bounds_loss_coeff: float = 0.0,
        action_bound: float = 1.1,
        value_norm: ValueNorm | None = None,
        **kwargs,
    ):
        if clip_mode not in CLIP_MODES:
            raise ConfigError(f"clip_mode={clip_mode!r} is not accepted: use one of {list(CLIP_MODES)}")
        if kl_reference not in KL_REFERENCES:
            raise ConfigError(f"kl_reference={kl_reference!r} is not accepted: use one of {list(KL_REFERENCES)}")
        if kl_rows not in KL_ROWS:
            raise ConfigError(f"kl_rows={kl_rows!r} is not accepted: use one of {list(KL_ROWS)}")
        if off_policy_weight < 0:
            raise ConfigError(f"off_policy_weight={off_policy_weight} is not accepted: it must be >= 0")
        if max_importance_ratio is not None and max_importance_ratio <= 1:
            raise ConfigError(
                f"max_importance_ratio={max_importance_ratio} is not accepted: use None (no cap) or a value > 1"
            )
        per_block = None  # one coefficient per block, or None: ClipPPOLoss's own (a scalar or a mapping)
        if entropy_coeff is not None and not isinstance(entropy_coeff, (Mapping, int, float)):
            per_block = torch.as_tensor(entropy_coeff, dtype=torch.float32)
            if per_block.ndim != 1:
                raise ConfigError(
                    f"entropy_coeff of shape {list(per_block.shape)} is not accepted: give a float or one value per block"
                )
        network_blocks = num_blocks_of(actor_network)
        given = {"num_blocks": num_blocks, "entropy_coeff": None if per_block is None else per_block.numel()}
        for name, count in given.items():
            if count is not None and network_blocks is not None and count != network_blocks:
                got = f"num_blocks={count}" if name == "num_blocks" else f"entropy_coeff has {count} values"
                raise ConfigError(f"{got} but the actor has {network_blocks} blocks: give one value per block of the actor")
        if num_blocks is None:
            num_blocks = network_blocks if per_block is None else per_block.numel()
        if per_block is not None and per_block.numel() != num_blocks:
            raise ConfigError(
                f"entropy_coeff has {per_block.numel()} values but num_blocks={num_blocks}: "
                "give one float, or one value per block"
            )
        super().__init__(
            actor_network,
            critic_network,
            clip_epsilon=clip_epsilon,
            entropy_coeff=0.0 if per_block is not None else entropy_coeff,
            max_importance_ratio=max_importance_ratio,
            **kwargs,
        )
        if per_block is not None:  # ClipPPOLoss registers a scalar buffer; SAPG's is one coefficient per block, same name
            self.entropy_coeff = per_block.to(self.entropy_coeff.device)
        # ClipPPOLoss keeps clip_value as a 0-dim buffer and branches on it (``if self.clip_value:``) in every
        # critic loss: a device-to-host sync per minibatch on CUDA. A Python float clips the same, without it.
        if isinstance(self.clip_value, torch.Tensor):
            clip = float(self.clip_value)
            del self._buffers["clip_value"]
            self.clip_value = clip
        self.num_blocks = num_blocks
        self.clip_mode = clip_mode
        self.kl_reference, self.kl_rows = kl_reference, kl_rows
        self.value_norm = value_norm
        self.register_coeff_buffer("off_policy_weight", off_policy_weight)
        self.register_coeff_buffer("bounds_loss_coeff", bounds_loss_coeff)
        self._bounds_loss = bounds_loss_coeff > 0  # a host flag: the action mean (not every distribution has one)
        self.register_coeff_buffer("action_bound", action_bound)
        # the block id is named where the networks are built: the loss reads what they read
        networks = [net for net in (actor_network, critic_network) if net is not None]
        read = list(dict.fromkeys(key for key in map(block_id_key, networks) if key is not None))
        if len(read) > 1:
            raise ConfigError(f"the actor and the critic read the block id under different keys: {read}; build them alike")
        self._network_block_id = read[0] if read else None
        if self._network_block_id is not None:
            self.set_keys(block_id=self._network_block_id)
        self._in_keys = None  # ClipPPOLoss computed them before clip_mode existed
        # trunks the actor and the critic share: computed once per forward, then reused by both heads
        in_actor = {id(m) for m in actor_network.modules() if isinstance(m, ReuseIfPresent)}
        self._shared_trunks = [
            m for net in networks[1:] for m in net.modules() if isinstance(m, ReuseIfPresent) and id(m) in in_actor
        ]

    def set_keys(self, **kwargs) -> SAPGLoss:
        """Renames input keys (see :class:`_AcceptedKeys`). ``block_id`` is the networks' own: it can only be set
        to the key they read, which :func:`~sapg_torchrl.make_actor_critic` names (``block_id_key``)."""
        read = getattr(self, "_network_block_id", None)
        if "block_id" in kwargs and read is not None and kwargs["block_id"] != read:
            raise ConfigError(
                f"set_keys(block_id={kwargs['block_id']!r}) is not accepted: the networks read the block id as "
                f"{read!r}; rename it where they are built (make_actor_critic(..., block_id_key={kwargs['block_id']!r})) "
                "and the loss follows"
            )
        return super().set_keys(**kwargs)

    @property
    def _reads_block_id(self) -> bool:
        return self._network_block_id is not None or self.num_blocks is not None

    def _set_in_keys(self):
        super()._set_in_keys()
        extra = [self.tensor_keys.relabelled]
        if self._reads_block_id:
            extra.append(self.tensor_keys.block_id)
        if self.clip_mode == "paper":
            extra.append(self.tensor_keys.log_clip_center)
        if self.kl_reference == "previous_epoch":
            extra += [self.tensor_keys.loc, self.tensor_keys.scale]
        self._in_keys = list(dict.fromkeys([*self._in_keys, *extra]))

    @property
    def out_keys(self):
        if self._out_keys is None:
            keys = ["loss_objective", "clip_fraction"] + (["loss_bounds"] if self._bounds_loss else [])
            keys += ["entropy", "loss_entropy"] if self.entropy_bonus else ["entropy"]
            if self._has_critic:
                keys += ["loss_critic", "explained_variance"] + (["value_clip_fraction"] if self.clip_value else [])
            keys += ["ESS", "kl_approx", "max_ratio", "mean_ratio"]
            if self.num_blocks is not None:
                keys.append("entropy_per_block")
            keys += [
                "clip_fraction_on_policy", "clip_fraction_off_policy", "is_ratio_mean", "is_ratio_max",
                "off_policy_in_clip_fraction",
            ]  # fmt: skip
            if self.kl_reference == "previous_epoch":
                keys += [self.tensor_keys.loc, self.tensor_keys.scale]
            self._out_keys = keys
        return self._out_keys

    @out_keys.setter
    def out_keys(self, values):
        self._out_keys = values

    def _get_entropy(self, dist, adv_shape):
        # ClipPPOLoss checks ``entropy.isfinite().all()`` in Python to fall back to a Monte-Carlo estimate:
        # a host sync per minibatch. The Gaussian policies here have a finite analytic entropy.
        if isinstance(dist, (d.Normal, d.Independent)) and not isinstance(dist, CompositeDistribution):
            return dist.entropy().unsqueeze(-1)
        return super()._get_entropy(dist, adv_shape)

    def _critic_loss_inputs(self, target_return, state_value, old_state_value):
        if self.value_norm is None:
            return target_return, state_value, old_state_value
        if hasattr(self.value_norm, "normalize_all"):  # ClippedValueNorm: the statistics read once
            return tuple(self.value_norm.normalize_all(target_return, state_value, old_state_value))
        normalize = self.value_norm.normalize
        old = None if old_state_value is None else normalize(old_state_value)
        return normalize(target_return), normalize(state_value), old

    def _check_inputs(self, tensordict: TensorDictBase, advantage: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Checks the batch once, on entry (see the class's input table); returns ``block_id`` (or ``None``) and the
        ``relabelled`` flags shaped ``[*B, 1]``. Shapes and dtypes cost nothing; the range of ``block_id`` is read
        only where it is on the host."""
        keys, rows = self.tensor_keys, tuple(advantage.shape[:-1])
        batch = tuple(tensordict.batch_size)
        if advantage.ndim <= len(batch) or advantage.shape[-1] != 1 or tuple(advantage.shape[: len(batch)]) != batch:
            raise ConfigError(
                f"{keys.advantage} has shape {list(advantage.shape)}: expected {[*batch, 1]} (batch shape + a trailing "
                f"dim of 1, e.g. {keys.advantage}.unsqueeze(-1)); without it the PPO objective would be an outer "
                "product over rows"
            )
        target = tensordict.get(keys.value_target, None) if self._has_critic else None
        if target is not None:
            if tuple(target.shape) != tuple(advantage.shape):
                raise ConfigError(
                    f"{keys.value_target} has shape {list(target.shape)}: expected {list(advantage.shape)}, the "
                    f"advantage's (batch shape + a trailing dim of 1)"
                )
        block_id = None
        if self._reads_block_id:
            block_id = _required(tensordict, keys.block_id, "the networks read it (one integer block per row)")
            if block_id.dtype in (torch.bool, torch.uint8) or block_id.is_floating_point() or block_id.is_complex():
                raise ConfigError(f"{keys.block_id} has dtype {block_id.dtype}: expected an integer dtype (torch.long)")
            if tuple(block_id.shape) != rows:
                raise ConfigError(f"{keys.block_id} has shape {list(block_id.shape)}: expected {list(rows)}, one id per row")
            if self.num_blocks is not None and block_id.device.type == "cpu":
                _check_ids_on_host(keys.block_id, block_id, self.num_blocks)
        relabelled = _row_flag(tensordict, keys.relabelled, self.default_keys.relabelled, rows, advantage.device)
        if self.clip_mode == "paper":
            center = _required(tensordict, keys.log_clip_center, "clip_mode='paper' clips relabelled rows around it (Aggregator(clip_mode='paper') writes it)")
            _check_flag_shape(keys.log_clip_center, center, rows, None)
        if self.kl_reference == "previous_epoch":
            for key in (keys.loc, keys.scale):
                _required(tensordict, key, "kl_reference='previous_epoch' measures the KL to it")
        return block_id, relabelled

    # -- what a method built on SAPG's loss changes (CPOLoss); SAPG's own: nothing --------------------------------
    def _counted_rows(self, tensordict: TensorDictBase, rows: torch.Size) -> torch.Tensor | None:
        """The rows SAPG's terms (objective, critic, entropy, bounds) and diagnostics count, ``[*rows, 1]`` bool; the
        others weigh 0 there but stay in the means' denominators. ``None``: every row."""
        return None

    def _objective_advantage(
        self, tensordict: TensorDictBase, advantage: torch.Tensor, log_weight: torch.Tensor, dist, block_id, on_policy
    ) -> tuple[torch.Tensor, dict]:
        """The advantage the clipped objective multiplies, per row, and the diagnostics that come with it."""
        return advantage, {}

    def _extra_losses(
        self, tensordict: TensorDictBase, advantage: torch.Tensor, log_weight: torch.Tensor, counted
    ) -> dict:
        """Further ``loss_*`` terms per row (reduced like the others) and their diagnostics; ``counted`` is
        :meth:`_counted_rows`'s."""
        return {}

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        tensordict = tensordict.clone(False)
        advantage = tensordict.get(self.tensor_keys.advantage, None)
        update_norm = advantage is None
        if advantage is None:
            if self.critic_network is None:
                raise RuntimeError("Critic network is not specified, cannot compute advantage within forward.")
            self.value_estimator(
                tensordict,
                params=self._cached_critic_network_params_detached,
                target_params=self.target_critic_network_params,
            )
            advantage = tensordict.get(self.tensor_keys.advantage)
        block_id, relabelled = self._check_inputs(tensordict, advantage)
        advantage = self._maybe_normalize_advantage(advantage, tensordict, update_norm=update_norm)
        rows = advantage.shape[:-1]
        counted = self._counted_rows(tensordict, rows)  # None: every row; else the rows SAPG's terms count
        on_policy = ~relabelled if counted is None else ~relabelled & counted
        off_policy = relabelled if counted is None else relabelled & counted
        if self.kl_reference == "previous_epoch":  # read before the actor writes the current ones
            reference = d.Normal(tensordict.get(self.tensor_keys.loc), tensordict.get(self.tensor_keys.scale))

        if self._shared_trunks:
            with (
                self.actor_network_params.to_module(self.actor_network, preserve_module_state=False)
                if self.functional
                else contextlib.nullcontext()
            ):
                for trunk in self._shared_trunks:
                    trunk(tensordict)
        log_weight, dist, kl_approx, log_is_weight = self._log_weight(tensordict, adv_shape=rows)
        low, high = self._clip_bounds
        if self.clip_mode == "paper":
            center = tensordict.get(self.tensor_keys.log_clip_center).reshape(*rows, 1)
            center = torch.where(relabelled, center, torch.zeros_like(center))
            low, high = low + center, high + center
        log_behav_weight = log_weight if log_is_weight is None else log_weight + log_is_weight
        log_weight_clip = torch.clamp(log_weight, low, high)
        clipped = log_weight_clip != log_weight
        if log_is_weight is not None:
            log_weight_clip = log_weight_clip + log_is_weight
        objective_advantage, diagnostics = self._objective_advantage(tensordict, advantage, log_weight, dist, block_id, on_policy)
        gain = torch.minimum(log_behav_weight.exp() * objective_advantage, log_weight_clip.exp() * objective_advantage)

        weight = torch.where(relabelled, self.off_policy_weight, torch.ones_like(self.off_policy_weight))
        if counted is not None:  # rows left out weigh 0 but stay in the means' denominators
            weight = weight * counted
        entropy = self._get_entropy(dist, adv_shape=rows)
        td_out = TensorDict(loss_objective=-weight * gain)
        td_out.update(self._extra_losses(tensordict, advantage, log_weight, counted))
        if self._bounds_loss:
            excess = (dist.mean.abs() - self.action_bound).clamp_min(0).pow(2).sum(-1, keepdim=True)
            td_out.set("loss_bounds", weight * self.bounds_loss_coeff * excess)
        if self.entropy_bonus:
            coeff = self.entropy_coeff
            if coeff.ndim:  # one coefficient per block
                row_entropy = _sum_td_features(entropy) if is_tensor_collection(entropy) else entropy
                td_out.set("loss_entropy", -weight * coeff[block_id].reshape(*rows, 1) * row_entropy)
            else:  # ClipPPOLoss's (a scalar, or a mapping over composite heads)
                td_out.set("loss_entropy", weight * self._weighted_loss_entropy(entropy))
        if self._has_critic:
            loss_critic, value_clip_fraction, explained_variance = self.loss_critic(tensordict)
            td_out.set("loss_critic", weight * loss_critic)
            if value_clip_fraction is not None:
                td_out.set("value_clip_fraction", value_clip_fraction)
            if explained_variance is not None:
                td_out.set("explained_variance", explained_variance.mean())

        with torch.no_grad():
            if is_tensor_collection(entropy):
                td_out.set("composite_entropy", entropy.detach())
                entropy = _sum_td_features(entropy)
            entropy = entropy.detach()
            td_out.set("entropy", _mean_over(entropy, counted))
            if self.num_blocks is not None:
                weights = None if counted is None else counted.to(entropy.dtype).expand_as(entropy)
                td_out.set("entropy_per_block", _per_block_mean(entropy, block_id, self.num_blocks, weights))
            ratio = log_behav_weight.detach().exp()
            clipped = clipped.float()
            # the means over the on-policy or the relabelled rows, in one pass (the numbers of one at a time)
            masked = {
                "clip_fraction_on_policy": (clipped, on_policy),
                "clip_fraction_off_policy": (clipped, off_policy),
                "is_ratio_mean": (ratio, off_policy),
                "off_policy_in_clip_fraction": (1.0 - clipped, off_policy),
            }
            if self.kl_reference == "previous_epoch":
                current = d.Normal(dist.mean.detach(), dist.stddev.detach())
                kl = d.kl_divergence(current, reference).sum(-1).unsqueeze(-1)
                if self.kl_rows == "on_policy":
                    masked["kl_approx"] = (kl, on_policy)
            else:
                masked["kl_approx"] = (kl_approx.detach(), on_policy)
            means = dict(zip(masked, _masked_means(*zip(*masked.values())).unbind(0)))
            td_out.set("kl_approx", means["kl_approx"] if "kl_approx" in means else _mean_over(kl, counted))
            if self.kl_reference == "previous_epoch":
                td_out.set(self.tensor_keys.loc, current.loc)
                td_out.set(self.tensor_keys.scale, current.scale)
            # ClipPPOLoss's diagnostics of the behaviour ratio, over every (counted) row
            lw = log_behav_weight.detach().squeeze(-1)
            if counted is None:
                td_out.set("ESS", (2 * lw.logsumexp(0) - (2 * lw).logsumexp(0)).exp() / log_weight.shape[0])
                td_out.set("max_ratio", ratio.max())
            else:
                lw = torch.where(counted.expand_as(log_behav_weight).squeeze(-1), lw, torch.full_like(lw, float("-inf")))
                td_out.set("ESS", (2 * lw.logsumexp(0) - (2 * lw).logsumexp(0)).exp() / counted.sum(0).squeeze(-1))
                td_out.set("max_ratio", _masked_max(ratio, counted))
            td_out.set("mean_ratio", _mean_over(ratio, counted))
            td_out.set("clip_fraction", _mean_over(clipped, counted))
            td_out.set("clip_fraction_on_policy", means["clip_fraction_on_policy"])
            td_out.set("clip_fraction_off_policy", means["clip_fraction_off_policy"])
            td_out.set("is_ratio_mean", means["is_ratio_mean"])
            td_out.set("is_ratio_max", _masked_max(ratio, off_policy))
            td_out.set("off_policy_in_clip_fraction", means["off_policy_in_clip_fraction"])
            td_out.update(diagnostics)

        td_out = td_out.named_apply(
            lambda name, value: self._reduce_loss(value, tensordict).squeeze(-1) if name.startswith("loss_") else value,
        )
        self._clear_weakrefs(
            tensordict, td_out, "actor_network_params", "critic_network_params",
            "target_actor_network_params", "target_critic_network_params",
        )  # fmt: skip
        return td_out


def _required(tensordict: TensorDictBase, key: NestedKey, why: str) -> torch.Tensor:
    value = tensordict.get(key, None)
    if value is None:
        raise KeyError(f"SAPGLoss needs {key!r} in its input: {why}; the input has {sorted(map(str, tensordict.keys(True, True)))}")
    return value


def _check_ids_on_host(key: NestedKey, ids: torch.Tensor, count: int) -> None:
    """Ids in ``[0, count)``, read on the host: called only for ids already there (on an accelerator this read would
    be a device-to-host sync per call)."""
    if ids.numel():
        low, high = ids.aminmax()
        if low < 0 or high >= count:
            raise ConfigError(
                f"{key} holds {int(low) if low < 0 else int(high)}: expected ids in [0, {count - 1}] ({count} blocks)"
            )


def _row_flag(tensordict: TensorDictBase, key: NestedKey, default_key: NestedKey, rows: tuple, device) -> torch.Tensor:
    """A bool flag per row, ``[*rows, 1]``: absent under its default key means no row has it; a renamed key must be
    present."""
    flag = tensordict.get(key, None)
    if flag is None:
        if key != default_key:
            _required(tensordict, key, "it was renamed with set_keys (absent means no flagged row only under the default key)")
        return torch.zeros((*rows, 1), dtype=torch.bool, device=device)
    _check_flag_shape(key, flag, rows, torch.bool)
    return flag.reshape(*rows, 1)


def _check_flag_shape(key: NestedKey, value: torch.Tensor, rows: tuple, dtype: torch.dtype | None) -> None:
    """A per-row entry: shape ``rows`` or ``rows + (1,)``, and ``dtype`` if given."""
    if tuple(value.shape) not in (rows, (*rows, 1)):
        raise ConfigError(f"{key} has shape {list(value.shape)}: expected {list(rows)}, one value per row")
    if dtype is not None and value.dtype != dtype:
        raise ConfigError(f"{key} has dtype {value.dtype}: expected {dtype}")
