"""``labelfree landmarks train | detect | importance``.

- ``train INPUT... --out FILE --landmarks K``: trains a regressor on the
  images, then measures and stores each landmark's importance in the model.
- ``detect INPUT --model FILE --out FILE(.mrk.json|.fcsv|.csv)``: points in the
  input's physical space, named ``LM-01``..., importance in each point's
  description (markups) or its own column (CSV). With several inputs or a
  folder of images, ``--out`` is a folder: one file per input and one table.
- ``importance MODEL INPUT...``: (re)computes and stores importance.
- ``carry FROM TO --points FILE | --labels FILE --out FILE``: detects the landmarks on
  both images and carries points (a markups file) or a label map from FROM to TO
  through them (:mod:`labelfree.landmarks.registration`); a label map comes out on TO's
  grid.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from labelfree.cliargs import seed, shard
from labelfree.cohort import list_cases, report_cohort, shard_from_environment
from labelfree.devices import DEVICE_CHOICES
from labelfree.errors import InputError, LabelFreeError
from labelfree.markups import MARKUPS_SUFFIXES, markups_format

BATCH_TABLE = "landmarks.csv"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``landmarks`` and its sub-commands to the ``labelfree`` parser."""
    parser = subparsers.add_parser(
        "landmarks",
        help="self-supervised landmark discovery",
        description="Train a landmark regressor without labels; detect landmarks for shape analysis.",
    )
    commands = parser.add_subparsers(dest="landmarks_command", required=True)
    _add_train(commands)
    _add_detect(commands)
    _add_importance(commands)
    _add_carry(commands)


def _add_train(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train",
        help="train a landmark model on unlabeled images",
        description="Train on roughly aligned images (all 2-D or all 3-D), then rank landmarks.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="images or volumes (2 or more)")
    p.add_argument("--out", required=True, type=Path, help="model file to write (.pt)")
    p.add_argument("--landmarks", required=True, type=int, metavar="K", help="learned landmarks")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--input-size", type=int, default=None, help="network input side (px)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument(
        "--equivariance",
        type=float,
        default=0.0,
        metavar="W",
        help=(
            "weight of the warp-equivariance term (0: off). Landmarks then follow the anatomy "
            "much more closely (bundled models: 3000 in 2-D, 300 in 3-D) at twice the "
            "training time"
        ),
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out inputs that cannot be read (listed in the model card) instead of stopping",
    )
    p.add_argument(
        "--resume",
        metavar="CKPT",
        help="continue the killed run that left this checkpoint (OUT's .ckpt, same options)",
    )
    p.add_argument(
        "--importance-pairs",
        type=int,
        default=64,
        metavar="N",
        help="image pairs for landmark importance after training (0: skip)",
    )
    p.set_defaults(func=_train)


def _add_detect(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "detect",
        help="detect landmarks on images",
        description=(
            "Detect landmarks; points are in each input's physical space (RAS in the files "
            "Slicer reads; .mrk.json stores LPS as Slicer does)."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image, volume, or folder of them")
    p.add_argument("--model", type=Path, default=None, help="landmark model (default: bundled)")
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="landmark file (.mrk.json, .fcsv or .csv); a folder for several inputs",
    )
    p.add_argument("--keep", type=int, default=None, metavar="N", help="keep the N most important")
    p.add_argument(
        "--min-importance", type=float, default=None, metavar="F", help="keep importance >= F"
    )
    p.add_argument(
        "--format",
        choices=[s[1:] for s in MARKUPS_SUFFIXES],
        default="mrk.json",
        help="file type per input in batch mode",
    )
    p.add_argument(
        "--table", type=Path, default=None, help=f"batch table (default OUT/{BATCH_TABLE})"
    )
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="batch: recompute cases whose landmark file exists from an earlier run",
    )
    p.add_argument(
        "--shard",
        type=shard,
        metavar="I/N",
        help="several inputs: only every N-th case, from case I, as job I of N (default under "
        "torchrun: RANK/WORLD_SIZE); the last job to finish merges the records",
    )
    p.set_defaults(func=_detect)


def _add_importance(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "importance",
        help="measure and store landmark importance in a model",
        description="Importance of each landmark (default: its precision under random warps), "
        "stored in MODEL.",
    )
    p.add_argument("model", type=Path, metavar="MODEL")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="images (2 or more)")
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--method", choices=("precision", "increase", "reference"), default="precision")
    p.set_defaults(func=_importance)


def _add_carry(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "carry",
        help="carry points or a label map from one image to another through the landmarks",
        description=(
            "Detect the landmarks on FROM and TO and carry points or a label map of FROM to "
            "TO through them, in physical space (a smoothing thin-plate spline by default)."
        ),
    )
    p.add_argument("source", type=Path, metavar="FROM", help="image the points or labels are on")
    p.add_argument("target", type=Path, metavar="TO", help="image to carry them to")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--points", type=Path, help="points of FROM (.mrk.json, .fcsv or .csv)")
    what.add_argument("--labels", type=Path, help="label map in FROM's space (.nrrd, .nii.gz...)")
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="carried points (.mrk.json, .fcsv, .csv) or label map (on TO's grid)",
    )
    p.add_argument("--model", type=Path, default=None, help="landmark model (default: bundled)")
    p.add_argument("--transform", choices=("tps", "affine"), default="tps")
    p.add_argument(
        "--smoothing",
        default="auto",
        metavar="LAMBDA",
        help="spline smoothing (0: through every landmark); default auto (cross-validated)",
    )
    p.add_argument(
        "--equal-weights",
        action="store_true",
        help="trust every landmark alike (default: weight by the model's precision importance)",
    )
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.set_defaults(func=_carry)


class _Reporter:
    """Prints progress to stderr at most every two seconds."""

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self, report) -> None:
        now = time.monotonic()
        if now - self.last >= 2.0 or report.fraction >= 1.0:
            self.last = now
            print(f"[{100 * report.fraction:5.1f}%] {report.message}", file=sys.stderr)


def _read_prepared(paths: list[Path], model, skip_bad: bool = False) -> list:
    """The images at ``model``'s input size, read one at a time (a cohort may not fit in
    memory whole); the same arrays importance would make of the full images."""
    from labelfree.landmarks.model import load_landmark_model
    from labelfree.landmarks.train import prepare_training_image
    from labelfree.trainingdata import read_training_images

    _, config, _ = load_landmark_model(model)

    def prepare(path, image):
        return prepare_training_image(image, config["ndim"], config["input_size"]).array

    return read_training_images(paths, prepare, skip_bad=skip_bad)[1]


def _train(args: argparse.Namespace) -> int:
    from labelfree.distributed import world_from_environment
    from labelfree.landmarks.redundancy import store_importance
    from labelfree.landmarks.train import train_from_files

    if args.importance_pairs < 0:
        raise InputError("--importance-pairs must be 0 (skip) or more.")
    paths = [Path(p) for p in args.inputs]
    out = train_from_files(
        paths,
        args.out,
        n_landmarks=args.landmarks,
        epochs=args.epochs,
        seed=args.seed,
        input_size=args.input_size,
        device=args.device,
        progress=_Reporter(),
        equivariance=args.equivariance,
        resume=args.resume,
        skip_bad=args.skip_bad,
    )
    if not world_from_environment().main:
        return 0  # under torchrun, rank 0 speaks for all and measures importance
    print(f"model: {out}")
    if args.importance_pairs == 0:
        return 0
    try:
        images = _read_prepared(paths, out, skip_bad=args.skip_bad)
        importance = store_importance(out, images, args.importance_pairs, args.seed)
    except LabelFreeError as err:
        # The trained model is worth keeping; importance can be measured later.
        print(
            f"labelfree: warning: model kept without landmark importance ({err}); run "
            f"`labelfree landmarks importance {out} INPUT...` later.",
            file=sys.stderr,
        )
        return 0
    print(f"importance stored: {int((importance >= 0.1).sum())}/{len(importance)} landmarks >= 0.1")
    return 0


def _detect(args: argparse.Namespace) -> int:
    from labelfree.io import read_image
    from labelfree.landmarks.detect import detect_cohort_steps, detect_landmarks
    from labelfree.progress import run_steps

    paths = list_cases(args.inputs)
    # One input (a file, a DICOM folder, or a folder holding one image) and a file name: one file.
    single = len(paths) == 1 and args.out.suffix != "" and not args.out.is_dir()
    if single:
        markups_format(args.out)  # refuse an unknown suffix before any work
        landmarks = detect_landmarks(
            read_image(paths[0]),
            args.model,
            keep=args.keep,
            min_importance=args.min_importance,
            device=args.device,
        )
        landmarks.write(args.out, name=args.out.name.split(".")[0])
        print(f"{len(landmarks)} landmarks -> {args.out}")
        return 0
    if (args.out.exists() and not args.out.is_dir()) or args.out.name.lower().endswith(
        MARKUPS_SUFFIXES
    ):
        raise InputError(
            f"--out {args.out} must be a folder when detecting on several inputs "
            "(one landmark file per input is written into it, plus a table)."
        )
    steps = detect_cohort_steps(
        paths,
        args.out,
        args.model,
        suffix="." + args.format,
        table=args.table or args.out / BATCH_TABLE,
        keep=args.keep,
        min_importance=args.min_importance,
        device=args.device,
        overwrite=args.overwrite,
        shard=args.shard or shard_from_environment(),
    )
    result = run_steps(steps, _Reporter())
    return report_cohort(result, args.out)


def _importance(args: argparse.Namespace) -> int:
    from labelfree.landmarks.detect import landmark_names
    from labelfree.landmarks.redundancy import store_importance

    images = _read_prepared(list_cases(args.inputs), args.model)
    importance = store_importance(args.model, images, args.pairs, args.seed, method=args.method)
    names = landmark_names(len(importance))
    ranked = sorted(enumerate(importance), key=lambda kv: -kv[1])
    print(", ".join(f"{names[k]}={v:.3f}" for k, v in ranked))
    return 0


def _carry(args: argparse.Namespace) -> int:
    from labelfree.io import check_format_keeps_geometry, read_image, write_image
    from labelfree.landmarks import registration
    from labelfree.markups import read_markups, write_markups
    from labelfree.progress import run_steps

    if args.points is not None:
        markups_format(args.out)  # refuse an unknown suffix before any work
    source, target = read_image(args.source), read_image(args.target)
    labels = read_image(args.labels) if args.labels is not None else None
    if labels is not None:
        check_format_keeps_geometry(target, args.out)
    found_from, found_to, weights = registration.landmark_pairs(
        source, target, args.model, args.device
    )
    options = {
        "kind": args.transform,
        "smoothing": args.smoothing,
        "weights": None if args.equal_weights else weights,
    }
    transform = registration.fit_landmark_transform(found_from, found_to, **options)
    print(
        f"{len(found_from)} landmarks, {transform.kind} transform"
        + (f", smoothing {transform.smoothing:.3g}" if transform.kind == "tps" else "")
    )
    if labels is not None:
        carried = run_steps(
            registration.carry_label_map_steps(labels, found_from, found_to, target, **options),
            _Reporter(),
        )
        write_image(carried, args.out)
        print(f"label map on {args.target.name}'s grid -> {args.out}")
        return 0
    points, names, _ = read_markups(args.points)
    moved = transform(_points_of_dimension(points, source.ndim, args.points))
    write_markups(args.out, moved, names, name=args.out.name.split(".")[0])
    print(f"{len(names)} points -> {args.out}")
    return 0


def _points_of_dimension(points, ndim: int, path: Path):
    """LPS points ``(N, 3)`` from a markups file as ``(N, ndim)``; 2-D images need S = 0."""
    import numpy as np

    if len(points) == 0:
        raise InputError(f"{path} holds no points to carry.")
    if not np.isfinite(points).all():
        raise InputError(f"{path} has points without a position; place or delete them first.")
    if ndim == 2:
        if not np.allclose(points[:, 2], 0, atol=1e-6):
            raise InputError(
                f"{path} has points off the image plane (S != 0) and FROM is a 2-D image."
            )
        return points[:, :2]
    return points
