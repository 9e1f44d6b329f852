"""What a vmapped JAX simulator (Brax, MuJoCo Playground) needs to serve PPO as one batched TorchRL env.

TorchRL 0.14.1's ``BraxEnv`` and ``MujocoPlaygroundEnv`` share three gaps, which :class:`JaxBatchMixin` closes for
both (:class:`~sapg_torchrl.envs.brax.BraxBatchEnv`, :class:`~sapg_torchrl.envs.playground.PlaygroundBatchEnv`):

1. **Per-env resets.** Their ``_reset`` resets the whole batch, whatever ``_reset`` says, so one finished env
   restarts all the others. Here a reset draws fresh states for the batch in one jitted call and keeps them only
   where ``_reset`` is set (``jnp.where`` inside JAX).
2. **Time limits.** Brax's ``EpisodeWrapper`` (which MuJoCo Playground's own training wrapper also uses) adds
   one, and ``truncated`` is reported apart from ``terminated``, so that GAE bootstraps truncated episodes.
3. **The physics state stays in JAX.** Only the observation, reward and done flags cross, zero-copy through
   DLPack, on the simulator's device.

JAX preallocates most of a GPU's memory by default; importing a simulator through :func:`import_jax` sets
``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (unless you set it) first, so that torch's learner fits beside it.
"""

from __future__ import annotations

import os

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Categorical, Composite

__all__ = ["JaxBatchMixin", "compile_batch", "import_jax"]


def import_jax():
    """JAX, imported without its default preallocation of most of a GPU's memory (left to torch)."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    return jax


def compile_batch(env, episode_length: int):
    """``env`` under Brax's ``EpisodeWrapper``, and its jitted batch ``reset(keys, state, mask)`` (fresh states
    where ``mask`` is set, ``state`` elsewhere; all fresh when ``state`` is ``None``) and ``step(state, action)``.

    Args:
        env: a Brax env or a MuJoCo Playground ``MjxEnv`` (``reset(key)``, ``step(state, action)``).
        episode_length (int): the time limit, in steps.
    """
    jax = import_jax()
    import jax.numpy as jnp
    from brax.envs.wrappers.training import EpisodeWrapper

    env = EpisodeWrapper(env, episode_length, action_repeat=1)

    def reset(keys, state, mask):
        fresh = jax.vmap(env.reset)(keys)
        if state is None:
            return fresh
        keep = lambda new, old: jnp.where(mask.reshape(-1, *([1] * (old.ndim - 1))), new, old)  # noqa: E731
        return jax.tree_util.tree_map(keep, fresh, state)

    return env, jax.jit(reset), jax.jit(jax.vmap(env.step))


class JaxBatchMixin:
    """Per-env resets, time limits and zero-copy outputs over the jitted functions of :func:`compile_batch`.

    A subclass (first in the bases, before TorchRL's wrapper) sets ``self._jax_reset`` and ``self._jax_step`` when
    it builds its env and defines ``_observations(state) -> dict`` of torch tensors; the done flags follow
    ``_flags_spec()``.
    """

    def _flags_spec(self) -> Composite:
        """``done``, ``terminated`` and ``truncated``, ``[*batch, 1]`` booleans."""
        flag = Categorical(2, (*self.batch_size, 1), dtype=torch.bool, device=self.device)
        return Composite(done=flag, terminated=flag.clone(), truncated=flag.clone(), shape=self.batch_size)

    def _init_env(self) -> None:
        jax = import_jax()
        self._state = None
        self._key = jax.random.PRNGKey(0)

    def _set_seed(self, seed: int | None) -> None:
        jax = import_jax()
        self._key = jax.random.PRNGKey(0 if seed is None else seed)

    def _to_torch(self, array) -> torch.Tensor:
        return torch.from_dlpack(array).to(self.device)

    def _output(self, state, reward: bool) -> TensorDict:
        done = self._to_torch(state.done).bool().unsqueeze(-1)
        truncated = self._to_torch(state.info["truncation"]).bool().unsqueeze(-1) & done
        out = {**self._observations(state), "done": done, "terminated": done & ~truncated, "truncated": truncated}
        if reward:
            out["reward"] = self._to_torch(state.reward).unsqueeze(-1).float()
        return TensorDict(out, batch_size=self.batch_size, device=self.device)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        jax = import_jax()
        import jax.numpy as jnp

        mask = None if tensordict is None else tensordict.get("_reset", None)
        self._key, key = jax.random.split(self._key)
        if self._state is None or mask is None:
            mask = torch.ones(self.batch_size, dtype=torch.bool, device=self.device)
        fresh = jax.random.split(key, self.batch_size.numel())
        self._state = self._jax_reset(fresh, self._state, jnp.from_dlpack(mask.reshape(-1).contiguous()))
        out = self._output(self._state, reward=False)
        return out.update(self.full_done_spec.zero())

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        import jax.numpy as jnp

        action = jnp.from_dlpack(tensordict.get("action").detach().contiguous())
        self._state = self._jax_step(self._state, action)
        return self._output(self._state, reward=True)
