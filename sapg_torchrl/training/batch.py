"""From a rollout to the batch :class:`~sapg_torchrl.SAPGLoss` trains on, in one call: :class:`TrainingBatch`.

The targets (GAE per env under its own block's critic, or the paper's n-step return), the relabelled rows of the
:class:`~sapg_torchrl.aggregation.Aggregator`, the advantages standardised once over the whole batch (or per block),
and the value normaliser's update. :class:`~sapg_torchrl.training.PPOUpdate` (and so the runner) calls it every
iteration; a plain TorchRL loop calls it the same way, between its collector and its loss.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torchrl.modules.value_norm import ValueNorm
from torchrl.objectives.value import GAE

from sapg_torchrl.aggregation import Aggregator
from sapg_torchrl.blocks import BlockLayout
from sapg_torchrl.errors import ConfigError
from sapg_torchrl.loss import SAPGLoss
from sapg_torchrl.nn import has_memory
from sapg_torchrl.training.adversarial_reward import AdversarialReward
from sapg_torchrl.targets import (
    ADVANTAGE_NORMS,
    CRITIC_TARGETS,
    fill_lost_final_observations,
    n_step_return,
    rollout_state_values,
    standardize_advantage,
)
from sapg_torchrl.training.distributed import SINGLE, Ranks, update_running_norm
from sapg_torchrl.training.settings import OLD_VALUE_NORMS, VALUE_NORM_UPDATES, PPOSettings

__all__ = ["TrainingBatch"]


class TrainingBatch:
    """Turns a ``[N, T]`` rollout into the batch of one iteration: ``batch = TrainingBatch(loss, layout)(rollout)``.

    The rollout is env-major (a TorchRL collector's ``[N, T]``), with the behaviour log-prob and the env's
    ``block_id``, ``("next", "reward")``, ``("next", "done")``, ``("next", "terminated")``. The call

    1. computes ``V(s_t)`` and ``V(s_{t+1})`` under each env's own block (kept: the clipped value loss needs them),
       then GAE (``critic_target="gae"``) or the n-step return (``"n_step"``) as the value target;
    2. appends the relabelled rows of ``aggregator`` (one-step TD targets under the target block's critic), flagged
       ``relabelled`` (the on-policy rows get ``False``; with CPO's ``leader_to_followers``, ``awac`` likewise);
    3. standardises the advantages once over the whole batch (``advantage_norm="global"``, the released code),
       per block, or not at all;
    4. updates ``value_norm`` with the batch's targets (first its values with ``value_norm_update="values_and_targets"``);
       with ``old_value_norm="before_targets"`` the stored values are rewritten so that the statistics after the
       update normalise them to what the statistics before the targets gave (the released code's clip centre).

    It returns flat rows ``[(N + relabelled) * T]`` (or sequences ``[N + relabelled, T]`` when a network is recurrent),
    holding what the loss reads (its ``in_keys`` and ``tensor_keys``). Keys are the loss's (:meth:`SAPGLoss.set_keys`).

    Args:
        loss (SAPGLoss): the loss the batch is for: its networks, keys, ``clip_mode`` and ``kl_reference``.
        layout (BlockLayout): the block layout of the rollout's envs.

    Keyword Args:
        aggregator (Aggregator, optional): the relabelled rows; ``None``: none.
        gamma (float): discount. Defaults to ``0.99``.
        lmbda (float): GAE lambda. Defaults to ``0.95``.
        critic_target (str): ``"gae"`` (default) or ``"n_step"`` (the paper's).
        n_step (int): ``n`` of the n-step target. Defaults to ``3``.
        advantage_norm (str): ``"global"`` (default), ``"per_block"`` or ``"none"``.
        value_norm (ValueNorm, optional): the critic's value normaliser, updated here once per call.
        value_norm_update (str): ``"targets"`` (default) or ``"values_and_targets"`` (the released code).
        old_value_norm (str): the statistics the stored values (the clipped value loss's centre) are normalised
            with: ``"after_targets"`` (default) or ``"before_targets"`` (the released code).
        observation_keys (list of NestedKey): the observation entries the networks read (for episodes whose final
            observation the env lost, see ``final_observation_lost``). Defaults to ``["observation"]``.
        ranks (Ranks): the processes of a data-parallel run: the standardisation and the normaliser are global.
        adversarial_reward (AdversarialReward, optional): CPO's bonus for the followers' rewards, added for the
            on-policy targets (not for the relabelled rows'); its discriminator trains on each rollout.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from sapg_torchrl import BlockLayout, SAPGLoss, make_actor_critic
        >>> from sapg_torchrl.aggregation import Aggregator
        >>> layout = BlockLayout(num_envs=6, num_blocks=3)
        >>> actor, critic = make_actor_critic(2, 1, num_blocks=3, hidden=(8,))
        >>> loss = SAPGLoss(actor, critic, entropy_coeff=[0.01, 0.01, 0.0])
        >>> make_batch = TrainingBatch(loss, layout, aggregator=Aggregator(layout, critic))
        >>> T, ids = 4, layout.block_ids()[:, None].expand(6, 4)
        >>> rollout = TensorDict(observation=torch.randn(6, T, 2), block_id=ids, batch_size=[6, T],
        ...     next=TensorDict(observation=torch.randn(6, T, 2), block_id=ids, reward=torch.randn(6, T, 1),
        ...                     done=torch.zeros(6, T, 1, dtype=torch.bool),
        ...                     terminated=torch.zeros(6, T, 1, dtype=torch.bool), batch_size=[6, T]))
        >>> with torch.no_grad():
        ...     rollout = actor(rollout)
        >>> batch = make_batch(rollout)  # 6 envs x 4 steps, plus one follower block (2 envs) relabelled to the leader
        >>> batch.shape, int(batch["relabelled"].sum())
        (torch.Size([32]), 8)
        >>> sum(v for k, v in loss(batch).items() if k.startswith("loss_")).backward()
    """

    def __init__(
        self,
        loss: SAPGLoss,
        layout: BlockLayout,
        *,
        aggregator: Aggregator | None = None,
        gamma: float = PPOSettings.gamma,
        lmbda: float = PPOSettings.lmbda,
        critic_target: str = PPOSettings.critic_target,
        n_step: int = PPOSettings.n_step,
        advantage_norm: str = "global",
        value_norm: ValueNorm | None = None,
        value_norm_update: str = PPOSettings.value_norm_update,
        old_value_norm: str = PPOSettings.old_value_norm,
        observation_keys: list | None = None,
        ranks: Ranks = SINGLE,
        adversarial_reward: AdversarialReward | None = None,
    ):
        for name, value, accepted in (
            ("advantage_norm", advantage_norm, ADVANTAGE_NORMS),
            ("critic_target", critic_target, CRITIC_TARGETS),
            ("value_norm_update", value_norm_update, VALUE_NORM_UPDATES),
            ("old_value_norm", old_value_norm, OLD_VALUE_NORMS),
        ):
            if value not in accepted:
                raise ConfigError(f"{name}={value!r} is not accepted: use one of {list(accepted)}")
        keys = loss.tensor_keys
        # CPO's rows of the leader relabelled to the followers: the loss must read them, under the aggregator's key
        self.awac_key = aggregator.awac_key if aggregator is not None and aggregator.leader_to_followers else None
        if self.awac_key is not None and not hasattr(keys, "awac"):
            raise ConfigError(
                "the aggregator relabels the leader's rows to the followers (leader_to_followers, CPO) but "
                f"{type(loss).__name__} has no awac term: use CPOLoss"
            )
        if aggregator is not None:
            for name, theirs, ours in (
                ("block id", aggregator.block_id_key, keys.block_id),
                ("relabelled flag", aggregator.relabelled_key, keys.relabelled),
                ("awac flag", self.awac_key, keys.awac if self.awac_key is not None else None),
            ):
                if theirs != ours:
                    raise ConfigError(f"the aggregator writes the {name} as {theirs!r} but the loss reads {ours!r}")
        self.loss, self.layout, self.aggregator = loss, layout, aggregator
        self.critic_target, self.n_step, self.gamma = critic_target, n_step, gamma
        self.advantage_norm, self.value_norm, self.value_norm_update = advantage_norm, value_norm, value_norm_update
        self.old_value_norm = old_value_norm
        self.observation_keys = list(observation_keys or ["observation"])
        self.ranks = ranks
        self.adversarial_reward = adversarial_reward
        # values are computed once here (and kept: the clipped value loss needs them), so the estimator reads them
        # instead of holding the critic
        self.gae = GAE(gamma=gamma, lmbda=lmbda, value_network=None)
        self.gae.set_keys(**{k: getattr(keys, k) for k in ("advantage", "value_target", "value", "reward", "done", "terminated")})
        batch_keys = [k for k in loss.in_keys if not (isinstance(k, tuple) and k[0] == "next")]
        batch_keys += [keys.advantage, keys.value_target, keys.value, keys.relabelled]
        if self.awac_key is not None:
            batch_keys.append(self.awac_key)
        if loss.clip_mode == "paper":
            batch_keys.append(keys.log_clip_center)
        if loss.kl_reference == "previous_epoch":
            batch_keys += [keys.loc, keys.scale]
        self.batch_keys = list(dict.fromkeys(batch_keys))
        # a recurrent policy learns from whole [T]-step sequences (minibatches of env sequences, the hidden
        # state recomputed from the one stored at their start); a feedforward one from shuffled rows
        networks = (loss.actor_network, loss.critic_network)
        self.recurrent = any(has_memory(net) for net in networks)

    @torch.no_grad()
    def __call__(
        self, data: TensorDictBase, final_observation_lost: bool = False, values_in_data: bool = False
    ) -> TensorDictBase:
        """The batch of ``data`` (``[N, T]``, written to in place: values, targets, flags).

        ``final_observation_lost``: the env resets inside its step (TorchRL's native auto-reset), leaving NaN where
        an episode's final observation would be (:func:`~sapg_torchrl.targets.fill_lost_final_observations`).
        ``values_in_data``: ``data`` holds ``V(s_t)``, written by the collector's policy
        (:func:`~sapg_torchrl.actor_critic.rollout_policy`) with the critic as it is now."""
        keys = self.loss.tensor_keys
        self.layout.check_rollout(data.shape)
        if final_observation_lost:
            fill_lost_final_observations(data, self.observation_keys)
        # V(s_t) of every env under its own block, V(s_{t+1}) of the true final state where an episode ended
        rollout_state_values(self.loss.critic_network, data, keys.value, values_in_data)
        reward = data.get(("next", keys.reward))
        if self.adversarial_reward is not None:  # the on-policy targets with CPO's bonus; the relabelled rows' without
            bonus, _ = self.adversarial_reward(data)
            data.set(("next", keys.reward), reward + bonus)
        self.gae(data)
        if self.critic_target == "n_step":
            following = data.get("next")
            data.set(
                keys.value_target,
                n_step_return(
                    following.get(keys.reward), following.get(keys.value), following.get(keys.done),
                    following.get(keys.terminated), gamma=self.gamma, n=self.n_step,
                ),
            )  # fmt: skip
        data.set(("next", keys.reward), reward)
        data.set(keys.relabelled, torch.zeros(data.shape, dtype=torch.bool, device=data.device))
        if self.awac_key is not None:
            data.set(self.awac_key, torch.zeros(data.shape, dtype=torch.bool, device=data.device))
        if self.loss.clip_mode == "paper":
            data.set(keys.log_clip_center, torch.zeros(data.shape, device=data.device))
        parts = [data.select(*self.batch_keys)]
        relabelled = None if self.aggregator is None else self.aggregator(data)
        if relabelled is not None:
            parts.append(relabelled.select(*self.batch_keys))
        batch = torch.cat(parts, 0)
        if not self.recurrent:
            batch = batch.reshape(-1)
        if self.advantage_norm != "none":
            per_block = self.advantage_norm == "per_block"
            batch.set(
                keys.advantage,
                standardize_advantage(
                    batch.get(keys.advantage),
                    batch.get(keys.block_id) if per_block else None,
                    self.layout.num_blocks,
                    all_sum=self.ranks.all_sum if self.ranks.distributed else None,
                ),
            )
        if self.value_norm is not None:
            values = batch.get(keys.value)
            if self.value_norm_update == "values_and_targets":
                update_running_norm(self.value_norm, values, self.ranks)
            before = self.value_norm.normalize(values) if self.old_value_norm == "before_targets" else None
            update_running_norm(self.value_norm, batch.get(keys.value_target), self.ranks)
            if before is not None:  # the loss normalises the stored values with the statistics as they are now
                batch.set(keys.value, self.value_norm.denormalize(before))
        return batch
