"""Preemption: SIGTERM, SIGINT (and submitit's preemption signal on SLURM) end a run after its iteration, with a
checkpoint, instead of in the middle of it (:func:`stop_requests`, used by :meth:`~sapg_torchrl.training.Runner.train`)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import torch

from sapg_torchrl.training.distributed import Ranks

__all__ = ["stop_requests"]


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
def stop_requests():
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
