"""The training layer: the update and the loop over the method's TorchRL parts, with no Hydra.

- :mod:`~sapg_torchrl.training.settings`: the typed settings of the update and the loop, and how a setting is
  described and checked;
- :mod:`~sapg_torchrl.training.batch`: :class:`TrainingBatch`, from a rollout to the batch the loss trains on;
- :mod:`~sapg_torchrl.training.update`: :class:`PPOUpdate`, the batch and the optimisation of one iteration;
- :mod:`~sapg_torchrl.training.runner`: :class:`Runner`, the loop (collect, update, evaluate, log, checkpoint);
- :mod:`~sapg_torchrl.training.evaluation`: the leader's evaluation, inline or in a child process;
- :mod:`~sapg_torchrl.training.checkpoint`: checkpoint files; :mod:`~sapg_torchrl.training.sinks`: metric sinks;
- :mod:`~sapg_torchrl.training.state_reservoir`: the visited-states hook;
- :mod:`~sapg_torchrl.training.distributed`: data-parallel reductions; :mod:`~sapg_torchrl.training.preemption`:
  stop signals; :mod:`~sapg_torchrl.training.device`: the device of a setting.
"""

from sapg_torchrl.training.batch import TrainingBatch
from sapg_torchrl.training.runner import Runner
from sapg_torchrl.training.settings import PPOSettings, TrainSettings
from sapg_torchrl.training.state_reservoir import StateReservoir
from sapg_torchrl.training.update import PPOUpdate

__all__ = ["PPOSettings", "PPOUpdate", "Runner", "StateReservoir", "TrainSettings", "TrainingBatch"]
