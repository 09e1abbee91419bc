"""Landmark model files, input preparation and prediction.

A landmark model file (``kind="landmarks"``, see :mod:`labelfree.modelfile`)
has a ``config`` with:

``ndim``, ``input_size``, ``n_landmarks`` (learned), ``n_fixed`` (corners),
``network`` (the :class:`LandmarkRegressor` arguments), ``normalisation``
(how images are prepared) and optionally ``importance`` (one score per
learned landmark, added by redundancy analysis).

Images of any size are resampled to ``input_size`` per axis with the
``align_corners=True`` convention, so normalised landmark coordinates map
back to any resolution of the same field of view with
:func:`labelfree.landmarks.tps.normalised_to_index`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from scipy import ndimage

from labelfree.errors import InputError, ModelFileError
from labelfree.intensities import check_intensities
from labelfree.landmarks.regressor import LandmarkRegressor
from labelfree.modelfile import (
    ModelFile,
    bundled_model_path,
    check_fields,
    load_model,
    save_model,
    whole_in,
)
from labelfree.progress import Progress, Steps, run_steps

ARCHITECTURE_KEYS = ("ndim", "input_size", "n_landmarks", "n_fixed", "network")
BUNDLED = {2: "landmarks_2d.pt", 3: "landmarks_3d.pt"}
NORMALISATION = {
    "resample": "anti-aliased (Gaussian, sigma = (factor - 1) / 2), linear, align_corners=True",
    "intensity": "per image: zero mean, unit variance after resampling (whitening)",
    "std_floor": 1e-6,
}


def as_scalar_array(array: np.ndarray, ndim: int) -> np.ndarray:
    """Check an image array against the model's dimension; RGB becomes grey.

    Parameters
    ----------
    array : ndarray
        ``(y, x)``, ``(y, x, 3|4)`` or ``(z, y, x)``.
    ndim : int
        The model's dimension.

    Returns
    -------
    ndarray
        ``float32``, ``ndim`` dimensions.

    Raises
    ------
    InputError
        For a 2-D model on a volume, a 3-D model on a 2-D image, or
        intensities no method can use (see :func:`labelfree.intensities.check_intensities`).
    """
    array = np.asarray(array)
    check_intensities(array, task="find landmarks in")
    if ndim == 2 and array.ndim == 3 and array.shape[-1] in (3, 4):
        array = array[..., :3].astype(np.float32).mean(-1)
    if array.ndim != ndim:
        kind = {2: "2-D image", 3: "3-D volume"}
        raise InputError(
            f"This landmark model was trained on {kind.get(ndim, ndim)}s but the input is "
            f"{array.ndim}-D with shape {array.shape}; use a {array.ndim}-D landmark model "
            f"(bundled: {BUNDLED.get(array.ndim, 'none')})."
        )
    if min(array.shape) < 2:
        raise InputError(f"Image of shape {array.shape} is too small: every axis needs 2 pixels.")
    # Centred in float64 first: int64 or float64 values near 1e17 keep their contrast in float32.
    return (array - array.mean(dtype=np.float64)).astype(np.float32)


def resample(array: np.ndarray, input_size: int) -> np.ndarray:
    """Resample an ``ndim``-D array to ``input_size`` per axis, corners to corners.

    Downsampled axes are smoothed first (Gaussian, ``sigma = (factor - 1) / 2``
    pixels, as scikit-image's anti-aliasing) to avoid aliasing.
    """
    return run_steps(resample_steps(array, input_size))


def antialias_sigma(shape: tuple[int, ...], input_size: int) -> list[float]:
    """Gaussian widths (pixels per axis) that :func:`resample` smooths with before downsampling."""
    factors = [(n - 1) / max(input_size - 1, 1) for n in shape]
    return [max(0.0, (f - 1) / 2) for f in factors]


def resample_steps(array: np.ndarray, input_size: int) -> Steps[np.ndarray]:
    """:func:`resample` as steps of about ``SMOOTH_CHUNK_VOXELS`` voxels (same result)."""
    sigma = antialias_sigma(array.shape, input_size)
    if any(s > 0 for s in sigma):
        array = yield from smooth_steps(array, sigma)
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    mode = "bilinear" if array.ndim == 2 else "trilinear"
    out = F.interpolate(tensor, size=(input_size,) * array.ndim, mode=mode, align_corners=True)
    return out[0, 0].numpy()


SMOOTH_CHUNK_VOXELS = 2**21
"""Voxels one smoothing step filters (about 50 ms on one core): GUI steps stay short."""


def smooth_steps(array: np.ndarray, sigma: list[float]) -> Steps[np.ndarray]:
    """Gaussian smoothing with ``mode="nearest"``, one 1-D pass over one slab per step.

    The result equals ``ndimage.gaussian_filter(array, sigma, mode="nearest")``: that
    filter is the same 1-D passes axis after axis, and a 1-D pass along one axis is
    independent across slabs cut along another.
    """
    out = array
    for axis, width in enumerate(sigma):
        if width <= 0:
            continue
        result = np.empty_like(out)
        across = max((a for a in range(out.ndim) if a != axis), key=lambda a: out.shape[a])
        step = max(1, SMOOTH_CHUNK_VOXELS * out.shape[across] // max(out.size, 1))
        for start in range(0, out.shape[across], step):
            slab = [slice(None)] * out.ndim
            slab[across] = slice(start, start + step)
            result[tuple(slab)] = ndimage.gaussian_filter1d(
                out[tuple(slab)], width, axis=axis, mode="nearest"
            )
            yield Progress(start / out.shape[across], f"Smoothing axis {axis}")
        out = result
    return out


def whiten(array: np.ndarray, std_floor: float = NORMALISATION["std_floor"]) -> np.ndarray:
    """Zero mean, unit variance (a constant image becomes zeros); statistics in float64."""
    mean, std = float(array.mean(dtype=np.float64)), float(array.std(dtype=np.float64))
    return ((array - mean) / max(std, std_floor)).astype(np.float32)


def prepare_image(array: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """Array as the network sees it: scalar, resampled to ``input_size``, whitened.

    Returns
    -------
    ndarray
        ``float32`` of shape ``(input_size,) * ndim``.
    """
    return run_steps(prepare_image_steps(array, config))


def prepare_image_steps(array: np.ndarray, config: dict[str, Any]) -> Steps[np.ndarray]:
    """:func:`prepare_image` as short steps (for a GUI's timer); the same result."""
    array = as_scalar_array(array, config["ndim"])
    return whiten((yield from resample_steps(array, config["input_size"])))


def build_config(regressor: LandmarkRegressor, **extra: Any) -> dict[str, Any]:
    """Model-file configuration of a regressor, plus ``extra`` entries."""
    return {
        "ndim": regressor.ndim,
        "input_size": regressor.input_size,
        "n_landmarks": regressor.n_landmarks,
        "n_fixed": regressor.n_fixed,
        "network": regressor.config(),
        "normalisation": dict(NORMALISATION),
        **extra,
    }


def regressor_from_config(config: dict[str, Any]) -> LandmarkRegressor:
    """An untrained regressor with the architecture a config describes."""
    try:
        return LandmarkRegressor(**config["network"])
    except (KeyError, TypeError) as err:
        raise ModelFileError(f"Landmark model config is incomplete or unknown: {err}.") from err


def save_landmark_model(
    path: str | os.PathLike,
    regressor: LandmarkRegressor,
    config: dict[str, Any] | None = None,
    card: dict[str, Any] | None = None,
):
    """Write a landmark model file (and its ``.card.json``).

    Parameters
    ----------
    path : path-like
        Destination, written atomically.
    regressor : LandmarkRegressor
        The trained network.
    config : dict, optional
        Extra configuration (e.g. ``importance``); architecture entries are
        always taken from ``regressor``.
    card : dict, optional
        The model card (training data, parameters, metrics).

    Returns
    -------
    Path
        The written path.
    """
    architecture = build_config(regressor)
    extra = {k: v for k, v in (config or {}).items() if k not in ARCHITECTURE_KEYS}
    full = {**architecture, **extra}
    state = {k: v.detach().cpu() for k, v in regressor.state_dict().items()}
    model = ModelFile(kind="landmarks", config=full, card=dict(card or {}), state_dict=state)
    return save_model(path, model)


CONFIG_SCHEMA = {
    "ndim": (lambda v: v in (2, 3) and not isinstance(v, bool), "2 or 3"),
    "input_size": (whole_in(16, 1024), "a whole number of pixels from 16 to 1024"),
    "n_landmarks": (whole_in(1, 4096), "a whole number from 1 to 4096"),
    "network": (lambda v: isinstance(v, dict), "a dictionary"),
}
"""What :func:`load_landmark_model` requires of a landmark model's ``config``."""


def _importance_list(values: Any, count: int) -> bool:
    return (
        isinstance(values, list)
        and len(values) == count
        and all(isinstance(v, (int, float)) and np.isfinite(v) and v >= 0 for v in values)
    )


def load_landmark_model(
    path: str | os.PathLike | None = None, ndim: int | None = None
) -> tuple[LandmarkRegressor, dict[str, Any], dict[str, Any]]:
    """Load a landmark model: ``(regressor, config, card)``, in eval mode on the CPU.

    Parameters
    ----------
    path : path-like, optional
        A model file; ``None`` picks the bundled model for ``ndim``
        (``landmarks_2d.pt`` or ``landmarks_3d.pt``).
    ndim : int, optional
        The dimension of the images it will see; a model of another
        dimension is refused.

    Raises
    ------
    InputError
        Dimension mismatch, or neither path nor ndim given.
    ModelFileError
        Missing, unreadable or foreign file.
    """
    if path is None:
        if ndim not in BUNDLED:
            raise InputError("Give a landmark model file, or the image dimension (2 or 3).")
        path = bundled_model_path(BUNDLED[ndim])
    model = load_model(path, kind="landmarks")
    config = model.config
    check_fields(path, config, CONFIG_SCHEMA, "config")
    n_landmarks = config["n_landmarks"]
    check_fields(
        path,
        config,
        {
            "network": (
                lambda v: all(v.get(k) == config[k] for k in ("ndim", "n_landmarks", "input_size")),
                "the network of this ndim, n_landmarks and input_size",
            ),
            "importance": (
                lambda v: v is None or _importance_list(v, n_landmarks),
                f"{n_landmarks} finite numbers >= 0",
            ),
        }
        if "importance" in config
        else {"network": (lambda v: isinstance(v, dict), "a dictionary")},
        "config",
    )
    if ndim is not None and config.get("ndim") != ndim:
        raise InputError(
            f"{path} is a {config.get('ndim')}-D landmark model but the image is {ndim}-D; "
            f"use a {ndim}-D model (bundled: {BUNDLED.get(ndim, 'none')})."
        )
    regressor = regressor_from_config(config)
    try:
        regressor.load_state_dict(model.state_dict)
    except RuntimeError as err:
        raise ModelFileError(f"{path}: weights do not match its configuration.") from err
    regressor.eval()
    return regressor, config, model.card


def predict_landmarks(
    regressor: LandmarkRegressor, config: dict[str, Any], image_array: np.ndarray
) -> np.ndarray:
    """Learned landmarks of one image in normalised coordinates.

    Parameters
    ----------
    regressor : LandmarkRegressor
        From :func:`load_landmark_model`.
    config : dict
        Its configuration.
    image_array : ndarray
        ``(y, x)`` (or RGB ``(y, x, 3)``) or ``(z, y, x)``, any size.

    Returns
    -------
    ndarray
        ``(K, ndim)`` in ``[-1, 1]``, order ``(x, y[, z])``; convert to indices
        of ``image_array`` with ``(c + 1) / 2 * (size - 1)`` per axis
        (:func:`labelfree.landmarks.tps.normalised_to_index`).
    """
    return predict_prepared(regressor, prepare_image(image_array, config))


def predict_prepared(regressor: LandmarkRegressor, prepared: np.ndarray) -> np.ndarray:
    """:func:`predict_landmarks` on an image already through :func:`prepare_image`."""
    device = next(regressor.parameters()).device
    with torch.no_grad():
        out = regressor(torch.from_numpy(prepared)[None, None].to(device))
    return out[0].cpu().double().numpy()
