"""Sample grids: every tile stays a separate region, empty cells never look like samples."""

import numpy as np
from PIL import Image
from scipy import ndimage

from diffjax.data.pictures import BORDER_VALUE, image_grid, save_image_grid


def test_white_tiles_stay_separate_and_the_empty_cell_is_border_grey():
    white = np.full((8, 4, 4, 1), 255, np.uint8)  # 8 samples in a 3x3 grid: one empty cell
    grid = image_grid(white)
    assert grid.shape == (3 * 5 + 1, 3 * 5 + 1, 1)
    regions, count = ndimage.label(grid[..., 0] == 255)
    assert count == 8  # with a white frame the eight tiles were one field
    empty_cell = grid[11:15, 11:15, 0]
    np.testing.assert_array_equal(empty_cell, BORDER_VALUE)
    assert 0 < BORDER_VALUE < 255  # apart from both black backgrounds and white strokes


def test_black_tiles_stay_separate_too():
    black = np.zeros((4, 3, 3, 3), np.uint8)
    grid = image_grid(black, columns=2)
    _, count = ndimage.label(np.all(grid == 0, axis=-1))
    assert count == 4


def test_saved_grid_is_enlarged_and_keeps_the_samples(tmp_path):
    samples = np.linspace(-1, 1, 5 * 8 * 8).reshape(5, 8, 8, 1).astype(np.float32)
    path = tmp_path / "grid.png"
    save_image_grid(samples, str(path))
    picture = np.asarray(Image.open(path))
    scale = picture.shape[1] // (3 * 9 + 1)
    assert scale >= 1 and picture.shape == ((2 * 9 + 1) * scale, (3 * 9 + 1) * scale)
    first_tile = picture[scale : scale * 9 : scale, scale : scale * 9 : scale]
    np.testing.assert_array_equal(first_tile, np.round((samples[0, ..., 0] + 1) * 127.5).astype(np.uint8))
