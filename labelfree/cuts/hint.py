"""Turning a label map into one binary mask with a hint.

CUTS finds clusters, not named structures. To compare it with a reference
mask (and to let a user pick a structure) one label is chosen by a hint:

- :func:`binarise_by_mask` -- the evaluation protocol of the CUTS paper: the
  label most frequent under the reference foreground becomes the mask. The
  same rule is applied to every method compared.
- :func:`binarise_by_point` -- what a click does: the label under the point,
  optionally only its connected part containing the point.
- :func:`central_point` -- a single click a user would plausibly make inside a
  reference mask (its most central voxel), to evaluate the click route.

All functions work on 2-D ``(y, x)`` and 3-D ``(z, y, x)`` arrays alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from labelfree.errors import InputError

__all__ = ["binarise_by_mask", "binarise_by_point", "central_point", "hint_label"]


def hint_label(labels: np.ndarray, mask: np.ndarray) -> int | None:
    """The label most frequent under the foreground of ``mask``.

    Parameters
    ----------
    labels : ndarray of int
        Label map, any non-negative integers.
    mask : ndarray
        Same shape; non-zero is foreground.

    Returns
    -------
    int or None
        The chosen label (the smallest one among ties), or None when ``mask``
        is empty.
    """
    labels, mask = _same_shape(labels, mask)
    under = labels[mask.astype(bool)]
    if under.size == 0:
        return None
    if under.min() < 0:
        raise InputError("Label maps must hold non-negative integers.")
    return int(np.argmax(np.bincount(under.astype(np.int64))))


def binarise_by_mask(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Binarise a label map with the CUTS hint protocol.

    Parameters
    ----------
    labels : ndarray of int
        Label map, ``(y, x)`` or ``(z, y, x)``.
    mask : ndarray
        Reference mask of the same shape; non-zero is foreground.

    Returns
    -------
    ndarray of bool
        ``labels == l`` for the label ``l`` most frequent under the mask
        foreground; all False when the mask is empty.
    """
    label = hint_label(labels, mask)
    if label is None:
        return np.zeros(np.shape(labels), dtype=bool)
    return np.asarray(labels) == label


def binarise_by_point(
    labels: np.ndarray, index: Sequence[int], connected: bool = False
) -> np.ndarray:
    """The region of the label under one point (a click).

    Parameters
    ----------
    labels : ndarray of int
        Label map, ``(y, x)`` or ``(z, y, x)``.
    index : sequence of int
        The point, in numpy order (``(z, y, x)`` or ``(y, x)``), voxels.
    connected : bool
        If True keep only the part of that label connected (through faces)
        to the point; otherwise every voxel carrying the label.

    Returns
    -------
    ndarray of bool
        The selected region; it always contains ``index``.
    """
    labels = np.asarray(labels)
    index = tuple(int(i) for i in index)
    if len(index) != labels.ndim:
        raise InputError(f"A point in a {labels.ndim}-D label map needs {labels.ndim} indices.")
    if any(i < 0 or i >= n for i, n in zip(index, labels.shape, strict=True)):
        raise InputError(f"Point {index} lies outside the label map of shape {labels.shape}.")
    region = labels == labels[index]
    if not connected:
        return region
    components, _ = ndimage.label(region)
    return components == components[index]


def central_point(mask: np.ndarray) -> tuple[int, ...]:
    """The most central voxel of a mask's largest connected component.

    "Central" means farthest from the component's boundary (ties broken by
    nearness to its centroid), so a click there is unambiguous even for thin or
    curved structures, where the centroid itself may fall outside.

    Parameters
    ----------
    mask : ndarray
        ``(y, x)`` or ``(z, y, x)``; non-zero is foreground.

    Returns
    -------
    tuple of int
        The index in numpy order.

    Raises
    ------
    InputError
        If the mask is empty.
    """
    mask = np.asarray(mask).astype(bool)
    components, count = ndimage.label(mask)
    if count == 0:
        raise InputError("The mask is empty; there is no point to click.")
    largest = 1 + int(np.argmax(np.bincount(components.ravel())[1:]))
    depth = ndimage.distance_transform_edt(components == largest)
    # The deepest voxels form a ridge on elongated shapes: take the one nearest the centroid.
    deepest = np.argwhere(depth == depth.max())
    centroid = np.argwhere(components == largest).mean(axis=0)
    best = deepest[np.argmin(((deepest - centroid) ** 2).sum(axis=1))]
    return tuple(int(i) for i in best)


def _same_shape(labels: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    mask = np.asarray(mask)
    if labels.shape != mask.shape:
        raise InputError(
            f"Label map {labels.shape} and hint mask {mask.shape} must have the same shape."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"Label maps must be integer arrays, got {labels.dtype}.")
    return labels, mask
