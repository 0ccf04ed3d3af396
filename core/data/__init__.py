"""Multimodal data with missing modalities: datasets, batching, splits, missingness."""

from core.data.dataset import (
    DatasetError,
    DatasetOutput,
    IncompleteDataset,
    MissingnessSummary,
    MultimodalBaseDataset,
    collate_multimodal,
    missingness_summary,
    split_by_subject,
)

__all__ = [
    "DatasetError",
    "DatasetOutput",
    "IncompleteDataset",
    "MissingnessSummary",
    "MultimodalBaseDataset",
    "collate_multimodal",
    "missingness_summary",
    "split_by_subject",
]
