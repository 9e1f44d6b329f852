"""Metrics of the ablation study (spec section 3): asymptotic performance, sample efficiency,
exploration diversity, and aggregates across seeds.

- :mod:`~sapg_torchrl.metrics.performance`: one run's learning curve (final performance, normalised
  area under the curve, frames to a threshold).
- :mod:`~sapg_torchrl.metrics.aggregate`: across seeds, rliable's IQM and probability of improvement with
  stratified-bootstrap confidence intervals (needs ``rliable``, imported on first use).
- :mod:`~sapg_torchrl.metrics.diversity`: the states a run visited, PCA and autoencoder
  reconstruction errors of visited states, per-block entropy and pairwise KL between block policies.
"""

from sapg_torchrl.metrics.aggregate import iqm_difference, iqm_with_ci, probability_of_improvement
from sapg_torchrl.metrics.diversity import (
    autoencoder_reconstruction_error,
    curve_area,
    load_states,
    pairwise_block_kl,
    pca_reconstruction_error,
    per_block_entropy,
)
from sapg_torchrl.metrics.performance import final_performance, frames_to_threshold, normalized_auc

__all__ = [
    "autoencoder_reconstruction_error",
    "curve_area",
    "final_performance",
    "frames_to_threshold",
    "iqm_difference",
    "iqm_with_ci",
    "load_states",
    "normalized_auc",
    "pairwise_block_kl",
    "pca_reconstruction_error",
    "per_block_entropy",
    "probability_of_improvement",
]
