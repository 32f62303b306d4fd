"""Pictures of samples: PNG grids for images, scatter plots for 2-D data."""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image

__all__ = ["BORDER_VALUE", "image_grid", "save_image_grid", "save_scatter", "to_uint8"]


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats to uint8 by round((x + 1) * 127.5), clipped to [0, 255]."""
    return np.clip(np.round((np.asarray(images, np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)


# Mid grey: separators and empty cells stand apart from the black backgrounds and white
# strokes of samples, so neighbouring white tiles never merge into one field.
BORDER_VALUE = 128


def image_grid(images: np.ndarray, columns: int | None = None, border: int = 1,
               border_value: int = BORDER_VALUE) -> np.ndarray:
    """Tile uint8 images [N, H, W, C] into one [rows*(H+b)+b, cols*(W+b)+b, C] picture
    with a ``border``-pixel frame of ``border_value`` between them; the cells after the
    last image (when N does not fill the last row) are filled with ``border_value`` too,
    so an empty cell never looks like a sample."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be [N, H, W, C], got shape {images.shape}")
    n, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.full((rows * (h + border) + border, columns * (w + border) + border, c), border_value, np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        top, left = border + r * (h + border), border + col * (w + border)
        grid[top : top + h, left : left + w] = image
    return grid


def save_image_grid(samples: np.ndarray, path: str, scale: int | None = None, columns: int | None = None) -> None:
    """Write float samples [N, H, W, C] in [-1, 1] as a PNG grid (``columns`` per row;
    default about square); small images are enlarged (nearest neighbour) so that the grid
    is at least ~256 pixels wide."""
    grid = image_grid(to_uint8(samples), columns=columns)
    if scale is None:
        scale = max(1, 256 // grid.shape[1])
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)


def save_scatter(samples: np.ndarray, path: str, reference: np.ndarray | None = None) -> None:
    """Scatter plot of 2-D samples [N, 2], over reference data [M, 2] if given."""
    import matplotlib  # 0.5 s to import: only for the scatter plots of 2-D runs

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=2, alpha=0.3, color="tab:gray", label="data")
    ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.6, color="tab:blue", label="samples")
    ax.set_aspect("equal")
    ax.legend(loc="upper right")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
