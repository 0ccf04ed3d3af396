"""How volumes and categories are shown, the same in the HTML report and the workbench: the display window
(window/level), the colour maps and the categorical palette.

The colour maps are matplotlib's inferno (uncertainty) and colorcet's CET-D1 (differences, diverging around
0), each as 33 evenly spaced colours, interpolated linearly: within 2/255 (inferno) and 5/255 (CET-D1) of the
256-colour tables. The workbench builds its pyqtgraph colour maps from these same colours.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["display_window", "PALETTE", "COLORMAPS", "colorize"]

#: Colours of categories (missingness patterns, splits, labels): Tableau 10.
PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]
#: Colour maps as evenly spaced RGB colours from 0 to 1.
COLORMAPS: dict[str, list[tuple[int, int, int]]] = {
    "gray": [(0, 0, 0), (255, 255, 255)],
    "diverging": [
        (33, 81, 219), (61, 89, 220), (81, 97, 222), (97, 107, 224), (111, 116, 225), (124, 126, 227),
        (137, 135, 228), (148, 145, 230), (159, 155, 231), (170, 166, 233), (181, 176, 234),
        (191, 186, 235), (201, 196, 236), (210, 207, 238), (220, 218, 238), (229, 227, 238),
        (237, 231, 233), (241, 225, 222), (242, 214, 207), (241, 201, 192), (240, 189, 177),
        (239, 177, 162), (237, 164, 147), (234, 152, 132), (231, 139, 118), (227, 127, 104),
        (223, 114, 90), (219, 100, 76), (214, 87, 62), (209, 72, 49), (203, 56, 35), (197, 37, 21),
        (192, 2, 6),
    ],
    "inferno": [
        (0, 0, 4), (3, 2, 17), (10, 7, 35), (20, 11, 54), (32, 12, 73), (46, 10, 90), (60, 9, 100),
        (73, 11, 106), (86, 15, 109), (99, 20, 110), (112, 25, 110), (124, 29, 109), (137, 34, 106),
        (150, 38, 102), (162, 43, 97), (175, 48, 91), (187, 54, 84), (198, 61, 76), (208, 69, 68),
        (218, 78, 59), (227, 89, 50), (235, 100, 40), (241, 113, 30), (246, 126, 19), (249, 140, 9),
        (251, 155, 6), (252, 170, 15), (251, 186, 31), (249, 201, 50), (245, 217, 73), (242, 232, 101),
        (243, 245, 134), (252, 255, 164),
    ],
}


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


def colorize(values: np.ndarray, levels: tuple[float, float], cmap: str = "gray") -> np.ndarray:
    """Map ``values`` through ``levels`` (low, high) and a colour map of :data:`COLORMAPS` to RGB uint8
    ``(*shape, 3)``."""
    low, high = levels
    t = np.clip((np.nan_to_num(np.asarray(values, dtype=np.float64)) - low) / max(high - low, 1e-12), 0.0, 1.0)
    colours = np.asarray(COLORMAPS[cmap], dtype=np.float64)
    positions = np.linspace(0.0, 1.0, len(colours))
    channels = [np.interp(t, positions, colours[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)
