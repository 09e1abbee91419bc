"""``labelfree cuts segment`` and ``labelfree cuts train``.

``segment`` on one image writes a result folder (label maps, ``summary.json``,
``provenance.json``; see :mod:`labelfree.cuts.folders`); on several images or a
folder of them, one such folder per case and a cohort ``provenance.json``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from labelfree.cliargs import seed, shard
from labelfree.devices import DEVICE_CHOICES
from labelfree.progress import Progress, run_steps

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
    seg.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image or volume (NRRD, NIfTI, MHA, PNG/JPG, DICOM folder), several, or a folder "
        "of them (then DIR/<case>/ per case)",
    )
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
    seg.add_argument(
        "--texture-scale",
        type=float,
        default=0.0,
        metavar="PX",
        help="condense local histograms of embedding words pooled over this many pixels, for "
        "structures told apart by texture (default 0: the embeddings themselves)",
    )
    seg.add_argument(
        "--texture-words", type=int, default=128, help="words of the texture features (default 128)"
    )
    seg.add_argument("--bf16", action="store_true", help="bf16 encoder (GPUs, recent CPUs)")
    seg.add_argument("--format", choices=FORMATS, default="nrrd", help="label file format")
    seg.add_argument("--quiet", action="store_true", help="no progress on stderr")
    seg.add_argument(
        "--overwrite",
        action="store_true",
        help="several inputs: recompute cases whose complete result exists from an earlier run",
    )
    seg.add_argument(
        "--shard",
        type=shard,
        metavar="I/N",
        help="several inputs: only every N-th case, from case I, as job I of N (default under "
        "torchrun: RANK/WORLD_SIZE); the last job to finish merges the records",
    )
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
    train.add_argument(
        "--resume",
        metavar="CKPT",
        help="continue the killed run that left this checkpoint (OUT's .ckpt, same options)",
    )
    train.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out inputs that cannot be read (listed in the model card) instead of stopping",
    )
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


def _segment_main(args: argparse.Namespace) -> int:
    from labelfree.cohort import list_cases, report_cohort, shard_from_environment
    from labelfree.cuts.folders import SUMMARY, segment_cohort_steps, segment_to_folder

    options = dict(
        axis=_axis(args.axis),
        method=args.method,
        k=args.k,
        device=args.device,
        seed=args.seed,
        bf16=args.bf16,
        batch_size=args.batch_size,
        max_levels=args.max_levels,
        texture_scale=args.texture_scale,
        texture_words=args.texture_words,
    )
    progress = _progress_printer("cuts", args.quiet)
    cases = list_cases(args.inputs)
    if len(cases) > 1:
        steps = segment_cohort_steps(
            cases,
            args.out,
            model=args.model,
            file_format=args.format,
            overwrite=args.overwrite,
            shard=args.shard or shard_from_environment(),
            **options,
        )
        return report_cohort(run_steps(steps, progress), args.out)
    summary = segment_to_folder(
        cases[0], args.out, model=args.model, file_format=args.format, progress=progress, **options
    )
    counts = ", ".join(str(level["clusters"]) for level in summary["levels"])
    print(f"{args.out / SUMMARY}: {len(summary['levels'])} levels ({counts} clusters)")
    return 0


def _train_main(args: argparse.Namespace) -> int:
    from labelfree.cuts.train import train_from_files
    from labelfree.distributed import world_from_environment

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
        resume=args.resume,
        skip_bad=args.skip_bad,
    )
    if world_from_environment().main:  # under torchrun, rank 0 speaks for all
        print(path)
    return 0
