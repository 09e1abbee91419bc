"""Quality control of detected landmarks: a failed case must not reach a shape analysis silently.

Two checks, both on what any cohort has (no labels):
- a landmark outside the image (more than half a voxel beyond its edge) cannot be anatomy;
- a specimen whose configuration, after a similarity (Procrustes) alignment to the cohort's
  mean shape, is far from it compared with the other specimens (robust z-score of the RMS
  residual over the median absolute deviation) is probably a failed detection.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

OUTLIER_Z = 5.0
"""Robust z-score (median and 1.4826 x MAD of the cohort's residuals) above which a specimen is
flagged. Five MADs: a well-detected cohort flags almost nothing, a swapped or collapsed
configuration (residuals several times the cohort's) is flagged."""

MIN_SPECIMENS = 4
"""Fewer specimens give no meaningful spread, so no population check is made."""


def outside_image(index_xyz: np.ndarray, shape_zyx: tuple[int, ...]) -> int:
    """How many of ``(K, D)`` continuous voxel indices ``(x, y[, z])`` lie more than half a voxel
    outside an image of numpy shape ``shape_zyx``."""
    size = np.asarray(shape_zyx[::-1][: index_xyz.shape[1]], dtype=float)
    outside = (index_xyz < -0.5) | (index_xyz > size - 0.5)
    return int(np.count_nonzero(outside.any(axis=1)))


def procrustes_residuals(shapes: np.ndarray, iterations: int = 10) -> np.ndarray:
    """RMS distance of each configuration to the mean after similarity alignment, in its units.

    Parameters
    ----------
    shapes : ndarray
        ``(S, K, D)`` corresponding landmarks of S specimens (mm).
    iterations : int
        Rounds of generalised Procrustes analysis (align to the mean, update the mean).

    Returns
    -------
    ndarray
        ``(S,)`` RMS residual per specimen, in the units of the mean configuration's size
        (the mean is scaled to the specimens' average centroid size).
    """
    centred = shapes - shapes.mean(axis=1, keepdims=True)
    sizes = np.sqrt((centred**2).sum(axis=(1, 2)))
    mean = centred[0]
    aligned = centred
    for _ in range(iterations):
        aligned = np.stack([_align(x, mean) for x in centred])
        mean = aligned.mean(axis=0)
        mean *= sizes.mean() / max(np.sqrt((mean**2).sum()), 1e-12)
    return np.sqrt(((aligned - mean) ** 2).sum(axis=2).mean(axis=1))


def _align(x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rotate and scale centred ``x`` onto centred ``target`` (least squares, no reflection)."""
    u, s, vt = np.linalg.svd(x.T @ target)
    d = np.ones(len(s))
    d[-1] = np.sign(np.linalg.det(u @ vt)) or 1.0
    rotation = (u * d) @ vt
    scale = (s * d).sum() / max((x**2).sum(), 1e-12)
    return scale * x @ rotation


def population_outliers(shapes: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Specimens far from the cohort's mean shape: name -> reason (a sentence).

    Parameters
    ----------
    shapes : mapping of str to ndarray
        Specimen -> ``(K, D)`` landmarks (mm), the same K in the same order for all.

    Returns
    -------
    dict
        Only the flagged specimens; empty below :data:`MIN_SPECIMENS` specimens.
    """
    names = list(shapes)
    if len(names) < MIN_SPECIMENS:
        return {}
    residual = procrustes_residuals(np.stack([np.asarray(shapes[n], float) for n in names]))
    median = float(np.median(residual))
    spread = 1.4826 * float(np.median(np.abs(residual - median)))
    flagged = {}
    for name, value in zip(names, residual, strict=True):
        if value > median + OUTLIER_Z * max(spread, 1e-9 * max(median, 1.0)):
            flagged[name] = (
                f"far from the cohort's mean shape after alignment (RMS {value:.2f} mm, "
                f"cohort median {median:.2f} mm)"
            )
    return flagged
