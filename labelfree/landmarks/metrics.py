"""Scores of discovered landmarks: correspondence against known warps, registration quality."""

from __future__ import annotations

import numpy as np
import torch

from labelfree.landmarks.regressor import corner_landmarks
from labelfree.landmarks.synthetic import SyntheticPopulation
from labelfree.landmarks.tps import warp_image


def correspondence_error(
    population: SyntheticPopulation,
    landmarks: np.ndarray,
    indices: np.ndarray | None = None,
) -> np.ndarray:
    """Per-landmark mean correspondence error over all pairs of images.

    Landmark ``k`` of image ``A`` is mapped into the common frame with the
    known warp and compared with landmark ``k`` of image ``B`` mapped the
    same way; the distance is averaged over all pairs ``A < B``.

    Parameters
    ----------
    population : SyntheticPopulation
        Images with known maps to the common frame.
    landmarks : ndarray
        ``(N, K, D)`` normalised ``(x, y[, z])`` landmarks of the ``N`` images.
    indices : ndarray of int, optional
        Which images of ``population`` the landmarks belong to (all by default).

    Returns
    -------
    ndarray
        ``(K,)`` mean error in mm (pixels for a population with unit spacing).
    """
    common = population.to_pixels(population.to_common(landmarks, indices))
    n = common.shape[0]
    a, b = np.triu_indices(n, k=1)
    dist = np.linalg.norm(common[a] - common[b], axis=-1)
    return dist.mean(axis=0)


def registration_mse_ratio(
    images: np.ndarray,
    landmarks: np.ndarray,
    pairs: np.ndarray | None = None,
    fixed_corners: bool = True,
) -> float:
    """Registered over unregistered mean squared error on image pairs.

    Each pair ``(s, t)`` warps image ``s`` onto image ``t`` with the
    thin-plate spline through their landmarks (plus the corners) and compares
    ``MSE(t, warped s)`` with ``MSE(t, s)``, each summed over pairs.

    Parameters
    ----------
    images : ndarray
        ``(N, *shape)`` images, all the same shape.
    landmarks : ndarray
        ``(N, K, D)`` normalised landmarks.
    pairs : ndarray of int, optional
        ``(P, 2)`` source/target indices; all ordered pairs by default.
    fixed_corners : bool
        Add the image corners as fixed landmarks.

    Returns
    -------
    float
        0 for perfect registration, 1 for no improvement.
    """
    n = len(images)
    if pairs is None:
        pairs = np.array([(s, t) for s in range(n) for t in range(n) if s != t])
    imgs = torch.as_tensor(np.asarray(images), dtype=torch.float64)[:, None]
    lms = torch.as_tensor(np.asarray(landmarks), dtype=torch.float64)
    if fixed_corners:
        corners = corner_landmarks(lms.shape[-1]).double().expand(n, -1, -1)
        lms = torch.cat([lms, corners], dim=1)
    registered = unregistered = 0.0
    for chunk in np.array_split(pairs, max(1, len(pairs) // 32)):
        s, t = chunk[:, 0], chunk[:, 1]
        warped = warp_image(imgs[s], lms[t], lms[s])
        registered += float((warped - imgs[t]).pow(2).sum())
        unregistered += float((imgs[s] - imgs[t]).pow(2).sum())
    return registered / unregistered
