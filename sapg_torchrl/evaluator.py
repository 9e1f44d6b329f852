"""The in-loop evaluation of the leader: the measurement itself, and a child process that runs it on a copy of the
weights while training goes on (``train.eval_async``).

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
from torch import multiprocessing, nn
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type

from sapg_torchrl.envs.factory import track_recurrent_states

__all__ = ["BackgroundEvaluator", "evaluate_leader"]


@torch.no_grad()
def evaluate_leader(env: EnvBase, policy, steps: int) -> dict[str, float]:
    """Runs ``policy`` deterministically on ``env`` (fresh envs of the leader's block) until each env has completed an
    episode, at most ``steps`` steps.

    Returns the mean return of each env's first complete episode (``eval/return``) and the number of envs that
    completed one (``eval/episodes``). TorchRL's ``rollout(break_when_all_done=True)`` stops each env at the end of
    its first episode and the rollout once all have ended (one host read per step): the steps after that would not
    change the result, and on a task solved in short episodes they were most of its cost.

    Examples:
        >>> from sapg_torchrl import BlockLayout, make_actor_critic
        >>> from sapg_torchrl.envs import EnvpoolEnv, make_sapg_env
        >>> env = make_sapg_env(EnvpoolEnv(4, "Pendulum-v1"), torch.full((4,), 1))
        >>> actor, _ = make_actor_critic(3, 1, num_blocks=2, hidden=(8,))
        >>> evaluate_leader(env, actor, 200)["eval/episodes"]
        4.0
    """
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        rollout = env.rollout(steps, policy, break_when_any_done=False, break_when_all_done=True)
    done = rollout.get(("next", "done")).squeeze(-1)
    first = done.int().argmax(-1, keepdim=True)
    finished = done.any(-1)
    returns = rollout.get(("next", "episode_reward")).squeeze(-1).gather(-1, first).squeeze(-1)
    returns = torch.where(finished, returns, torch.full_like(returns, float("nan")))
    return {"eval/return": float(returns.nanmean()), "eval/episodes": float(finished.sum())}


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
        """Evaluates ``actor``'s current weights (copied now) as those of ``iteration``."""
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
