"""One block's trained policy as a plain function, exported to ONNX or TorchScript for a robot.

:class:`DeployedPolicy` wraps the actor of :func:`~sapg_torchrl.make_actor_critic` for one block: the observation
normaliser, the block's conditioning (phi), the LSTM if any, the mean head, and the action clamped to the action
spec's bounds, as the env clamps it in training and evaluation. No sampling: a deployed policy acts
deterministically (the Gaussian's mean). :func:`export_policy` writes it with torch's own exporters
(:func:`torch.export.export`, then :func:`torch.onnx.export` or TorchScript), the batch dimension dynamic.

The file's interface (also what :class:`ExportedPolicy` runs):

- feedforward: ``action = f(observation)``, ``observation [B, obs_dim]`` -> ``action [B, action_dim]``;
- recurrent: ``action, h, c = f(observation, h, c)``, the LSTM's state ``[B, num_layers, hidden]`` in and out,
  zeros at an episode's start.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.modules import LSTMModule, ProbabilisticActor

from sapg_torchrl.errors import ConfigError

__all__ = ["EXPORT_FORMATS", "DeployedPolicy", "ExportedPolicy", "LSTMStep", "export_policy"]

EXPORT_FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
METADATA_KEY = "sapg"


class LSTMStep(nn.Module):
    """One step of a batch-first :class:`~torch.nn.LSTM` with TorchRL's state layout ``[B, num_layers, hidden]``: what
    :class:`~torchrl.modules.LSTMModule` computes for one step from a given state, without its resets and padding
    (whose shape logic fixes the batch size in an export)."""

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        self.lstm = lstm

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        y, (h, c) = self.lstm(x.unsqueeze(-2), (h.transpose(-3, -2).contiguous(), c.transpose(-3, -2).contiguous()))
        return y.squeeze(-2), h.transpose(-3, -2), c.transpose(-3, -2)


def _with_lstm_steps(net: nn.Module) -> tuple[nn.Module, tuple | None, tuple[int, int] | None]:
    """A copy of ``net`` whose :class:`~torchrl.modules.LSTMModule` (if any) runs as a :class:`LSTMStep` (same
    weights, same keys); with the LSTM's state keys and ``(num_layers, hidden_size)``."""
    net = copy.deepcopy(net)
    for parent in list(net.modules()):
        for name, child in parent.named_children():
            if isinstance(child, LSTMModule):
                setattr(parent, name, TensorDictModule(LSTMStep(child.lstm), in_keys=child.in_keys[:3], out_keys=child.out_keys))
                return net, tuple(child.in_keys[1:3]), (child.lstm.num_layers, child.lstm.hidden_size)
    return net, None, None


class DeployedPolicy(nn.Module):
    """One block's deterministic policy: observation (and the LSTM's state) in, the clamped mean action out.

    Args:
        actor (ProbabilisticActor): the actor of :func:`~sapg_torchrl.make_actor_critic` (trained weights loaded;
            the policy holds a copy).
        observation_dim (int): the observation's width.
        block (int): the block whose conditioning the policy uses (the leader's, typically).
        action_low, action_high (Tensor): the action spec's bounds, ``[action_dim]``.

    Examples:
        >>> import torch
        >>> from sapg_torchrl import make_actor_critic
        >>> actor, _ = make_actor_critic(3, 2, num_blocks=4, hidden=(16,))
        >>> policy = DeployedPolicy(actor, 3, block=0, action_low=-torch.ones(2), action_high=torch.ones(2))
        >>> policy(torch.randn(5, 3)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self, actor: ProbabilisticActor, observation_dim: int, block: int, action_low: torch.Tensor, action_high: torch.Tensor
    ):
        super().__init__()
        # observation -> loc, scale: normaliser, LSTM, trunk + phi, heads
        self.net, self.state_keys, self.state_shape = _with_lstm_steps(actor.module[0])
        self.observation_dim = int(observation_dim)
        self.register_buffer("block_id", torch.tensor(int(block)))
        self.register_buffer("low", torch.as_tensor(action_low, dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(action_high, dtype=torch.float32))
        self.observation_key = self.net.in_keys[0]

    @property
    def recurrent(self) -> bool:
        """Whether the policy has an LSTM (then its state is an input and an output)."""
        return self.state_keys is not None

    def forward(self, observation: torch.Tensor, h: torch.Tensor | None = None, c: torch.Tensor | None = None):
        batch = observation.shape[:-1]
        # computed from the observation, not from its shape, so that a trace keeps the batch dimension free
        block_id = torch.zeros_like(observation[..., 0], dtype=torch.long) + self.block_id
        td = TensorDict({self.observation_key: observation, "block_id": block_id}, batch_size=batch)
        if self.recurrent:
            td.update(dict(zip(self.state_keys, (h, c))))
        out = self.net(td)
        action = torch.clamp(out.get("loc"), self.low, self.high)
        if not self.recurrent:
            return action
        return action, *(out.get(("next", key)) for key in self.state_keys)

    def example_inputs(self, batch: int = 2) -> tuple[torch.Tensor, ...]:
        """Zeros of the input shapes (a zero state starts an episode), for tracing and exporting."""
        observation = torch.zeros(batch, self.observation_dim, device=self.low.device)
        if not self.recurrent:
            return (observation,)
        return observation, *(torch.zeros(batch, *self.state_shape, device=self.low.device) for _ in range(2))

    def describe(self) -> dict:
        """What an exported file says of itself: input and output names, sizes, the block, the action bounds."""
        names_in, names_out = self.io_names()
        return {
            "inputs": names_in, "outputs": names_out, "observation_dim": self.observation_dim,
            "action_dim": int(self.low.numel()), "state_shape": self.state_shape, "block": int(self.block_id),
            "action_low": self.low.tolist(), "action_high": self.high.tolist(),
        }  # fmt: skip

    def io_names(self) -> tuple[list[str], list[str]]:
        """The exported file's input and output names."""
        if not self.recurrent:
            return ["observation"], ["action"]
        return ["observation", "h", "c"], ["action", "h_next", "c_next"]


def export_policy(policy: DeployedPolicy, path: str | Path, format: str, metadata: dict | None = None) -> Path:
    """Writes ``policy`` to ``path`` as ``format`` (:data:`EXPORT_FORMATS`), the batch dimension dynamic; returns
    the path. The export traces the policy once (:func:`torch.export.export`); TorchScript is that program traced.

    The file describes itself: :meth:`DeployedPolicy.describe` plus ``metadata`` as JSON, under the ONNX model's
    metadata key ``"sapg"`` or TorchScript's extra file ``"sapg.json"`` (:class:`ExportedPolicy` reads either).
    """
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"format={format!r} is not accepted: use one of {sorted(EXPORT_FORMATS)}")
    path = Path(path)
    policy = policy.eval()
    inputs = policy.example_inputs()
    batch = torch.export.Dim("batch", min=1)
    dynamic = tuple({0: batch} for _ in inputs)
    description = json.dumps({**policy.describe(), **(metadata or {})})
    with torch.no_grad(), warnings.catch_warnings():
        # the trace's note on the exported program's input-shape checks, and nn.LSTM's flattened-weights cache
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"The tensor attributes .*_flat_weights")
        program = torch.export.export(policy, inputs, dynamic_shapes=dynamic, strict=False)
        if format == "onnx":
            for name in ("onnx_ir", "onnxscript"):  # their optimisers log every initializer and constant they touch
                logging.getLogger(name).setLevel(logging.WARNING)
            names_in, names_out = policy.io_names()
            onnx_program = torch.onnx.export(
                program, inputs, input_names=names_in, output_names=names_out, dynamo=True, verbose=False
            )
            onnx_program.model.metadata_props[METADATA_KEY] = description
            onnx_program.save(str(path))
        else:
            traced = torch.jit.trace(program.module(), inputs, check_trace=False)
            torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": description})
    return path


class ExportedPolicy:
    """An exported file (:func:`export_policy`) as a function of numpy or torch inputs returning numpy outputs (a
    tuple, in :meth:`DeployedPolicy.io_names`' order): onnxruntime for ``.onnx``, :func:`torch.jit.load` for ``.pt``.

    Args:
        path (path): an ``.onnx`` or ``.pt`` file written by :func:`export_policy`.

    Attributes:
        metadata (dict): what the file says of itself (inputs, outputs, sizes, block, bounds, provenance).

    Examples:
        >>> import tempfile
        >>> from sapg_torchrl import make_actor_critic
        >>> actor, _ = make_actor_critic(3, 2, num_blocks=4, hidden=(16,))
        >>> policy = DeployedPolicy(actor, 3, block=1, action_low=-torch.ones(2), action_high=torch.ones(2))
        >>> path = export_policy(policy, Path(tempfile.mkdtemp()) / "leader.pt", "torchscript")
        >>> exported = ExportedPolicy(path)
        >>> exported.metadata["inputs"], exported(np.zeros((5, 3)))[0].shape
        (['observation'], (5, 2))
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        if path.suffix not in EXPORT_FORMATS.values() or not path.is_file():
            raise ConfigError(f"policy={str(path)!r} is not accepted: an exported .onnx or .pt file (sapg-export)")
        if path.suffix == ".onnx":
            import onnxruntime

            self._session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            self.metadata = json.loads(self._session.get_modelmeta().custom_metadata_map[METADATA_KEY])
        else:
            extra = {f"{METADATA_KEY}.json": ""}
            self._module = torch.jit.load(str(path), _extra_files=extra)
            self.metadata = json.loads(extra[f"{METADATA_KEY}.json"])

    @property
    def state_shape(self) -> tuple[int, int] | None:
        """``(num_layers, hidden_size)`` of a recurrent policy's state, ``None`` for a feedforward one."""
        shape = self.metadata["state_shape"]
        return None if shape is None else tuple(shape)

    def __call__(self, *inputs) -> tuple:
        arrays = [np.asarray(x, dtype=np.float32) for x in inputs]
        if hasattr(self, "_session"):
            return tuple(self._session.run(None, dict(zip(self.metadata["inputs"], arrays))))
        with torch.no_grad():
            out = self._module(*(torch.from_numpy(x) for x in arrays))
        return tuple(o.numpy() for o in (out if isinstance(out, tuple) else (out,)))
