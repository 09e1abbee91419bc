"""Reading a training cohort one file at a time: every file checked, by name, before training.

A cohort can be larger than memory. The trainers therefore never hold the images they read:
each file is read, turned by the trainer's ``prepare`` into what it trains on (CUTS: normalised
slices in files on disk; landmarks: a small resampled copy), and let go before the next. What
that needs is estimated from the headers, and refused with a message, before anything is read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import SimpleITK as sitk

from labelfree.errors import InputError
from labelfree.io import Image, read_image
from labelfree.progress import Progress
from labelfree.provenance import file_digest
from labelfree.system import available_memory, free_disk

Prepared = TypeVar("Prepared")

MEMORY_FACTOR = 4
"""Preparing one image holds about four float32 copies of it (ITK's buffer, the array, its
normalised copy, the slices); the largest image sets the peak."""


def begin_training(
    out: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    prepare: Callable[[Path, Image], Prepared],
    *,
    resident_bytes: Callable[[int], int] | None = None,
    scratch: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    skip_bad: bool = False,
    progress: Callable[[Progress], None] | None = None,
) -> tuple[Path, list[Path], list[Prepared], dict]:
    """What both trainers do before training: check ``out``, keep a killed run's checkpoint,
    read and prepare the images (:func:`read_training_images`). Returns ``out`` and what that
    returns."""
    from labelfree.checkpoint import refuse_overwriting_a_checkpoint
    from labelfree.modelfile import check_training_output

    out = check_training_output(out, paths)
    refuse_overwriting_a_checkpoint(out, resume)
    return (
        out,
        *read_training_images(
            paths,
            prepare,
            resident_bytes=resident_bytes,
            scratch=scratch,
            skip_bad=skip_bad,
            progress=progress,
        ),
    )


def read_training_images(
    paths: Sequence[str | os.PathLike],
    prepare: Callable[[Path, Image], Prepared],
    *,
    resident_bytes: Callable[[int], int] | None = None,
    scratch: str | os.PathLike | None = None,
    skip_bad: bool = False,
    progress: Callable[[Progress], None] | None = None,
) -> tuple[list[Path], list[Prepared], dict]:
    """Read every training file once, one at a time, and keep only what ``prepare`` makes of it.

    Parameters
    ----------
    paths : sequence of path-like
        The training files.
    prepare : callable
        ``prepare(path, image)`` turns an image into what the trainer keeps; the image itself
        is dropped afterwards. It may raise :class:`InputError` for an image it cannot use.
    resident_bytes : callable, optional
        Bytes of memory that what ``prepare`` returns keeps for an image of that many
        spatial dimensions (2 or 3); None: nothing.
    scratch : path-like, optional
        The folder where ``prepare`` writes float32 copies of the images' values (checked
        for free space: 4 bytes per value).
    skip_bad : bool
        Leave out files that cannot be read or prepared (reported through ``progress`` and
        in the record) instead of stopping.
    progress : callable, optional
        Receives a :class:`Progress` with the estimate, per file read, and per file left out.

    Returns
    -------
    kept : list of Path
        The files read.
    prepared : list
        What ``prepare`` made of each.
    record : dict
        For the model card: ``data`` (file, bytes, SHA-256 of each file read),
        ``skipped_inputs`` (file and reason), ``memory_estimate_bytes`` and
        ``scratch_estimate_bytes``.

    Raises
    ------
    InputError
        A file cannot be read or prepared (without ``skip_bad``), none can, or the estimate
        does not fit in the memory or the scratch disk available.
    """
    paths = [Path(p) for p in paths]
    needs = estimate_needs(paths, resident_bytes=resident_bytes, scratch=scratch)
    _report(progress, _describe(needs, len(paths)))
    kept, prepared, skipped = [], [], []
    for i, path in enumerate(paths):
        try:
            prepared.append(prepare(path, read_image(path)))
        except InputError as err:
            if not skip_bad:
                raise InputError(
                    f"Training input {path.name}: {err} Fix or remove it, or pass --skip-bad "
                    "to train without such files."
                ) from err
            skipped.append({"file": str(path), "reason": str(err)})
            _report(progress, f"skipped {path.name}: {err}")
            continue
        kept.append(path)
        _report(progress, f"read {path.name} ({i + 1} of {len(paths)})")
    if not prepared:
        raise InputError("None of the training inputs could be read; see the reasons above.")
    record = {
        "data": [file_digest(path) for path in kept],
        "skipped_inputs": skipped,
        "memory_estimate_bytes": needs["memory"],
        "scratch_estimate_bytes": needs["scratch"],
    }
    return kept, prepared, record


def estimate_needs(
    paths: Sequence[Path],
    *,
    resident_bytes: Callable[[int], int] | None = None,
    scratch: str | os.PathLike | None = None,
) -> dict[str, int]:
    """Memory and scratch disk a cohort needs, from the files' headers alone.

    Parameters
    ----------
    paths : sequence of Path
        The training files; those whose header cannot be read are left to the reader.
    resident_bytes : callable, optional
        Bytes each prepared image keeps in memory, from its spatial dimensions.
    scratch : path-like, optional
        Where 4 bytes per value are written; None: nothing is.

    Returns
    -------
    dict
        ``memory`` and ``scratch`` in bytes.

    Raises
    ------
    InputError
        Either does not fit in what is available now.
    """
    headers = [_header(path) for path in paths]
    values = [count for count, _ in headers]
    kept = sum(resident_bytes(dims) for _, dims in headers if dims) if resident_bytes else 0
    memory = MEMORY_FACTOR * 4 * max(values, default=0) + kept
    on_disk = 4 * sum(values) if scratch is not None else 0
    available = available_memory()
    if available is not None and memory > available:
        raise InputError(
            f"Training on these {len(paths)} images needs about {_gib(memory)} of memory and "
            f"{_gib(available)} is available; train on fewer or smaller images (crop or "
            "downsample them first)."
        )
    free = None if scratch is None else free_disk(Path(scratch).parent)
    if free is not None and on_disk > free:
        raise InputError(
            f"Training on these {len(paths)} images writes about {_gib(on_disk)} of prepared "
            f"slices beside the model ({Path(scratch).parent}) and {_gib(free)} is free; free "
            "some space or write the model to a larger disk."
        )
    return {"memory": memory, "scratch": on_disk}


def _header(path: Path) -> tuple[int, int]:
    """Voxels times components, and spatial dimensions, that ``path``'s header declares
    (0, 0 if it cannot be read)."""
    if not path.is_file():
        return 0, 0  # a folder (DICOM), or a pipe ITK would block on: read_image decides
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return 0, 0  # a damaged file: read_image checks it and says why
    size = [int(side) for side in reader.GetSize()]
    count = max(1, reader.GetNumberOfComponents())
    for side in size:
        count *= side
    return count, sum(side > 1 for side in size)


def _describe(needs: dict[str, int], count: int) -> str:
    text = f"{count} training files: about {_gib(needs['memory'])} of memory"
    if needs["scratch"]:
        text += f" and {_gib(needs['scratch'])} of scratch disk"
    return text


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**27 else f"{nbytes / 2**20:.1f} MiB"


def _report(progress, message: str) -> None:
    if progress is not None:
        progress(Progress(0.0, message))  # reading comes before the trainer's own 0 to 1
