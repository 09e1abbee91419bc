"""Normalised training slices kept on disk and read back per batch.

A cohort of hundreds of volumes does not fit in memory, but the slices CUTS trains on are read
a few 17 x 17 windows at a time. :class:`SliceStore` writes each image's normalised slices to a
``.npy`` file in a scratch folder and maps it back read-only, so memory holds only the windows
of the current batch (and whatever the operating system caches).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from labelfree.errors import OutputError


class SliceStore:
    """Slices ``(C, H, W)`` float32 of several images, in ``.npy`` files under ``folder``.

    Parameters
    ----------
    folder : path-like
        A folder of its own (emptied first: what a killed run left is discarded).
    in_channels : int
        1 or 3.
    normalisation : dict
        How the slices were normalised (:mod:`labelfree.cuts.normalise`).

    Attributes
    ----------
    slices : list of ndarray
        Read-only memory-mapped ``(C, H, W)`` slices, in the order they were added.
    skipped : int
        Constant slices left out.
    """

    def __init__(self, folder: str | os.PathLike, in_channels: int, normalisation: dict):
        self.folder = Path(folder)
        self.in_channels = in_channels
        self.normalisation = dict(normalisation)
        self.slices: list[np.ndarray] = []
        self.skipped = 0
        self.remove()
        self.folder.mkdir(parents=True)

    def add(self, stack: np.ndarray, skipped: int = 0) -> None:
        """Store one image's ``(S, C, H, W)`` slices (``S`` may be 0) and count its skipped."""
        self.skipped += skipped
        if len(stack) == 0:
            return
        path = self.folder / f"{len(list(self.folder.iterdir())):06d}.npy"
        try:
            np.save(path, np.ascontiguousarray(stack, dtype=np.float32))
        except OSError as err:
            raise OutputError(
                f"Could not write training slices to {self.folder} ({err}); free some space "
                "there or write the model to a larger disk."
            ) from err
        self.slices.extend(np.load(path, mmap_mode="r"))

    def remove(self) -> None:
        """Delete the folder and its files (the maps in ``slices`` become unusable)."""
        self.slices = []
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> SliceStore:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
