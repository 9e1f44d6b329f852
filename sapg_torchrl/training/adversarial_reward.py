"""CPO's adversarial reward (``cpo.discriminator_coef``): a discriminator learns which block took an action in a
state, and each follower is rewarded for being recognisable, so that the followers do not all collapse onto the
leader (Shitanda et al., ICLR 2026; the released code's ``use_ad_reward``).

As ``Naoki04/paper-cpo-code@d1597a4`` (``rl_games/common/a2c_common.py``, ``play_steps``;
``algos_torch/a2c_continuous.py``) does it, with ``ad_reward_type: sa`` and ``ad_reward_discriminate_leader: True``
(its shipped settings): after each rollout, the discriminator (an MLP on the raw observation and the action, one
logit per block, ELU) scores every ``(s, a)`` of the rollout; a follower's row gets the reward ``-coef * CE`` (the
cross-entropy of its own block, so higher when recognised), the leader's rows 0; the on-policy targets are computed
with the reward plus this bonus (the relabelled rows keep the task's reward); then the discriminator takes one pass of
Adam steps (the run's initial learning rate, fixed) over the rollout's rows, shuffled, in minibatches of
``minibatch_size``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from torch import nn

from sapg_torchrl.nn import mlp
from sapg_torchrl.training.distributed import SINGLE, Ranks

__all__ = ["AdversarialReward"]


class AdversarialReward:
    """The discriminator, its optimiser and the bonus it gives the followers' rewards (see the module's text).

    Args:
        observation_dim (int): width of the policy's observation.
        action_dim (int): width of the action.
        num_blocks (int): ``M``, the discriminator's classes.
        leader (int): the leader's block (its rows get no bonus).

    Keyword Args:
        coef (float): the bonus' scale (the released code's ``ad_reward_coef``: 0.01 on ShadowHand, 1e-3 on
            AllegroHand).
        hidden (sequence of int): the discriminator's widths. Defaults to the released code's ``(1024, 1024, 512, 512)``.
        lr (float): its Adam learning rate. Defaults to ``5e-4``.
        minibatch_size (int): rows per Adam step.
        block_id_key, observation_key, action_key (NestedKey): the rollout's entries. Default ``"block_id"``,
            ``"observation"``, ``"action"``.
        device: where the discriminator lives.
        seed (int): seeds its initialisation and its shuffles.
        ranks (Ranks): the processes of a data-parallel run: the gradients are averaged over them.

    Attributes:
        diagnostics (dict): the last call's, as device tensors (empty before the first).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> reward = AdversarialReward(2, 1, num_blocks=3, leader=2, coef=0.01, hidden=(16,), minibatch_size=8)
        >>> data = TensorDict(observation=torch.randn(6, 4, 2), action=torch.randn(6, 4, 1),
        ...                   block_id=torch.arange(3).repeat_interleave(2)[:, None].expand(6, 4), batch_size=[6, 4])
        >>> bonus, diagnostics = reward(data)
        >>> bonus.shape, bool((bonus[4:] == 0).all()), bool((bonus[:4] < 0).all())
        (torch.Size([6, 4, 1]), True, True)
        >>> sorted(diagnostics)
        ['adversarial_bonus', 'discriminator_accuracy', 'discriminator_loss']
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        num_blocks: int,
        leader: int,
        *,
        coef: float,
        hidden: Sequence[int] = (1024, 1024, 512, 512),
        lr: float = 5e-4,
        minibatch_size: int,
        block_id_key="block_id",
        observation_key="observation",
        action_key="action",
        device: torch.device | str = "cpu",
        seed: int = 0,
        ranks: Ranks = SINGLE,
    ):
        with torch.random.fork_rng(devices=[]):  # its own initialisation: the policy's draws stay as without it
            torch.manual_seed(seed)
            self.network = nn.Sequential(mlp(observation_dim + action_dim, list(hidden)), nn.Linear(hidden[-1], num_blocks))
        self.network.to(device)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=lr, eps=1e-8, foreach=True)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.coef, self.leader, self.minibatch_size, self.ranks = coef, leader, minibatch_size, ranks
        self.keys = (observation_key, action_key, block_id_key)
        self.diagnostics: dict[str, torch.Tensor] = {}

    def _inputs(self, data: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        observation, action, block_id = (data.get(key) for key in self.keys)
        return torch.cat([observation, action], -1).reshape(-1, observation.shape[-1] + action.shape[-1]), block_id.reshape(-1)

    def __call__(self, data: TensorDictBase) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The bonus of every row of the ``[N, T]`` rollout ``data`` (``[N, T, 1]``), then one training pass of the
        discriminator on it. Returns the bonus and the diagnostics (the discriminator's loss and accuracy on the rollout
        before its pass, and the mean bonus over the rollout's rows), as device tensors."""
        inputs, labels = self._inputs(data)
        with torch.no_grad():
            logits = self.network(inputs)
            cross_entropy = nn.functional.cross_entropy(logits, labels, reduction="none")
            bonus = torch.where(labels != self.leader, -self.coef * cross_entropy, torch.zeros_like(cross_entropy))
            diagnostics = {
                "discriminator_loss": cross_entropy.mean(),
                "discriminator_accuracy": (logits.argmax(-1) == labels).float().mean(),
                "adversarial_bonus": bonus.mean(),
            }
        self.train(inputs, labels)
        self.diagnostics = diagnostics
        return bonus.reshape(*data.shape, 1), diagnostics

    @torch.enable_grad()  # called from the batch's construction, which runs without gradients
    def train(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        """One pass of Adam steps over ``inputs``, shuffled, in minibatches of ``minibatch_size`` rows."""
        params = list(self.network.parameters())
        for index in torch.randperm(len(labels), device=labels.device, generator=self.generator).split(self.minibatch_size):
            loss = nn.functional.cross_entropy(self.network(inputs[index]), labels[index])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.ranks.average_gradients(params)
            self.optimizer.step()

    def state_dict(self) -> dict:
        return {"network": self.network.state_dict(), "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
