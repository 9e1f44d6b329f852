"""The SAPG training loop, shared by the method and every ablation.

One iteration: collect ``T`` steps of all ``N`` envs (TorchRL :class:`~torchrl.collectors.Collector`), GAE
per env under its own block's critic, add the relabelled rows of the :class:`~sapg_torchrl.aggregation.Aggregator`,
standardise the advantages once, then ``epochs`` passes of shuffled minibatches through
:class:`~sapg_torchrl.SAPGLoss` with Adam, gradient clipping and a KL-adaptive learning rate
(:class:`~torchrl.objectives.KLAdaptiveLR`, stepped once per epoch on the epoch's mean KL; with the loss's
``kl_reference="previous_epoch"`` the KL is to the policy of the previous epoch, as in rl_games). An epoch
is ``floor(rows / minibatch_size)`` minibatches, the remainder merged into the last (rl_games' partition), or
a fixed ``num_minibatches`` (rsl_rl's and CleanRL's convention), so that variants with more rows per
iteration take no more optimizer steps. A recurrent
policy (a TorchRL ``LSTMModule`` inside) trains on minibatches of whole ``T``-step env sequences instead of
shuffled rows, recomputed from the hidden states stored at their start. Everything stays
on the policy's device; the host sees one transfer of metrics per iteration (plus one float per epoch
for the learning-rate schedule).

Data-parallel over ``G`` processes (``ranks``, see :mod:`sapg_torchrl.distributed`): each runs this loop on its
``N / G`` envs; gradients are averaged every minibatch, and the advantage standardisation, the normalisers'
statistics, the learning rate's KL, the episode returns and the stop signal are global.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.collectors import Collector
from torchrl.envs import EnvBase
from torchrl.modules import GRUModule, LSTMModule, set_recurrent_mode
from torchrl.modules.value_norm import ValueNorm
from torchrl.objectives import KLAdaptiveLR
from torchrl.objectives.value import GAE

from sapg_torchrl.aggregation import Aggregator
from sapg_torchrl.blocks import BlockLayout
from sapg_torchrl.checkpoint import save_checkpoint
from sapg_torchrl.distributed import SINGLE, Ranks, update_running_norm
from sapg_torchrl.errors import ConfigError, Preempted
from sapg_torchrl.evaluator import BackgroundEvaluator, evaluate_leader
from sapg_torchrl.loss import SAPGLoss
from sapg_torchrl.targets import (
    fill_lost_final_observations,
    n_step_return,
    rollout_state_values,
    standardize_advantage,
)

__all__ = ["ADVANTAGE_NORMS", "CRITIC_TARGETS", "SAPGTrainer", "minibatch_sizes"]

CRITIC_TARGETS = ("gae", "n_step")
ADVANTAGE_NORMS = ("global", "per_block", "none")

Hook = Callable[["SAPGTrainer", TensorDictBase], None]
MetricsSink = Callable[[dict, int], None]


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


class SAPGTrainer:
    """Trains SAPG (or any ablation of it) on a batched TorchRL env that writes ``block_id``.

    Keyword Args:
        env (EnvBase): the training env, batch size ``[N]``, e.g. from :func:`~sapg_torchrl.envs.make_sapg_env`.
        actor, critic: from :func:`~sapg_torchrl.make_actor_critic`.
        loss (SAPGLoss): the loss; its ``tensor_keys`` name the data's keys.
        layout (BlockLayout): the env's block layout.
        aggregator (Aggregator, optional): relabelled rows; ``None`` for none.
        total_frames (int): env frames to train for (relabelled rows are not frames).
        horizon (int): ``T``, steps per env per iteration. Defaults to ``16``.
        gamma (float): discount. Defaults to ``0.99``.
        lmbda (float): GAE lambda. Defaults to ``0.95``.
        epochs (int): passes over the batch per iteration. Defaults to ``5``.
        minibatch_size (int): rows per minibatch (the last takes the remainder). Defaults to ``4 * N``.
        num_minibatches (int, optional): a fixed number of minibatches per epoch instead, their size
            following the batch (overrides ``minibatch_size``).
        lr (float): initial learning rate. Defaults to ``5e-4``.
        kl_target (float, optional): target KL of the adaptive learning rate, ``None`` for a fixed one.
            Defaults to ``0.016``.
        lr_bounds (tuple): bounds of the adaptive learning rate. Defaults to ``(1e-6, 1e-2)``.
        max_grad_norm (float): gradient-norm clip. Defaults to ``1.0``.
        critic_target (str): ``"gae"`` (code: GAE's lambda-return) or ``"n_step"`` (paper).
        n_step (int): ``n`` of the ``"n_step"`` target. Defaults to ``3``.
        advantage_norm (str): ``"global"`` (code: once over the augmented batch), ``"per_block"`` or ``"none"``.
        value_norm (ValueNorm, optional): updated once per iteration with the batch's value targets.
        observation_norm (ValueNorm, optional): updated once per iteration, after the update, with the
            rollout's observations (first from a reset before training).
        eval_env (EnvBase, optional): envs running the leader only (deterministic actions), for
            :meth:`evaluate`.
        evaluator (BackgroundEvaluator, optional): evaluates in a child process instead of ``eval_env``, while
            training goes on (:class:`~sapg_torchrl.evaluator.BackgroundEvaluator`). An iteration's metrics then
            reach the sinks once its evaluation finished, in order and complete, as inline; before a checkpoint
            and at the end, the trainer waits for the evaluations still running.
        eval_interval (int): evaluate every this many iterations (and at the first and last). ``0`` never.
        eval_steps (int): the most steps of an evaluation (one episode's length); it stops earlier once every
            eval env has completed an episode.
        sinks (iterable of callables): ``sink(metrics: dict[str, float], iteration)`` once per iteration.
        hooks (iterable of callables): ``hook(trainer, data)`` once per iteration with the ``[N, T]`` rollout
            (after its targets are computed): the place to record states or per-block data.
        run_dir (path, optional): where checkpoints go (``checkpoints/iter_*.pt``, see
            :mod:`sapg_torchrl.checkpoint`).
        checkpoint_interval (int): save every this many iterations (and at the end); ``0`` only at the end.
        checkpoint_minutes (float, optional): also save when this many minutes have passed since the last
            checkpoint (iterations last a fraction of a second on a GPU, many seconds on a CPU).
        keep_checkpoints (int): periodic checkpoints kept, the newest; the final one is never deleted.
            Defaults to ``3``.
        progress (bool): show a progress bar.
        device: where the policy and the batch live.
        seed (int): seeds the minibatch shuffles.
        ranks (Ranks): the processes of a data-parallel run (:mod:`sapg_torchrl.distributed`); ``env`` and
            ``layout`` are then this rank's share (``N / G`` envs, every block's share equal), ``total_frames``
            and the frame counts are the whole run's. Only the caller decides what rank 0 alone does (sinks,
            ``run_dir``, ``eval_env``, ``progress``). Defaults to one process.
        sync_check_interval (int): with several processes, compare the ranks' parameter checksums every this
            many iterations (and at the end). Defaults to ``10``.
        compile (bool): ``torch.compile`` the loss (its backward follows), the collector's policy (TorchRL's
            ``compile_policy``) and the evaluation policy. The same numbers to float tolerance; the first calls
            compile. Defaults to ``False``.
        cudagraphs (bool): capture the collector's policy in a CUDA graph (TorchRL's ``cudagraph_policy``, after
            tensordict's ``CudaGraphModule`` warm-up calls); on a device without CUDA the policy runs as it is
            (tensordict's behaviour; :func:`~sapg_torchrl.config.build_trainer` refuses it there). Defaults to
            ``False``.
        precision (str): ``"float32"``, or ``"bfloat16"``: the update's loss forward under ``torch.autocast`` in bf16
            (the backward follows it; parameters, Adam and the rollout stay float32). Defaults to ``"float32"``.
    """

    def __init__(
        self,
        *,
        env: EnvBase,
        actor,
        critic,
        loss: SAPGLoss,
        layout: BlockLayout,
        aggregator: Aggregator | None = None,
        total_frames: int,
        horizon: int = 16,
        gamma: float = 0.99,
        lmbda: float = 0.95,
        epochs: int = 5,
        minibatch_size: int | None = None,
        num_minibatches: int | None = None,
        lr: float = 5e-4,
        kl_target: float | None = 0.016,
        lr_bounds: tuple[float, float] = (1e-6, 1e-2),
        max_grad_norm: float = 1.0,
        critic_target: str = "gae",
        n_step: int = 3,
        advantage_norm: str = "global",
        value_norm: ValueNorm | None = None,
        observation_norm: ValueNorm | None = None,
        eval_env: EnvBase | None = None,
        evaluator: BackgroundEvaluator | None = None,
        eval_interval: int = 10,
        eval_steps: int = 1000,
        sinks: Iterable[MetricsSink] = (),
        hooks: Iterable[Hook] = (),
        run_dir: str | Path | None = None,
        checkpoint_interval: int = 0,
        checkpoint_minutes: float | None = None,
        keep_checkpoints: int = 3,
        progress: bool = True,
        device: torch.device | str = "cpu",
        seed: int = 0,
        ranks: Ranks = SINGLE,
        sync_check_interval: int = 10,
        compile: bool = False,
        cudagraphs: bool = False,
        precision: str = "float32",
    ):
        if critic_target not in CRITIC_TARGETS:
            raise ConfigError(f"critic_target={critic_target!r} is not accepted: use one of {list(CRITIC_TARGETS)}")
        if advantage_norm not in ADVANTAGE_NORMS:
            raise ConfigError(
                f"advantage_norm={advantage_norm!r} is not accepted: use one of {list(ADVANTAGE_NORMS)}"
            )
        for name, value in [("horizon", horizon), ("epochs", epochs), ("total_frames", total_frames)]:
            if value < 1:
                raise ConfigError(f"{name}={value} is not accepted: it must be >= 1")
        if tuple(env.batch_size) != (layout.num_envs,):
            raise ConfigError(f"the env's batch size {tuple(env.batch_size)} does not match num_envs={layout.num_envs}")
        self.env, self.actor, self.critic, self.loss = env, actor, critic, loss
        self.layout, self.aggregator = layout, aggregator
        self.ranks, self.sync_check_interval = ranks, sync_check_interval
        self.horizon, self.epochs = horizon, epochs
        self.local_frames_per_iteration = layout.num_envs * horizon
        self.frames_per_iteration = self.local_frames_per_iteration * ranks.world_size
        self.iterations = math.ceil(total_frames / self.frames_per_iteration)
        self.total_frames = self.iterations * self.frames_per_iteration
        self.minibatch_size = minibatch_size or 4 * layout.num_envs
        self.num_minibatches = num_minibatches
        self.max_grad_norm = max_grad_norm
        self.critic_target, self.n_step, self.advantage_norm = critic_target, n_step, advantage_norm
        self.value_norm = value_norm
        self.observation_norm = observation_norm
        # every rank starts from rank 0's parameters and statistics (equal already when seeded alike)
        ranks.broadcast_([*loss.parameters(), *loss.buffers()])
        if observation_norm is not None:
            update_running_norm(observation_norm, env.reset().get("observation").to(device), ranks)
        self.gamma = gamma
        # values are computed once by the trainer (and kept: the clipped value loss needs them), so the
        # estimator reads them instead of holding the critic
        self.gae = GAE(gamma=gamma, lmbda=lmbda, value_network=None)
        self.gae.set_keys(**{k: getattr(loss.tensor_keys, k) for k in ("advantage", "value_target", "value", "reward", "done", "terminated")})
        self.eval_env, self.eval_interval, self.eval_steps = eval_env, eval_interval, eval_steps
        self.evaluator = evaluator
        self.sinks, self.hooks = list(sinks), list(hooks)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.checkpoint_interval = checkpoint_interval
        self.checkpoint_minutes = checkpoint_minutes
        self.keep_checkpoints = keep_checkpoints
        self.progress = progress
        self.device = torch.device(device)
        self.seed = seed
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

        # torch.compile wraps the same modules: parameters, checkpoints and the eager paths are unchanged
        self.loss_forward = torch.compile(loss) if compile else loss
        if precision not in ("float32", "bfloat16"):
            raise ConfigError(f"precision={precision!r} is not accepted: use one of ['float32', 'bfloat16']")
        self.autocast = torch.autocast(self.device.type, torch.bfloat16, enabled=precision == "bfloat16")
        self.eval_policy = torch.compile(actor) if compile and eval_env is not None else actor
        self.params = [p for p in loss.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=lr)
        self.lr_schedule = (
            None
            if kl_target is None
            else KLAdaptiveLR(self.optimizer, target_kl=kl_target, factor=1.5, min_lr=lr_bounds[0], max_lr=lr_bounds[1])
        )
        self.collector = Collector(
            env,
            actor,
            frames_per_batch=self.local_frames_per_iteration,
            total_frames=self.iterations * self.local_frames_per_iteration,
            policy_device=self.device,
            storing_device=self.device,
            env_device=env.device,
            auto_register_policy_transforms=False,
            compile_policy=True if compile else None,
            cudagraph_policy=True if cudagraphs else None,
            track_traj_ids=False,  # unused here, and its bookkeeping reads the done flags on the host every step
        )
        # an env that resets inside its step (TorchRL's native auto-reset) loses the final observation: NaN
        self.final_observation_lost = bool(env.__dict__.get("_torchrl_native_autoreset", False))
        keys = self.loss.tensor_keys
        self._batch_keys = list(
            dict.fromkeys(
                [k for k in loss.in_keys if not (isinstance(k, tuple) and k[0] == "next")]
                + [keys.advantage, keys.value_target, keys.value, keys.relabelled]
            )
        )
        if loss.clip_mode == "paper":
            self._batch_keys.append(keys.log_clip_center)
        if loss.kl_reference == "previous_epoch":
            self._batch_keys += [keys.loc, keys.scale]
        # a recurrent policy learns from whole [T]-step sequences (minibatches of env sequences, the hidden
        # state recomputed from the one stored at their start); a feedforward one from shuffled rows
        self.recurrent = any(isinstance(m, (LSTMModule, GRUModule)) for m in (*actor.modules(), *critic.modules()))
        self.iteration = 0
        self.frames = 0
        self.metrics: dict[str, float] = {}  # the last iteration's (kept for a run that diverges)
        self.time_s = 0.0  # training time of the iterations done, earlier sessions of a resumed run included
        self.extra_state: dict = {}  # the caller's, saved with every checkpoint (e.g. the wandb run id)
        # last completed episode return of every env (NaN until its first episode ends)
        self.last_return = torch.full((layout.num_envs,), float("nan"), device=self.device)
        self.episodes = torch.zeros(layout.num_envs, dtype=torch.long, device=self.device)

    # ------------------------------------------------------------------------------------------- data
    @torch.no_grad()
    def make_batch(self, data: TensorDictBase) -> TensorDictBase:
        """Targets, relabelled rows and standardised advantages: the batch the epochs run over, flat rows
        (``[(N + relabelled) * T]``), or sequences (``[N + relabelled, T]``) for a recurrent policy."""
        keys = self.loss.tensor_keys
        if self.final_observation_lost:
            fill_lost_final_observations(data)
        # V(s_t) of every env under its own block, V(s_{t+1}) of the true final state where an episode ended
        rollout_state_values(self.critic, data, keys.value)
        self.gae(data)
        if self.critic_target == "n_step":
            data.set(
                keys.value_target,
                n_step_return(
                    data.get(("next", keys.reward)),
                    data.get(("next", keys.value)),
                    data.get(("next", keys.done)),
                    data.get(("next", keys.terminated)),
                    gamma=self.gamma,
                    n=self.n_step,
                ),
            )
        data.set(keys.relabelled, torch.zeros(data.shape, dtype=torch.bool, device=data.device))
        if self.loss.clip_mode == "paper":
            data.set(keys.log_clip_center, torch.zeros(data.shape, device=data.device))
        parts = [data.select(*self._batch_keys)]
        relabelled = None if self.aggregator is None else self.aggregator(data)
        if relabelled is not None:
            parts.append(relabelled.select(*self._batch_keys))
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
            update_running_norm(self.value_norm, batch.get(keys.value_target), self.ranks)
        return batch

    @torch.no_grad()
    def _track_episodes(self, data: TensorDictBase) -> None:
        done = data.get(("next", "done")).squeeze(-1)
        episode_return = data.get(("next", "episode_reward")).squeeze(-1)
        steps = torch.arange(done.shape[-1], device=done.device)
        last = (done * steps).argmax(-1)
        finished = done.any(-1)
        latest = episode_return.gather(-1, last[:, None]).squeeze(-1)
        self.last_return = torch.where(finished, latest, self.last_return)
        self.episodes += done.sum(-1)

    # ------------------------------------------------------------------------------------------ update
    def prepare(self, data: TensorDictBase) -> TensorDictBase:
        """First half of an iteration: counts the rollout's frames and episodes, builds the batch
        (:meth:`make_batch`) and runs the hooks. Returns the batch."""
        self.iteration += 1
        self.frames += data.numel() * self.ranks.world_size
        self._track_episodes(data)
        batch = self.make_batch(data)
        for hook in self.hooks:
            hook(self, data)
        return batch

    def learn(self, batch: TensorDictBase, data: TensorDictBase) -> TensorDictBase:
        """Second half: the epochs of updates, then the observation statistics take in the rollout
        (after the update, so the behaviour log-probs stay exact during it). Returns the mean loss outputs."""
        losses = self.update(batch)
        if self.observation_norm is not None:
            update_running_norm(self.observation_norm, data.get("observation"), self.ranks)
        return losses

    def minibatch_sizes(self, units: int, rows_per_unit: int = 1) -> list[int]:
        """The minibatches of one epoch over ``units`` rows (or sequences of ``rows_per_unit`` rows)."""
        if self.num_minibatches is not None:
            return minibatch_sizes(units, count=self.num_minibatches)
        return minibatch_sizes(units, size=max(1, self.minibatch_size // rows_per_unit))

    @set_recurrent_mode(True)
    def update(self, batch: TensorDictBase) -> TensorDictBase:
        """``epochs`` passes of shuffled minibatches (of rows, or of sequences for a recurrent policy; see
        :meth:`minibatch_sizes`); returns the mean of the loss outputs."""
        outputs = []
        units = batch.shape[0]
        sizes = self.minibatch_sizes(units, batch.numel() // units)
        keys = self.loss.tensor_keys
        track_reference = self.loss.kl_reference == "previous_epoch"
        for _ in range(self.epochs):
            epoch_out = []
            perm = torch.randperm(units, device=self.device, generator=self.generator)
            for index in perm.split(sizes):
                with self.autocast:
                    out = self.loss_forward(batch[index])
                if track_reference:  # this epoch's policy on these rows (float32 under bf16): the next epoch's KL reference
                    batch.set_at_(keys.loc, out.pop(keys.loc).float(), index)
                    batch.set_at_(keys.scale, out.pop(keys.scale).float(), index)
                total = sum(value for key, value in out.items() if key.startswith("loss_"))
                self.optimizer.zero_grad(set_to_none=True)
                total.backward()
                self.ranks.average_gradients(self.params)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
                self.optimizer.step()
                out = out.detach()
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
                        f"training diverged at iteration {self.iteration}: the policy's KL is {float(kl)} (non-finite "
                        f"losses){hint}"
                    )
                self.lr_schedule.step(kl)
            outputs.append(epoch_out)
        return torch.cat(outputs).apply(lambda x: x.float().nanmean(0), batch_size=[])

    # ------------------------------------------------------------------------------------------ metrics
    def _iteration_metrics(self, losses: TensorDictBase) -> dict[str, float]:
        M, B, L = self.layout.num_blocks, self.layout.block_size, self.layout.leader
        # a block's return is the mean of its envs' last completed episodes, reported once every env of the
        # block has completed one (before that, only envs with short, e.g. successful, episodes would count);
        # with several processes, over every rank's share of the block
        last = self.ranks.all_gather(self.last_return).view(-1, M, B).transpose(0, 1).reshape(M, -1)
        episodes = self.ranks.all_gather(self.episodes).view(-1, M, B).transpose(0, 1).reshape(M, -1)
        if self.ranks.distributed:  # the loss outputs' mean over ranks, in one all-reduce
            losses = losses.apply(lambda x: x.float())
            names = list(losses.keys(include_nested=True, leaves_only=True))
            values = [losses.get(name) for name in names]
            means = self.ranks.all_mean(torch.cat([v.reshape(-1) for v in values])).split([v.numel() for v in values])
            for name, value, mean in zip(names, values, means):
                losses.set(name, mean.view_as(value))
        nan = torch.full_like(last[:, 0], float("nan"))
        per_block_return = torch.where(last.isfinite().all(-1), last.mean(-1), nan)
        summary = TensorDict(
            {
                "return/leader": per_block_return[L],
                "return/all": torch.where(last.isfinite().all(), last.mean(), nan[0]),
                "return/per_block": per_block_return,
                "episodes/leader": episodes[L].sum(),
                "episodes/all": episodes.sum(),
            }
        )
        summary.update({f"train/{k}": v for k, v in losses.items()})
        flat = {}
        for key, value in summary.cpu().items(include_nested=True, leaves_only=True):
            name = key if isinstance(key, str) else "/".join(key)
            if value.ndim:
                flat.update({f"{name}/{i}": float(v) for i, v in enumerate(value.tolist())})
            else:
                flat[name] = float(value)
        flat["train/lr"] = self.optimizer.param_groups[0]["lr"]
        return flat

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Runs the leader, deterministically, on fresh eval envs until each has completed an episode (at most
        ``eval_steps`` steps): :func:`~sapg_torchrl.evaluator.evaluate_leader` on ``eval_env``."""
        if self.eval_env is None:
            return {}
        return evaluate_leader(self.eval_env, self.eval_policy, self.eval_steps)

    # --------------------------------------------------------------------------------------- checkpoint
    @property
    def env_state_in_tensordict(self) -> bool:
        """Whether the env's whole state travels in its tensordict, so that a checkpoint can hand it over: the
        base env's ``state_in_tensordict`` attribute where it has one, else whether it is one of TorchRL's
        stateless envs (``batch_locked`` false, e.g. ``PendulumEnv``). Other envs (envpool, Brax, IsaacGym)
        restart from a reset when a run resumes."""
        base = getattr(self.env, "base_env", self.env)
        return bool(getattr(base, "state_in_tensordict", not base.batch_locked))

    def state_dict(self) -> dict:
        """Everything the next iteration depends on: parameters and normaliser statistics (in the loss),
        optimizer, learning-rate schedule, counters, episode trackers, the random generators (the trainer's,
        the aggregator's, torch's global CPU and CUDA ones), the hooks' states (e.g. a
        :class:`~sapg_torchrl.metrics.StateReservoir`), the env's state where it is in the collector's
        tensordict (:attr:`env_state_in_tensordict`) and :attr:`extra_state`."""
        carrier = self.collector._carrier  # the collector's current env tensordict
        return {
            "loss": self.loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": None if self.lr_schedule is None else self.lr_schedule.state_dict(),
            "iteration": self.iteration,
            "frames": self.frames,
            "time_s": self.time_s,
            "last_return": self.last_return.cpu(),
            "episodes": self.episodes.cpu(),
            "generator": self.generator.get_state(),
            "aggregator_generator": None if self.aggregator is None or self.aggregator.generator is None
            else self.aggregator.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "hooks": [hook.state_dict() if hasattr(hook, "state_dict") else None for hook in self.hooks],
            "env": carrier.cpu() if self.env_state_in_tensordict else None,
            "extra": dict(self.extra_state),
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """Restores :meth:`state_dict`'s output: the next iteration is the one that followed it."""
        self.loss.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_schedule is not None and state["lr_schedule"] is not None:
            self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.iteration, self.frames = state["iteration"], state["frames"]
        self.time_s = state.get("time_s", 0.0)
        if "last_return" not in state:  # a checkpoint of the first versions: weights and counters only
            return
        self.last_return.copy_(state["last_return"])
        self.episodes.copy_(state["episodes"])
        self.generator.set_state(state["generator"])
        if state["aggregator_generator"] is not None and self.aggregator is not None:
            self.aggregator.generator.set_state(state["aggregator_generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        for hook, hook_state in zip(self.hooks, state["hooks"], strict=True):
            if hook_state is not None:
                hook.load_state_dict(hook_state)
        if state["env"] is not None and self.env_state_in_tensordict:
            carrier = self.collector._carrier
            carrier.update(state["env"].to(carrier.device) if carrier.device is not None else state["env"])
        self.collector._frames = self.iteration * self.local_frames_per_iteration
        self.collector._iter = self.iteration
        if self.ranks.distributed:
            # the checkpoint is rank 0's: every rank takes its parameters and statistics, and draws its own action
            # noise and shuffles again (a resumed data-parallel run is therefore not bit-identical to an
            # uninterrupted one; the aggregation draws, the same on every rank, are restored exactly)
            self.ranks.broadcast_([*self.loss.parameters(), *self.loss.buffers()])
            torch.manual_seed(self.seed + self.iteration)
            self.generator.manual_seed(self.seed + self.iteration)
        self.extra_state = dict(state["extra"])

    def save_checkpoint(self, final: bool = False) -> Path | None:
        """Writes ``run_dir/checkpoints/[final_]iter_XXXXXX.pt`` atomically (see
        :func:`~sapg_torchrl.checkpoint.save_checkpoint`); never overwrites an existing file."""
        if self.run_dir is None:
            return None
        return save_checkpoint(
            self.state_dict(), self.run_dir / "checkpoints", self.iteration, final=final, keep=self.keep_checkpoints
        )

    # --------------------------------------------------------------------------------------------- loop
    def _log(self, rows: collections.deque, wait: bool) -> None:
        """Hands the iterations' metrics to the sinks, in order, each once its background evaluation finished
        (``wait``: waits for them)."""
        while rows:
            iteration, metrics, evaluating = rows[0]
            if evaluating:
                result = self.evaluator.result(iteration, wait=wait)
                if result is None:
                    return
                metrics.update(result)
            rows.popleft()
            for sink in self.sinks:
                sink(metrics, iteration)

    def train(self) -> dict[str, float]:
        """Runs the remaining iterations (all, or those after a loaded checkpoint); returns the last iteration's
        metrics.

        SIGTERM and SIGINT (a cluster's preemption, Ctrl-C) let the current iteration finish, then a checkpoint
        is written and :class:`~sapg_torchrl.errors.Preempted` is raised; a second SIGINT stops at once. Under
        submitit (the SLURM launcher) its preemption signal is caught the same way, then handed to submitit,
        which requeues the job: the requeued job resumes from the checkpoint.
        """
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_frames, initial=self.frames, unit="frame", unit_scale=True, disable=not self.progress)
        start, frames_at_start, time_at_start = time.perf_counter(), self.frames, self.time_s
        last_checkpoint = time.monotonic()
        metrics: dict[str, float] = {}
        rows: collections.deque = collections.deque()  # (iteration, metrics, its evaluation still running)
        try:
            with _stop_requests() as stop:
                for data in self.collector:
                    losses = self.learn(self.prepare(data), data)
                    metrics = self.metrics = self._iteration_metrics(losses)
                    last = self.iteration == self.iterations
                    evaluating = False
                    if self.eval_interval and (self.iteration == 1 or last or self.iteration % self.eval_interval == 0):
                        if self.evaluator is None:
                            metrics.update(self.evaluate())
                        else:
                            self.evaluator.submit(self.iteration, self.actor)
                            evaluating = True
                    elapsed = time.perf_counter() - start
                    self.time_s = time_at_start + elapsed
                    fps = (self.frames - frames_at_start) / elapsed
                    metrics.update(iteration=self.iteration, frames=self.frames, time_s=self.time_s, fps=fps)
                    rows.append((self.iteration, metrics, evaluating))
                    self._log(rows, wait=False)
                    bar.update(data.numel() * self.ranks.world_size)
                    bar.set_postfix(fps=f"{fps:.0f}", leader_return=f"{metrics['return/leader']:.2f}")
                    due = (self.checkpoint_interval and self.iteration % self.checkpoint_interval == 0) or (
                        self.checkpoint_minutes and time.monotonic() - last_checkpoint >= 60 * self.checkpoint_minutes
                    )
                    if self.ranks.distributed:
                        if last or self.iteration % self.sync_check_interval == 0:
                            self.ranks.check_in_sync(self.params, self.iteration)
                        stop.agree(self.ranks)  # every rank stops after the same iteration
                    if last or due or stop.signum is not None:
                        self._log(rows, wait=True)  # a checkpoint's iterations are all logged
                        self.save_checkpoint(final=last)
                        last_checkpoint = time.monotonic()
                    if stop.signum is not None and not last:
                        stop.hand_over()
                        raise Preempted(stop.signum, self.iteration, self.run_dir)
        finally:
            if rows:  # stopped by an error: log what finished (the error, not a dead evaluator's, is the one raised)
                with contextlib.suppress(RuntimeError):
                    self._log(rows, wait=True)
            bar.close()
            self.collector.shutdown()
            if self.evaluator is not None:
                self.evaluator.close()
        return metrics


class _StopRequest:
    def __init__(self):
        self.signum: int | None = None  # the signal received, if any
        self.previous: dict = {}  # signal -> the handler installed before ours

    def agree(self, ranks: Ranks) -> None:
        """Makes a signal received by any rank a stop request on every rank (one tiny all-reduce)."""
        received = torch.tensor(0 if self.signum is None else self.signum, device=ranks.device)
        signum = int(ranks.all_gather(received).max())
        self.signum = signum or None

    def hand_over(self) -> None:
        """Calls the handler that was there before for the signal received (submitit's, which requeues the job
        and exits), if it was a Python one."""
        handler = self.previous.get(self.signum)
        if callable(handler) and self.signum != signal.SIGINT:
            handler(self.signum, None)


def _preemption_signals() -> tuple[int, ...]:
    """SIGINT and SIGTERM; under submitit (SLURM) its preemption signal (USR2 unless set) instead of SIGTERM,
    which submitit ignores on purpose: the handler it installed is called once the checkpoint is written."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return (signal.SIGINT, signal.SIGTERM)
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return (signal.SIGINT, getattr(signal, f"SIG{name}"))


@contextlib.contextmanager
def _stop_requests():
    """Records a preemption signal (see :func:`_preemption_signals`) instead of dying mid-iteration (main thread
    only: elsewhere signals cannot be caught and nothing changes); a second SIGINT raises ``KeyboardInterrupt``
    at once."""
    stop = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request(signum, frame):
        if signum == signal.SIGINT and stop.signum is not None:
            raise KeyboardInterrupt
        stop.signum = signum

    stop.previous = {sig: signal.signal(sig, request) for sig in _preemption_signals()}
    try:
        yield stop
    finally:
        for sig, handler in stop.previous.items():
            signal.signal(sig, handler)
