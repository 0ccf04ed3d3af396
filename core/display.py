"""How volumes are shown: the display window (window/level) shared by the report and the workbench."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["display_window"]


def display_window(arrays: Iterable[np.ndarray | None], max_values: int | None = None) -> tuple[float, float] | None:
    """The 1st..99th percentile of the finite, non-zero voxels of all ``arrays`` (all finite voxels when
    fewer than 17 are non-zero), or None when there is nothing to show.

    Zeros are left out because they are the background of skull-stripped MR and of the ultrasound
    outside its sector. ``max_values`` samples each array with a stride, which is plenty for a display
    window and keeps the call cheap on a UI thread.
    """
    values = []
    for array in arrays:
        if array is None:
            continue
        flat = np.asarray(array, dtype=np.float32).ravel()
        if max_values is not None:
            flat = flat[:: max(1, flat.size // max_values)]
        values.append(flat[np.isfinite(flat)])
    if not values:
        return None
    v = np.concatenate(values)
    non_zero = v[v != 0]
    v = non_zero if non_zero.size > 16 else v
    if v.size == 0:
        return None
    low, high = (float(q) for q in np.percentile(v, [1, 99]))
    return (low, high) if high > low else (low, low + 1.0)
