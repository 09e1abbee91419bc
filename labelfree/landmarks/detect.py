"""Landmark detection: a trained regressor applied to one image, points in physical space.

From network output to millimetres
----------------------------------
The network sees the whole image resampled to ``input_size`` per axis with
``align_corners=True`` (:mod:`labelfree.landmarks.model`), so a normalised
coordinate ``c`` in ``[-1, 1]`` on an axis of ``n`` voxels is the continuous
voxel index ``(c + 1) / 2 * (n - 1)``: ``-1`` is the centre of the first voxel
and ``+1`` the centre of the last, whatever ``input_size`` is. The index then
goes to ITK physical space (LPS mm) through spacing, direction and origin
(:meth:`labelfree.io.Image.index_to_physical`). 2-D images give 2-D points;
the markups writers place them at ``z = 0``.

Names are stable: landmark ``k`` of a model is always ``LM-<k+1>``
(``LM-01``...), whichever subset ``keep`` or ``min_importance`` retains, so
tables from many subjects line up for shape analysis.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labelfree import __version__
from labelfree.cohort import CohortResult, case_name, list_cases, run_cohort_steps
from labelfree.devices import resolve_device
from labelfree.errors import InputError, LabelFreeError, ModelFileError
from labelfree.io import Image, lps_to_ras, read_image
from labelfree.landmarks.model import load_landmark_model, predict_prepared, prepare_image_steps
from labelfree.landmarks.quality import outside_image, population_outliers
from labelfree.landmarks.refine import refine_steps, stored_pose_reference
from labelfree.markups import (
    markups_format,
    points_as_3d,
    read_markups,
    write_landmark_table,
    write_markups,
)
from labelfree.progress import Progress, Steps, run_steps
from labelfree.provenance import file_digest

ModelLike = str | os.PathLike | tuple | None
# Landmarks closer than this, in voxels of the network input, coincide: the model has collapsed.
# Two distinct landmarks a little further apart are near-duplicates, which importance ranks
# (the bundled 3-D model puts two 0.49 px apart on the uncropped 1 mm MNI152 T1).
MIN_SEPARATION_PX = 0.1


@dataclass
class Landmarks:
    """Landmarks detected on one image.

    Attributes
    ----------
    points_lps : ndarray
        ``(K, ndim)`` physical positions, ITK space (LPS), mm.
    names : list of str
        Stable names ``LM-01``... (the model's landmark number).
    importance : ndarray
        ``(K,)`` normalised importance (max 1 over the model's landmarks);
        NaN if the model carries none.
    index_xyz : ndarray
        ``(K, ndim)`` continuous voxel indices ``(x, y[, z])`` of the image.
    normalised : ndarray
        ``(K, ndim)`` network output in ``[-1, 1]``, ``(x, y[, z])``.
    ids : ndarray
        ``(K,)`` the model's landmark numbers (0-based) of these points.
    pose_refined : bool
        Whether the points were detected again after undoing the image's pose
        (:mod:`labelfree.landmarks.refine`).
    """

    points_lps: np.ndarray
    names: list[str]
    importance: np.ndarray
    index_xyz: np.ndarray
    normalised: np.ndarray
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    pose_refined: bool = False

    def __len__(self) -> int:
        return len(self.names)

    @property
    def points_ras(self) -> np.ndarray:
        """``(K, 3)`` positions in Slicer's RAS mm (2-D points at ``S = 0``)."""
        return lps_to_ras(points_as_3d(self.points_lps))

    @property
    def ranks(self) -> np.ndarray:
        """1-based rank of each point by importance among the returned points."""
        order = np.argsort(-np.nan_to_num(self.importance, nan=-np.inf), kind="stable")
        ranks = np.empty(len(order), dtype=int)
        ranks[order] = np.arange(1, len(order) + 1)
        return ranks

    def write(
        self, path: str | os.PathLike, *, locked: bool = True, name: str | None = None
    ) -> Path:
        """Write as ``.mrk.json``, ``.fcsv`` or ``.csv`` (by suffix); see :mod:`labelfree.markups`."""
        importance = None if np.isnan(self.importance).all() else self.importance
        return write_markups(
            path, self.points_lps, self.names, importance, locked=locked, name=name
        )


def landmark_names(n: int) -> list[str]:
    """Stable names ``LM-01`` ... ``LM-<n>`` (zero-padded to at least 2 digits)."""
    width = max(2, len(str(n)))
    return [f"LM-{k + 1:0{width}d}" for k in range(n)]


def normalised_to_physical(normalised: np.ndarray, image: Image) -> tuple[np.ndarray, np.ndarray]:
    """Map normalised ``(x, y[, z])`` coordinates of ``image`` to indices and LPS mm.

    ``-1`` and ``+1`` are the centres of the first and last voxel of each axis
    (``align_corners=True``).

    Returns
    -------
    index_xyz : ndarray
        ``(K, ndim)`` continuous voxel indices.
    points_lps : ndarray
        ``(K, ndim)`` physical points (LPS, mm).
    """
    normalised = np.asarray(normalised, dtype=float)
    sizes = np.asarray(image.spatial_shape[::-1], dtype=float)
    index = (normalised + 1.0) * 0.5 * (sizes - 1.0)
    return index, image.index_to_physical(index)


def _resolve_model(model: ModelLike, ndim: int) -> tuple[Any, dict, dict]:
    if isinstance(model, tuple):
        regressor, config, card = model
        if int(config.get("ndim", ndim)) != ndim:
            raise InputError(
                f"This is a {config.get('ndim')}-D landmark model but the image is {ndim}-D; "
                f"use a {ndim}-D model."
            )
        return regressor, config, card
    return load_landmark_model(model, ndim=ndim)


def _selection(
    importance: np.ndarray, keep: int | None, min_importance: float | None
) -> np.ndarray:
    """Indices of the landmarks to return, in model order."""
    n = len(importance)
    chosen = np.arange(n)
    if keep is None and min_importance is None:
        return chosen
    if np.isnan(importance).any():
        raise InputError(
            "This model carries no landmark importance, so --keep/--min-importance cannot "
            "choose; compute it with `labelfree landmarks importance MODEL IMAGES...`."
        )
    if min_importance is not None:
        if not 0.0 <= min_importance <= 1.0:
            raise InputError(f"min_importance must be in [0, 1], got {min_importance}.")
        chosen = chosen[importance >= min_importance]
        if chosen.size == 0:
            raise InputError(
                f"No landmark has importance >= {min_importance}; the highest is "
                f"{importance.max():.3f}. Lower the threshold."
            )
    if keep is not None:
        if not 1 <= keep <= n:
            raise InputError(f"keep must be between 1 and {n} (the model's landmarks), got {keep}.")
        order = chosen[np.argsort(-importance[chosen], kind="stable")]
        chosen = np.sort(order[:keep])
    return chosen


def _check_separation(normalised: np.ndarray, names: list[str], input_size: int) -> None:
    """Refuse coincident landmarks: they make the spline singular and the shape degenerate."""
    if len(normalised) < 2:
        return
    pixels = (normalised + 1.0) * 0.5 * (input_size - 1)
    diff = pixels[:, None, :] - pixels[None, :, :]
    dist = np.sqrt((diff**2).sum(-1))
    dist[np.diag_indices(len(dist))] = np.inf
    i, j = np.unravel_index(np.argmin(dist), dist.shape)
    if dist[i, j] < MIN_SEPARATION_PX:
        raise LabelFreeError(
            f"Landmarks {names[i]} and {names[j]} coincide ({dist[i, j]:.2f} px apart at the "
            f"model's {input_size}-pixel input): the model has collapsed. Retrain it (more "
            "epochs or regularisation), or drop redundant landmarks with keep/min_importance."
        )


def detect_landmarks(
    image: Image,
    model: ModelLike = None,
    *,
    keep: int | None = None,
    min_importance: float | None = None,
    device: str = "auto",
    refine: bool = True,
) -> Landmarks:
    """Detect the model's landmarks on one image or volume.

    Parameters
    ----------
    image : labelfree.io.Image
        A 2-D image (grey or RGB) or a 3-D volume with its geometry.
    model : path-like, tuple or None
        A landmark model file, a ``(regressor, config, card)`` tuple from
        :func:`labelfree.landmarks.model.load_landmark_model` (load once when
        detecting in a loop), or ``None`` for the bundled model of the
        image's dimension.
    keep : int, optional
        Return only the ``keep`` most important landmarks.
    min_importance : float, optional
        Return only landmarks with importance at least this (0..1).
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    refine : bool
        Detect again after undoing the image's pose when it lies beyond the model's
        training poses (models that store a pose reference; see
        :mod:`labelfree.landmarks.refine`).

    Returns
    -------
    Landmarks
        Points in the image's physical space (LPS mm), in model order, with
        stable names and importance.

    Raises
    ------
    InputError
        2-D model on a volume (or the reverse), bad ``keep``/``min_importance``,
        selection without stored importance.
    ModelFileError
        Missing, corrupted or foreign model file.
    LabelFreeError
        Two returned landmarks coincide (a collapsed model).
    """
    return run_steps(
        detect_landmarks_steps(
            image, model, keep=keep, min_importance=min_importance, device=device, refine=refine
        )
    )


def detect_landmarks_steps(
    image: Image,
    model: ModelLike = None,
    *,
    keep: int | None = None,
    min_importance: float | None = None,
    device: str = "auto",
    refine: bool = True,
) -> Steps[Landmarks]:
    """:func:`detect_landmarks` in short steps (a GUI's timer drives them); the same result."""
    regressor, config, _ = _resolve_model(model, image.ndim)
    torch_device = resolve_device(device)
    regressor.to(torch_device)
    prepared = yield from prepare_image_steps(image.array, config)
    yield Progress(0.9, "Running the network")
    normalised = predict_prepared(regressor, prepared)
    reference = stored_pose_reference(config) if refine else None
    refined = False
    if reference is not None:
        normalised, refined = yield from refine_steps(
            regressor, config, image.array, normalised, *reference
        )
    n = len(normalised)
    stored = config.get("importance")
    importance = np.full(n, np.nan) if stored is None else np.asarray(stored, dtype=float)
    if importance.shape != (n,):
        raise InputError(f"The model stores {importance.size} importance values for {n} landmarks.")
    names = landmark_names(n)
    chosen = _selection(importance, keep, min_importance)
    _check_separation(normalised[chosen], [names[k] for k in chosen], int(config["input_size"]))
    index, points = normalised_to_physical(normalised[chosen], image)
    return Landmarks(
        points_lps=points,
        names=[names[k] for k in chosen],
        importance=importance[chosen],
        index_xyz=index,
        normalised=normalised[chosen],
        ids=chosen,
        pose_refined=refined,
    )


def detect_cohort_steps(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    model: ModelLike = None,
    *,
    suffix: str = ".mrk.json",
    table: str | os.PathLike | None = None,
    keep: int | None = None,
    min_importance: float | None = None,
    device: str = "auto",
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
) -> Generator[Progress, None, CohortResult]:
    """Detect landmarks on a cohort: one landmark file per case, then one table of all.

    A generator: it yields :class:`~labelfree.progress.Progress` and returns a
    :class:`~labelfree.cohort.CohortResult` (see :func:`labelfree.cohort.run_cohort_steps`
    for failures, reruns and ``provenance.json``).

    Parameters
    ----------
    inputs : path-like or iterable of path-like
        A folder (its image files) or the images (anything :func:`read_image` reads).
    out_dir : path-like
        Receives ``<case><suffix>`` per case (``case01.nii.gz`` -> ``case01.mrk.json``).
    model : path-like, tuple or None
        A landmark model (a file, or ``(regressor, config, card)``), loaded once;
        None uses the bundled model of each image's dimension.
    suffix : str
        ``".mrk.json"``, ``".fcsv"`` or ``".csv"``.
    table : path-like, optional
        The table of all cases (:func:`labelfree.markups.write_landmark_table`);
        default ``out_dir/landmarks.csv``. Written last, atomically.
    keep, min_importance, device
        See :func:`detect_landmarks`.
    overwrite : bool
        Recompute cases whose landmark file exists from an earlier run.
    shard : (int, int), optional
        Only every n-th case, as one of n jobs (:func:`labelfree.cohort.run_cohort_steps`);
        the last job to finish writes the table.

    Raises
    ------
    InputError
        Bad arguments, or no case processed.
    ModelFileError
        The model cannot be used.
    """
    markups_format("x" + suffix)  # refuses unknown file types before any work
    cases = list_cases(inputs)
    out_dir = Path(out_dir)
    table = out_dir / "landmarks.csv" if table is None else Path(table)
    clash = [c for c in cases if (out_dir / f"{case_name(c)}{suffix}") == table]
    if clash:
        raise InputError(
            f"The landmark file of {clash[0].name} would overwrite the table {table.name}; "
            "choose another table name or file type."
        )
    if isinstance(model, tuple):
        model_record: Any = {"in_memory": model[1]}
    elif model in (None, ""):
        model, model_record = None, f"bundled with labelfree {__version__}"
    elif Path(model).is_file():
        model, model_record = Path(model), file_digest(model)
    else:
        raise ModelFileError(f"Landmark model not found: {model}. Choose a .pt model file.")
    loaded: dict[int, tuple] = {}  # image dimension -> (regressor, config, card), loaded once
    detected: dict[str, tuple] = {}  # case -> (points_lps, names, importance) of this run
    flags: dict[str, str] = {}  # case -> why its landmarks look implausible

    def process(case: Path, output: Path) -> None:
        image = read_image(case)
        if image.ndim not in loaded:
            loaded[image.ndim] = _resolve_model(model, image.ndim)
        found = detect_landmarks(
            image, loaded[image.ndim], keep=keep, min_importance=min_importance, device=device
        )
        found.write(output, name=f"{case_name(case)}_landmarks")
        detected[case_name(case)] = (found.points_lps, found.names, found.importance)
        outside = outside_image(found.index_xyz, image.spatial_shape)
        if outside:
            flags[case_name(case)] = f"{outside} of {len(found)} landmarks outside the image"

    def write_table(result: CohortResult) -> None:
        rows = []
        for name, path in result.outputs.items():  # cases kept from an earlier run: read back
            rows.append((name, *(detected[name] if name in detected else read_markups(path))))
        layouts = {tuple(names) for _, _, names, _ in rows}
        if len(layouts) == 1:  # the same landmarks in every case: compare the shapes
            far = population_outliers({name: points for name, points, _, _ in rows})
            for name, reason in far.items():
                flags[name] = f"{flags[name]}; {reason}" if name in flags else reason
        qc = {name: flags[name] for name in result.outputs if name in flags}
        result.warnings += [
            f"{name}: {reason}; check it before a shape analysis" for name, reason in qc.items()
        ]
        result.table = write_landmark_table(table, rows, qc=qc)

    parameters = {
        "method": "landmarks detect",
        "model": model_record,
        "keep": keep,
        "min_importance": min_importance,
        "suffix": suffix,
    }
    return (
        yield from run_cohort_steps(
            cases,
            out_dir,
            process,
            lambda name: out_dir / f"{name}{suffix}",
            parameters,
            overwrite=overwrite,
            shard=shard,
            finish=write_table,
            what="Finding landmarks in",
        )
    )
