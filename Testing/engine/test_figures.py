"""Figures are real pictures: files written atomically, overlays and points drawn."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np

from labelfree.figures import image_grid, landmarks_on_slices, levels_montage


def colourful_fraction(path) -> float:
    """Fraction of pixels that are clearly not gray (overlays, markers, lines)."""
    rgb = mpimg.imread(path)[..., :3]
    return float(np.mean(rgb.max(-1) - rgb.min(-1) > 0.25))


def test_levels_montage_draws_label_overlays(tmp_path):
    image = np.tile(np.linspace(0, 1, 32), (32, 1))
    coarse = (image > 0.5).astype(int) + 1
    fine = np.digitize(image, [0.25, 0.5, 0.75]) + 1
    gray_only = levels_montage(
        [image], [[np.zeros_like(coarse)] * 2], ["a", "b"], tmp_path / "gray.png"
    )
    coloured = levels_montage(
        [image], [[coarse, fine]], ["2 clusters", "4 clusters"], tmp_path / "levels.png"
    )
    assert colourful_fraction(coloured) > colourful_fraction(gray_only) + 0.05
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_landmarks_and_curves(tmp_path):
    volume = np.random.default_rng(0).random((10, 12, 14))
    points = np.array([[5.0, 6.0, 7.0], [2.0, 3.0, 4.0]])
    path = landmarks_on_slices(
        volume, points, np.array([1.0, 0.2]), ["A", "B"], tmp_path / "lm.png"
    )
    assert colourful_fraction(path) > 0.001
    single = image_grid([path], ["one"], tmp_path / "single.png")
    grid = image_grid([path, path], ["one", "two"], tmp_path / "grid.png")
    assert mpimg.imread(grid).shape[1] > 1.5 * mpimg.imread(single).shape[1]
    assert colourful_fraction(grid) > 0.001
