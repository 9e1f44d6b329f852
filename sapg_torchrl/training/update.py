"""The update of one SAPG iteration, shared by the method and every ablation: from a ``[N, T]`` rollout to new
parameters.

:attr:`PPOUpdate.make_batch` (a :class:`~sapg_torchrl.training.batch.TrainingBatch`): GAE per env under its own
block's critic (or the paper's n-step target), the relabelled rows of the :class:`~sapg_torchrl.aggregation.Aggregator`,
the advantages standardised once, the value normaliser updated on the targets (or the values, then the targets:
``ppo.value_norm_update``). :meth:`PPOUpdate.learn`:
``epochs`` passes of shuffled minibatches (shuffled anew every epoch, or once: ``ppo.shuffle``) through
:class:`~sapg_torchrl.SAPGLoss` with Adam, gradient clipping and a KL-adaptive learning rate
(:class:`~torchrl.objectives.KLAdaptiveLR`, stepped once per epoch on the epoch's mean KL; with the loss's
``kl_reference="previous_epoch"`` the KL is to the policy of the previous epoch, as in rl_games); the observation
normaliser takes in the rollout after the update, or each minibatch of the first epoch before it is learned from, as
rl_games does (``ppo.observation_norm_update``). An epoch is ``floor(rows / minibatch_size)`` minibatches, the remainder
merged into the last (rl_games' partition), or a fixed ``num_minibatches`` (rsl_rl's and CleanRL's convention), so
that variants with more rows per iteration take no more optimizer steps. A recurrent policy (a TorchRL
``LSTMModule`` inside) trains on minibatches of whole ``T``-step env sequences instead of shuffled rows, recomputed
from the hidden states stored at their start.

Everything stays on the policy's device: no host read per minibatch, one per epoch (the learning rate's KL, which
also checks that the losses are finite). Over several processes (``ranks``) the gradients are averaged every
minibatch, and the advantage standardisation, the normalisers' statistics and the KL are global.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torchrl.modules import set_recurrent_mode
from torchrl.modules.value_norm import ValueNorm
from torchrl.objectives import KLAdaptiveLR

from sapg_torchrl.aggregation import Aggregator
from sapg_torchrl.blocks import BlockLayout
from sapg_torchrl.errors import ConfigError
from sapg_torchrl.loss import LR_BOUNDS, LR_FACTOR, SAPGLoss
from sapg_torchrl.training.batch import TrainingBatch
from sapg_torchrl.training.distributed import SINGLE, Ranks, update_running_norm
from sapg_torchrl.training.settings import PPOSettings, TrainSettings, check

__all__ = ["PPOUpdate", "minibatch_sizes"]


def minibatch_sizes(units: int, *, size: int | None = None, count: int | None = None) -> list[int]:
    """How an epoch splits ``units`` shuffled rows (or sequences) into minibatches.

    With ``size`` (rl_games): ``floor(units / size)`` minibatches of ``size``, the remainder merged into the
    last (at least one minibatch). With ``count`` (rsl_rl, CleanRL): ``count`` minibatches of
    ``floor(units / count)``, the remainder merged into the last.

    Examples:
        >>> minibatch_sizes(28672, size=6144)  # sapg on the MountainCar preset: 4 steps, as rl_games
        [6144, 6144, 6144, 10240]
        >>> minibatch_sizes(49152, count=4)  # symmetric: twice the rows, still 4 steps
        [12288, 12288, 12288, 12288]
    """
    if (size is None) == (count is None):
        raise ValueError("give exactly one of size and count")
    if count is None:
        count = max(1, units // size)
        size = min(size, units)
    elif not 1 <= count <= units:
        raise ConfigError(f"num_minibatches={count} is not accepted for {units} rows (or sequences): use 1..{units}")
    else:
        size = units // count
    return [size] * (count - 1) + [units - size * (count - 1)]


class PPOUpdate:
    """The batch and the optimisation of one iteration (see the module's text): targets, relabelled rows, advantage
    standardisation, normalisers, and the epochs of minibatch steps with Adam and the adaptive learning rate.

    Args:
        loss (SAPGLoss): the loss; it holds every parameter and normaliser statistic, and its ``tensor_keys`` name
            the data's keys.
        layout (BlockLayout): the block layout of this process's envs.
        ppo (PPOSettings): the update's settings (horizon, epochs, minibatches, learning rate, targets, ...).
        train (TrainSettings): how it runs (``compile``, ``precision``).

    Keyword Args:
        advantage_norm (str): ``"global"`` (code: once over the augmented batch), ``"per_block"`` or ``"none"``.
        aggregator (Aggregator, optional): the relabelled rows; ``None`` for none.
        value_norm (ValueNorm, optional): updated once per iteration with the batch's value targets (first with its
            values under ``ppo.value_norm_update: values_and_targets``).
        observation_norm (ValueNorm, optional): updated once per iteration, after the update, with the rollout's
            observations, or before each minibatch of the first epoch with its rows (``ppo.observation_norm_update``).
        critic_observation_norm (ValueNorm, optional): an asymmetric critic's, updated alike with its inputs
            (``critic_observation_keys``, concatenated).
        critic_observation_keys (list, optional): an asymmetric critic's observation entries; ``None``: the policy's.
        device: where the batch lives.
        seed (int): seeds the minibatch shuffles.
        ranks (Ranks): the processes of a data-parallel run (:mod:`sapg_torchrl.training.distributed`). Defaults to
            one process.
        adversarial_reward (AdversarialReward, optional): CPO's bonus for the followers' rewards (see
            :class:`~sapg_torchrl.training.batch.TrainingBatch`).

    Attributes:
        optimizer_steps (int): the minibatch steps taken so far (a host counter: no device read).
        adversarial_reward (AdversarialReward or None): CPO's discriminator, as given.

    Examples:
        >>> from sapg_torchrl import BlockLayout, SAPGLoss, make_actor_critic
        >>> from sapg_torchrl.training import PPOSettings, TrainSettings
        >>> actor, critic = make_actor_critic(3, 1, num_blocks=2, hidden=(8,))
        >>> update = PPOUpdate(SAPGLoss(actor, critic), BlockLayout(4, 2), PPOSettings(num_minibatches=4),
        ...                    TrainSettings(), advantage_norm="global")
        >>> update.minibatch_sizes(4 * 16)  # 4 envs x T = 16 rows, 4 minibatches
        [16, 16, 16, 16]
    """

    def __init__(
        self,
        loss: SAPGLoss,
        layout: BlockLayout,
        ppo: PPOSettings,
        train: TrainSettings,
        *,
        advantage_norm: str,
        aggregator: Aggregator | None = None,
        value_norm: ValueNorm | None = None,
        observation_norm: ValueNorm | None = None,
        critic_observation_norm: ValueNorm | None = None,
        critic_observation_keys: list | None = None,
        device: torch.device | str = "cpu",
        seed: int = 0,
        ranks: Ranks = SINGLE,
        adversarial_reward=None,
    ):
        check(ppo, "ppo.")
        check(train, "train.")
        self.loss, self.layout, self.ppo, self.aggregator = loss, layout, ppo, aggregator
        self.observation_norm = observation_norm
        self.critic_observation_norm, self.critic_observation_keys = critic_observation_norm, critic_observation_keys
        # the env's observation entries the networks read (an asymmetric critic's too)
        self.observation_keys = list(dict.fromkeys(["observation", *(critic_observation_keys or [])]))
        self.ranks, self.seed = ranks, seed
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.minibatch_size = ppo.minibatch_size or 4 * layout.num_envs
        self.adversarial_reward = adversarial_reward
        self.make_batch = TrainingBatch(
            loss, layout, aggregator=aggregator, gamma=ppo.gamma, lmbda=ppo.lmbda, critic_target=ppo.critic_target,
            n_step=ppo.n_step, advantage_norm=advantage_norm, value_norm=value_norm,
            value_norm_update=ppo.value_norm_update, old_value_norm=ppo.old_value_norm,
            observation_keys=self.observation_keys, ranks=ranks, adversarial_reward=adversarial_reward,
        )  # fmt: skip
        """The batch of a rollout (:class:`~sapg_torchrl.training.batch.TrainingBatch`): ``make_batch(data,
        final_observation_lost)``."""

        # torch.compile wraps the same modules: parameters, checkpoints and the eager paths are unchanged
        self.loss_forward = torch.compile(loss) if train.compile else loss
        self.autocast = torch.autocast(self.device.type, torch.bfloat16, enabled=train.precision == "bfloat16")
        self.params = [p for p in loss.parameters() if p.requires_grad]
        # foreach: a handful of operators per step for all parameters instead of ~9 per parameter (the default on a
        # GPU; on the CPU the same numbers, checked bit for bit by benchmarks/same_seed_check.py)
        self.optimizer = torch.optim.Adam(self.params, lr=ppo.lr, foreach=True)
        self.lr_schedule = (
            None
            if ppo.kl_target is None
            else KLAdaptiveLR(self.optimizer, target_kl=ppo.kl_target, factor=LR_FACTOR, min_lr=LR_BOUNDS[0], max_lr=LR_BOUNDS[1])
        )
        self.optimizer_steps = 0

    @property
    def critic(self):
        return self.loss.critic_network

    # ------------------------------------------------------------------------------------------ update
    def learn(self, batch: TensorDictBase, data: TensorDictBase, iteration: int) -> TensorDictBase:
        """The epochs of updates on ``batch`` (:meth:`epochs`), then, with ``ppo.observation_norm_update:
        after_update``, the observation statistics take in the rollout ``data`` (after the update, so that the
        behaviour log-probs stay exact during it; ``first_epoch`` takes in the minibatches during the first epoch
        instead). Returns the mean loss outputs; ``iteration`` names the iteration in the error of a run that
        diverges."""
        losses = self.epochs(batch, iteration)
        if self.ppo.observation_norm_update == "after_update":
            self.update_observation_norms(data)
        return losses

    @torch.no_grad()
    def update_observation_norms(self, data: TensorDictBase) -> None:
        """The observation normalisers (the policy's and an asymmetric critic's) take in ``data``'s observations."""
        if self.observation_norm is not None:
            update_running_norm(self.observation_norm, data.get("observation"), self.ranks)
        if self.critic_observation_norm is not None:
            critic_input = torch.cat([data.get(key) for key in self.critic_observation_keys], -1)
            update_running_norm(self.critic_observation_norm, critic_input, self.ranks)

    def minibatch_sizes(self, units: int, rows_per_unit: int = 1) -> list[int]:
        """The minibatches of one epoch over ``units`` rows (or sequences of ``rows_per_unit`` rows)."""
        if self.ppo.num_minibatches is not None:
            return minibatch_sizes(units, count=self.ppo.num_minibatches)
        return minibatch_sizes(units, size=max(1, self.minibatch_size // rows_per_unit))

    @set_recurrent_mode(True)
    def epochs(self, batch: TensorDictBase, iteration: int = 0) -> TensorDictBase:
        """``ppo.epochs`` passes of shuffled minibatches (of rows, or of sequences for a recurrent policy; see
        :meth:`minibatch_sizes`), shuffled anew every epoch or once (``ppo.shuffle``); returns the mean of the loss
        outputs. With ``ppo.observation_norm_update: first_epoch`` the observation normalisers take in each
        minibatch of the first epoch before it is learned from. Non-finite losses raise :class:`FloatingPointError`."""
        outputs = []
        units = batch.shape[0]
        sizes = self.minibatch_sizes(units, batch.numel() // units)
        keys = self.loss.tensor_keys
        track_reference = self.loss.kl_reference == "previous_epoch"
        normalise_first_epoch = self.ppo.observation_norm_update == "first_epoch"
        perm = None
        for epoch in range(self.ppo.epochs):
            epoch_out = []
            if perm is None or self.ppo.shuffle == "every_epoch":
                perm = torch.randperm(units, device=self.device, generator=self.generator)
            for index in perm.split(sizes):
                if normalise_first_epoch and epoch == 0:
                    self.update_observation_norms(batch[index])
                with self.autocast:
                    out = self.loss_forward(batch[index])
                if track_reference:  # this epoch's policy on these rows (float32 under bf16): the next epoch's KL reference
                    batch.set_at_(keys.loc, out.pop(keys.loc).float(), index)
                    batch.set_at_(keys.scale, out.pop(keys.scale).float(), index)
                total = sum(value for key, value in out.items() if key.startswith("loss_"))
                self.optimizer.zero_grad(set_to_none=True)
                total.backward()
                self.ranks.average_gradients(self.params)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.ppo.max_grad_norm)
                self.optimizer.step()
                self.optimizer_steps += 1
                out = out.apply(lambda x: x.detach() if x.requires_grad else x)  # the loss terms (diagnostics have none)
                # ClipPPOLoss's ESS keeps a batch's trailing dims (sequences of a recurrent policy: one per step)
                out.set("ESS", out.get("ESS").mean())
                out.set("grad_norm", grad_norm.detach())
                epoch_out.append(out)
            epoch_out = torch.stack(epoch_out)
            if self.lr_schedule is not None:
                kl = self.ranks.all_mean(epoch_out["kl_approx"].nanmean())
                if not torch.isfinite(kl):  # the one host sync per epoch, shared with the schedule
                    hint = ""  # with relabelled rows, their importance ratios are the usual cause
                    if self.aggregator is not None:
                        ratio = float(epoch_out["is_ratio_max"].nan_to_num(0).max())
                        hint = f"; is_ratio_max={ratio:.3g} (importance ratios of relabelled rows; sapg.max_importance_ratio caps them)"
                    raise FloatingPointError(
                        f"training diverged at iteration {iteration}: the policy's KL is {float(kl)} (non-finite "
                        f"losses){hint}"
                    )
                self.lr_schedule.step(kl)
            outputs.append(epoch_out)
        return torch.cat(outputs).apply(lambda x: x.float().nanmean(0), batch_size=[])

    # --------------------------------------------------------------------------------------- state
    @property
    def lr(self) -> float:
        """The current learning rate."""
        return self.optimizer.param_groups[0]["lr"]
