"""The exceptions users see: bad settings, and a run stopped by a signal with its checkpoint written."""

import signal
from pathlib import Path

__all__ = ["ConfigError", "Preempted"]


class ConfigError(ValueError):
    """A setting has a value SAPG cannot use. The message names the value and the accepted ones."""


class Preempted(Exception):
    """A run stopped by SIGTERM or SIGINT after finishing its iteration and writing a checkpoint.

    Attributes:
        signum (int): the signal.
        iteration (int): the last iteration done (and checkpointed).
        run_dir (Path or None): the run folder, to resume from.
        exit_code (int): ``128 + signum``, the shell's convention for a process ended by that signal.
        summary (str): what happened, without the resume command (a study resumes with its own command).
    """

    def __init__(self, signum: int, iteration: int, run_dir: Path | None):
        self.signum, self.iteration, self.run_dir = signum, iteration, run_dir
        self.exit_code = 128 + signum
        self.summary = f"stopped by {signal.Signals(signum).name} after iteration {iteration}, checkpoint written"
        where = f"; resume with: python recipes/sapg.py resume={run_dir}" if run_dir is not None else ""
        super().__init__(self.summary + where)
