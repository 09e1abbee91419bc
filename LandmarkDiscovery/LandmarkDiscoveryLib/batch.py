"""Batch landmark detection over a folder of volumes: the engine's cohort runner, in camelCase.

Each volume gives one landmark file; one table of all of them is written last,
atomically, so a cancelled or failed batch never leaves a partial table. A
volume that fails is reported and skipped, a rerun keeps the files of an
earlier run with the same settings, and ``provenance.json`` records the run
(see :mod:`labelfree.cohort`).
"""

from pathlib import Path

from labelfree.cohort import list_cases
from labelfree.errors import InputError
from LabelFreeLib import modelPathOrNone


def listVolumes(folder):
    """The image files of a folder (sorted).

    Raises
    ------
    InputError
        If the folder does not exist or holds no image file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"Input folder not found: {folder}. Choose an existing folder.")
    files = list_cases(folder)
    if files == [folder]:
        raise InputError(f"No image files in {folder}; expected NRRD, NIfTI, MHA or PNG files.")
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
    overwrite=False,
):
    """Detect landmarks in every volume; yields ``Progress``, returns a ``CohortResult``.

    Parameters
    ----------
    inputs : str, Path or sequence of paths
        A folder (every image file in it) or a list of image files.
    outputFolder : str or Path
        Receives ``<subject><fileFormat>`` per volume (``case01.nii.gz`` -> ``case01.mrk.json``,
        as ``labelfree landmarks detect`` names them), ``tableName`` and ``provenance.json``.
    modelPath : str or Path, optional
        A landmark model; ``None`` (or an empty path) uses the bundled model for each
        image's dimension.
    keep, minImportance, device
        As :meth:`LandmarkDiscoveryLogic.findLandmarks`.
    fileFormat : str
        ``.mrk.json``, ``.fcsv`` or ``.csv``.
    tableName : str
        File name of the table (``.csv``).
    overwrite : bool
        Recompute volumes whose landmark file exists from an earlier run.
    """
    from labelfree.landmarks.detect import detect_cohort_steps

    if isinstance(inputs, (str, Path)):
        inputs = listVolumes(inputs)
    return detect_cohort_steps(
        inputs,
        outputFolder,
        modelPathOrNone(modelPath),
        suffix=fileFormat,
        table=Path(outputFolder) / tableName,
        keep=keep,
        min_importance=minImportance,
        device=device,
        overwrite=overwrite,
    )
