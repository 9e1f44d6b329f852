"""Exploration diversity: which states a variant visits, and how different its block policies are.

- :func:`load_states` reads the uniform sample of the raw observations the leader visited over a run (written by
  the training loop's :class:`~sapg_torchrl.training.StateReservoir`).
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
from tensordict import TensorDict
from torch import distributions as D
from torch import nn

__all__ = [
    "autoencoder_reconstruction_error",
    "curve_area",
    "load_states",
    "pairwise_block_kl",
    "pca_reconstruction_error",
    "per_block_entropy",
]


def load_states(path: str | Path) -> torch.Tensor:
    """The states of a run's ``states.pt`` (written by :class:`~sapg_torchrl.training.StateReservoir`), ``[n,
    *obs_shape]`` on the CPU.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "states.pt"
        >>> torch.save({"states": torch.zeros(3, 2)}, path)
        >>> load_states(path).shape
        torch.Size([3, 2])
    """
    return torch.load(Path(path), map_location="cpu", weights_only=False)["states"]


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
