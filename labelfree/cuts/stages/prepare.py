"""Stage 1: check the image, load the model, normalise and slice, find the background.

Background: masked images (skull-stripped MRI, CT outside the field of view, photographs with a
black surround) have a *fill value*, the value covering at least half of the volume's outer
faces. Voxels holding exactly that value are background: kept out of the pool, one cluster of
their own at every level. Images with noisy backgrounds have none and are clustered whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labelfree.cuts.embed import prepare_slices
from labelfree.cuts.model import CutsModel, load_cuts_model
from labelfree.cuts.stages.tiles import HALO, Box, content_box
from labelfree.errors import InputError
from labelfree.io import Image


@dataclass
class Prepared:
    """The normalised slices of an image and where their content is.

    Attributes
    ----------
    slices : ndarray
        ``(S, C, H, W)`` float32, normalised with the model's normalisation.
    background : ndarray or None
        ``(C,)`` fill value of a masked image, or None.
    content : ndarray
        ``(S, H, W)`` bool: pixels that are not background.
    boxes : list
        Each slice's content box grown by the halo (:func:`~.tiles.content_box`), or None
        for a slice of background only.
    """

    slices: np.ndarray
    background: np.ndarray | None
    content: np.ndarray
    boxes: list[Box | None]


def prepare(
    image: Image, axis: int | None, normalisation: dict[str, Any], grow: int = HALO
) -> Prepared:
    """Normalise ``image``, slice it along numpy ``axis`` (None for 2-D) and find its content.

    Content boxes reach ``grow`` pixels (the features' halo) beyond the content.
    """
    slices = prepare_slices(image, axis, normalisation)
    background = background_value(slices)
    if background is None:
        content = np.ones(slices.shape[:1] + slices.shape[2:], dtype=bool)
    else:
        content = np.any(slices != background[None, :, None, None], axis=1)  # (S, H, W)
    boxes = [content_box(c, c.shape, grow) for c in content]
    return Prepared(slices, background, content, boxes)


def check_image(image: Image) -> None:
    """Refuse what CUTS cannot segment before anything large is allocated."""
    if image.ndim not in (2, 3):
        raise InputError(f"Expected a 2-D image or a 3-D volume, got {image.ndim} dimensions.")
    expected = image.ndim + (1 if image.channels > 1 else 0)
    if image.array.ndim != expected:
        raise InputError(
            f"The image array has shape {image.array.shape} but its geometry is {image.ndim}-D "
            f"with {image.channels} component(s); 4-D and multi-component volumes are not "
            "supported: extract one scalar volume first (e.g. with Slicer's Sequences module)."
        )
    if image.channels > 1 and (image.ndim == 3 or image.channels != 3):
        raise InputError(
            f"CUTS segments scalar images and volumes, and RGB 2-D images; this one has "
            f"{image.channels} components per {'voxel' if image.ndim == 3 else 'pixel'}. "
            "Extract one scalar volume first."
        )
    if image.array.size == 0:
        raise InputError(f"The image is empty (shape {image.array.shape}); load a non-empty image.")


def load_model(
    model: CutsModel | tuple | str | os.PathLike | None, channels: int
) -> tuple[CutsModel, dict[str, Any], dict[str, Any]]:
    loaded = model[0] if isinstance(model, tuple) else model  # tuple: from load_cuts_model
    if isinstance(loaded, CutsModel) and loaded.in_channels != channels:
        raise InputError(
            f"The model takes {loaded.in_channels}-channel images but this image has "
            f"{channels} channel(s); use a {'RGB' if channels == 3 else 'grayscale'} model."
        )
    if isinstance(model, tuple):
        return model
    if isinstance(model, CutsModel):
        from labelfree.cuts.normalise import default_normalisation

        config = {
            "in_channels": model.in_channels,
            "embed_dim": model.embed_dim,
            "normalisation": dict(
                getattr(model, "normalisation", None) or default_normalisation(channels)
            ),
        }
        return model.eval(), config, dict(getattr(model, "card", {}) or {})
    return load_cuts_model(None if model is None else Path(model), channels)


def background_value(slices: np.ndarray, share: float = 0.5) -> np.ndarray | None:
    """The fill value of a masked image, ``(C,)``, or None if it has no constant background.

    The most common value (per channel) on the outer faces of the ``(S, C, H,
    W)`` slices (for one slice, a 2-D image: its four edges), if it covers at
    least ``share`` of them: the zero outside a skull-stripped brain, the
    black of a masked photograph. Noisy backgrounds have none.
    """
    channels = slices.shape[1]
    edges = [slices[:, :, 0], slices[:, :, -1], slices[:, :, :, 0], slices[:, :, :, -1]]
    parts = [e.transpose(1, 0, 2).reshape(channels, -1) for e in edges]  # (S, C, n) -> (C, S*n)
    if slices.shape[0] > 1:
        parts += [slices[0].reshape(channels, -1), slices[-1].reshape(channels, -1)]
    border = np.concatenate(parts, axis=1).T
    values, counts = np.unique(border, axis=0, return_counts=True)
    best = int(np.argmax(counts))
    if counts[best] < share * border.shape[0]:
        return None
    return values[best].astype(np.float32)
