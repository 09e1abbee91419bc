"""A CUTS model (encoder + reconstruction head) and its model file.

The file is a :mod:`labelfree.modelfile` of kind ``"cuts"``; its ``config``
holds ``in_channels``, ``embed_dim`` and ``normalisation`` (a dict
:func:`labelfree.cuts.normalise.normalise` understands), plus the training
parameters for reference. Bundled defaults: ``cuts_mr.pt`` (1 channel, MNI152
T1 slices) and ``cuts_rgb.pt`` (3 channels, a fundus photograph).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from labelfree.cuts.encoder import CutsEncoder, PatchHead
from labelfree.cuts.normalise import default_normalisation, valid_normalisation
from labelfree.errors import InputError, ModelFileError
from labelfree.modelfile import (
    ModelFile,
    bundled_model_path,
    check_fields,
    load_model,
    save_model,
    whole_in,
)

KIND = "cuts"
DEFAULT_MODELS = {1: "cuts_mr.pt", 3: "cuts_rgb.pt"}
_CHANNEL_WORDS = {1: "grayscale", 3: "RGB"}


class CutsModel(nn.Module):
    """The encoder with its patch-reconstruction head.

    Calling the model embeds images: ``(B, C, H, W) -> (B, embed_dim, H, W)``.

    Parameters
    ----------
    in_channels : int
        1 (scalar) or 3 (RGB).
    embed_dim : int
        Embedding length per pixel.
    """

    def __init__(self, in_channels: int, embed_dim: int = 128):
        super().__init__()
        self.in_channels = int(in_channels)
        self.embed_dim = int(embed_dim)
        self.encoder = CutsEncoder(in_channels, embed_dim)
        self.head = PatchHead(embed_dim, in_channels)

    def forward(self, x: torch.Tensor, padded: bool = True) -> torch.Tensor:
        """Embed every pixel; see :meth:`CutsEncoder.forward`."""
        return self.encoder(x, padded=padded)


def model_config(model: CutsModel, normalisation: dict[str, Any] | None = None) -> dict[str, Any]:
    """The minimal config that rebuilds ``model`` (default normalisation if none given)."""
    return {
        "in_channels": model.in_channels,
        "embed_dim": model.embed_dim,
        "normalisation": dict(normalisation or default_normalisation(model.in_channels)),
    }


def save_cuts_model(
    path: str | os.PathLike, model: CutsModel, config: dict[str, Any], card: dict[str, Any]
) -> Path:
    """Write ``model`` as a ``"cuts"`` model file (atomic, with a ``.card.json`` sidecar).

    ``config`` must hold ``normalisation``; ``in_channels`` and ``embed_dim``
    are taken from the model.
    """
    if "normalisation" not in config:
        raise InputError("A CUTS model config needs its 'normalisation'.")
    config = {**config, "in_channels": model.in_channels, "embed_dim": model.embed_dim}
    card = {"input_channels": model.in_channels, **card}
    return save_model(path, ModelFile(KIND, config, card, model.state_dict()))


def _channel_mismatch(path: Path, model_channels: int, channels: int) -> InputError:
    have = _CHANNEL_WORDS.get(model_channels, f"{model_channels}-channel")
    want = _CHANNEL_WORDS.get(channels, f"{channels}-channel")
    default = DEFAULT_MODELS.get(channels)
    hint = f", or leave the model out to use the bundled {default}" if default else ""
    return InputError(
        f"{path.name} is {_article(have)} {have} model ({model_channels} channel(s)) but the "
        f"image is {want} ({channels} channel(s)); use {_article(want)} {want} model{hint}."
    )


def _article(word: str) -> str:
    return "an" if word[0] in "AEIOUR8" else "a"


CONFIG_SCHEMA = {
    "in_channels": (lambda v: v in (1, 3) and not isinstance(v, bool), "1 (grey) or 3 (RGB)"),
    "embed_dim": (whole_in(1, 4096), "a whole number from 1 to 4096"),
    "normalisation": (valid_normalisation, "a normalisation (see labelfree.cuts.normalise)"),
}
"""What :func:`load_cuts_model` requires of a CUTS model's ``config``."""


def load_cuts_model(
    path: str | os.PathLike | None, channels: int | None = None
) -> tuple[CutsModel, dict[str, Any], dict[str, Any]]:
    """Load a CUTS model file, or the bundled default for a channel count.

    Parameters
    ----------
    path : path-like or None
        A ``"cuts"`` model file; None picks the bundled default for
        ``channels`` (``cuts_mr.pt`` for 1, ``cuts_rgb.pt`` for 3).
    channels : int, optional
        Channels of the image to segment; a model for another count is refused.

    Returns
    -------
    model : CutsModel
        On the CPU, in eval mode.
    config : dict
        ``in_channels``, ``embed_dim``, ``normalisation``, ...
    card : dict
        The model card.

    Raises
    ------
    ModelFileError
        Missing, corrupted, foreign or non-CUTS file, or weights that do not fit.
    InputError
        The model's channel count does not match ``channels``.
    """
    if path is None:
        if channels not in DEFAULT_MODELS:
            raise InputError(
                f"No bundled CUTS model for {channels}-channel images; CUTS takes grayscale "
                "(1 channel) or RGB (3 channels)."
            )
        path = bundled_model_path(DEFAULT_MODELS[channels])
    path = Path(path)
    file = load_model(path, kind=KIND)
    config = file.config
    check_fields(path, config, CONFIG_SCHEMA, "config")
    in_channels, embed_dim = config["in_channels"], config["embed_dim"]
    normalisation = dict(config["normalisation"])
    model = CutsModel(in_channels, embed_dim)
    if channels is not None and channels != in_channels:
        raise _channel_mismatch(path, in_channels, channels)
    try:
        model.load_state_dict(file.state_dict, strict=True)
    except (RuntimeError, KeyError) as err:
        raise ModelFileError(
            f"The weights in {path} do not fit a CUTS encoder ({in_channels} channels, "
            f"{embed_dim}-d); the file is damaged or from another program. Retrain it."
        ) from err
    config = {**config, "normalisation": normalisation}
    return model.eval(), config, file.card
