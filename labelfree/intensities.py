"""The intensity check every method applies before it computes anything."""

from __future__ import annotations

import numpy as np

from labelfree.errors import InputError

FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_intensities(array: np.ndarray, what: str = "image", task: str = "segment") -> None:
    """Refuse arrays no method can use: empty, non-real, NaN/Inf, beyond float32, or constant.

    Parameters
    ----------
    array : ndarray
        Image or volume, any shape.
    what : str
        How the message names the array ("image", "training image 3").
    task : str
        What the caller would do with it ("segment", "find landmarks in").

    Raises
    ------
    InputError
        With a message saying what is wrong and what to do.
    """
    array = np.asarray(array)
    if array.size == 0:
        raise InputError(f"The {what} is empty (shape {array.shape}); load a non-empty image.")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(
            f"The {what} has {array.dtype} pixels; real-valued intensities are needed "
            "(cast it, or take the magnitude of a complex image first)."
        )
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputError(
                f"The {what} has {bad} NaN or infinite voxels; replace them with a finite "
                "value first (e.g. 0, or the background intensity)."
            )
    low, high = array.min(), array.max()
    if max(abs(float(low)), abs(float(high))) > FLOAT32_MAX / 1e6:
        raise InputError(
            f"The {what} has values up to {max(abs(float(low)), abs(float(high))):.3g}, beyond "
            "what 32-bit arithmetic handles; rescale the intensities first (e.g. divide by "
            "their maximum)."
        )
    if low == high:
        raise InputError(
            f"The {what} is constant (every value is {array.flat[0]!r}); there is nothing to "
            f"{task}. Check that the right image was loaded."
        )
