"""Small builders shared by test modules (``Testing`` is on pytest's ``pythonpath``)."""

from __future__ import annotations

import numpy as np
import torch

from labelfree.cuts.model import CutsModel, model_config, save_cuts_model
from labelfree.io import Image


def random_model_file(path, channels=1):
    torch.manual_seed(0)
    model = CutsModel(channels).eval()
    return save_cuts_model(path, model, model_config(model), {"trained_on": "random (tests)"})


def oblique_volume(depth=8, size=36):
    z, y, x = np.mgrid[:depth, :size, :size].astype(np.float32)
    r = np.sqrt((y - size / 2) ** 2 + (x - size / 2) ** 2 + (2 * (z - depth / 2)) ** 2)
    array = 100.0 * (r < 14) + 60.0 * (r < 7) + 20.0 * np.sin(x / 3.0) * (r < 14)
    angle = np.deg2rad(25)
    direction = np.array(
        [[np.cos(angle), 0, -np.sin(angle)], [0, 1, 0], [np.sin(angle), 0, np.cos(angle)]]
    )
    return Image(array.astype(np.float32), (0.7, 0.8, 2.2), (-5.0, 12.0, 40.0), direction)


def assert_same_segmentation(a, b):
    """Two :class:`~labelfree.cuts.volume.VolumeSegmentation` results are label for label equal."""
    assert a.n_clusters == b.n_clusters
    for x, y in zip(a.levels, b.levels, strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.persistent, b.persistent)
