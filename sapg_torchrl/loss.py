"""SAPG's PPO loss over on-policy and relabelled (off-policy) rows, with per-block entropy bonuses."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import CompositeDistribution, dispatch
from tensordict.utils import NestedKey
from torch import distributions as d
from torchrl.modules.value_norm import ValueNorm
from torchrl.objectives import ClipPPOLoss

from sapg_torchrl.errors import ConfigError
from sapg_torchrl.nn import ReuseIfPresent

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


def _masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.expand_as(x)
    out = torch.where(mask, x, torch.full_like(x, float("-inf"))).max()
    return torch.where(mask.any(), out, torch.full_like(out, float("nan")))


class SAPGLoss(ClipPPOLoss):
    """The SAPG objective: clipped PPO over every block's rows, plus the rows relabelled to other blocks.

    Each row carries the ``block_id`` of the policy it trains (for a relabelled row: the block it was
    copied *to*, e.g. the leader) and a ``relabelled`` flag. The loss is :class:`~torchrl.objectives.ClipPPOLoss`
    with what SAPG adds:

    - **per-block entropy bonus**: the entropy of each row is weighed by ``entropy_coeff[block_id]``;
    - **clipping of relabelled rows**: ``clip_mode="code"`` (released code) clips every row's ratio
      ``pi_theta(a|s, b) / pi_behaviour(a|s)`` to ``[1 - eps, 1 + eps]``; ``clip_mode="paper"`` clips a
      relabelled row to ``[mu (1 - eps), mu (1 + eps)]`` with ``mu = pi_old(a|s, leader) / pi_behaviour``,
      read from the ``log_clip_center`` key (``log mu``, computed once per iteration without gradient);
    - **off-policy weight** ``lambda``: every loss term of a relabelled row is multiplied by
      ``off_policy_weight`` before the mean over rows (``1``, the code's pooled mean, by default);
    - optional **ratio cap** (``max_importance_ratio``, ClipPPOLoss's own: caps
      ``pi_theta / pi_behaviour`` while keeping a rescaled gradient), since relabelled ratios have no
      upper bound otherwise;
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

    With one block, no relabelled rows and matching settings, it is exactly ``ClipPPOLoss``.

    Args:
        actor_network (ProbabilisticTensorDictSequential): the policy; reads ``block_id``.
        critic_network (TensorDictModule): the value function; reads ``block_id``.

    Keyword Args:
        entropy_coeff (float or sequence of float or Tensor): entropy coefficient of every block (see
            :func:`~sapg_torchrl.block_entropy_coefficients`); a float is used for all blocks.
            Defaults to ``0.0``.
        num_blocks (int, optional): number of blocks. Defaults to ``len(entropy_coeff)``. With a float
            ``entropy_coeff`` and no ``num_blocks`` the coefficient applies to every row and
            ``entropy_per_block`` is not reported.
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
        critic_coeff (float): critic weight; the code's ``0.5 * critic_coef`` with ``critic_coef=4``,
            i.e. ``2.0`` (default) on a squared error.
        loss_critic_type (str): ``"l2"`` (default), ``"l1"`` or ``"smooth_l1"``.
        clip_value (bool or float): clipped value loss; ``True`` (default) clips at ``clip_epsilon``.
        **kwargs: passed to :class:`~torchrl.objectives.ClipPPOLoss`.

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
        >>> total = out["loss_objective"] + out["loss_critic"] + out["loss_entropy"] + out["loss_bounds"]
        >>> total.backward()
        >>> out["entropy_per_block"].shape
        torch.Size([2])
    """

    @dataclass
    class _AcceptedKeys(ClipPPOLoss._AcceptedKeys):
        """Tensordict keys, settable with :meth:`set_keys`.

        On top of :class:`~torchrl.objectives.ClipPPOLoss`'s keys:

        Attributes:
            block_id (NestedKey): integer block of each row. Defaults to ``"block_id"``.
            relabelled (NestedKey): bool flag of relabelled rows; missing means none. Defaults to
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
        critic_network,
        *,
        entropy_coeff: float | Sequence[float] | torch.Tensor = 0.0,
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
        critic_coeff: float = 2.0,
        loss_critic_type: str = "l2",
        clip_value: bool | float = True,
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
        entropy_coeff = torch.as_tensor(entropy_coeff, dtype=torch.float32)
        if entropy_coeff.ndim and num_blocks is None:
            num_blocks = entropy_coeff.numel()
        if num_blocks is not None and entropy_coeff.ndim == 0:
            entropy_coeff = entropy_coeff.expand(num_blocks).clone()
        if entropy_coeff.ndim and entropy_coeff.numel() != num_blocks:
            raise ConfigError(
                f"entropy_coeff has {entropy_coeff.numel()} values but num_blocks={num_blocks}: "
                "give one float, or one value per block"
            )
        super().__init__(
            actor_network,
            critic_network,
            clip_epsilon=clip_epsilon,
            entropy_coeff=0.0,
            critic_coeff=critic_coeff,
            loss_critic_type=loss_critic_type,
            clip_value=clip_value,
            max_importance_ratio=max_importance_ratio,
            **kwargs,
        )
        # ClipPPOLoss registers a scalar buffer; SAPG's is one coefficient per block, same name.
        self.entropy_coeff = entropy_coeff.to(self.entropy_coeff.device)
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
        self.register_coeff_buffer("action_bound", action_bound)
        self._in_keys = None  # ClipPPOLoss computed them before clip_mode existed
        # trunks the actor and the critic share: computed once per forward, then reused by both heads
        in_actor = {id(m) for m in actor_network.modules() if isinstance(m, ReuseIfPresent)}
        self._shared_trunks = [m for m in critic_network.modules() if isinstance(m, ReuseIfPresent) and id(m) in in_actor]

    def _set_in_keys(self):
        super()._set_in_keys()
        extra = [self.tensor_keys.block_id, self.tensor_keys.relabelled]
        if self.clip_mode == "paper":
            extra.append(self.tensor_keys.log_clip_center)
        if self.kl_reference == "previous_epoch":
            extra += [self.tensor_keys.loc, self.tensor_keys.scale]
        self._in_keys = list(dict.fromkeys([*self._in_keys, *extra]))

    @property
    def out_keys(self):
        if self._out_keys is None:
            self._out_keys = [
                "loss_objective", "loss_critic", "loss_entropy", "loss_bounds",
                "entropy", "entropy_per_block", "kl_approx", "explained_variance",
                "clip_fraction", "clip_fraction_on_policy", "clip_fraction_off_policy",
                "is_ratio_mean", "is_ratio_max", "off_policy_in_clip_fraction", "value_clip_fraction",
            ]  # fmt: skip
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
        normalize = self.value_norm.normalize
        old = None if old_state_value is None else normalize(old_state_value)
        return normalize(target_return), normalize(state_value), old

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        tensordict = tensordict.clone(False)
        advantage = tensordict.get(self.tensor_keys.advantage, None)
        if advantage is None:
            self.value_estimator(
                tensordict,
                params=self._cached_critic_network_params_detached,
                target_params=self.target_critic_network_params,
            )
            advantage = tensordict.get(self.tensor_keys.advantage)
        advantage = self._maybe_normalize_advantage(advantage, tensordict, update_norm=False)
        rows = advantage.shape[:-1]
        block_id = tensordict.get(self.tensor_keys.block_id)
        relabelled = tensordict.get(self.tensor_keys.relabelled, None)
        if relabelled is None:
            relabelled = torch.zeros(rows, dtype=torch.bool, device=advantage.device)
        relabelled = relabelled.reshape(*rows, 1)
        on_policy = ~relabelled
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
        gain = torch.minimum(log_behav_weight.exp() * advantage, log_weight_clip.exp() * advantage)

        weight = torch.where(relabelled, self.off_policy_weight, torch.ones_like(self.off_policy_weight))
        entropy = self._get_entropy(dist, adv_shape=rows)
        coeff = self.entropy_coeff
        row_coeff = coeff if coeff.ndim == 0 else coeff[block_id].reshape(*rows, 1)
        loc = dist.mean
        excess = (loc.abs() - self.action_bound).clamp_min(0).pow(2).sum(-1, keepdim=True)

        td_out = TensorDict(
            loss_objective=-weight * gain,
            loss_entropy=-weight * row_coeff * entropy,
            loss_bounds=weight * self.bounds_loss_coeff * excess,
        )
        if self._has_critic:
            loss_critic, value_clip_fraction, explained_variance = self.loss_critic(tensordict)
            td_out.set("loss_critic", weight * loss_critic)
            if value_clip_fraction is not None:
                td_out.set("value_clip_fraction", value_clip_fraction)
            if explained_variance is not None:
                td_out.set("explained_variance", explained_variance.mean())

        with torch.no_grad():
            entropy = entropy.detach()
            td_out.set("entropy", entropy.mean())
            if self.num_blocks is not None:
                ids = block_id.reshape(-1)
                zeros = torch.zeros(self.num_blocks, device=entropy.device)
                total = zeros.index_add(0, ids, entropy.reshape(-1))
                count = zeros.index_add(0, ids, torch.ones_like(entropy.reshape(-1)))
                mean = torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))
                td_out.set("entropy_per_block", mean)
            if self.kl_reference == "previous_epoch":
                current = d.Normal(dist.mean.detach(), dist.stddev.detach())
                kl = d.kl_divergence(current, reference).sum(-1)
                td_out.set("kl_approx", kl.mean() if self.kl_rows == "all" else _masked_mean(kl.unsqueeze(-1), on_policy))
                td_out.set(self.tensor_keys.loc, current.loc)
                td_out.set(self.tensor_keys.scale, current.scale)
            else:
                td_out.set("kl_approx", _masked_mean(kl_approx.detach(), on_policy))
            clipped = clipped.float()
            td_out.set("clip_fraction", clipped.mean())
            td_out.set("clip_fraction_on_policy", _masked_mean(clipped, on_policy))
            td_out.set("clip_fraction_off_policy", _masked_mean(clipped, relabelled))
            ratio = log_behav_weight.detach().exp()
            td_out.set("is_ratio_mean", _masked_mean(ratio, relabelled))
            td_out.set("is_ratio_max", _masked_max(ratio, relabelled))
            td_out.set("off_policy_in_clip_fraction", _masked_mean(1.0 - clipped, relabelled))

        td_out = td_out.named_apply(
            lambda name, value: self._reduce_loss(value, tensordict).squeeze(-1) if name.startswith("loss_") else value,
        )
        self._clear_weakrefs(
            tensordict, td_out, "actor_network_params", "critic_network_params",
            "target_actor_network_params", "target_critic_network_params",
        )  # fmt: skip
        return td_out

