"""Test-time pose refinement: detect, undo the subject's pose, detect again, map back.

A landmark regressor is most precise on images posed as those it was trained on. A
subject that is rotated, scaled or shifted against them costs precision, and the errors
are shared by neighbouring landmarks, so smoothing over landmarks cannot remove them.
Refinement removes the pose instead:

1. detect the landmarks ``p`` on the network input;
2. fit the affine map ``A`` that carries the model's *reference layout* ``r`` (its
   landmarks on a training-posed image) onto ``p`` (least squares);
3. resample the image through ``A`` onto the network's input grid, so the subject
   appears in the reference pose (from the anti-aliased image, not from the network
   input, so no second interpolation blurs it; ``A`` = identity gives the plain input);
4. detect again there and carry the points back through ``A``.

Refinement runs only when the subject's pose is outside what the model met in training:
the mean distance the fitted affine moves the reference landmarks, in pixels of the
network input, must exceed the 95th percentile of that distance over the model's own
training-family images. And the first detection must look like the reference under an
affine map (its fit residual at most ``RESIDUAL_FACTOR`` times the largest over those
images): a failed detection (noise, the wrong anatomy) is left as it is, so quality
control still sees it. Inside the pose range the model handles the pose itself, and a second detection costs
precision (the bundled 2-D model anchors on the image frame; bench/README.md §5e).

The reference is stored in the model file (``config["pose_reference"]``, written by
:func:`store_pose_reference`); models without one are detected as before.

Everything is in the network's normalised coordinates (``(x, y[, z])`` in ``[-1, 1]``,
``align_corners=True``), so the result replaces the plain detection one for one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (torch convention)

from labelfree.errors import InputError, ModelFileError
from labelfree.landmarks.model import (
    antialias_sigma,
    as_scalar_array,
    load_landmark_model,
    predict_prepared,
    prepare_image,
    save_landmark_model,
    smooth_steps,
    whiten,
)
from labelfree.landmarks.tps import identity_grid
from labelfree.progress import Progress, Steps, run_steps

# Refine a subject whose pose is farther from the reference than this percentile of the
# training images' poses: about 1 training-posed image in 20 is refined needlessly.
THRESHOLD_PERCENTILE = 95.0
# A first detection whose affine fit leaves more than this many times the training images'
# largest residual is not the anatomy in another pose but a failure: it is not refined.
RESIDUAL_FACTOR = 2.0


def fit_affine(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares affine map with ``target ≈ source @ matrix.T + offset``.

    Parameters
    ----------
    source, target : ndarray
        ``(K, D)`` corresponding points, ``K >= D + 1``.

    Returns
    -------
    matrix : ndarray
        ``(D, D)``.
    offset : ndarray
        ``(D,)``.
    """
    source, target = np.asarray(source, float), np.asarray(target, float)
    k, d = source.shape
    if target.shape != (k, d) or k < d + 1:
        raise InputError(f"An affine fit needs at least {d + 1} point pairs of equal shape.")
    design = np.concatenate([source, np.ones((k, 1))], axis=1)
    solution, *_ = np.linalg.lstsq(design, target, rcond=None)
    return solution[:d].T, solution[d]


def resample_affine(
    array: np.ndarray, matrix: np.ndarray, offset: np.ndarray, size: int
) -> np.ndarray:
    """``array`` seen through ``u -> matrix @ u + offset`` on a ``size``-per-axis grid, whitened.

    Coordinates are normalised (corners to corners); linear interpolation; outside the
    image, the nearest border value.

    Parameters
    ----------
    array : ndarray
        ``(y, x)`` or ``(z, y, x)`` scalar image (already anti-aliased for ``size``).
    matrix, offset : ndarray
        ``(D, D)`` and ``(D,)``, in ``(x, y[, z])`` order.
    size : int
        Output pixels per axis.

    Returns
    -------
    ndarray
        ``float32`` of shape ``(size,) * D``.
    """
    grid = identity_grid((size,) * array.ndim, torch.float64)
    mapped = grid @ torch.from_numpy(np.asarray(matrix, float)).T
    mapped = mapped + torch.from_numpy(np.asarray(offset, float))
    source = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    sampled = F.grid_sample(
        source, mapped.float()[None], mode="bilinear", padding_mode="border", align_corners=True
    )
    return whiten(sampled[0, 0].numpy())


def pose_distance_px(reference: np.ndarray, points: np.ndarray, input_size: int) -> float:
    """How far the affine fit of ``reference`` onto ``points`` moves the reference, on average.

    In pixels of the network input (``input_size`` per axis): 0 for the reference pose.
    """
    return _pose_and_residual_px(reference, points, input_size)[0]


def _pose_and_residual_px(reference, points, input_size: int) -> tuple[float, float]:
    """Mean distance the affine fit moves the reference, and mean distance it misses by (px)."""
    matrix, offset = fit_affine(reference, points)
    mapped = reference @ matrix.T + offset
    px = (input_size - 1) / 2
    moved = np.linalg.norm(mapped - reference, axis=1).mean() * px
    missed = np.linalg.norm(mapped - points, axis=1).mean() * px
    return float(moved), float(missed)


def pose_reference(regressor, config: dict, images: Sequence[Any]) -> dict:
    """The reference layout and refinement threshold of a model, from training-family images.

    Parameters
    ----------
    regressor, config
        The model.
    images : sequence of ndarray or labelfree.io.Image
        Images posed as the training images (the training set is fine), at least 2.

    Returns
    -------
    dict
        ``layout`` (``K x D`` list, the mean normalised detection), ``threshold_px`` (the
        ``THRESHOLD_PERCENTILE`` of :func:`pose_distance_px` over ``images``),
        ``residual_limit_px`` (``RESIDUAL_FACTOR`` times the largest affine-fit residual
        over them) and ``images`` (their count).
    """
    arrays = [getattr(image, "array", image) for image in images]
    if len(arrays) < 2:
        raise InputError("A pose reference needs at least 2 training-family images.")
    size = int(config["input_size"])
    points = np.stack([predict_prepared(regressor, prepare_image(a, config)) for a in arrays])
    layout = points.mean(axis=0)
    poses, residuals = zip(*(_pose_and_residual_px(layout, p, size) for p in points), strict=True)
    return {
        "layout": layout.tolist(),
        "threshold_px": float(np.percentile(poses, THRESHOLD_PERCENTILE)),
        "residual_limit_px": RESIDUAL_FACTOR * float(max(residuals)),
        "images": len(arrays),
    }


def store_pose_reference(model_path: str | os.PathLike, images: Sequence[Any]) -> dict:
    """Compute :func:`pose_reference` for a model file and store it there (atomically)."""
    regressor, config, card = load_landmark_model(model_path)
    reference = pose_reference(regressor, config, images)
    card = {
        **card,
        "pose_reference": {
            "images": reference["images"],
            "threshold_px": round(reference["threshold_px"], 4),
            "residual_limit_px": round(reference["residual_limit_px"], 4),
        },
    }
    save_landmark_model(model_path, regressor, {**config, "pose_reference": reference}, card)
    return reference


def stored_pose_reference(config: dict) -> tuple[np.ndarray, float, float] | None:
    """The model's ``(layout, threshold_px, residual_limit_px)``, or None if it stores none.

    Raises
    ------
    ModelFileError
        A stored reference of the wrong shape or with non-finite values.
    """
    stored = config.get("pose_reference")
    if stored is None:
        return None
    shape = (int(config["n_landmarks"]), int(config["ndim"]))
    try:
        layout = np.asarray(stored["layout"], dtype=float)
        limits = float(stored["threshold_px"]), float(stored["residual_limit_px"])
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"The model's pose reference is unreadable: {err}.") from err
    if layout.shape != shape or not np.isfinite([*layout.ravel(), *limits]).all():
        raise ModelFileError(
            f"The model's pose reference should be {shape[0]} x {shape[1]} finite numbers "
            "and finite limits; re-store it (labelfree.landmarks.refine.store_pose_reference)."
        )
    return layout, *limits


def refine_steps(
    regressor,
    config: dict,
    array: np.ndarray,
    points: np.ndarray,
    reference: np.ndarray,
    threshold_px: float = 0.0,
    residual_limit_px: float = np.inf,
    *,
    iterations: int = 1,
) -> Steps[tuple[np.ndarray, bool]]:
    """Refine ``points`` (the plain detection on ``array``) if its pose is beyond the threshold.

    Parameters
    ----------
    regressor, config
        The model.
    array : ndarray
        The image, ``(y, x)`` (or RGB ``(y, x, 3)``) or ``(z, y, x)``.
    points : ndarray
        ``(K, D)`` the plain normalised detection on ``array``.
    reference : ndarray
        ``(K, D)`` the model's reference layout.
    threshold_px : float
        Refine only when :func:`pose_distance_px` exceeds this (0: always).
    residual_limit_px : float
        ...and the affine fit misses ``points`` by at most this, on average (px).
    iterations : int
        Rounds of fit, resample and detect.

    Returns
    -------
    (ndarray, bool)
        The ``(K, D)`` landmarks, and whether they were refined.
    """
    size = int(config["input_size"])
    points = np.asarray(points, float)
    reference = np.asarray(reference, float)
    if reference.shape != points.shape:
        raise InputError(
            f"The reference layout has shape {reference.shape}; the model gives {points.shape}."
        )
    pose, residual = _pose_and_residual_px(reference, points, size)
    if pose <= threshold_px or residual > residual_limit_px:
        return points, False
    scalar = as_scalar_array(array, config["ndim"])
    sigma = antialias_sigma(scalar.shape, size)
    smooth = (yield from smooth_steps(scalar, sigma)) if any(s > 0 for s in sigma) else scalar
    for _ in range(int(iterations)):
        yield Progress(0.95, "Refining the pose")
        matrix, offset = fit_affine(reference, points)
        posed = predict_prepared(regressor, resample_affine(smooth, matrix, offset, size))
        points = posed @ matrix.T + offset
    return points, True


def refine_landmarks(
    regressor,
    config: dict,
    array: np.ndarray,
    reference: np.ndarray,
    threshold_px: float = 0.0,
    residual_limit_px: float = np.inf,
    *,
    first: np.ndarray | None = None,
    iterations: int = 1,
) -> tuple[np.ndarray, bool]:
    """:func:`refine_steps` at once; ``first`` (the plain detection) is made if not given."""
    if first is None:
        first = predict_prepared(regressor, prepare_image(array, config))
    steps = refine_steps(
        regressor,
        config,
        array,
        first,
        reference,
        threshold_px,
        residual_limit_px,
        iterations=iterations,
    )
    return run_steps(steps)
