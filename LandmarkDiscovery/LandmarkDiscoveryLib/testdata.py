"""Synthetic inputs for the module's self-test: nothing is downloaded.

``makeTinyLandmarkModel`` writes a small, real landmark model (the engine's regressor with
seeded random weights, saved through the engine's model-file writer); it finds landmarks
that depend on the image, not anatomy, which is all an end-to-end test needs.
"""

from pathlib import Path

import numpy as np
import vtk

from LabelFreeLib.mrml import updateVolumeFromArray


def syntheticBlobs(shape=(24, 28, 32), seed=0):
    """A float32 ``[k, j, i]`` volume: an ellipsoidal body with two bright inclusions and noise."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    volume = np.full(shape, 10.0, dtype=np.float32)
    volume[(k / 0.8) ** 2 + (j / 0.85) ** 2 + (i / 0.75) ** 2 < 1] = 100.0
    volume[(k - 0.2) ** 2 + (j + 0.3) ** 2 + (i + 0.25) ** 2 < 0.06] = 220.0
    volume[(k + 0.3) ** 2 + (j - 0.35) ** 2 + (i - 0.3) ** 2 < 0.04] = 160.0
    volume += rng.normal(0.0, 3.0, shape).astype(np.float32)
    return volume


def makeSyntheticVolumeNode(
    scene,
    name="SyntheticBlobs",
    spacing=(1.2, 0.9, 1.5),
    originRas=(-20.0, 15.0, -30.0),
    angleDegrees=20.0,
):
    """Add a scalar volume of :func:`syntheticBlobs` with anisotropic spacing and an oblique direction."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    updateVolumeFromArray(node, syntheticBlobs())
    node.SetSpacing(*spacing)
    node.SetOrigin(*originRas)
    angle = np.deg2rad(angleDegrees)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1]]
    )
    directions = vtk.vtkMatrix4x4()
    for row in range(3):
        for col in range(3):
            directions.SetElement(row, col, float(rotation[row, col]))
    node.SetIJKToRASDirectionMatrix(directions)
    node.CreateDefaultDisplayNodes()
    return node


def makeTinyLandmarkModel(path, ndim=3, nLandmarks=8, seed=0):
    """Write a small landmark model file (seeded random weights) and return its path.

    The last layer gets small random weights (the engine starts it at zero) so that the
    landmarks move with the image content.
    """
    import torch

    from labelfree.landmarks.model import save_landmark_model
    from labelfree.landmarks.regressor import LandmarkRegressor

    torch.manual_seed(seed)
    regressor = LandmarkRegressor(
        ndim=ndim,
        n_landmarks=nLandmarks,
        input_size=16,
        channels=(4, 8),
        hidden=16,
        reduce=4,
        pooled=2,
    )
    with torch.no_grad():
        regressor.head.weight.normal_(0.0, 0.05)
    importance = np.linspace(1.0, 0.3, nLandmarks).tolist()
    card = {"trained_on": "nothing: seeded random weights for tests", "landmarks": nLandmarks}
    return Path(save_landmark_model(path, regressor, config={"importance": importance}, card=card))
