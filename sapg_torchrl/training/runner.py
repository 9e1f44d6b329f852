"""The SAPG training loop, shared by the method and every ablation: collect, update, measure, checkpoint.

One iteration (:meth:`Runner.run_iteration`): collect ``T`` steps of all ``N`` envs (TorchRL
:class:`~torchrl.collectors.Collector`), count frames and episodes, build the batch and update
(:class:`~sapg_torchrl.training.PPOUpdate`), run the hooks, and gather the iteration's metrics in one host transfer.
:meth:`Runner.train` repeats it to the frame budget, evaluating the leader, handing each iteration's metrics to the
sinks, writing checkpoints (:meth:`Runner.state_dict` is everything the next iteration depends on) and ending after
an iteration on a preemption signal (:mod:`sapg_torchrl.training.preemption`).

Data-parallel over ``G`` processes (``ranks``, see :mod:`sapg_torchrl.training.distributed`): each runs this loop on
its ``N / G`` envs; the update's reductions are global, and so are the episode returns and the stop signal.
"""

from __future__ import annotations

import collections
import contextlib
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.collectors import Collector
from torchrl.envs import EnvBase

from sapg_torchrl.actor_critic import rollout_policy
from sapg_torchrl.errors import ConfigError, Preempted
from sapg_torchrl.training.checkpoint import save_checkpoint
from sapg_torchrl.training.evaluation import BackgroundEvaluator, InlineEvaluator, at_episode_end
from sapg_torchrl.training.preemption import stop_requests
from sapg_torchrl.training.settings import TrainSettings, check
from sapg_torchrl.training.update import PPOUpdate

__all__ = ["Runner", "SYNC_CHECK_INTERVAL"]

Hook = Callable[["Runner", TensorDictBase], None]
MetricsSink = Callable[[dict, int], None]

SYNC_CHECK_INTERVAL = 10
"""With several processes, the ranks' parameter checksums are compared every this many iterations (and at the end)."""


class Runner:
    """Trains SAPG (or any ablation of it) on a batched TorchRL env that writes ``block_id``.

    Args:
        env (EnvBase): the training env, batch size ``[N]``, e.g. from :func:`~sapg_torchrl.envs.make_sapg_env`.
        actor: the policy (from :func:`~sapg_torchrl.make_actor_critic`); the collector runs it.
        update (PPOUpdate): the update of an iteration; its device, layout, seed and ranks are the run's.
        train (TrainSettings): how the run runs (evaluation interval, checkpoints, progress, compile, CUDA graphs).

    Keyword Args:
        total_frames (int): env frames to train for, rounded up to whole iterations (relabelled rows are not
            frames); the whole run's over every rank.
        evaluator (InlineEvaluator or BackgroundEvaluator, optional): evaluates the leader every
            ``train.eval_interval`` iterations (and at the first and last). A background one's metrics reach the
            sinks once its evaluation finished, in order and complete, as inline; before a checkpoint and at the end,
            the runner waits for the evaluations still running.
        sinks (iterable of callables): ``sink(metrics: dict[str, float], iteration)`` once per iteration.
        hooks (iterable of callables): ``hook(runner, data)`` once per iteration with the ``[N, T]`` rollout
            (after its targets are computed): the place to record states or per-block data.
        run_dir (path, optional): where checkpoints go (``checkpoints/iter_*.pt``, see
            :mod:`sapg_torchrl.training.checkpoint`).

    Only the caller decides what rank 0 alone does (sinks, ``run_dir``, ``evaluator``, ``train.progress``).
    """

    def __init__(
        self,
        env: EnvBase,
        actor,
        update: PPOUpdate,
        train: TrainSettings,
        *,
        total_frames: float,
        evaluator: InlineEvaluator | BackgroundEvaluator | None = None,
        sinks: Iterable[MetricsSink] = (),
        hooks: Iterable[Hook] = (),
        run_dir: str | Path | None = None,
    ):
        check(train, "train.")
        if total_frames < 1:
            raise ConfigError(f"total_frames={total_frames} is not accepted: it must be >= 1")
        layout, ranks = update.layout, update.ranks
        if tuple(env.batch_size) != (layout.num_envs,):
            raise ConfigError(f"the env's batch size {tuple(env.batch_size)} does not match num_envs={layout.num_envs}")
        self.env, self.actor, self.update, self.train_settings = env, actor, update, train
        self.layout, self.ranks, self.device = layout, ranks, update.device
        self.local_frames_per_iteration = layout.num_envs * update.ppo.horizon
        self.frames_per_iteration = self.local_frames_per_iteration * ranks.world_size
        self.iterations = math.ceil(total_frames / self.frames_per_iteration)
        self.total_frames = self.iterations * self.frames_per_iteration
        self.evaluator = evaluator if train.eval_interval else None
        self.sinks, self.hooks = list(sinks), list(hooks)
        self.run_dir = None if run_dir is None else Path(run_dir)
        # every rank starts from rank 0's parameters and statistics (equal already when seeded alike)
        loss = update.loss
        ranks.broadcast_([*loss.parameters(), *loss.buffers()])
        if update.observation_norm is not None or update.critic_observation_norm is not None:
            update.update_observation_norms(env.reset().to(self.device))
        # the critic's values from the action pass where actor and critic share their trunk
        policy = rollout_policy(actor, update.critic)
        self.values_in_rollout = policy is not None
        self.collector = Collector(
            env,
            actor if policy is None else policy,
            frames_per_batch=self.local_frames_per_iteration,
            total_frames=self.iterations * self.local_frames_per_iteration,
            policy_device=self.device,
            storing_device=self.device,
            env_device=env.device,
            auto_register_policy_transforms=False,
            compile_policy=True if train.compile else None,
            cudagraph_policy=True if train.cudagraphs else None,
            track_traj_ids=False,  # unused here, and its bookkeeping reads the done flags on the host every step
        )
        self._rollouts = None  # the collector's iterator, from the first iteration on
        # an env that resets inside its step (TorchRL's native auto-reset) loses the final observation: NaN
        self.final_observation_lost = bool(env.__dict__.get("_torchrl_native_autoreset", False))
        self.iteration = 0
        self.frames = 0
        self.metrics: dict[str, float] = {}  # the last iteration's (kept for a run that diverges)
        self.time_s = 0.0  # training time of the iterations done, earlier sessions of a resumed run included
        self.extra_state: dict = {}  # the caller's, saved with every checkpoint (e.g. the wandb run id)
        # last completed episode return of every env (NaN until its first episode ends)
        self.last_return = torch.full((layout.num_envs,), float("nan"), device=self.device)
        self.episodes = torch.zeros(layout.num_envs, dtype=torch.long, device=self.device)
        self.phase_clock: Callable[[str], None] | None = None  # benchmarks: called after each phase of an iteration

    # ----------------------------------------------------------------------------------------- iteration
    def run_iteration(self) -> dict[str, float]:
        """One iteration: :meth:`collect` a rollout, :meth:`prepare` the batch, learn from it
        (:meth:`PPOUpdate.learn <sapg_torchrl.training.PPOUpdate.learn>`); returns the iteration's metrics (one host
        transfer). With :attr:`phase_clock` set, it is called with ``"collect"``, ``"targets"`` and ``"update"`` as
        each phase ends (the benchmarks time them so)."""
        data = self.collect()
        self._mark("collect")
        batch = self.prepare(data)
        self._mark("targets")
        losses = self.update.learn(batch, data, self.iteration)
        if self.update.adversarial_reward is not None:  # CPO's discriminator, on this iteration's rollout
            losses.update(self.update.adversarial_reward.diagnostics)
        metrics = self._iteration_metrics(losses)
        self._mark("update")
        return metrics

    def collect(self) -> TensorDictBase:
        """The collector's next ``[N, T]`` rollout."""
        if self._rollouts is None:
            self._rollouts = iter(self.collector)
        return next(self._rollouts)

    def prepare(self, data: TensorDictBase) -> TensorDictBase:
        """Counts the rollout's frames and episodes, builds the batch (the update's ``make_batch``, a
        :class:`~sapg_torchrl.training.TrainingBatch`) and runs the hooks. Returns the batch."""
        self.iteration += 1
        self.frames += data.numel() * self.ranks.world_size
        self._track_episodes(data)
        batch = self.update.make_batch(data, self.final_observation_lost, self.values_in_rollout)
        for hook in self.hooks:
            hook(self, data)
        return batch

    def _mark(self, phase: str) -> None:
        if self.phase_clock is not None:
            self.phase_clock(phase)

    @torch.no_grad()
    def _track_episodes(self, data: TensorDictBase) -> None:
        latest, finished = at_episode_end(data, last=True)
        self.last_return = torch.where(finished, latest, self.last_return)
        self.episodes += data.get(("next", "done")).squeeze(-1).sum(-1)

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
        flat["train/lr"] = self.update.lr
        return flat

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
        optimizer, learning-rate schedule, counters, episode trackers, the random generators (the update's shuffles,
        the aggregator's, torch's global CPU and CUDA ones), CPO's discriminator, the hooks' states (e.g. a
        :class:`~sapg_torchrl.training.StateReservoir`), the env's state where it is in the collector's
        tensordict (:attr:`env_state_in_tensordict`) and :attr:`extra_state`."""
        update, aggregator = self.update, self.update.aggregator
        adversarial = update.adversarial_reward
        carrier = self.collector._carrier  # the collector's current env tensordict
        return {
            "loss": update.loss.state_dict(),
            "optimizer": update.optimizer.state_dict(),
            "lr_schedule": None if update.lr_schedule is None else update.lr_schedule.state_dict(),
            "iteration": self.iteration,
            "frames": self.frames,
            "time_s": self.time_s,
            "last_return": self.last_return.cpu(),
            "episodes": self.episodes.cpu(),
            "generator": update.generator.get_state(),
            "aggregator_generator": None if aggregator is None or aggregator.generator is None
            else aggregator.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "hooks": [hook.state_dict() if hasattr(hook, "state_dict") else None for hook in self.hooks],
            "adversarial_reward": None if adversarial is None else adversarial.state_dict(),
            "env": carrier.cpu() if self.env_state_in_tensordict else None,
            "extra": dict(self.extra_state),
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """Restores :meth:`state_dict`'s output: the next iteration is the one that followed it."""
        update, aggregator = self.update, self.update.aggregator
        update.loss.load_state_dict(state["loss"])
        update.optimizer.load_state_dict(state["optimizer"])
        if update.lr_schedule is not None and state["lr_schedule"] is not None:
            update.lr_schedule.load_state_dict(state["lr_schedule"])
        self.iteration, self.frames, self.time_s = state["iteration"], state["frames"], state["time_s"]
        self.last_return.copy_(state["last_return"])
        self.episodes.copy_(state["episodes"])
        update.generator.set_state(state["generator"])
        if state["aggregator_generator"] is not None and aggregator is not None:
            aggregator.generator.set_state(state["aggregator_generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        for hook, hook_state in zip(self.hooks, state["hooks"], strict=True):
            if hook_state is not None:
                hook.load_state_dict(hook_state)
        if state.get("adversarial_reward") is not None:  # absent from checkpoints written before CPO
            update.adversarial_reward.load_state_dict(state["adversarial_reward"])
        if state["env"] is not None and self.env_state_in_tensordict:
            carrier = self.collector._carrier
            carrier.update(state["env"].to(carrier.device) if carrier.device is not None else state["env"])
        self.collector._frames = self.iteration * self.local_frames_per_iteration
        self.collector._iter = self.iteration
        if self.ranks.distributed:
            # the checkpoint is rank 0's: every rank takes its parameters and statistics, and draws its own action
            # noise and shuffles again (a resumed data-parallel run is therefore not bit-identical to an
            # uninterrupted one; the aggregation draws, the same on every rank, are restored exactly)
            seed = update.seed + self.iteration
            self.ranks.broadcast_([*update.loss.parameters(), *update.loss.buffers()])
            torch.manual_seed(seed)
            update.generator.manual_seed(seed)
        self.extra_state = dict(state["extra"])

    def save_checkpoint(self, final: bool = False) -> Path | None:
        """Writes ``run_dir/checkpoints/[final_]iter_XXXXXX.pt`` atomically (see
        :func:`~sapg_torchrl.training.checkpoint.save_checkpoint`); never overwrites an existing file."""
        if self.run_dir is None:
            return None
        return save_checkpoint(
            self.state_dict(), self.run_dir / "checkpoints", self.iteration, final=final,
            keep=self.train_settings.keep_checkpoints,
        )  # fmt: skip

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

        settings = self.train_settings
        bar = tqdm(total=self.total_frames, initial=self.frames, unit="frame", unit_scale=True,
                   disable=not settings.progress)  # fmt: skip
        start, frames_at_start, time_at_start = time.perf_counter(), self.frames, self.time_s
        last_checkpoint = time.monotonic()
        metrics: dict[str, float] = {}
        rows: collections.deque = collections.deque()  # (iteration, metrics, its evaluation still running)
        try:
            with stop_requests() as stop:
                while self.iteration < self.iterations:
                    metrics = self.metrics = self.run_iteration()
                    last = self.iteration == self.iterations
                    evaluating = False
                    if self.evaluator is not None and (
                        self.iteration == 1 or last or self.iteration % settings.eval_interval == 0
                    ):
                        result = self.evaluator.submit(self.iteration, self.actor)
                        if result is None:  # in the background: logged once it finished
                            evaluating = True
                        else:
                            metrics.update(result)
                    elapsed = time.perf_counter() - start
                    self.time_s = time_at_start + elapsed
                    fps = (self.frames - frames_at_start) / elapsed
                    metrics.update(iteration=self.iteration, frames=self.frames, time_s=self.time_s, fps=fps)
                    rows.append((self.iteration, metrics, evaluating))
                    self._log(rows, wait=False)
                    bar.update(self.local_frames_per_iteration * self.ranks.world_size)
                    bar.set_postfix(fps=f"{fps:.0f}", leader_return=f"{metrics['return/leader']:.2f}")
                    due = (settings.checkpoint_interval and self.iteration % settings.checkpoint_interval == 0) or (
                        settings.checkpoint_minutes
                        and time.monotonic() - last_checkpoint >= 60 * settings.checkpoint_minutes
                    )
                    if self.ranks.distributed:
                        if last or self.iteration % SYNC_CHECK_INTERVAL == 0:
                            self.ranks.check_in_sync(self.update.params, self.iteration)
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
