"""Evaluation metrics: imputation errors beside baselines, coherence, likelihood, latent structure, lesion fidelity."""

from core.metrics._common import MetricError, default_subsets
from core.metrics.baselines import KNNImputer, MeanImputer, VoxelRegressionImputer
from core.metrics.coherence import LogisticClassifier, classify, coherence_metrics, train_classifiers
from core.metrics.errors import mae, mse, psnr
from core.metrics.evaluation import SECTIONS, EvaluationConfig, evaluate_model
from core.metrics.imputation import data_ranges, imputation_metrics
from core.metrics.latent import latent_means, latent_metrics
from core.metrics.lesion import SYNTHESIS_SCORES, outside_fov_fraction, synthesis_scores
from core.metrics.likelihood import joint_nll, supports_joint_nll
from core.metrics.ssim import gaussian_window_1d, ssim, ssim_map

__all__ = [
    "SECTIONS",
    "SYNTHESIS_SCORES",
    "EvaluationConfig",
    "KNNImputer",
    "LogisticClassifier",
    "MeanImputer",
    "MetricError",
    "VoxelRegressionImputer",
    "classify",
    "coherence_metrics",
    "data_ranges",
    "default_subsets",
    "evaluate_model",
    "gaussian_window_1d",
    "imputation_metrics",
    "joint_nll",
    "latent_means",
    "latent_metrics",
    "mae",
    "mse",
    "outside_fov_fraction",
    "psnr",
    "ssim",
    "ssim_map",
    "supports_joint_nll",
    "synthesis_scores",
    "train_classifiers",
]
