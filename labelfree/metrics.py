"""Agreement between a predicted and a reference segmentation.

The five metrics of the CUTS evaluation (Table 1 of the paper): Dice,
Hausdorff distance, SSIM of the binary masks, ERGAS and RMSE. Every function
takes two arrays of the same shape, 2-D ``(y, x)`` or 3-D ``(z, y, x)``;
masks are anything whose non-zero entries mark the foreground.

Conventions that keep numbers comparable with the paper's:

- Hausdorff distance is in pixels unless ``spacing`` is given (then mm). When
  either mask is empty it is the diagonal of the array,
  ``sqrt(sum(shape ** 2))`` (times the spacing with ``spacing``), as the
  reference does, so an empty prediction scores as badly as possible rather
  than as ``inf``.
- SSIM uses the reference's data range (range of the reference array, 1 when
  it is constant) and scikit-image's 7-pixel window.
- ERGAS follows the windowed ``sewar`` implementation (up to 0.4.x) that the
  reference called for the paper's table: windows of 8 pixels, resolution
  ratio 4, and window means divided once more by the window area (``sewar``'s
  scaling; without it the values would be 64 times smaller). ``sewar`` 0.4.10
  switched to a global formula with ratio 1/4, whose values are not
  comparable with the paper's. Use ERGAS to compare with the paper only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity

from labelfree.errors import InputError

__all__ = ["dice", "ergas", "hausdorff", "rmse", "ssim"]


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise InputError(f"Arrays to compare differ in shape: {a.shape} and {b.shape}.")
    if a.size == 0:
        raise InputError("Arrays to compare are empty.")
    return a, b


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice coefficient of two binary masks.

    Parameters
    ----------
    prediction, reference : ndarray
        Masks of the same shape; non-zero is foreground.

    Returns
    -------
    float
        ``2 |P & R| / (|P| + |R|)`` in [0, 1]; 1.0 when both masks are empty.
    """
    p, r = _pair(prediction, reference)
    p = p.astype(bool)
    r = r.astype(bool)
    total = int(p.sum()) + int(r.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, r).sum()) / total


def hausdorff(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float] | None = None,
) -> float:
    """Symmetric Hausdorff distance between the foregrounds of two masks.

    Parameters
    ----------
    prediction, reference : ndarray
        Masks of the same shape; non-zero is foreground.
    spacing : sequence of float, optional
        Voxel size per array axis, in **numpy order** (``(z, y, x)`` or
        ``(y, x)``), in mm. Note that :attr:`labelfree.io.Image.spacing` is in
        ITK order ``(x, y, z)``: pass ``image.spacing[::-1]``. Without it the
        distance is in pixels.

    Returns
    -------
    float
        The largest distance from a foreground point of one mask to the
        nearest foreground point of the other, in pixels (or mm with
        ``spacing``); 0 when both masks are empty, the array diagonal when
        exactly one is.
    """
    p, r = _pair(prediction, reference)
    p = p.astype(bool)
    r = r.astype(bool)
    sampling = np.ones(p.ndim) if spacing is None else np.asarray(spacing, dtype=float)
    if sampling.shape != (p.ndim,):
        raise InputError(f"spacing needs {p.ndim} values (numpy axis order), got {spacing}.")
    p_any, r_any = bool(p.any()), bool(r.any())
    if not p_any and not r_any:
        return 0.0
    if not p_any or not r_any:
        return float(np.sqrt(np.sum((np.asarray(p.shape) * sampling) ** 2)))
    # Exact Euclidean distance to the nearest foreground voxel of the other mask.
    to_r = ndimage.distance_transform_edt(~r, sampling=sampling)
    to_p = ndimage.distance_transform_edt(~p, sampling=sampling)
    return float(max(to_r[p].max(), to_p[r].max()))


def ssim(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Structural similarity of two (binary or label) arrays.

    Parameters
    ----------
    prediction, reference : ndarray
        Arrays of the same shape, each side at least 7 pixels (smaller arrays
        use the largest odd window that fits).

    Returns
    -------
    float
        Mean SSIM in [-1, 1] (1 for identical arrays); data range taken from
        ``reference`` (1 when it is constant).
    """
    p, r = _pair(prediction, reference)
    p = p.astype(np.float64)
    r = r.astype(np.float64)
    data_range = float(r.max() - r.min()) or 1.0
    smallest = min(p.shape)
    win_size = 7 if smallest >= 7 else (smallest if smallest % 2 else smallest - 1)
    if win_size < 1:
        raise InputError(f"Arrays of shape {p.shape} are too small for SSIM.")
    return float(structural_similarity(r, p, data_range=data_range, win_size=win_size))


def rmse(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Root mean squared difference, in the arrays' units (0-1 for masks).

    Returns
    -------
    float
        ``sqrt(mean((prediction - reference) ** 2))``.
    """
    p, r = _pair(prediction, reference)
    diff = p.astype(np.float64) - r.astype(np.float64)
    return float(np.sqrt(np.mean(diff**2)))


def ergas(
    prediction: np.ndarray, reference: np.ndarray, ratio: float = 4.0, window: int = 8
) -> float:
    """ERGAS (relative dimensionless global error), as the CUTS reference measured it.

    Local RMSE over sliding ``window``-pixel windows, divided by the local mean
    of ``reference`` (scaled as ``sewar`` does, see the module notes); windows
    where that mean is 0 count as 0. The mean is taken away from a border of
    ``round(window / 2)`` pixels.

    Parameters
    ----------
    prediction, reference : ndarray
        Arrays of the same shape, each side longer than ``window``.
    ratio : float
        Resolution ratio ``h / l`` of the original definition (4 in the reference).
    window : int
        Sliding-window size in pixels.

    Returns
    -------
    float
        Dimensionless; 0 for identical arrays, lower is better.
    """
    p, r = _pair(prediction, reference)
    border = int(np.round(window / 2))
    if min(p.shape) <= 2 * border:
        raise InputError(f"Arrays of shape {p.shape} are too small for ERGAS windows of {window}.")
    p = p.astype(np.float64)
    r = r.astype(np.float64)
    local_rmse = np.sqrt(ndimage.uniform_filter((r - p) ** 2, window))
    local_mean = ndimage.uniform_filter(r, window) / window**2
    empty = local_mean == 0
    local_mean[empty] = 1.0
    local_rmse[empty] = 0.0
    per_pixel = 100.0 * ratio * np.abs(local_rmse / local_mean)
    inner = tuple(slice(border, -border) for _ in range(p.ndim))
    return float(np.mean(per_pixel[inner]))
