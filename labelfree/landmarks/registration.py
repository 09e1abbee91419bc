"""Registration through landmarks: carry points or a label map from one image to another.

Landmark ``k`` found on image A and on image B is taken to be the same anatomy; a map
fitted through the pairs carries anything else from A to B. Everything happens in physical
space (LPS mm), so the two images may differ in size, spacing and orientation.

Transforms (``kind``)
---------------------
``"tps"`` (default)
    A smoothing thin-plate spline (kernel ``r^2 log r`` in 2-D, ``r`` in 3-D): the
    affine part plus a bending part damped by ``smoothing`` (``lambda``, added to the
    kernel's diagonal in units where the landmarks' RMS radius is 1). ``lambda = 0``
    interpolates the landmarks exactly, so every detection error becomes a local
    distortion; as ``lambda`` grows the spline tends to the least-squares affine map.
    ``smoothing="auto"`` picks ``lambda`` for each image pair by leave-one-out
    cross-validation over the landmarks (each landmark predicted from the others; the
    affine map is one of the candidates), which needs no ground truth.
``"affine"``
    The least-squares affine map through the landmarks.

With ``weights`` (e.g. the squared importance of a model whose importance is precision,
:mod:`labelfree.landmarks.redundancy`), landmark ``k``'s damping is ``lambda / w_k`` and its
squared residual counts ``w_k`` times: a landmark found less reliably pulls less.

Points carry forwards (A to B). A label map carries backwards: each voxel of B looks up
where it sits in A through the map fitted from B's landmarks to A's, and takes the label
of the nearest voxel there (0 outside A), so the result is on B's grid.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from labelfree.errors import InputError
from labelfree.io import Image
from labelfree.landmarks.tps import tps_kernel
from labelfree.progress import Progress, run_steps

KINDS = ("tps", "affine")
# Candidate values of lambda for "auto" (RMS radius 1 units); inf is the affine map.
SMOOTHING_GRID = (0.0, *np.logspace(-3, 2, 16), np.inf)
_CHUNK_POINTS = 2**16  # points per evaluation chunk (memory ~ 24 x K bytes per point)


@dataclass(frozen=True)
class LandmarkTransform:
    """A fitted map from one image's physical space to another's.

    Attributes
    ----------
    control : ndarray
        ``(K, D)`` the landmarks it was fitted on (source side, mm).
    coef : ndarray
        ``(K + D + 1, D)`` kernel weights then the affine part, in normalised units.
    centre, scale : ndarray, float
        Normalisation of the source side: ``(x - centre) / scale``.
    kind : str
        ``"tps"`` or ``"affine"``.
    smoothing : float
        ``lambda`` used (``inf`` for the affine map).
    """

    control: np.ndarray
    coef: np.ndarray
    centre: np.ndarray
    scale: float
    kind: str
    smoothing: float

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Map ``(M, D)`` physical points (mm); returns ``(M, D)`` mm."""
        points = np.asarray(points, dtype=float)
        if points.ndim != 2 or points.shape[1] != self.control.shape[1]:
            raise InputError(
                f"Points must be (M, {self.control.shape[1]}) to go through this transform, "
                f"got {points.shape}."
            )
        return np.concatenate(
            [self._map(chunk) for chunk in _chunks(points)] or [points[:0]], axis=0
        )

    def _map(self, points: np.ndarray) -> np.ndarray:
        unit = (points - self.centre) / self.scale
        basis = _design(unit, (self.control - self.centre) / self.scale, self.kind)
        return self.centre + self.scale * (unit + basis @ self.coef)


def fit_landmark_transform(
    source: np.ndarray,
    target: np.ndarray,
    kind: str = "tps",
    smoothing: float | str = "auto",
    weights: np.ndarray | None = None,
) -> LandmarkTransform:
    """Fit the map taking landmarks ``source`` (image A) to ``target`` (image B).

    Parameters
    ----------
    source, target : ndarray
        ``(K, D)`` corresponding physical points (mm), same order.
    kind : str
        ``"tps"`` or ``"affine"`` (see the module notes).
    smoothing : float or "auto"
        ``lambda`` of the spline, or ``"auto"`` for leave-one-out cross-validation.
    weights : ndarray, optional
        ``(K,)`` non-negative reliability of each landmark; equal by default. Landmarks
        of weight 0 are left out.

    Returns
    -------
    LandmarkTransform

    Raises
    ------
    InputError
        Mismatched or too few landmarks, an unknown kind, a bad smoothing or weights.
    """
    source, target, weights = _checked_pairs(source, target, weights)
    if kind not in KINDS:
        raise InputError(f"Unknown transform kind {kind!r}; use one of {', '.join(KINDS)}.")
    centre = source.mean(axis=0)
    scale = float(np.sqrt(((source - centre) ** 2).sum(axis=1).mean())) or 1.0
    unit_source = (source - centre) / scale
    unit_shift = (target - source) / scale
    if kind == "affine":
        lam = np.inf
    elif smoothing == "auto":
        lam = _cross_validated_smoothing(unit_source, unit_shift, weights)
    else:
        lam = _checked_smoothing(smoothing)
    coef = _solve(unit_source, unit_shift, weights, lam)
    return LandmarkTransform(source, coef, centre, scale, "affine" if np.isinf(lam) else kind, lam)


def carry_points(
    points: np.ndarray,
    from_landmarks: np.ndarray,
    to_landmarks: np.ndarray,
    kind: str = "tps",
    smoothing: float | str = "auto",
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Carry physical points of image A to image B through corresponding landmarks.

    Parameters
    ----------
    points : ndarray
        ``(M, D)`` points of A (LPS mm).
    from_landmarks, to_landmarks : ndarray
        ``(K, D)`` the same landmarks found on A and on B (LPS mm).
    kind, smoothing, weights
        See :func:`fit_landmark_transform`.

    Returns
    -------
    ndarray
        ``(M, D)`` the points in B (LPS mm).
    """
    return fit_landmark_transform(from_landmarks, to_landmarks, kind, smoothing, weights)(points)


def carry_label_map(
    labels: Image,
    from_landmarks: np.ndarray,
    to_landmarks: np.ndarray,
    reference: Image,
    kind: str = "tps",
    smoothing: float | str = "auto",
    weights: np.ndarray | None = None,
) -> Image:
    """Carry a label map of image A onto image B's grid through corresponding landmarks.

    Parameters
    ----------
    labels : Image
        Integer label map in A's physical space (0 = background).
    from_landmarks, to_landmarks : ndarray
        ``(K, D)`` the same landmarks found on A and on B (LPS mm).
    reference : Image
        Image B: the result has its grid and geometry.
    kind, smoothing, weights
        See :func:`fit_landmark_transform`.

    Returns
    -------
    Image
        The label map on ``reference``'s grid, ``labels``' dtype; 0 where B's voxels map
        outside A.
    """
    return run_steps(
        carry_label_map_steps(
            labels, from_landmarks, to_landmarks, reference, kind, smoothing, weights
        )
    )


def carry_label_map_steps(
    labels: Image,
    from_landmarks: np.ndarray,
    to_landmarks: np.ndarray,
    reference: Image,
    kind: str = "tps",
    smoothing: float | str = "auto",
    weights: np.ndarray | None = None,
) -> Generator[Progress, None, Image]:
    """:func:`carry_label_map` as steps (a progress report per slab of ``reference``)."""
    if labels.channels != 1 or not np.issubdtype(labels.array.dtype, np.integer):
        raise InputError(
            "The label map must be one integer component per voxel (0 = background); "
            f"got {labels.array.dtype} with {labels.channels} component(s)."
        )
    if labels.ndim != reference.ndim or labels.ndim != np.shape(from_landmarks)[-1]:
        raise InputError(
            f"A {labels.ndim}-D label map cannot be carried to a {reference.ndim}-D image "
            f"through {np.shape(from_landmarks)[-1]}-D landmarks."
        )
    # Backwards: B's voxels look up where they are in A.
    backward = fit_landmark_transform(to_landmarks, from_landmarks, kind, smoothing, weights)
    shape = reference.spatial_shape
    out = np.zeros(shape, dtype=labels.array.dtype)
    n_slabs = min(shape[0], -(-int(np.prod(shape)) // _CHUNK_POINTS))
    slabs = np.array_split(np.arange(shape[0]), n_slabs)
    for done, rows in enumerate(slabs, start=1):
        out[rows] = _labels_at(labels, backward, reference, rows)
        yield Progress(done / len(slabs), f"Carrying the label map: {done}/{len(slabs)}")
    return reference.with_array(out)


def _labels_at(
    labels: Image, backward: LandmarkTransform, reference: Image, rows: np.ndarray
) -> np.ndarray:
    """Labels of A at the voxels of B in rows ``rows`` of B's first array axis."""
    shape = reference.spatial_shape
    axes = [rows, *[np.arange(n) for n in shape[1:]]]
    index_zyx = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(shape))
    in_a = labels.physical_to_index(backward(reference.index_to_physical(index_zyx[:, ::-1])))
    nearest = np.rint(in_a[:, ::-1]).astype(np.int64)  # array order
    limits = np.asarray(labels.spatial_shape)
    inside = np.all((nearest >= 0) & (nearest < limits), axis=1)
    found = np.zeros(len(nearest), dtype=labels.array.dtype)
    found[inside] = labels.array[tuple(nearest[inside].T)]
    return found.reshape(len(rows), *shape[1:])


def _checked_pairs(
    source: np.ndarray, target: np.ndarray, weights: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    source = np.asarray(source, dtype=float)
    target = np.asarray(target, dtype=float)
    if source.ndim != 2 or source.shape != target.shape or source.shape[1] not in (2, 3):
        raise InputError(
            "Landmarks must be two (K, 2) or (K, 3) arrays of the same shape, in the same "
            f"order; got {source.shape} and {target.shape}."
        )
    if not (np.isfinite(source).all() and np.isfinite(target).all()):
        raise InputError("Landmark positions must be finite (a landmark file has NaN).")
    weights = np.ones(len(source)) if weights is None else np.asarray(weights, dtype=float)
    if weights.shape != (len(source),) or not np.all(np.isfinite(weights)) or (weights < 0).any():
        raise InputError(f"weights must be {len(source)} finite values >= 0.")
    used = weights > 0
    ndim = source.shape[1]
    if used.sum() < ndim + 2:
        raise InputError(
            f"A {ndim}-D landmark transform needs at least {ndim + 2} landmarks with weight > 0 "
            f"(got {int(used.sum())})."
        )
    return source[used], target[used], weights[used] / weights[used].max()


def _checked_smoothing(value: float | str) -> float:
    try:
        lam = float(value)
    except (TypeError, ValueError):
        lam = -1.0
    if not lam >= 0:
        raise InputError(f"smoothing must be 'auto' or a number >= 0, got {value!r}.")
    return lam


def _design(points: np.ndarray, control: np.ndarray, kind: str) -> np.ndarray:
    """``(M, K + D + 1)`` basis at ``points``: kernel to each control point (none for the
    affine map), then ``1, x, y[, z]``."""
    affine = np.concatenate([np.ones((len(points), 1)), points], axis=1)
    if kind == "affine":
        return np.concatenate([np.zeros((len(points), len(control))), affine], axis=1)
    # |p - c|^2 through one product: float64 keeps the cancellation near c negligible.
    r2 = (points**2).sum(1)[:, None] - 2 * points @ control.T + (control**2).sum(1)[None, :]
    kernel = tps_kernel(torch.from_numpy(np.maximum(r2, 0)), points.shape[1]).numpy()
    return np.concatenate([kernel, affine], axis=1)


def _solve(points: np.ndarray, values: np.ndarray, weights: np.ndarray, lam: float) -> np.ndarray:
    """Coefficients ``(K + D + 1, D)`` of the weighted smoothing spline (affine if inf)."""
    k, ndim = points.shape
    affine = np.concatenate([np.ones((k, 1)), points], axis=1)
    if np.isinf(lam):
        sqrt_w = np.sqrt(weights)[:, None]
        part, *_ = np.linalg.lstsq(affine * sqrt_w, values * sqrt_w, rcond=None)
        return np.concatenate([np.zeros((k, ndim)), part])
    r2 = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    kernel = tps_kernel(torch.from_numpy(r2), ndim).numpy() + np.diag(lam / weights)
    matrix = np.block([[kernel, affine], [affine.T, np.zeros((ndim + 1, ndim + 1))]])
    rhs = np.concatenate([values, np.zeros((ndim + 1, ndim))])
    return np.linalg.lstsq(matrix, rhs, rcond=None)[0]


def _cross_validated_smoothing(
    points: np.ndarray, values: np.ndarray, weights: np.ndarray
) -> float:
    """The ``lambda`` of :data:`SMOOTHING_GRID` with the least weighted leave-one-out error."""
    best, best_error = np.inf, np.inf
    keep = np.ones(len(points), dtype=bool)
    for lam in SMOOTHING_GRID:
        error = 0.0
        for k in range(len(points)):
            keep[k] = False
            coef = _solve(points[keep], values[keep], weights[keep], lam)
            kind = "affine" if np.isinf(lam) else "tps"
            predicted = _design(points[k : k + 1], points[keep], kind) @ coef
            error += weights[k] * float(((predicted - values[k]) ** 2).sum())
            keep[k] = True
        if error < best_error - 1e-12:
            best, best_error = float(lam), error
    return best


def _chunks(points: np.ndarray) -> list[np.ndarray]:
    return [points[i : i + _CHUNK_POINTS] for i in range(0, len(points), _CHUNK_POINTS)]


def landmark_pairs(
    from_image: Image, to_image: Image, model: Any = None, device: str = "auto"
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Detect a model's landmarks on two images, for :func:`carry_points` and friends.

    Parameters
    ----------
    from_image, to_image : Image
        Images A and B (same dimension).
    model : path-like, tuple or None
        As :func:`labelfree.landmarks.detect.detect_landmarks` takes it (None: bundled).
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Returns
    -------
    from_landmarks, to_landmarks : ndarray
        ``(K, D)`` LPS mm, every landmark of the model in model order.
    weights : ndarray or None
        ``(K,)`` squared importance when the model's importance is precision (importance
        is then inversely proportional to a landmark's error, so this is inverse variance);
        None otherwise.
    """
    from labelfree.landmarks.detect import detect_landmarks
    from labelfree.landmarks.model import load_landmark_model

    if from_image.ndim != to_image.ndim:
        raise InputError(
            f"Both images must be 2-D or both 3-D to carry between them; got a "
            f"{from_image.ndim}-D and a {to_image.ndim}-D image."
        )
    if not isinstance(model, tuple):
        model = load_landmark_model(model, ndim=from_image.ndim)
    found = [detect_landmarks(im, model, device=device) for im in (from_image, to_image)]
    importance = found[0].importance
    method = (model[2].get("importance") or {}).get("method")
    weights = importance**2 if method == "precision" and np.isfinite(importance).all() else None
    return found[0].points_lps, found[1].points_lps, weights
