"""Segmentations written to result folders: one case, or a cohort of cases.

One case (:func:`segment_to_folder`) writes into ``DIR``:

- ``level_00.nrrd`` ... one label volume per granularity, coarsest (fewest
  clusters) first, labels ``1..n`` by decreasing size (stored as uint8 or
  uint16 when the labels fit);
- ``persistent.nrrd``: the persistent-structures map (0 = none);
- ``kmeans.nrrd`` with ``method="kmeans"``;
- ``summary.json`` = ``{"levels": [{"file", "clusters", "persistence"}, ...],
  "persistent": file, "kmeans": file or null, "seconds": {...}, "model": {card},
  "input", "axis", "method", "seed", "options"}``;
- ``provenance.json`` (inputs with hashes, parameters, package versions).

All maps keep the input's geometry (spacing, origin, direction), so they
overlay the input in Slicer; a 2-D input (RGB too) gives 2-D label images.
A run writes into a hidden staging folder beside ``DIR`` and swaps it in
when every file is written and read back (:mod:`labelfree.resultdir`):
``DIR`` holds one complete run or the previous one, never a mix.

A cohort (:func:`segment_cohort_steps`) writes one such folder per case,
``DIR/<case>/``, with the model loaded once, and ``DIR/provenance.json``
(:mod:`labelfree.cohort`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Generator, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from labelfree import __version__
from labelfree.cohort import CohortResult, list_cases, run_cohort_steps
from labelfree.errors import InputError
from labelfree.io import Image, check_format_keeps_geometry, read_image, write_image, write_text
from labelfree.progress import Progress, run_steps
from labelfree.provenance import PROVENANCE, file_digest, write_provenance
from labelfree.resultdir import result_folder

SUMMARY = "summary.json"
FORMATS = ("nrrd", "nii.gz", "mha")
_RESULT_FILE = re.compile(r"^(level_\d+|persistent|kmeans)\.(nrrd|nii\.gz|mha)$")


def segment_to_folder(
    input_path: str | Path,
    out: str | Path,
    *,
    model: str | Path | tuple | None = None,
    file_format: str = "nrrd",
    progress=None,
    image: Image | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Segment ``input_path`` and write the label maps and ``summary.json`` into ``out``.

    Parameters
    ----------
    input_path : path-like
        Anything :func:`labelfree.io.read_image` reads.
    out : path-like
        Output folder (created if needed).
    model : path-like or tuple, optional
        CUTS model file, or ``(model, config, card)`` from
        :func:`~labelfree.cuts.model.load_cuts_model`; None uses the bundled model.
    file_format : {"nrrd", "nii.gz", "mha"}
        Label file format.
    progress : callable, optional
        Called with every :class:`~labelfree.progress.Progress`.
    image : Image, optional
        ``input_path`` already read (a cohort reads each case once).
    **options
        Passed to :func:`labelfree.cuts.volume.segment_volume_steps`.

    Returns
    -------
    dict
        The summary written to ``out/summary.json``.
    """
    from labelfree.cuts.volume import segment_volume_steps

    if file_format not in FORMATS:
        raise InputError(f"Unknown format {file_format!r}; choose one of {', '.join(FORMATS)}.")
    image = read_image(input_path) if image is None else image
    check_format_keeps_geometry(image, f"labels.{file_format}")
    with result_folder(out, SUMMARY, _owned) as staging:
        result = run_steps(segment_volume_steps(image, model, **options), progress)
        summary = _write_result(image, result, staging, file_format)
        summary.update(
            input=str(input_path),
            seed=int(options.get("seed", 0)),
            options={key: value for key, value in options.items() if key != "seed"},
        )
        write_provenance(staging, [input_path], summary)
        write_text(staging / SUMMARY, json.dumps(summary, indent=2, default=str))
    return summary


def _owned(name: str) -> bool:
    """Names a segmentation run writes (a folder of only these is a previous result)."""
    return bool(_RESULT_FILE.match(name)) or name in (SUMMARY, PROVENANCE)


def _write_result(image: Image, result, folder: Path, file_format: str) -> dict[str, Any]:
    levels = []
    for index, (labels, count) in enumerate(zip(result.levels, result.n_clusters, strict=True)):
        name = f"level_{index:02d}.{file_format}"
        _write_labels(image, labels, folder / name)
        persistence = result.persistence[index] if index < len(result.persistence) else None
        levels.append({"file": name, "clusters": int(count), "persistence": persistence})
    persistent = f"persistent.{file_format}"
    _write_labels(image, result.persistent, folder / persistent)
    kmeans = None
    if result.kmeans is not None:
        kmeans = f"kmeans.{file_format}"
        _write_labels(image, result.kmeans, folder / kmeans)
    return {
        "levels": levels,
        "persistent": persistent,
        "kmeans": kmeans,
        "seconds": {key: round(float(value), 3) for key, value in result.seconds.items()},
        "model": result.model_card,
        "axis": int(result.axis),
        "method": result.method,
    }


def _write_labels(image: Image, labels: np.ndarray, path: Path) -> None:
    """Write a label map in the input's geometry, as the smallest unsigned type that holds it."""
    top = int(labels.max()) if labels.size else 0
    dtype = np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.int32
    write_image(image.with_array(np.ascontiguousarray(labels, dtype=dtype), channels=1), path)


def segment_cohort_steps(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    file_format: str = "nrrd",
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    **options: Any,
) -> Generator[Progress, None, CohortResult]:
    """Segment every case of a cohort into ``out/<case>/``; yields progress, returns the result.

    Parameters
    ----------
    inputs : path-like or iterable of path-like
        A folder (its image files) or the images.
    out : path-like
        Receives one result folder per case (as :func:`segment_to_folder`) and
        ``provenance.json``.
    model : path-like, optional
        CUTS model file, loaded once per channel count; None uses the bundled models.
    file_format : {"nrrd", "nii.gz", "mha"}
        Label file format.
    overwrite : bool
        Recompute cases whose complete result exists from an earlier run.
    shard : (int, int), optional
        Only every n-th case, as one of n jobs (:func:`labelfree.cohort.run_cohort_steps`).
    **options
        Passed to :func:`labelfree.cuts.volume.segment_volume_steps`.
    """
    from labelfree.cuts.model import load_cuts_model

    if file_format not in FORMATS:
        raise InputError(f"Unknown format {file_format!r}; choose one of {', '.join(FORMATS)}.")
    cases = list_cases(inputs)
    out = Path(out)
    loaded: dict[int, tuple] = {}  # channels -> (model, config, card), loaded once

    def process(case: Path, folder: Path) -> None:
        image = read_image(case)
        if image.channels not in loaded:
            loaded[image.channels] = load_cuts_model(model, image.channels)
        segment_to_folder(
            case,
            folder,
            model=loaded[image.channels],
            file_format=file_format,
            image=image,
            **options,
        )

    parameters = {
        "method": "cuts segment",
        "model": file_digest(model)
        if model is not None
        else f"bundled with labelfree {__version__}",
        "format": file_format,
        **options,
    }
    return (
        yield from run_cohort_steps(
            cases,
            out,
            process,
            lambda name: out / name,
            parameters,
            overwrite=overwrite,
            shard=shard,
            complete=lambda folder: (folder / SUMMARY).is_file(),
            what="Segmenting",
        )
    )


def read_result_folder(folder: str | os.PathLike):
    """A result folder written by :func:`segment_to_folder`, back as a ``VolumeSegmentation``.

    Raises
    ------
    InputError
        The folder holds no complete result.
    """
    return run_steps(read_result_folder_steps(folder))


def read_result_folder_steps(folder: str | os.PathLike):
    """:func:`read_result_folder` one label file per step (a generator of ``Progress``)."""
    from labelfree.cuts.volume import VolumeSegmentation

    folder = Path(folder)
    try:
        summary = json.loads((folder / SUMMARY).read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{folder} holds no complete CUTS result ({SUMMARY} is missing).") from err
    try:
        names = [level["file"] for level in summary["levels"]] + [summary["persistent"]]
        names += [summary["kmeans"]] if summary.get("kmeans") else []
        counts = [int(level["clusters"]) for level in summary["levels"]]
        axis = int(summary["axis"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise InputError(f"{folder / SUMMARY} is not a CUTS summary ({err!r}).") from err
    if not all(isinstance(n, str) and _RESULT_FILE.match(n) for n in names):
        raise InputError(f"{folder / SUMMARY} names files that are not label maps of a result.")
    maps = []
    for number, name in enumerate(names):
        yield Progress(number / len(names), f"Reading {name}")
        maps.append(read_image(folder / name).array.astype(np.int32))
    levels = maps[: len(summary["levels"])]
    return VolumeSegmentation(
        levels=levels,
        n_clusters=counts,
        persistent=maps[len(levels)],
        kmeans=maps[len(levels) + 1] if summary.get("kmeans") else None,
        axis=axis,
        seconds=dict(summary.get("seconds", {})),
        model_card=dict(summary.get("model", {})),
        method=summary.get("method", "levels"),
        persistence=[level.get("persistence") for level in summary["levels"]],
    )
