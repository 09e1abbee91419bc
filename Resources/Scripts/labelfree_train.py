"""LabelFree's long work, headless: train a CUTS encoder or a landmark regressor, or segment.

Runs the same way in three places::

    Slicer --no-splash --no-main-window --python-script labelfree_train.py cuts IMG... --out M.pt
    PythonSlicer labelfree_train.py landmarks IMG... --out M.pt --landmarks 12
    python labelfree_train.py cuts IMG... --out M.pt --epochs 2      # with `labelfree` installed
    PythonSlicer labelfree_train.py segment IMG --out DIR --method levels
    PythonSlicer labelfree_train.py detect FOLDER --out DIR --model M.pt

Training writes the model file and its ``<name>.card.json`` model card
atomically (nothing appears unless training finished); ``segment`` writes a
CUTS result folder (:mod:`labelfree.cuts.folders`), whole or not at all;
``detect`` a cohort's landmark files and table (:mod:`labelfree.cohort`). The
modules run ``segment`` and ``detect`` so that long work never holds Slicer's
main thread. While it runs it prints lines a parent process reads::

    PROGRESS <fraction 0..1> <message>
    RESULT <path of the model file or result folder>

Exit status: 0 done, 2 bad input or model file (the message is on stderr,
prefixed ``ERROR``), 130 cancelled (SIGINT/SIGTERM), 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 130


def _makeEngineImportable() -> None:
    """Put the folder holding the ``labelfree`` package on ``sys.path``.

    Installed, this script lives in ``<qt-scripted-modules>/Resources/Scripts`` and the
    engine in ``<qt-scripted-modules>/labelfree``; in the source tree the engine is at the
    repository root. PythonSlicer does not add extension folders to ``sys.path`` itself.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here.parent.parent, here.parent):
        if (candidate / "labelfree" / "__init__.py").is_file():
            if str(candidate) not in sys.path:
                sys.path.insert(0, str(candidate))
            return


def buildParser() -> argparse.ArgumentParser:
    """The command line: ``{cuts,landmarks} INPUT... --out FILE [options]``."""
    from labelfree.cliargs import seed

    parser = argparse.ArgumentParser(
        prog="labelfree_train.py",
        description="Train a LabelFree model on unlabeled images (headless).",
    )
    methods = parser.add_subparsers(dest="task", required=True)

    def common(sub):
        sub.add_argument("inputs", nargs="+", type=Path, help="images or volumes to learn from")
        sub.add_argument("--out", required=True, type=Path, help="model file to write (.pt)")
        sub.add_argument("--epochs", type=int, default=None, help="training epochs")
        sub.add_argument("--seed", type=seed, default=0, help="random seed (repeatable runs)")
        sub.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
        sub.add_argument("--skip-bad", action="store_true", help="leave out unreadable inputs")

    cuts = methods.add_parser("cuts", help="CUTS encoder (contrastive + reconstruction)")
    common(cuts)
    cuts.add_argument(
        "--axis", default="auto", help="slicing axis: auto, 0, 1 or 2 (numpy z, y, x)"
    )
    cuts.add_argument(
        "--init-model", default=None, help="fine-tune this model file ('default': the bundled one)"
    )
    cuts.add_argument("--resume", default=None, help="continue from this checkpoint (.ckpt)")

    landmarks = methods.add_parser("landmarks", help="Siamese landmark regressor")
    common(landmarks)
    landmarks.add_argument("--landmarks", type=int, required=True, help="number of landmarks K")
    landmarks.add_argument("--resume", default=None, help="continue from this checkpoint (.ckpt)")
    landmarks.add_argument("--input-size", type=int, default=None, help="network input size")
    landmarks.add_argument(
        "--equivariance",
        type=float,
        default=0.0,
        help="weight of the warp-equivariance term (0: off; bundled models 3000 2-D, 300 3-D)",
    )
    segment = methods.add_parser("segment", help="CUTS segmentation of one image or volume")
    segment.add_argument("inputs", nargs=1, type=Path, metavar="INPUT", help="image or volume")
    segment.add_argument("--out", required=True, type=Path, help="result folder to write")
    segment.add_argument("--model", default=None, help="CUTS model file (default: bundled)")
    segment.add_argument("--method", default="levels", choices=("levels", "persistent", "kmeans"))
    segment.add_argument("--k", type=int, default=10, help="clusters of k-means")
    segment.add_argument("--axis", default="auto", help="slicing axis: auto, 0, 1 or 2")
    segment.add_argument("--seed", type=seed, default=0, help="random seed (repeatable runs)")
    segment.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    segment.add_argument("--max-levels", type=int, default=12, help="most levels kept")
    segment.add_argument("--batch-size", type=int, default=8, help="slices per encoder pass")
    segment.add_argument("--pool-size", type=int, default=None, help="voxels pooled to condense")
    segment.add_argument(
        "--texture-scale", type=float, default=0.0, help="texture pooling, pixels (0: off)"
    )
    detect = methods.add_parser("detect", help="landmarks on many volumes (a batch)")
    detect.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="images or a folder")
    detect.add_argument("--out", required=True, type=Path, help="output folder")
    detect.add_argument("--model", default=None, help="landmark model (default: bundled)")
    detect.add_argument("--keep", type=int, default=None, help="keep the N most important")
    detect.add_argument("--min-importance", type=float, default=None, help="keep importance >= F")
    detect.add_argument("--format", default=".mrk.json", help=".mrk.json, .fcsv or .csv")
    detect.add_argument("--table", default="landmarks.csv", help="file name of the table")
    detect.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    detect.add_argument("--overwrite", action="store_true", help="redo cases done earlier")
    return parser


def runDetection(args) -> Path:
    """Detect landmarks on every input into ``args.out`` (files, table, provenance)."""
    from labelfree.landmarks.detect import detect_cohort_steps
    from labelfree.progress import run_steps

    steps = detect_cohort_steps(
        args.inputs if len(args.inputs) > 1 else args.inputs[0],
        args.out,
        args.model,
        suffix=args.format,
        table=args.out / args.table,
        keep=args.keep,
        min_importance=args.min_importance,
        device=args.device,
        overwrite=args.overwrite,
    )
    result = run_steps(steps, printProgress)
    for case, reason in result.failures:
        print(f"WARNING {case.name}: {reason}", flush=True)
    for warning in result.warnings:  # implausible landmarks (quality control)
        print(f"QC {warning}", flush=True)
    return args.out


def runSegmentation(args) -> Path:
    """Segment the input into the result folder ``args.out``; returns the folder."""
    from labelfree.cuts.folders import segment_to_folder

    options = {
        "method": args.method,
        "k": args.k,
        "axis": int(args.axis) if str(args.axis).isdigit() else args.axis,
        "seed": args.seed,
        "device": args.device,
        "max_levels": args.max_levels,
        "batch_size": args.batch_size,
        "texture_scale": args.texture_scale,
    }
    if args.pool_size is not None:
        options["pool_size"] = args.pool_size
    segment_to_folder(args.inputs[0], args.out, model=args.model, progress=printProgress, **options)
    return args.out


def printProgress(report) -> None:
    """One ``PROGRESS`` line per engine report, flushed so a parent sees it at once."""
    message = " ".join(str(report.message).split())
    say(f"PROGRESS {float(report.fraction):.4f} {message}")


def say(line: str) -> None:
    """Print a line for the parent process; under torchrun only rank 0 does."""
    from labelfree.distributed import world_from_environment

    if world_from_environment().main:
        print(line, flush=True)


def _options(args) -> dict:
    """Keyword arguments for the engine's ``train_from_files``, leaving defaults to it."""
    options = {
        "seed": args.seed,
        "device": args.device,
        "progress": printProgress,
        "skip_bad": args.skip_bad,
    }
    if args.epochs is not None:
        options["epochs"] = args.epochs
    if args.task == "cuts":
        # The engine's None is "auto": each volume's coarsest-spaced axis.
        options["axis"] = int(args.axis) if str(args.axis).isdigit() else None
        options["init_model"] = args.init_model
        options["resume"] = args.resume
    else:
        options["n_landmarks"] = args.landmarks
        options["equivariance"] = args.equivariance
        options["resume"] = args.resume
        if args.input_size is not None:
            options["input_size"] = args.input_size
    return options


def train(args) -> Path:
    """Run the chosen method's ``train_from_files`` and return the written model path."""
    if args.task == "cuts":
        from labelfree.cuts.train import train_from_files
    else:
        from labelfree.landmarks.train import train_from_files
    return Path(train_from_files(args.inputs, args.out, **_options(args)))


def _raiseKeyboardInterrupt(signum, frame):
    raise KeyboardInterrupt


def _exit(status: int) -> None:
    """Leave with ``status``: through the application inside Slicer, else through Python."""
    slicerModule = sys.modules.get("slicer")
    if getattr(slicerModule, "app", None) is not None:
        # `Slicer --python-script`: end the application's event loop with this status.
        slicerModule.util.exit(status)
        return
    sys.exit(status)


def main(argv: list[str] | None = None) -> int:
    """Parse, train or segment, report; returns the exit status."""
    _makeEngineImportable()
    args = buildParser().parse_args(argv)
    from labelfree.errors import Cancelled, LabelFreeError

    signal.signal(signal.SIGTERM, _raiseKeyboardInterrupt)
    try:
        missing = [str(p) for p in args.inputs if not p.exists()]
        if missing:  # before importing torch: a typo should not cost seconds
            raise LabelFreeError(f"Input not found: {', '.join(missing)}. Check the paths.")
        say(f"PROGRESS 0.0000 Starting {args.task}")
        run = {"segment": runSegmentation, "detect": runDetection}.get(args.task, train)
        out = run(args)
    except LabelFreeError as err:
        print(f"ERROR {err}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except (Cancelled, KeyboardInterrupt):
        print("ERROR cancelled; nothing was written.", file=sys.stderr, flush=True)
        return EXIT_CANCELLED
    say("PROGRESS 1.0000 Done")
    say(f"RESULT {out}")
    return EXIT_OK


if __name__ == "__main__":
    try:
        status = main(sys.argv[1:])
    except SystemExit as exit_:  # argparse errors: keep their status (2)
        status = exit_.code if isinstance(exit_.code, int) else EXIT_FAILED
    except Exception as err:  # noqa: BLE001 -- report anything to the parent, with a status
        import traceback

        traceback.print_exc()
        print(f"ERROR unexpected failure: {err}", file=sys.stderr, flush=True)
        status = EXIT_FAILED
    _exit(status)
