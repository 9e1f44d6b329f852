"""Exploration diversity: which states a variant visits, and how different its block policies are.

- :class:`StateReservoir`, a trainer hook, keeps a uniform sample of the raw observations one block (the
  leader by default) visited over the whole run.
- :func:`pca_reconstruction_error` (the paper's measure, with :func:`curve_area`) and
  :func:`autoencoder_reconstruction_error` (the paper's second measure) compare variants' states: every
  variant is subsampled to the same count and standardised with one shared mean and std, so the errors
  are comparable. A higher error at a small number of components (or a narrow bottleneck) means the
  states are spread over more directions: more diverse.
- :func:`per_block_entropy` and :func:`pairwise_block_kl` evaluate every block's policy on the same
  states.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torch import distributions as D
from torch import nn

__all__ = [
    "StateReservoir",
    "autoencoder_reconstruction_error",
    "curve_area",
    "pairwise_block_kl",
    "pca_reconstruction_error",
    "per_block_entropy",
]


class StateReservoir:
    """A trainer hook keeping a uniform random sample (reservoir) of the raw observations one block visited.

    Classic reservoir sampling (Vitter's algorithm R): after ``n`` states have been seen, the reservoir
    holds ``min(n, capacity)`` of them, each seen state with the same probability ``capacity / n``,
    without repeats. Each call is vectorised on the data's device: the ``k`` new states draw their target
    slots at once (state ``i``, 1-based over the run, goes to slot ``i - 1`` while ``i <= capacity``,
    otherwise to a uniform slot in ``[0, i)`` and is kept if that slot is ``< capacity``); when several new
    states draw the same slot the latest wins, exactly as in the sequential algorithm. The cost per call
    is ``O(k + capacity)`` tensor work and no host synchronisation.

    As a hook (``SAPGTrainer(hooks=[reservoir])``) it reads ``data[observation_key]`` of the ``[N, T]``
    rollout (env-major, block-contiguous) and keeps the rows of one block. :meth:`update` takes states
    directly.

    Args:
        capacity (int): reservoir size.
        seed (int): seed of the slot draws. Defaults to ``0``.

    Keyword Args:
        block (int, "leader" or None): the block whose envs are sampled: ``"leader"`` (default,
            ``trainer.layout.leader``), a block index, or ``None`` for all envs.
        observation_key (NestedKey): the raw observation. Defaults to ``"observation"``.

    Examples:
        >>> reservoir = StateReservoir(capacity=4, seed=0)
        >>> reservoir.update(torch.arange(10.0)[:, None])
        >>> reservoir.states.shape, reservoir.seen
        (torch.Size([4, 1]), 10)
        >>> len(set(reservoir.states.flatten().tolist()))  # no state twice
        4
    """

    def __init__(
        self, capacity: int, seed: int = 0, *, block: int | str | None = "leader", observation_key="observation"
    ):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity={capacity!r} is not accepted: it must be an integer >= 1")
        if not (block is None or block == "leader" or (isinstance(block, int) and not isinstance(block, bool))):
            raise ValueError(f"block={block!r} is not accepted: use 'leader', a block index or None")
        self.capacity = capacity
        self.seed = int(seed)
        self.block = block
        self.observation_key = observation_key
        self.seen = 0
        self._buffer: torch.Tensor | None = None
        self._generator: torch.Generator | None = None

    # ------------------------------------------------------------------------------------------- hook
    def __call__(self, trainer, data: TensorDictBase) -> None:
        """Adds the chosen block's observations of the ``[N, T]`` rollout ``data``."""
        observation = data.get(self.observation_key)
        if self.block is not None:
            layout = trainer.layout
            if observation.shape[0] != layout.num_envs:
                raise ValueError(
                    f"the rollout has {observation.shape[0]} envs along dim 0, the layout {layout.num_envs}"
                )
            block = layout.leader if self.block == "leader" else self.block
            if not -layout.num_blocks <= block < layout.num_blocks:
                raise ValueError(f"block={block} is out of range for num_blocks={layout.num_blocks}")
            start = (block % layout.num_blocks) * layout.block_size
            observation = observation[start : start + layout.block_size]
        self.update(observation.reshape(-1, *observation.shape[2:]))

    @torch.no_grad()
    def update(self, states: torch.Tensor) -> None:
        """Offers ``states`` (``[k, *obs_shape]``, one state per row) to the reservoir."""
        k = states.shape[0]
        if k == 0:
            return
        device = states.device
        if self._buffer is None:
            self._buffer = torch.zeros(self.capacity, *states.shape[1:], dtype=states.dtype, device=device)
        elif self._buffer.shape[1:] != states.shape[1:]:
            raise ValueError(
                f"states of shape {tuple(states.shape[1:])}, the reservoir holds {tuple(self._buffer.shape[1:])}"
            )
        if self._buffer.device != device:
            self._buffer = self._buffer.to(device)
        if self._generator is None or self._generator.device != device:
            # a fresh stream on a new device, still a function of (seed, states seen)
            self._generator = torch.Generator(device=device).manual_seed(self.seed + 1_000_003 * self.seen)
        cap = self.capacity
        order = torch.arange(k, device=device)
        index = order + (self.seen + 1)  # 1-based position of each state in the stream
        draw = (torch.rand(k, generator=self._generator, device=device, dtype=torch.float64) * index).long()
        slot = torch.where(index <= cap, index - 1, draw).clamp_max(cap)  # slot cap = discarded
        winner = torch.full((cap + 1,), -1, dtype=torch.long, device=device)
        winner.scatter_reduce_(0, slot, order, reduce="amax")  # the latest state drawing a slot wins
        winner = winner[:cap]
        taken = (winner >= 0).view(cap, *([1] * (states.dim() - 1)))
        self._buffer = torch.where(taken, states[winner.clamp_min(0)].to(self._buffer.dtype), self._buffer)
        self.seen += k

    # ------------------------------------------------------------------------------------------ state
    @property
    def states(self) -> torch.Tensor:
        """The sampled states, ``[min(seen, capacity), *obs_shape]`` (empty ``[0, 0]`` before any data)."""
        if self._buffer is None:
            return torch.empty(0, 0)
        return self._buffer[: min(self.seen, self.capacity)]

    def state_dict(self) -> dict:
        """Settings, count of states seen, the states (CPU) and the draw generator's state."""
        return {
            "capacity": self.capacity,
            "seed": self.seed,
            "block": self.block,
            "observation_key": self.observation_key,
            "seen": self.seen,
            "states": self.states.detach().cpu(),
            "device": None if self._buffer is None else str(self._buffer.device),
            "generator": None if self._generator is None else self._generator.get_state(),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restores :meth:`state_dict`'s output (onto its device when available, else CPU)."""
        self.capacity, self.seed, self.block = state["capacity"], state["seed"], state["block"]
        self.observation_key = state.get("observation_key", self.observation_key)
        self.seen = state["seen"]
        self._buffer = self._generator = None
        states = state["states"]
        if state.get("device") is None:  # saved before any data
            return
        device = torch.device(state["device"])
        if device.type == "cuda" and not torch.cuda.is_available():
            device = torch.device("cpu")
        self._buffer = torch.zeros(self.capacity, *states.shape[1:], dtype=states.dtype, device=device)
        self._buffer[: states.shape[0]] = states.to(device)
        if state.get("generator") is not None and torch.device(state["device"]) == device:
            self._generator = torch.Generator(device=device)
            self._generator.set_state(state["generator"])

    def save(self, path: str | Path) -> None:
        """Saves :meth:`state_dict` with :func:`torch.save`."""
        torch.save(self.state_dict(), Path(path))

    @classmethod
    def load(cls, path: str | Path) -> StateReservoir:
        """A reservoir restored from :meth:`save`'s file."""
        state = torch.load(Path(path), weights_only=False)
        reservoir = cls(state["capacity"], state["seed"], block=state["block"])
        reservoir.load_state_dict(state)
        return reservoir


# ---------------------------------------------------------------------------------------- states
def _shared_normalisation(
    states_by_variant: Mapping[str, torch.Tensor | np.ndarray], seed: int, max_states: int | None
) -> dict[str, torch.Tensor]:
    """Every variant subsampled (seeded, without replacement) to the same count, then standardised
    with one mean and std over the union of the subsamples (float64, CPU)."""
    if not states_by_variant:
        raise ValueError("no variants given")
    flat = {}
    for name, states in states_by_variant.items():
        x = torch.as_tensor(states).detach().to("cpu", torch.float64)
        flat[name] = x.reshape(x.shape[0], -1) if x.dim() else x.reshape(1, 1)
    dims = {x.shape[1] for x in flat.values()}
    if len(dims) != 1:
        raise ValueError(f"the variants' states have different widths: { {k: v.shape[1] for k, v in flat.items()} }")
    count = min(x.shape[0] for x in flat.values())
    if max_states is not None:
        count = min(count, max_states)
    if count < 2:
        raise ValueError(f"need at least 2 states per variant, got {count}")
    sub = {}
    for name, x in flat.items():  # the same seed for every variant: independent of the dict's order
        pick = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:count]
        sub[name] = x[pick]
    union = torch.cat(list(sub.values()))
    mean, std = union.mean(0), union.std(0, correction=0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant features stay 0
    return {name: (x - mean) / std for name, x in sub.items()}


def pca_reconstruction_error(
    states_by_variant: Mapping[str, torch.Tensor | np.ndarray],
    max_components: int | None = None,
    *,
    seed: int = 0,
    max_states: int | None = None,
) -> dict[str, np.ndarray]:
    """PCA reconstruction error of each variant's states against the number of components (the paper's
    diversity measure).

    All variants are first subsampled (without replacement, seeded) to the same count, the smallest
    variant's (or ``max_states``), and standardised with one mean and std computed over the union of these
    subsamples (features constant over the union are only centred). Then, per variant, PCA is fit on its
    own standardised states (centred on its own mean) and the reconstruction error with the top ``k``
    components is the mean over states and features of the squared residual: with ``s_i`` the singular
    values of the centred ``[n, d]`` matrix, ``error(k) = sum_{i > k} s_i^2 / (n d)``. ``error(d) = 0``.

    Args:
        states_by_variant (dict): variant name -> states ``[n_v, d]`` (tensor or array; more dims are
            flattened).
        max_components (int, optional): largest ``k``. Defaults to ``d``.

    Keyword Args:
        seed (int): seed of the subsampling. Defaults to ``0``.
        max_states (int, optional): cap on the common count.

    Returns:
        dict: variant name -> errors for ``k = 1..max_components``, ``np.ndarray`` of float64.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> line = torch.randn(500, 1, generator=g) * torch.tensor([[1.0, 2.0, 3.0]])  # rank 1
        >>> cloud = torch.randn(500, 3, generator=g)
        >>> errors = pca_reconstruction_error({"line": line, "cloud": cloud})
        >>> errors["line"].round(6).tolist()
        [0.0, 0.0, 0.0]
        >>> bool(errors["cloud"][0] > 0.1)
        True
    """
    normalised = _shared_normalisation(states_by_variant, seed, max_states)
    d = next(iter(normalised.values())).shape[1]
    K = d if max_components is None else int(max_components)
    if not 1 <= K <= d:
        raise ValueError(f"max_components={max_components} is not accepted: it must be in [1, {d}]")
    out = {}
    for name, x in normalised.items():
        n = x.shape[0]
        centred = x - x.mean(0)
        power = torch.zeros(d, dtype=torch.float64)
        sv = torch.linalg.svdvals(centred)
        power[: sv.numel()] = sv**2
        tail = power.flip(0).cumsum(0).flip(0)  # tail[j] = sum_{i >= j} s_i^2
        errors = torch.cat([tail[1:], torch.zeros(1, dtype=torch.float64)]) / (n * d)  # k = j + 1
        out[name] = errors[:K].clamp_min(0).numpy()
    return out


def curve_area(errors: np.ndarray | Mapping[str, np.ndarray]) -> float | dict[str, float]:
    """Normalised area under a reconstruction-error curve: the mean error over ``k = 1..K``.

    Takes one curve (returns a float) or a dict of curves (returns a dict).

    Examples:
        >>> curve_area(np.array([0.6, 0.3, 0.0]))
        0.3
        >>> curve_area({"a": [1.0, 0.0]})
        {'a': 0.5}
    """
    if isinstance(errors, Mapping):
        return {name: curve_area(curve) for name, curve in errors.items()}
    curve = np.asarray(errors, dtype=np.float64).reshape(-1)
    if curve.size == 0:
        raise ValueError("empty error curve")
    return float(curve.mean())


def _autoencoder(d: int, hidden: int, width: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(d, hidden), nn.ELU(), nn.Linear(hidden, width),  # encoder, linear code
        nn.Linear(width, hidden), nn.ELU(), nn.Linear(hidden, d),  # decoder
    )


def autoencoder_reconstruction_error(
    states_by_variant: Mapping[str, torch.Tensor | np.ndarray],
    bottlenecks: Sequence[int] = (1, 2, 4),
    hidden: int = 64,
    epochs: int = 30,
    seed: int = 0,
    *,
    batch_size: int = 256,
    lr: float = 3e-3,
    max_states: int | None = None,
    device: torch.device | str = "cpu",
    num_threads: int | None = 1,
) -> dict[str, dict[int, float]]:
    """Held-out reconstruction error of small autoencoders of several bottleneck widths (the paper's
    second diversity measure).

    States get the same subsampling and shared standardisation as in :func:`pca_reconstruction_error`.
    Per variant, a seeded 80/20 split; for each width ``w`` an MLP autoencoder
    ``d -> hidden -> w -> hidden -> d`` (ELU, linear code; the same initialisation for every variant) is
    trained with Adam on the mean squared error for ``epochs`` passes of minibatches over the 80%, and the
    mean squared error (over states and features) on the held-out 20% is reported.

    Args:
        states_by_variant (dict): variant name -> states ``[n_v, d]``.
        bottlenecks (sequence of int): code widths. Defaults to ``(1, 2, 4)``.
        hidden (int): hidden width of encoder and decoder. Defaults to ``64``.
        epochs (int): passes over the training split. Defaults to ``30``.
        seed (int): seed of the subsampling, the split, the initialisation and the shuffles.

    Keyword Args:
        batch_size (int): minibatch size. Defaults to ``256``.
        lr (float): Adam's learning rate. Defaults to ``3e-3``.
        max_states (int, optional): cap on the common count.
        device: where to train. Defaults to ``"cpu"``.
        num_threads (int, optional): CPU threads while training on the CPU (``torch.set_num_threads``,
            restored afterwards; it is process-wide). The networks are tiny, so 1 (default) is fastest
            and avoids slowdowns by orders of magnitude on busy cores; ``None`` keeps torch's setting.

    Returns:
        dict: variant name -> {width: held-out error}.

    Examples:
        >>> states = torch.randn(200, 4, generator=torch.Generator().manual_seed(0))
        >>> errors = autoencoder_reconstruction_error({"a": states}, bottlenecks=(1, 4), epochs=5)
        >>> sorted(errors["a"]), all(np.isfinite(e) for e in errors["a"].values())
        ([1, 4], True)
    """
    normalised = _shared_normalisation(states_by_variant, seed, max_states)
    threads = torch.get_num_threads()
    if num_threads is not None and torch.device(device).type == "cpu":
        torch.set_num_threads(num_threads)
    try:
        return _train_autoencoders(normalised, bottlenecks, hidden, epochs, seed, batch_size, lr, device)
    finally:
        torch.set_num_threads(threads)


def _train_autoencoders(normalised, bottlenecks, hidden, epochs, seed, batch_size, lr, device):
    out: dict[str, dict[int, float]] = {}
    for name, x in normalised.items():
        x = x.to(device, torch.float32)
        n, d = x.shape
        n_test = max(1, round(0.2 * n))
        if n - n_test < 1:
            raise ValueError(f"{name}: too few states ({n}) for an 80/20 split")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(device)
        train, test = x[perm[n_test:]], x[perm[:n_test]]
        out[name] = {}
        for width in bottlenecks:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = _autoencoder(d, hidden, int(width)).to(device)
            optimiser = torch.optim.Adam(model.parameters(), lr=lr)
            shuffle = torch.Generator().manual_seed(seed)
            with torch.enable_grad():
                for _ in range(epochs):
                    order = torch.randperm(train.shape[0], generator=shuffle).to(device)
                    for start in range(0, train.shape[0], batch_size):
                        batch = train[order[start : start + batch_size]]
                        loss = (model(batch) - batch).pow(2).mean()
                        optimiser.zero_grad(set_to_none=True)
                        loss.backward()
                        optimiser.step()
            with torch.no_grad():
                out[name][int(width)] = float((model(test) - test).pow(2).mean())
    return out


# ---------------------------------------------------------------------------------------- policies
def _block_distributions(actor, states: torch.Tensor, num_blocks: int, observation_key, block_id_key):
    """``(loc, scale)`` of every block's Gaussian on ``states``, each ``[num_blocks, n, action_dim]``.

    The states are single observations: a recurrent policy sees each with a fresh (zero) memory
    (``is_init``), which feedforward policies ignore."""
    device = next(actor.parameters()).device
    states = torch.as_tensor(states).to(device)
    n = states.shape[0]
    td = TensorDict(
        {
            observation_key: states.repeat(num_blocks, *([1] * (states.dim() - 1))),
            block_id_key: torch.arange(num_blocks, device=device).repeat_interleave(n),
            "is_init": torch.ones(num_blocks * n, 1, dtype=torch.bool, device=device),
        },
        batch_size=[num_blocks * n],
        device=device,
    )
    dist = actor.get_dist(td)
    base = dist.base_dist if isinstance(dist, D.Independent) else dist
    shape = dist.batch_shape + dist.event_shape
    loc, scale = base.loc.expand(shape), base.scale.expand(shape)
    return dist, loc.reshape(num_blocks, n, -1), scale.reshape(num_blocks, n, -1)


@torch.no_grad()
def per_block_entropy(
    actor,
    states: torch.Tensor,
    num_blocks: int,
    *,
    observation_key="observation",
    block_id_key="block_id",
    chunk_size: int = 4096,
) -> torch.Tensor:
    """Mean entropy of every block's action distribution on the same states.

    Every state is evaluated with ``block_id = b`` for each block ``b`` (``actor.get_dist``); the
    entropies are averaged over states. Pass raw observations: an actor built with ``observation_norm``
    standardises them itself.

    Args:
        actor (ProbabilisticActor): the policy (reads ``observation`` and ``block_id``).
        states (Tensor): ``[n, obs_dim]`` raw observations.
        num_blocks (int): ``M``.

    Keyword Args:
        observation_key, block_id_key (NestedKey): the actor's input keys.
        chunk_size (int): states evaluated per call.

    Returns:
        Tensor: ``[M]`` (CPU), the mean entropy of each block's policy.

    Examples:
        >>> from sapg_torchrl import make_actor_critic
        >>> actor, _ = make_actor_critic(3, 2, num_blocks=2, hidden=(8,))
        >>> per_block_entropy(actor, torch.randn(5, 3), num_blocks=2)  # log std 0: 2 * 0.5 * log(2 pi e)
        tensor([2.8379, 2.8379])
    """
    total = torch.zeros(num_blocks, dtype=torch.float64)
    n = states.shape[0]
    for start in range(0, n, chunk_size):
        chunk = states[start : start + chunk_size]
        dist, _, _ = _block_distributions(actor, chunk, num_blocks, observation_key, block_id_key)
        entropy = dist.entropy().reshape(num_blocks, chunk.shape[0], -1).sum(-1)
        total += entropy.sum(1).double().cpu()
    return (total / n).float()


@torch.no_grad()
def pairwise_block_kl(
    actor,
    states: torch.Tensor,
    num_blocks: int,
    *,
    observation_key="observation",
    block_id_key="block_id",
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Mean KL divergence between every pair of block policies on the same states.

    Entry ``[i, j]`` is ``KL(pi_i(. | s) || pi_j(. | s))`` (``torch.distributions.kl_divergence`` of the
    diagonal Gaussians, summed over action dims) averaged over the states; the diagonal is 0. Pass raw
    observations (see :func:`per_block_entropy`).

    Args:
        actor (ProbabilisticActor): the policy.
        states (Tensor): ``[n, obs_dim]`` raw observations.
        num_blocks (int): ``M``.

    Keyword Args:
        observation_key, block_id_key (NestedKey): the actor's input keys.
        chunk_size (int): states evaluated per call (memory ``M^2 * chunk_size * action_dim``).

    Returns:
        Tensor: ``[M, M]`` (CPU).

    Examples:
        >>> from sapg_torchrl import make_actor_critic
        >>> actor, _ = make_actor_critic(3, 2, num_blocks=3, hidden=(8,))
        >>> kl = pairwise_block_kl(actor, torch.randn(5, 3), num_blocks=3)
        >>> kl.shape, kl.diagonal().tolist()
        (torch.Size([3, 3]), [0.0, 0.0, 0.0])
    """
    total = torch.zeros(num_blocks, num_blocks, dtype=torch.float64)
    n = states.shape[0]
    for start in range(0, n, chunk_size):
        chunk = states[start : start + chunk_size]
        _, loc, scale = _block_distributions(actor, chunk, num_blocks, observation_key, block_id_key)
        p = D.Independent(D.Normal(loc[:, None], scale[:, None]), 1)  # [M, 1, n]
        q = D.Independent(D.Normal(loc[None], scale[None]), 1)  # [1, M, n]
        total += D.kl_divergence(p, q).sum(-1).double().cpu()
    return (total / n).float()
