"""``labelfree cuts segment`` and ``labelfree cuts train``.

``segment`` writes, into ``--out DIR``:

- ``level_00.nrrd`` ... one label volume per granularity, coarsest (fewest
  clusters) first, labels ``1..n`` by decreasing size (stored as uint8 or
  uint16 when the labels fit);
- ``persistent.nrrd``: the persistent-structures map (0 = none);
- ``kmeans.nrrd`` with ``--method kmeans``;
- ``summary.json`` = ``{"levels": [{"file", "clusters", "persistence"}, ...],
  "persistent": file, "kmeans": file or null, "seconds": {...}, "model": {card},
  "input", "axis", "method", "seed"}``.

All maps keep the input's geometry (spacing, origin, direction), so they
overlay the input in Slicer; a 2-D input (RGB too) gives 2-D label images.
A run writes into a hidden staging folder beside ``DIR`` and swaps it in
when every file is written and read back (see :mod:`labelfree.resultdir`):
``DIR`` holds one complete run or the previous one, never a mix; a
``provenance.json`` (inputs with hashes, parameters, package versions)
sits beside the results.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from labelfree.cliargs import seed
from labelfree.devices import DEVICE_CHOICES
from labelfree.errors import InputError
from labelfree.io import Image, check_format_keeps_geometry, read_image, write_image, write_text
from labelfree.progress import Progress, run_steps
from labelfree.provenance import PROVENANCE, write_provenance
from labelfree.resultdir import result_folder

SUMMARY = "summary.json"
FORMATS = ("nrrd", "nii.gz", "mha")
_RESULT_FILE = re.compile(r"^(level_\d+|persistent|kmeans)\.(nrrd|nii\.gz|mha)$")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``cuts`` with its ``segment`` and ``train`` sub-commands."""
    cuts = subparsers.add_parser(
        "cuts", help="CUTS multi-granular unsupervised segmentation (segment, train)"
    )
    commands = cuts.add_subparsers(dest="cuts_command", required=True)

    seg = commands.add_parser(
        "segment",
        help="segment an image or volume at several granularities",
        description="Write one label map per granularity level (coarsest first), the "
        "persistent-structures map and summary.json into DIR, in the input's geometry.",
    )
    seg.add_argument("input", help="image or volume: NRRD, NIfTI, MHA, PNG/JPG, DICOM folder")
    seg.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    seg.add_argument(
        "--model", type=Path, metavar="FILE", help="CUTS model file (default: bundled)"
    )
    seg.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    seg.add_argument("--seed", type=seed, default=0, help="same seed, same labels (default 0)")
    seg.add_argument(
        "--axis",
        default="auto",
        help="slicing axis: auto/axial, coronal, sagittal, or numpy axis 0, 1, 2 (default auto)",
    )
    seg.add_argument("--method", choices=("levels", "persistent", "kmeans"), default="levels")
    seg.add_argument("--k", type=int, default=10, help="clusters of spectral k-means (default 10)")
    seg.add_argument("--max-levels", type=int, default=12, help="most levels kept (default 12)")
    seg.add_argument("--batch-size", type=int, default=8, help="slices per encoder pass")
    seg.add_argument("--bf16", action="store_true", help="bf16 encoder (GPUs, recent CPUs)")
    seg.add_argument("--format", choices=FORMATS, default="nrrd", help="label file format")
    seg.add_argument("--quiet", action="store_true", help="no progress on stderr")
    seg.set_defaults(func=_segment_main)

    train = commands.add_parser(
        "train",
        help="train a CUTS encoder on unlabelled images or volumes",
        description="Train the CUTS encoder (contrastive + patch reconstruction) and write a "
        "model file with its model card.",
    )
    train.add_argument("inputs", nargs="+", metavar="INPUT", help="images or volumes")
    train.add_argument("--out", required=True, type=Path, metavar="FILE", help="model file (.pt)")
    train.add_argument("--epochs", type=int, default=40)
    train.add_argument("--seed", type=seed, default=0)
    train.add_argument("--axis", type=int, choices=(0, 1, 2), help="numpy slicing axis of volumes")
    train.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    train.add_argument(
        "--init-model", metavar="FILE", help="fine-tune this model ('default': the bundled one)"
    )
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--quiet", action="store_true", help="no progress on stderr")
    train.set_defaults(func=_train_main)


def _progress_printer(stage: str, quiet: bool):
    if quiet:
        return None
    last = {"message": None}

    def report(progress: Progress) -> None:
        if progress.message == last["message"] and progress.fraction < 1.0:
            return
        last["message"] = progress.message
        print(f"[{stage}] {100 * progress.fraction:5.1f}% {progress.message}", file=sys.stderr)

    return report


def _axis(value: str) -> int | str:
    return int(value) if value.lstrip("-").isdigit() else value


def segment_to_folder(
    input_path: str | Path,
    out: str | Path,
    *,
    model: str | Path | None = None,
    file_format: str = "nrrd",
    progress=None,
    **options: Any,
) -> dict[str, Any]:
    """Segment ``input_path`` and write the label maps and ``summary.json`` into ``out``.

    Parameters
    ----------
    input_path : path-like
        Anything :func:`labelfree.io.read_image` reads.
    out : path-like
        Output folder (created if needed).
    model : path-like, optional
        CUTS model file; None uses the bundled model.
    file_format : {"nrrd", "nii.gz", "mha"}
        Label file format.
    progress : callable, optional
        Called with every :class:`~labelfree.progress.Progress`.
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
    image = read_image(input_path)
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


def _segment_main(args: argparse.Namespace) -> int:
    summary = segment_to_folder(
        args.input,
        args.out,
        model=args.model,
        file_format=args.format,
        progress=_progress_printer("cuts", args.quiet),
        axis=_axis(args.axis),
        method=args.method,
        k=args.k,
        device=args.device,
        seed=args.seed,
        bf16=args.bf16,
        batch_size=args.batch_size,
        max_levels=args.max_levels,
    )
    counts = ", ".join(str(level["clusters"]) for level in summary["levels"])
    print(f"{args.out / SUMMARY}: {len(summary['levels'])} levels ({counts} clusters)")
    return 0


def _train_main(args: argparse.Namespace) -> int:
    from labelfree.cuts.train import train_from_files

    path = train_from_files(
        args.inputs,
        args.out,
        epochs=args.epochs,
        seed=args.seed,
        axis=args.axis,
        device=args.device,
        init_model=args.init_model,
        progress=_progress_printer("train", args.quiet),
        batch_size=args.batch_size,
    )
    print(path)
    return 0
