"""Evaluation of a policy on fresh envs: the measurement (each env's first complete episode, deterministic
actions), in the training loop (:class:`InlineEvaluator`) or in a child process on a copy of the weights while
training goes on (:class:`BackgroundEvaluator`, ``train.eval_async``); the offline evaluation of a trained run
(:func:`sapg_torchrl.app.trained_run.evaluate_run`) reads its episodes with :func:`at_episode_end` too.

Why a process of our own: TorchRL's rollout steps a batched env one step at a time through its transforms and the
policy's tensordict modules, a few milliseconds per step on a CPU whatever the number of eval envs; an evaluation
of 1000-step episodes then costs seconds, a large share of a fast run's time when it blocks training. In a child
process it costs the training loop only the copy of the actor's weights (and the cores it shares).
"""

from __future__ import annotations

import copy
import queue
from collections.abc import Callable

import torch
from tensordict import TensorDictBase
from torch import multiprocessing, nn
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type

from sapg_torchrl.envs.factory import track_recurrent_states

__all__ = ["BackgroundEvaluator", "InlineEvaluator", "at_episode_end", "evaluate_leader", "rollout_episodes"]


def at_episode_end(data: TensorDictBase, key="episode_reward", *, last: bool = False):
    """``data["next", key]`` of each env at the end of its first (``last``: last) episode that ends in the ``[N, T]``
    rollout ``data``, and whether one ended; the value is NaN (or the dtype's zero) where none did.

    Examples:
        >>> from tensordict import TensorDict
        >>> done = torch.tensor([[False, True, True], [False, False, False]])[..., None]
        >>> reward = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])[..., None]
        >>> data = TensorDict(next=TensorDict(done=done, episode_reward=reward, batch_size=[2, 3]), batch_size=[2, 3])
        >>> at_episode_end(data)
        (tensor([2., nan]), tensor([ True, False]))
        >>> at_episode_end(data, last=True)[0]
        tensor([3., nan])
    """
    done = data.get(("next", "done")).squeeze(-1)
    if last:
        steps = torch.arange(done.shape[-1], device=done.device)
        index = (done * steps).argmax(-1)
    else:
        index = done.int().argmax(-1)
    ended = done.any(-1)
    values = data.get(("next", key)).reshape(done.shape).gather(-1, index[:, None]).squeeze(-1)
    if values.is_floating_point():
        values = torch.where(ended, values, torch.full_like(values, float("nan")))
    return values, ended


@torch.no_grad()
def rollout_episodes(env: EnvBase, policy, steps: int, deterministic: bool = True) -> TensorDictBase:
    """Runs ``policy`` on ``env`` (fresh envs) until each env has completed an episode, at most ``steps`` steps: the
    ``[N, <= steps]`` rollout. TorchRL's ``rollout(break_when_all_done=True)`` stops each env at the end of its first
    episode and the rollout once all have ended (one host read per step): the steps after that would not change
    :func:`at_episode_end`, and on a task solved in short episodes they were most of its cost."""
    exploration = ExplorationType.DETERMINISTIC if deterministic else ExplorationType.RANDOM
    with set_exploration_type(exploration):
        return env.rollout(steps, policy, break_when_any_done=False, break_when_all_done=True)


@torch.no_grad()
def evaluate_leader(env: EnvBase, policy, steps: int) -> dict[str, float]:
    """Runs ``policy`` deterministically on ``env`` (fresh envs of the leader's block) until each env has completed an
    episode, at most ``steps`` steps (:func:`rollout_episodes`).

    Returns the mean return of each env's first complete episode (``eval/return``) and the number of envs that
    completed one (``eval/episodes``).

    Examples:
        >>> from sapg_torchrl import BlockLayout, make_actor_critic
        >>> from sapg_torchrl.envs import EnvpoolEnv, make_sapg_env
        >>> env = make_sapg_env(EnvpoolEnv(4, "Pendulum-v1"), torch.full((4,), 1))
        >>> actor, _ = make_actor_critic(3, 1, num_blocks=2, hidden=(8,))
        >>> evaluate_leader(env, actor, 200)["eval/episodes"]
        4.0
    """
    returns, finished = at_episode_end(rollout_episodes(env, policy, steps))
    return {"eval/return": float(returns.nanmean()), "eval/episodes": float(finished.sum())}


class InlineEvaluator:
    """Evaluates the leader in the training process (:func:`evaluate_leader` on ``env``), blocking the loop.

    Args:
        env (EnvBase): fresh envs of the leader's block; the evaluator owns them and :meth:`close` closes them.
        policy: the actor (or its compiled version).
        steps (int): the most steps of an evaluation.
    """

    def __init__(self, env: EnvBase, policy, steps: int):
        self.env, self.policy, self.steps = env, policy, steps

    def submit(self, iteration: int, actor: nn.Module) -> dict[str, float]:
        """Evaluates the policy now; returns its metrics."""
        return evaluate_leader(self.env, self.policy, self.steps)

    def close(self) -> None:
        """Closes the envs, as :class:`BackgroundEvaluator`'s child does its own: their simulator is freed when the
        run ends rather than when the evaluator is collected."""
        self.env.close()


def _serve(make_env: Callable[[], EnvBase], actor: nn.Module, steps: int, requests, results) -> None:
    torch.set_num_threads(1)  # it shares the machine with the learner
    env = make_env()
    if env.device is not None:  # a simulator on a GPU: the policy goes where its observations are
        actor = actor.to(env.device)
    track_recurrent_states(env, actor)
    while (request := requests.get()) is not None:
        iteration, weights = request
        actor.load_state_dict(weights)
        results.put((iteration, evaluate_leader(env, actor, steps)))
    env.close()


class BackgroundEvaluator:
    """Evaluates the leader in a child process (:func:`evaluate_leader` on its own eval envs) on copies of the
    actor's weights, one evaluation at a time, while the caller trains.

    The child builds its envs once (``make_env``) and steps them from evaluation to evaluation, as the inline
    evaluation does, so the numbers are the inline ones. :meth:`submit` hands over the weights of an iteration
    (first waiting for the previous evaluation if that is still running, so that none is skipped); :meth:`result`
    gives an iteration's metrics once its evaluation finished.

    Args:
        make_env (callable): builds the eval envs; pickled to the child (a ``functools.partial`` of module-level
            functions, not a lambda).
        actor (nn.Module): the policy; a copy goes to the child once, then only its weights.
        steps (int): the most steps of an evaluation.

    Examples:
        >>> import functools
        >>> from sapg_torchrl import make_actor_critic
        >>> from sapg_torchrl.envs import EnvpoolEnv, make_sapg_env
        >>> make_env = functools.partial(make_sapg_env, EnvpoolEnv(4, "Pendulum-v1"), torch.full((4,), 1))
        >>> actor, _ = make_actor_critic(3, 1, num_blocks=2, hidden=(8,))
        >>> evaluator = BackgroundEvaluator(make_env, actor, 200)  # doctest: +SKIP
        >>> evaluator.submit(1, actor); evaluator.result(1, wait=True)["eval/episodes"]  # doctest: +SKIP
        4.0
    """

    def __init__(self, make_env: Callable[[], EnvBase], actor: nn.Module, steps: int):
        context = multiprocessing.get_context("spawn")
        self._requests, self._results = context.Queue(), context.Queue()
        child_actor = copy.deepcopy(actor).cpu()
        self._process = context.Process(
            target=_serve, args=(make_env, child_actor, steps, self._requests, self._results), daemon=True
        )
        self._process.start()
        self._pending: int | None = None
        self._done: dict[int, dict[str, float]] = {}

    def submit(self, iteration: int, actor: nn.Module) -> None:
        """Evaluates ``actor``'s current weights (copied now) as those of ``iteration``; the metrics come from
        :meth:`result`."""
        if self._pending is not None:
            self._receive(block=True)
        weights = {name: value.detach().to("cpu", copy=True) for name, value in actor.state_dict().items()}
        self._requests.put((iteration, weights))
        self._pending = iteration

    def result(self, iteration: int, wait: bool = False) -> dict[str, float] | None:
        """The metrics of the evaluation of ``iteration``'s weights once it finished, else ``None`` (``wait``:
        until it finished)."""
        if iteration not in self._done and self._pending == iteration:
            self._receive(block=wait)
        return self._done.pop(iteration, None)

    def _receive(self, block: bool) -> None:
        while True:
            try:
                iteration, metrics = self._results.get(timeout=1.0 if block else 0.0)
            except queue.Empty:
                if not self._process.is_alive():
                    raise RuntimeError(
                        f"the evaluation process died (exit code {self._process.exitcode}) evaluating iteration "
                        f"{self._pending}; rerun with train.eval_async=false to see its error in this process"
                    ) from None
                if block:
                    continue
                return
            self._pending = None
            self._done[iteration] = metrics
            return

    def close(self) -> None:
        """Stops the child (after the evaluation it is running, or 10 s)."""
        if self._process.is_alive():
            self._requests.put(None)
            self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.terminate()
