"""Reading a training cohort: every file checked, by name, before any training starts."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from labelfree.errors import InputError
from labelfree.io import Image, read_image
from labelfree.progress import Progress
from labelfree.provenance import file_digest
from labelfree.system import available_memory

MEMORY_FACTOR = 4
"""Training holds about four float32 copies of its images (raw, normalised, stacked, batches)."""


def begin_training(
    out: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    *,
    resume: str | os.PathLike | None = None,
    skip_bad: bool = False,
    progress: Callable[[Progress], None] | None = None,
) -> tuple[Path, list[Path], list[Image], dict]:
    """What both trainers do before training: check ``out``, keep a killed run's checkpoint,
    read the images (:func:`read_training_images`). Returns ``out`` and what that returns."""
    from labelfree.checkpoint import refuse_overwriting_a_checkpoint
    from labelfree.modelfile import check_training_output

    out = check_training_output(out, paths)
    refuse_overwriting_a_checkpoint(out, resume)
    return (out, *read_training_images(paths, skip_bad=skip_bad, progress=progress))


def read_training_images(
    paths: Sequence[str | os.PathLike],
    *,
    skip_bad: bool = False,
    progress: Callable[[Progress], None] | None = None,
) -> tuple[list[Path], list[Image], dict]:
    """Read every training file; a bad one stops the run here, or is left out with ``skip_bad``.

    Parameters
    ----------
    paths : sequence of path-like
        The training files.
    skip_bad : bool
        Leave out files that cannot be read (reported through ``progress`` and in the
        record) instead of stopping.
    progress : callable, optional
        Receives a :class:`Progress` for every file left out.

    Returns
    -------
    kept : list of Path
        The files read.
    images : list of Image
        Their images.
    record : dict
        For the model card: ``data`` (file, bytes, SHA-256 of each file read),
        ``skipped_inputs`` (file and reason) and ``memory_estimate_bytes``.

    Raises
    ------
    InputError
        A file cannot be read (without ``skip_bad``), none can, or the images would not
        fit in memory.
    """
    kept, images, skipped = [], [], []
    for path in map(Path, paths):
        try:
            images.append(read_image(path))
        except InputError as err:
            if not skip_bad:
                raise InputError(
                    f"Training input {path.name}: {err} Fix or remove it, or pass --skip-bad "
                    "to train without such files."
                ) from err
            skipped.append({"file": str(path), "reason": str(err)})
            if progress is not None:
                progress(Progress(0.0, f"skipped {path.name}: {err}"))
            continue
        kept.append(path)
    if not images:
        raise InputError("None of the training inputs could be read; see the reasons above.")
    needed = MEMORY_FACTOR * 4 * sum(int(image.array.size) for image in images)
    available = available_memory()
    if available is not None and needed > available:
        raise InputError(
            f"Training on these {len(images)} images needs about {needed / 2**30:.1f} GiB of "
            f"memory and {available / 2**30:.1f} GiB is available; train on fewer images, or "
            "crop or downsample them first."
        )
    record = {
        "data": [file_digest(path) for path in kept],
        "skipped_inputs": skipped,
        "memory_estimate_bytes": needed,
    }
    return kept, images, record
