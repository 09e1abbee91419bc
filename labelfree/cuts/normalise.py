"""Map raw intensities to the [-1, 1] range the CUTS encoder is trained on.

A normalisation is a small dict stored in each model file's config, so that a
model always sees images scaled the way it was trained:

``{"method": "percentile", "low": 0.5, "high": 99.5}``
    Scalar images of any scanner scale (MR, CT): the ``low``/``high``
    percentiles of *this* image's finite values (a whole volume at once, so
    all its slices share one scale) map to -1 and 1; values beyond are clipped.
    The reference divides MR by the 99th percentile and clips; this is the same
    for images whose minimum is 0 and also handles CT's negative values.
``{"method": "window", "low": a, "high": b}``
    Fixed window (e.g. CT Hounsfield units): ``a -> -1``, ``b -> 1``, clipped.
``{"method": "rgb", "max": 255}``
    RGB ``(..., 3)``: ``x / max * 2 - 1`` (8-bit photographs, as the reference;
    a 16-bit ``uint16`` photograph with values above ``max`` is scaled by 65535).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from labelfree.errors import InputError
from labelfree.intensities import check_intensities

PERCENTILE = {"method": "percentile", "low": 0.5, "high": 99.5}
RGB8 = {"method": "rgb", "max": 255.0}
_MAX_PERCENTILE_SAMPLES = 2_000_000


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def valid_normalisation(normalisation: Any) -> bool:
    """True for a normalisation dict this module can apply (the forms listed above)."""
    if not isinstance(normalisation, dict):
        return False
    method = normalisation.get("method")
    low, high = normalisation.get("low"), normalisation.get("high")
    if method == "percentile":
        return _number(low) and _number(high) and 0 <= low < high <= 100
    if method == "window":
        return _number(low) and _number(high) and low < high
    if method == "rgb":
        return _number(normalisation.get("max", 255.0)) and normalisation.get("max", 255.0) > 0
    return False


def default_normalisation(channels: int) -> dict[str, Any]:
    """The normalisation for a kind of image: percentile for scalar, 8-bit for RGB.

    Parameters
    ----------
    channels : int
        1 (MR, CT, any scalar image) or 3 (RGB).
    """
    if channels == 1:
        return dict(PERCENTILE)
    if channels == 3:
        return dict(RGB8)
    raise InputError(f"CUTS takes 1 (scalar) or 3 (RGB) channels, not {channels}.")


def _percentiles(values: np.ndarray, low: float, high: float) -> tuple[float, float]:
    flat = values.reshape(-1)
    if flat.size > _MAX_PERCENTILE_SAMPLES:  # a deterministic stride is plenty for two quantiles
        flat = flat[:: flat.size // _MAX_PERCENTILE_SAMPLES + 1]
    lo, hi = np.percentile(flat, [low, high])
    if hi <= lo:  # mostly-constant image (e.g. a small bright object): use the full range
        lo, hi = float(values.min()), float(values.max())
    return float(lo), float(hi)


def _scale(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    out = (array.astype(np.float32) - np.float32(lo)) * np.float32(2.0 / (hi - lo)) - 1.0
    return np.clip(out, -1.0, 1.0, out=out)


def normalise(array: np.ndarray, normalisation: dict[str, Any]) -> np.ndarray:
    """Scale raw intensities to [-1, 1].

    Parameters
    ----------
    array : ndarray
        Scalar intensities of any shape (a 2-D image or a whole volume), or RGB
        with a trailing axis of 3 ``(..., 3)``.
    normalisation : dict
        See the module docstring; usually ``model_config["normalisation"]``.

    Returns
    -------
    ndarray
        float32, same shape as ``array`` (RGB keeps its trailing channel axis;
        move it to the front for the encoder).

    Raises
    ------
    InputError
        For empty, NaN/Inf, constant input, an RGB normalisation on a
        grayscale image, or an unknown method.
    """
    array = np.asarray(array)
    method = normalisation.get("method")
    if method == "rgb" and (array.ndim < 2 or array.shape[-1] != 3):
        raise InputError(
            f"This model expects RGB images (..., 3) but got shape {array.shape} (grayscale); "
            "use a grayscale model such as the bundled cuts_mr.pt."
        )
    check_intensities(array)
    if method == "percentile":
        lo, hi = _percentiles(array, float(normalisation["low"]), float(normalisation["high"]))
    elif method == "window":
        lo, hi = float(normalisation["low"]), float(normalisation["high"])
        if hi <= lo:
            raise InputError(f"Window {lo}..{hi} is empty; give low < high.")
    elif method == "rgb":
        lo, hi = 0.0, float(normalisation.get("max", 255.0))
        if array.dtype == np.uint16 and array.max() > hi:  # 16-bit photograph: same [0, 1] scale
            hi = 65535.0
    else:
        raise InputError(
            f"Unknown normalisation {normalisation!r}; use method 'percentile', 'window' or 'rgb'."
        )
    return _scale(array, lo, hi)
