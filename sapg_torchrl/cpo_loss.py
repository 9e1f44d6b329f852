"""CPO's loss (Coupled Policy Optimization, Shitanda et al., ICLR 2026): SAPG's, with the followers coupled to the
leader.

Written from the authors' released code, ``Naoki04/paper-cpo-code`` at ``d1597a4``
(``rl_games/common/common_losses.py``: ``actor_loss_cpo``; ``algos_torch/a2c_continuous.py``: ``calc_gradients``;
``common/a2c_common.py``: ``augment_batch_for_cpo``), with the shipped settings ``awac_alpha = awac_gamma = 1``,
``enable_w = False``, ``scheduler_kl_data = no_awac``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import distributions as d

from sapg_torchrl.errors import ConfigError
from sapg_torchrl.loss import SAPGLoss, _masked_max, _masked_mean, _per_block_mean, _row_flag

__all__ = ["CPOLoss"]


class CPOLoss(SAPGLoss):
    """SAPG's loss with the followers coupled to the leader (CPO, the released code's objective).

    The batch holds SAPG's rows (every block's own, and followers' rows relabelled to the leader) and, flagged
    ``awac``, the **leader's rows relabelled to every follower** (:class:`~sapg_torchrl.aggregation.Aggregator` with
    ``leader_to_followers=True``). Per row, with ``r = pi_theta(a|s, b) / pi_behaviour(a|s)``, ``A`` the (standardised)
    advantage and ``L`` the leader:

    - the leader's own rows and the rows relabelled to it: :class:`~sapg_torchrl.SAPGLoss`'s clipped objective;
    - a follower's own rows: the clipped objective with the advantage shaped by a per-sample KL to the leader,
      ``A' = A - kl_coef * (log pi_theta(a|s, b) - log pi_theta(a|s, L))``, the leader's log-prob computed without
      gradient by the same networks with the leader's block id. As in the released code the gradient also flows
      through ``log pi_theta(a|s, b)`` inside ``A'`` (``kl_coef = 0``, the shipped configs, makes this SAPG's);
    - ``awac`` rows (the leader's transition ``(s, a)`` under follower ``b``'s block id, its advantage the one-step TD
      error of ``b``'s critic): the advantage-weighted term
      ``-awac_beta * min(exp(A / awac_lambda), awac_max) * log pi_theta(a|s, b)``, the weight without gradient.

    ``awac`` rows take part in nothing else (objective, critic, entropy, bounds, the learning rate's KL, the
    diagnostics), yet count in every mean's denominator: each term is its rows' sum over all the minibatch's rows,
    as in the released code. Everything else is :class:`~sapg_torchrl.SAPGLoss`'s (its keyword arguments too).

    **Outputs** on top of :class:`~sapg_torchrl.SAPGLoss`'s: ``loss_awac``; ``awac_weight_mean``, ``awac_weight_max``
    and ``awac_clamped_fraction`` (the weights ``exp(A / awac_lambda)`` of the ``awac`` rows, and the share capped at
    ``awac_max``); ``follower_leader_kl`` (``[num_blocks]``: the mean analytic ``KL(pi_b || pi_L)`` over each block's
    own rows, ``0`` for the leader). The leader's distribution costs one actor forward pass per call, without
    gradient.

    Args:
        actor_network (ProbabilisticTensorDictSequential): the policy (Gaussian, block-conditioned).
        critic_network (TensorDictModule, optional): the value function.

    Keyword Args:
        leader (int): the leader's block. Defaults to the last (``num_blocks - 1``, the released code's).
        awac_beta (float): weight of the AWAC term (``awac_beta``). Defaults to ``1e-3`` (the README's recipes).
        awac_lambda (float): temperature of its weights (``lambda_awac``). Defaults to ``0.2``.
        awac_max (float): cap of its weights (``awac_max``). Defaults to ``100``.
        kl_coef (float): ``lambda_ppo`` of the shaped advantage. Defaults to ``0`` (the shipped configs).
        **kwargs: :class:`~sapg_torchrl.SAPGLoss`'s.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from sapg_torchrl import CPOLoss, make_actor_critic
        >>> actor, critic = make_actor_critic(3, 2, num_blocks=3, hidden=(16,))
        >>> loss = CPOLoss(actor, critic, entropy_coeff=[0.01, 0.005, 0.0], kl_coef=0.1)
        >>> data = TensorDict(observation=torch.randn(12, 3), block_id=torch.tensor([0, 1, 2] * 4), batch_size=[12])
        >>> with torch.no_grad():
        ...     data = actor(critic(data))
        >>> data["advantage"], data["value_target"] = torch.randn(12, 1), torch.randn(12, 1)
        >>> data["relabelled"] = torch.tensor([False] * 6 + [True] * 6)
        >>> data["awac"] = torch.tensor([False] * 9 + [True] * 3)  # the leader's rows under a follower's block id
        >>> data["block_id"][9:] = torch.tensor([0, 1, 0])
        >>> out = loss(data)
        >>> sum(v for k, v in out.items() if k.startswith("loss_")).backward()
        >>> out["follower_leader_kl"].shape
        torch.Size([3])
    """

    @dataclass
    class _AcceptedKeys(SAPGLoss._AcceptedKeys):
        """Tensordict keys, settable with :meth:`set_keys`: :class:`~sapg_torchrl.SAPGLoss`'s, and

        Attributes:
            awac (NestedKey): bool flag of the leader's rows relabelled to a follower; missing means none (unless
                renamed). Defaults to ``"awac"``.
        """

        awac: NestedKey = "awac"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    def __init__(
        self,
        actor_network,
        critic_network=None,
        *,
        leader: int | None = None,
        awac_beta: float = 1e-3,
        awac_lambda: float = 0.2,
        awac_max: float = 100.0,
        kl_coef: float = 0.0,
        **kwargs,
    ):
        for name, value, ok, accepted in (
            ("awac_beta", awac_beta, awac_beta >= 0, ">= 0"),
            ("awac_lambda", awac_lambda, awac_lambda > 0, "> 0"),
            ("awac_max", awac_max, awac_max > 0, "> 0"),
            ("kl_coef", kl_coef, kl_coef >= 0, ">= 0"),
        ):
            if not ok:
                raise ConfigError(f"{name}={value} is not accepted: it must be {accepted}")
        super().__init__(actor_network, critic_network, **kwargs)
        if self.num_blocks is None or self.num_blocks < 2 or self._network_block_id is None:
            raise ConfigError(
                "CPOLoss needs block-conditioned networks with at least 2 blocks (make_actor_critic(..., num_blocks=M), M >= 2)"
            )
        leader = self.num_blocks - 1 if leader is None else leader
        if not 0 <= leader < self.num_blocks:
            raise ConfigError(f"leader={leader} is not accepted: use a block index in [0, {self.num_blocks - 1}]")
        self.leader = leader
        self.register_coeff_buffer("awac_beta", awac_beta)
        self.register_coeff_buffer("awac_lambda", awac_lambda)
        self.register_coeff_buffer("awac_max", awac_max)
        self.register_coeff_buffer("kl_coef", kl_coef)

    def _set_in_keys(self):
        super()._set_in_keys()
        self._in_keys = list(dict.fromkeys([*self._in_keys, self.tensor_keys.awac]))

    @property
    def out_keys(self):
        if self._out_keys is None:
            keys = list(super().out_keys)
            keys[1:1] = ["loss_awac"]
            keys += ["follower_leader_kl", "awac_weight_mean", "awac_weight_max", "awac_clamped_fraction"]
            self._out_keys = keys
        return self._out_keys

    @out_keys.setter
    def out_keys(self, values):
        self._out_keys = values

    def _awac_rows(self, tensordict: TensorDictBase, rows: torch.Size) -> torch.Tensor:
        device = tensordict.get(self.tensor_keys.sample_log_prob).device  # a batch's own device may be None
        return _row_flag(tensordict, self.tensor_keys.awac, self.default_keys.awac, tuple(rows), device)

    def _counted_rows(self, tensordict, rows):  # every row but the awac ones
        return ~self._awac_rows(tensordict, rows)

    def _current_log_prob(self, tensordict: TensorDictBase, log_weight: torch.Tensor) -> torch.Tensor:
        """``log pi_theta(a|s, b)`` of every row, ``[*rows, 1]``, with gradient (``log_weight`` plus the stored
        behaviour log-prob, which has none)."""
        previous = tensordict.get(self.tensor_keys.sample_log_prob)
        return log_weight + previous.reshape(log_weight.shape)

    def _objective_advantage(self, tensordict, advantage, log_weight, dist, block_id, on_policy):
        inputs = tensordict.select(*self.actor_network.in_keys, self.tensor_keys.action, strict=False)
        inputs.set(self._network_block_id, torch.full_like(block_id, self.leader))
        with torch.no_grad():
            leader_log_prob, leader, _ = self._get_cur_log_prob(inputs)
            own = d.Normal(dist.mean.detach(), dist.stddev.detach())
            kl = d.kl_divergence(own, d.Normal(leader.mean, leader.stddev)).sum(-1)
            per_block = _per_block_mean(kl, block_id, self.num_blocks, on_policy.to(kl.dtype))
        follower = on_policy & (block_id != self.leader).reshape(on_policy.shape)
        log_prob = self._current_log_prob(tensordict, log_weight)
        shaped = advantage - self.kl_coef * (log_prob - leader_log_prob.reshape(log_prob.shape))
        return torch.where(follower, shaped, advantage), {"follower_leader_kl": per_block}

    def _extra_losses(self, tensordict, advantage, log_weight, counted):
        awac = ~counted
        with torch.no_grad():
            raw = torch.exp(advantage / self.awac_lambda)
            weight = raw.clamp(max=self.awac_max)
        log_prob = self._current_log_prob(tensordict, log_weight)
        term = torch.where(awac, -self.awac_beta * weight * log_prob, torch.zeros_like(log_prob))
        return {
            "loss_awac": term,
            "awac_weight_mean": _masked_mean(weight, awac),
            "awac_weight_max": _masked_max(weight, awac),
            "awac_clamped_fraction": _masked_mean((raw > self.awac_max).to(weight.dtype), awac),
        }
