"""Batch landmark detection over a folder of volumes, with the engine only (no MRML).

Each volume gives one landmark file; one table of all of them is written last,
atomically, so a cancelled or failed batch never leaves a partial table.
"""

from dataclasses import dataclass, field
from pathlib import Path

from labelfree.errors import InputError, LabelFreeError, ModelFileError
from labelfree.io import IMAGE_SUFFIXES
from labelfree.markups import markups_format, write_landmark_table
from labelfree.progress import Progress


@dataclass
class BatchResult:
    """What a batch run wrote.

    Attributes
    ----------
    files : list of Path
        One landmark file per volume that succeeded, in input order.
    table : Path or None
        The table of all landmarks (``subject, label, importance, r, a, s``, RAS mm).
    failures : list of (Path, str)
        Volumes that could not be processed, with the reason.
    """

    files: list = field(default_factory=list)
    table: Path | None = None
    failures: list = field(default_factory=list)


def imageSuffix(path):
    """The image suffix of a file name (``.nii.gz`` counts as one), or ``""``."""
    name = Path(path).name.lower()
    return next((s for s in sorted(IMAGE_SUFFIXES, key=len, reverse=True) if name.endswith(s)), "")


def subjectName(path):
    """A file name without its image suffix: ``case01.nii.gz`` -> ``case01``."""
    path = Path(path)
    suffix = imageSuffix(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.stem


def listVolumes(inputs):
    """The image files to process: every image file of a folder (sorted), or the given list.

    Raises
    ------
    InputError
        If the folder does not exist or holds no image file.
    """
    if isinstance(inputs, (str, Path)):
        folder = Path(inputs)
        if not folder.is_dir():
            raise InputError(f"Batch input folder not found: {folder}. Choose an existing folder.")
        files = sorted(p for p in folder.iterdir() if p.is_file() and imageSuffix(p))
        if not files:
            raise InputError(
                f"No image files in {folder}; expected {', '.join(IMAGE_SUFFIXES)} files."
            )
        return files
    files = [Path(p) for p in inputs]
    if not files:
        raise InputError("No input files given for batch detection.")
    return files


def batchDetectSteps(
    inputs,
    outputFolder,
    modelPath=None,
    keep=None,
    minImportance=None,
    fileFormat=".mrk.json",
    device="auto",
    tableName="landmarks.csv",
):
    """Detect landmarks in every volume; yields :class:`~labelfree.progress.Progress`, returns :class:`BatchResult`.

    Parameters
    ----------
    inputs : str, Path or sequence of paths
        A folder (every image file in it) or a list of image files.
    outputFolder : str or Path
        Receives ``<subject><fileFormat>`` per volume (``case01.nii.gz`` -> ``case01.mrk.json``,
        as ``labelfree landmarks detect`` names them) and ``tableName``.
    modelPath : str or Path, optional
        A landmark model; ``None`` uses the bundled model for each image's dimension.
    keep, minImportance, device
        As :meth:`LandmarkDiscoveryLogic.findLandmarks`.
    fileFormat : str
        ``.mrk.json``, ``.fcsv`` or ``.csv``.
    tableName : str
        File name of the table (``.csv``).

    Raises
    ------
    LabelFreeError
        Bad arguments, an unusable model, or no volume processed at all.
    """
    from labelfree.io import read_image
    from labelfree.landmarks.detect import detect_landmarks
    from labelfree.landmarks.model import load_landmark_model

    markups_format("x" + fileFormat)  # refuses unknown formats before any work
    files = listVolumes(inputs)
    subjects = [subjectName(path) for path in files]
    duplicates = sorted({s for s in subjects if subjects.count(s) > 1})
    if duplicates:
        raise InputError(
            f"Several inputs are named {', '.join(duplicates)}; their landmark files would "
            "collide. Rename them or put them in separate folders."
        )
    clash = [s for s in subjects if f"{s}{fileFormat}".lower() == str(tableName).lower()]
    if clash:
        raise InputError(
            f"The landmark file of {clash[0]} would overwrite the table {tableName}; "
            "choose another table name or file type."
        )
    model = None if modelPath in (None, "") else Path(modelPath)
    if model is not None and not model.is_file():
        raise InputError(f"Landmark model not found: {model}. Choose a .pt model file.")
    outputFolder = Path(outputFolder)
    outputFolder.mkdir(parents=True, exist_ok=True)
    loaded = {}  # image dimension -> (regressor, config, card): each model is loaded once
    result = BatchResult()
    rows = []
    for number, (path, subject) in enumerate(zip(files, subjects, strict=True)):
        yield Progress(
            number / len(files), f"Finding landmarks in {path.name} ({number + 1}/{len(files)})"
        )
        try:
            image = read_image(path)
            if image.ndim not in loaded:
                loaded[image.ndim] = load_landmark_model(model, ndim=image.ndim)
            landmarks = detect_landmarks(
                image, loaded[image.ndim], keep=keep, min_importance=minImportance, device=device
            )
        except ModelFileError:
            raise  # every other volume would fail the same way
        except LabelFreeError as error:
            result.failures.append((path, str(error)))
            continue
        written = landmarks.write(
            outputFolder / f"{subject}{fileFormat}", name=f"{subject}_landmarks"
        )
        result.files.append(written)
        rows.append((subject, landmarks.points_lps, landmarks.names, landmarks.importance))
    if not rows:
        reasons = "; ".join(f"{p.name}: {m}" for p, m in result.failures[:3])
        raise InputError(f"No volume could be processed ({reasons}).")
    yield Progress(0.99, "Writing the landmark table")
    result.table = write_landmark_table(outputFolder / tableName, rows)
    yield Progress(1.0, f"Done: {len(result.files)} volumes, {len(result.failures)} failed")
    return result
