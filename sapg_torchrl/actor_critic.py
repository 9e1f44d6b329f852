"""SAPG's actor-critic as TorchRL modules: one network for all blocks, conditioned per block.

:func:`make_actor_critic` returns a :class:`~torchrl.modules.ProbabilisticActor` and a critic
(:class:`~tensordict.nn.TensorDictSequential`) that read ``observation`` and ``block_id``, in three
architectures:

- ``shared_trunk=True`` (released code): one trunk on ``cat(obs, phi_b)`` with a mean head and a value
  head; ``phi_b`` gets gradients from the policy, value and entropy terms.
- ``shared_trunk=False`` (paper): separate actor and critic trunks, both conditioned on the same
  ``phi_b``.
- ``disjoint=True`` (ablation): ``M`` independent networks (no phi), evaluated in one vmapped call.

In every case each block has its own learned log-std vector.

With ``critic_observation_keys`` the critic is *asymmetric*: it reads other entries than the policy (privileged
simulator state the robot will not have: IsaacGymEnvs' ``states``, Isaac Lab's ``critic`` group), concatenated in
the given order, through its own normaliser and its own trunk, conditioned on the same phi. The policy's inputs,
and so what :mod:`sapg_torchrl.deploy` exports, stay the observation alone.

With ``lstm_size`` the network starts with a TorchRL :class:`~torchrl.modules.LSTMModule` on the (normalised)
observation, and phi is concatenated to the LSTM's output, not its input (the paper's AllegroKuka network:
an LSTM of 768 before the MLP). The hidden state is thus a function of the observation history only, the same
under every block's conditioning: the hidden states a follower stored during the rollout are exactly the
leader's on the same history, so relabelled rows need no approximation (the released code feeds phi into
the LSTM and evaluates the leader on the follower's stored states, which were computed under the follower's
phi).
"""

from __future__ import annotations

from collections.abc import Sequence

from tensordict import NestedKey
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModule, TensorDictModuleBase, TensorDictSequential
from torch import nn
from torchrl.modules import IndependentNormal, LSTMModule, ProbabilisticActor
from torchrl.modules.value_norm import ValueNorm

from sapg_torchrl.errors import ConfigError
from sapg_torchrl.nn import (
    Blockwise, BlockLogStd, Concatenate, ConditionedMLP, Denormalize, ReuseIfPresent, Standardize, has_memory, mlp,
)  # fmt: skip

__all__ = ["make_actor_critic", "rollout_policy"]


class _Unconditioned(nn.Module):
    """Adapts a plain module to the ``(x, block_id)`` signature (the block id is ignored)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x, block_id):
        return self.module(x)


class _PerBlock(nn.Module):
    """Adapts :class:`Blockwise` to the ``(x, block_id)`` signature."""

    def __init__(self, blockwise: Blockwise):
        super().__init__()
        self.blockwise = blockwise

    def forward(self, x, block_id):
        return self.blockwise(x, block_id=block_id)


def make_actor_critic(
    observation_dim: int,
    action_dim: int,
    num_blocks: int,
    *,
    hidden: Sequence[int] = (256, 256, 128),
    phi_dim: int = 32,
    shared_trunk: bool = True,
    disjoint: bool = False,
    activation: str = "elu",
    max_log_std: float | None = None,
    lstm_size: int | None = None,
    lstm_layer_norm: bool = False,
    zero_bias: bool = False,
    value_norm: ValueNorm | None = None,
    observation_norm: ValueNorm | None = None,
    critic_observation_keys: Sequence[NestedKey] | None = None,
    critic_observation_dim: int | None = None,
    critic_observation_norm: ValueNorm | None = None,
    observation_key="observation",
    block_id_key="block_id",
) -> tuple[ProbabilisticActor, TensorDictSequential]:
    """Builds the block-conditioned Gaussian actor and the critic.

    Args:
        observation_dim (int): width of the observation.
        action_dim (int): width of the action.
        num_blocks (int): number of blocks ``M``.

    Keyword Args:
        hidden (sequence of int): trunk widths. Defaults to ``(256, 256, 128)``.
        phi_dim (int): width of each block's conditioning vector (32 in the code, 16 in the paper). With
            ``num_blocks=1`` there is nothing to condition on and no phi is built: the network is exactly a
            plain PPO actor-critic of the same sizes (the ``no_split`` baseline).
        shared_trunk (bool): one trunk for actor and critic (code) or one each (paper).
        disjoint (bool): ``M`` separate networks without phi (the ``disjoint`` ablation); overrides
            ``phi_dim``.
        activation (str): hidden activation. Defaults to ``"elu"``.
        max_log_std (float, optional): cap of every block's log-std (see :class:`~sapg_torchrl.nn.BlockLogStd`).
            Defaults to ``None`` (none, as in the released code).
        lstm_size (int, optional): hidden size of an LSTM before the trunk's MLP (``None``: feedforward).
            With ``shared_trunk=False`` the actor and critic MLPs read the same LSTM (the rollout runs the
            actor only: a critic-only LSTM would have no stored hidden states). Its hidden state is stored
            under ``recurrent_state_h`` / ``recurrent_state_c`` and reset where ``is_init`` is set: the env
            needs :func:`~sapg_torchrl.envs.track_recurrent_states`. Not with ``disjoint``.
        lstm_layer_norm (bool): a LayerNorm on the LSTM's output, before phi and the MLP (rl_games'
            ``layer_norm: True`` with ``before_mlp: True``, as in the published AllegroKuka network).
            Defaults to ``False``.
        zero_bias (bool): every linear layer's bias starts at zero (rl_games' network builder, the released code),
            its weights at PyTorch's default either way. Defaults to ``False`` (PyTorch's default bias).
        value_norm (ValueNorm, optional): if given, the value head predicts normalised values and the
            critic denormalises them with these statistics (pass the same object to
            :class:`~sapg_torchrl.SAPGLoss`).
        observation_norm (ValueNorm, optional): if given (e.g. ``RunningValueNorm(shape=observation_dim)``),
            observations are standardised with its statistics (clipped to +-5) before the trunk; phi is
            never normalised. Update it yourself (the update does, once per iteration).
        critic_observation_keys (sequence of NestedKey, optional): the critic's inputs, concatenated in this order
            (e.g. ``["observation", "privileged_state"]``); ``None`` (default): the policy's observation. When
            given, the critic is its own network (``shared_trunk`` applies to the symmetric case only) and,
            with an LSTM policy, feedforward: its privileged state stands in for the memory.
        critic_observation_dim (int, optional): the width of the concatenated critic inputs (with
            ``critic_observation_keys``).
        critic_observation_norm (ValueNorm, optional): standardises the concatenated critic inputs, as
            ``observation_norm`` does the policy's (e.g. ``RunningValueNorm(shape=critic_observation_dim)``).
        observation_key, block_id_key (NestedKey): input keys.

    Returns:
        ``(actor, critic)``: the actor writes ``loc``, ``scale``, ``action`` and the action's
        log-prob (and, recurrent, the next hidden state); the critic writes ``state_value``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> actor, critic = make_actor_critic(3, 2, num_blocks=4, hidden=(16,))
        >>> td = TensorDict(observation=torch.randn(8, 3), block_id=torch.arange(4).repeat(2), batch_size=[8])
        >>> actor(td)["action"].shape, critic(td)["state_value"].shape
        (torch.Size([8, 2]), torch.Size([8, 1]))
    """
    hidden = tuple(hidden)
    width = hidden[-1]
    asymmetric = critic_observation_keys is not None
    if asymmetric and critic_observation_dim is None:
        raise ConfigError("critic_observation_keys needs critic_observation_dim (the width of the concatenated inputs)")
    if lstm_size is not None and disjoint:
        raise ConfigError(
            f"lstm_size={lstm_size} is not accepted with disjoint=True: the disjoint ablation has no recurrent "
            "variant (use lstm_size=null)"
        )
    trunk_input_dim = observation_dim if lstm_size is None else lstm_size

    def trunk(input_dim: int = trunk_input_dim) -> nn.Module:
        if disjoint:
            return _PerBlock(Blockwise(lambda: mlp(input_dim, hidden, activation), num_blocks))
        if phi is None:
            return _Unconditioned(mlp(input_dim, hidden, activation))
        return ConditionedMLP(input_dim, hidden, phi, activation)

    def head(out_features: int) -> nn.Module:
        if disjoint:
            return _PerBlock(Blockwise(lambda: nn.Linear(width, out_features), num_blocks))
        return _Unconditioned(nn.Linear(width, out_features))

    # N(0, 1) init, as in the code; one block has nothing to condition on
    phi = None if disjoint or num_blocks == 1 else nn.Embedding(num_blocks, phi_dim)
    normalise = []
    if observation_norm is not None:
        normalise = [TensorDictModule(Standardize(observation_norm), in_keys=[observation_key], out_keys=["observation_std"])]
        observation_key = "observation_std"

    memory = []
    if lstm_size is not None:  # one LSTM for actor and critic: the rollout runs the actor only, so a critic-only
        # LSTM would have no stored hidden states
        memory = [
            LSTMModule(
                input_size=observation_dim, hidden_size=lstm_size, out_keys=["memory", *LSTMModule.DEFAULT_OUT_KEYS],
                in_keys=[observation_key, *LSTMModule.DEFAULT_IN_KEYS],
            )
        ]  # fmt: skip
        if lstm_layer_norm:
            memory.append(TensorDictModule(nn.LayerNorm(lstm_size), in_keys=["memory"], out_keys=["memory"]))
        observation_key = "memory"
    ins = [observation_key, block_id_key]
    actor_trunk = TensorDictSequential(*normalise, *memory, TensorDictModule(trunk(), in_keys=ins, out_keys=["actor_hidden"]))
    if asymmetric:  # its own inputs, normaliser and trunk; the same phi
        critic_in = [TensorDictModule(Concatenate(), in_keys=list(critic_observation_keys), out_keys=["critic_observation"])]
        critic_key = "critic_observation"
        if critic_observation_norm is not None:
            critic_in.append(
                TensorDictModule(Standardize(critic_observation_norm), in_keys=[critic_key], out_keys=["critic_observation_std"])
            )
            critic_key = "critic_observation_std"
        critic_trunk = TensorDictSequential(
            *critic_in,
            TensorDictModule(trunk(critic_observation_dim), in_keys=[critic_key, block_id_key], out_keys=["critic_hidden"]),
        )
    elif shared_trunk:  # computed once per loss evaluation, see ReuseIfPresent
        actor_trunk = critic_trunk = ReuseIfPresent(actor_trunk)
    else:
        critic_trunk = TensorDictSequential(
            *normalise, *memory, TensorDictModule(trunk(), in_keys=ins, out_keys=["critic_hidden"])
        )
    critic_hidden = critic_trunk.out_keys[-1]

    loc = TensorDictModule(head(action_dim), in_keys=["actor_hidden", block_id_key], out_keys=["loc"])
    log_std = TensorDictModule(
        BlockLogStd(num_blocks, action_dim, max_log_std=max_log_std), in_keys=["loc", block_id_key], out_keys=["loc", "scale"]
    )
    next_state = [key for key in actor_trunk.out_keys if isinstance(key, tuple) and key[0] == "next"]
    actor = ProbabilisticActor(  # the rollout carries the next hidden state from step to step
        TensorDictSequential(actor_trunk, loc, log_std, selected_out_keys=["loc", "scale", *next_state]),
        in_keys=["loc", "scale"],
        out_keys=["action"],
        distribution_class=IndependentNormal,
        return_log_prob=True,
    )

    steps = [critic_trunk, TensorDictModule(head(1), in_keys=[critic_hidden, block_id_key], out_keys=["state_value"])]
    if value_norm is not None:
        steps.append(TensorDictModule(Denormalize(value_norm), in_keys=["state_value"], out_keys=["state_value"]))
    critic = TensorDictSequential(*steps, selected_out_keys=["state_value"])
    if zero_bias:
        for module in [*actor.modules(), *critic.modules()]:
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
    return actor, critic


def rollout_policy(actor: ProbabilisticActor, critic: TensorDictModuleBase) -> TensorDictModuleBase | None:
    """The policy a collector runs to get, beside the actor's action, the critic's value of every state it acts in,
    for the price of the value head, where :func:`make_actor_critic`'s actor and critic share their trunk
    (``shared_trunk``, no memory): the trunk runs once per step for both, and the targets need no pass of the critic
    over the rollout's states (:func:`~sapg_torchrl.targets.rollout_state_values`' ``values_in_data``), as rl_games
    takes the values from its action pass. The same modules and parameters, the same action draws as ``actor``; the
    trunk's output stays inside (``None`` where the critic has its own trunk or there is a memory).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> actor, critic = make_actor_critic(3, 2, num_blocks=2, hidden=(8,))
        >>> policy = rollout_policy(actor, critic)
        >>> td = TensorDict(observation=torch.randn(4, 3), block_id=torch.tensor([0, 0, 1, 1]), batch_size=[4])
        >>> out = policy(td.clone())
        >>> sorted(out.keys())
        ['action', 'action_log_prob', 'block_id', 'loc', 'observation', 'scale', 'state_value']
        >>> torch.equal(out["state_value"], critic(td.clone())["state_value"])
        True
        >>> rollout_policy(*make_actor_critic(3, 2, num_blocks=2, hidden=(8,), shared_trunk=False)) is None
        True
    """
    body, sample = actor.module[0], actor.module[-1]
    trunk = body.module[0]
    critic_trunk = critic.module[0] if isinstance(critic, TensorDictSequential) else None
    if has_memory(actor) or not isinstance(trunk, ReuseIfPresent) or critic_trunk is not trunk:
        return None
    keeping = TensorDictSequential(*body.module, selected_out_keys=[*body.out_keys, *trunk.out_keys])
    acting = ProbabilisticTensorDictSequential(keeping, sample)
    return TensorDictSequential(acting, critic, selected_out_keys=[*actor.out_keys, *critic.out_keys])
