"""Subsets of modalities: enumeration, random draws and stable names."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np
import torch

__all__ = ["all_subsets", "random_subsets", "subset_name", "experts_of_subsets"]


def all_subsets(modalities: Sequence[str], min_size: int = 1, max_size: int | None = None) -> list[tuple[str, ...]]:
    """Every subset with ``min_size <= size <= max_size`` (default: all non-empty ones), in a fixed order."""
    max_size = len(modalities) if max_size is None else max_size
    return [s for k in range(min_size, max_size + 1) for s in combinations(modalities, k)]


def random_subsets(
    modalities: Sequence[str], k: int, generator: np.random.Generator, min_size: int = 2, max_size: int | None = None
) -> list[tuple[str, ...]]:
    """``k`` distinct subsets drawn uniformly among those of size ``min_size..max_size``."""
    pool = all_subsets(modalities, min_size, len(modalities) - 1 if max_size is None else max_size)
    if k > len(pool):
        raise ValueError(f"Cannot draw {k} distinct subsets: only {len(pool)} exist for {len(modalities)} modalities.")
    picks = generator.choice(len(pool), size=k, replace=False)
    return [pool[i] for i in sorted(picks)]


def subset_name(subset: Sequence[str]) -> str:
    """A readable, order-independent name used in metric keys: ``T1+T2``."""
    return "+".join(sorted(subset))


def experts_of_subsets(modalities: Sequence[str], subsets: Sequence[Sequence[str]], masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Which experts enter each subset's product for each sample: ``(M, S, B)`` bool, True where modality
    ``m`` (in ``modalities`` order) is in subset ``s`` and observed for sample ``b`` (``masks``: ``(B,)`` each)."""
    present = torch.stack([masks[m] for m in modalities])  # (M, B)
    in_subset = torch.tensor([[m in subset for subset in subsets] for m in modalities], device=present.device)  # (M, S)
    return in_subset.unsqueeze(-1) & present.unsqueeze(1)
