"""Landmark files that 3D Slicer reads, written and read without Slicer.

Formats and their coordinate systems
------------------------------------
Every function here takes and returns points in ITK physical space (LPS, mm),
the space of :meth:`labelfree.io.Image.index_to_physical`. Files store:

- ``.mrk.json`` (Slicer's markups JSON, schema v1.0.3): LPS, as Slicer itself
  writes it (``"coordinateSystem": "LPS"``). Slicer converts to RAS on load.
  Files declaring ``"RAS"`` are read too.
- ``.fcsv`` (Slicer's legacy fiducial CSV, version 4.11 header):
  ``# CoordinateSystem = LPS``. Files declaring ``RAS`` (or the old numeric
  codes ``0`` = RAS, ``1`` = LPS) are read too.
- ``.csv`` (a plain table): columns ``label, r, a, s, importance, description``
  in RAS, the coordinates a Slicer user sees; Slicer's markups logic
  (``ImportControlPointsFromCSV``) loads it as is. Tables with ``l, p, s``
  columns (Slicer's default export) are read too.
- Batch tables (:func:`write_landmark_table`): one row per subject and
  landmark, ``subject, label, importance, r, a, s`` in RAS.

Points of a 2-D image, ``(N, 2)``, are written with ``z = 0``: Slicer places a
2-D image in the plane ``S = 0`` with its 2-D origin and direction, so the
points land on the image. Readers always return ``(N, 3)``.

All writers are atomic: a file either appears complete or not at all.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from labelfree.errors import InputError
from labelfree.io import atomic_path, lps_to_ras, ras_to_lps

SCHEMA_URL = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
    "Resources/Schema/markups-schema-v1.0.3.json#"
)
FCSV_VERSION = "4.11"
FCSV_COLUMNS = "id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID"
# Slicer writes the identity orientation of RAS expressed in LPS.
_LPS_ORIENTATION = [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0]
_RAS_ORIENTATION = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
_IMPORTANCE_RE = re.compile(r"importance\s*[=:]?\s*([-+0-9.eE]+|nan)")

MARKUPS_SUFFIXES = (".mrk.json", ".fcsv", ".csv")


# ----------------------------------------------------------------------------- helpers


def points_as_3d(points_lps: np.ndarray) -> np.ndarray:
    """Return ``(N, 3)`` float points; ``(N, 2)`` points of a 2-D image get ``z = 0``.

    Raises
    ------
    InputError
        If the array is not ``(N, 2)`` or ``(N, 3)`` or holds non-finite values.
    """
    points = np.asarray(points_lps, dtype=float)
    if points.ndim != 2 or points.shape[1] not in (2, 3):
        raise InputError(f"Landmarks must be an (N, 2) or (N, 3) array, got shape {points.shape}.")
    if not np.all(np.isfinite(points)):
        raise InputError("Landmark coordinates contain NaN or infinity; nothing was written.")
    if points.shape[1] == 2:
        points = np.concatenate([points, np.zeros((len(points), 1))], axis=1)
    return points


def _checked_labels(names: Sequence[str], n: int, what: str = "names") -> list[str]:
    names = [str(name) for name in names]
    if len(names) != n:
        raise InputError(f"Got {len(names)} {what} for {n} landmarks; give one per landmark.")
    for name in names:
        if "\n" in name or "\r" in name:
            raise InputError(f"Landmark {what} cannot contain line breaks: {name!r}.")
    return names


def _checked_descriptions(descriptions: Sequence[str] | None, n: int) -> list[str]:
    if descriptions is None:
        return [""] * n
    return _checked_labels(descriptions, n, "descriptions")


def importance_description(importance: float, rank: int, total: int) -> str:
    """The control-point description carrying a landmark's importance.

    Parameters
    ----------
    importance : float
        Normalised importance (the most important landmark has 1).
    rank : int
        1-based rank by importance.
    total : int
        Number of landmarks the model predicts.

    Returns
    -------
    str
        e.g. ``"importance=0.7312 rank=3/30"``; read back by :func:`importance_from_description`.
    """
    return f"importance={importance:.4f} rank={rank}/{total}"


def importance_from_description(description: str) -> float:
    """Parse the importance written by :func:`importance_description`; NaN if absent."""
    match = _IMPORTANCE_RE.search(description or "")
    if match is None:
        return math.nan
    try:
        return float(match.group(1))
    except ValueError:
        return math.nan


def _write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")
    return path


def _read_text(path: str | os.PathLike, what: str) -> str:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}.")
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"Could not read {path} as a {what} text file ({err}).") from err


def _coordinate_system(value: object, path: Path) -> str:
    text = str(value).strip().upper()
    # Slicer 4.x wrote the storage node's enum: 0 = RAS, 1 = LPS.
    system = {"RAS": "RAS", "LPS": "LPS", "0": "RAS", "1": "LPS"}.get(text)
    if system is None:
        raise InputError(f"{path}: unknown coordinate system {value!r}; expected LPS or RAS.")
    return system


# ----------------------------------------------------------------------------- .mrk.json


def markups_json(
    points_lps: np.ndarray,
    names: Sequence[str],
    descriptions: Sequence[str] | None = None,
    *,
    locked: bool = True,
    name: str | None = None,
) -> dict:
    """The Slicer markups JSON document (a dict) for one fiducial (point list) markup.

    Parameters are those of :func:`write_mrk_json`.
    """
    points = points_as_3d(points_lps)
    labels = _checked_labels(names, len(points))
    descs = _checked_descriptions(descriptions, len(points))
    control_points = [
        {
            "id": str(i + 1),
            "label": label,
            "description": desc,
            "associatedNodeID": "",
            "position": [float(v) for v in point],
            "orientation": list(_LPS_ORIENTATION),
            "selected": True,
            "locked": bool(locked),
            "visibility": True,
            "positionStatus": "defined",
        }
        for i, (point, label, desc) in enumerate(zip(points, labels, descs, strict=True))
    ]
    markup = {
        "type": "Fiducial",
        "coordinateSystem": "LPS",
        "coordinateUnits": "mm",
        "locked": bool(locked),
        "fixedNumberOfControlPoints": bool(locked),
        "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": len(points),
        "controlPoints": control_points,
        "measurements": [],
        "display": {
            "visibility": True,
            "opacity": 1.0,
            "color": [0.4, 1.0, 1.0],
            "selectedColor": [1.0, 0.5, 0.5],
            "activeColor": [0.4, 1.0, 0.0],
            "propertiesLabelVisibility": False,
            "pointLabelsVisibility": True,
            "textScale": 3.0,
            "glyphType": "Sphere3D",
            "glyphScale": 3.0,
            "glyphSize": 5.0,
            "useGlyphScale": True,
        },
    }
    if name:
        markup["name"] = str(name)
    return {"@schema": SCHEMA_URL, "markups": [markup]}


def write_mrk_json(
    path: str | os.PathLike,
    points_lps: np.ndarray,
    names: Sequence[str],
    descriptions: Sequence[str] | None = None,
    *,
    locked: bool = True,
    name: str | None = None,
) -> Path:
    """Write a Slicer markups point list (``.mrk.json``), coordinates stored in LPS.

    Parameters
    ----------
    path : path-like
        Output file; written atomically.
    points_lps : ndarray
        ``(N, 3)`` or ``(N, 2)`` physical points in LPS mm (2-D: ``z = 0``).
    names : sequence of str
        One label per point (shown next to the point in Slicer).
    descriptions : sequence of str, optional
        One description per point (e.g. :func:`importance_description`).
    locked : bool
        Lock the points and fix their number, so that a click does not move them.
    name : str, optional
        Node name Slicer shows (else Slicer uses the file name).

    Returns
    -------
    Path
        The written file.
    """
    document = markups_json(points_lps, names, descriptions, locked=locked, name=name)
    return _write_text(path, json.dumps(document, indent=2) + "\n")


def read_mrk_json(path: str | os.PathLike) -> tuple[np.ndarray, list[str], list[str]]:
    """Read the first point list of a Slicer ``.mrk.json`` file.

    Returns
    -------
    points_lps : ndarray
        ``(N, 3)`` LPS mm, whatever the file's coordinate system (LPS or RAS) and
        units (mm or um). Points whose position is undefined are NaN.
    names : list of str
        Control point labels.
    descriptions : list of str
        Control point descriptions.

    Raises
    ------
    InputError
        If the file is missing, not JSON, or holds no point list.
    """
    path = Path(path)
    text = _read_text(path, "Markups")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not valid JSON ({err}); is it a .mrk.json file?") from err
    markups = document.get("markups") if isinstance(document, dict) else None
    fiducials = [
        m for m in markups or [] if isinstance(m, dict) and m.get("type") in ("Fiducial", None)
    ]
    if not fiducials:
        raise InputError(f"{path} holds no markups point list (type 'Fiducial').")
    markup = fiducials[0]
    system = _coordinate_system(markup.get("coordinateSystem", "LPS"), path)
    units = markup.get("coordinateUnits", "mm")
    scale = 1e-3 if (units == "um" or (isinstance(units, list) and units[:1] == ["um"])) else 1.0
    points, names, descriptions = [], [], []
    for point in markup.get("controlPoints", []):
        position = point.get("position")
        defined = point.get("positionStatus", "defined") == "defined" and position is not None
        points.append([float(v) * scale for v in position] if defined else [math.nan] * 3)
        names.append(str(point.get("label", "")))
        descriptions.append(str(point.get("description", "")))
    points = np.asarray(points, dtype=float).reshape(-1, 3)
    if system == "RAS":
        points = ras_to_lps(points)
    return points, names, descriptions


# ----------------------------------------------------------------------------- .fcsv


def write_fcsv(
    path: str | os.PathLike,
    points_lps: np.ndarray,
    names: Sequence[str],
    descriptions: Sequence[str] | None = None,
    *,
    locked: bool = True,
) -> Path:
    """Write Slicer's legacy fiducial CSV (``.fcsv``, version 4.11 header, LPS).

    Parameters and return value are those of :func:`write_mrk_json`.
    Labels and descriptions containing commas or quotes are quoted as Slicer does.
    """
    points = points_as_3d(points_lps)
    labels = _checked_labels(names, len(points))
    descs = _checked_descriptions(descriptions, len(points))
    out = io.StringIO()
    out.write(f"# Markups fiducial file version = {FCSV_VERSION}\n")
    out.write("# CoordinateSystem = LPS\n")
    out.write(f"# columns = {FCSV_COLUMNS}\n")
    writer = csv.writer(out, lineterminator="\n")
    for i, (point, label, desc) in enumerate(zip(points, labels, descs, strict=True)):
        # ow,ox,oy,oz = 0,0,0,1: zero rotation as angle-axis, as Slicer writes it.
        writer.writerow(
            [
                i + 1,
                *(_fmt(v) for v in point),
                0,
                0,
                0,
                1,
                1,
                1,
                int(locked),
                label,
                desc,
                "",
            ]
        )
    return _write_text(path, out.getvalue())


def read_fcsv(path: str | os.PathLike) -> tuple[np.ndarray, list[str], list[str]]:
    """Read a Slicer ``.fcsv`` file (LPS or RAS header). Returns those of :func:`read_mrk_json`."""
    path = Path(path)
    text = _read_text(path, "Fiducial CSV")
    system = "RAS"  # Slicer's default when the header does not say
    points, names, descriptions = [], [], []
    rows = []
    for line in text.splitlines():
        if line.startswith("#"):
            key, _, value = line[1:].partition("=")
            if key.strip() == "CoordinateSystem":
                system = _coordinate_system(value, path)
            continue
        if line.strip():
            rows.append(line)
    for row in csv.reader(rows):
        try:
            points.append([float(v) for v in row[1:4]])
        except (ValueError, IndexError) as err:
            raise InputError(f"{path}: bad fiducial row {row!r}; expected id,x,y,z,...") from err
        names.append(row[11] if len(row) > 11 else "")
        descriptions.append(row[12] if len(row) > 12 else "")
    points = np.asarray(points, dtype=float).reshape(-1, 3)
    if system == "RAS":
        points = ras_to_lps(points)
    return points, names, descriptions


# ----------------------------------------------------------------------------- .csv


def write_csv(
    path: str | os.PathLike,
    points_lps: np.ndarray,
    names: Sequence[str],
    importance: Sequence[float] | None = None,
    descriptions: Sequence[str] | None = None,
) -> Path:
    """Write a plain table ``label, r, a, s, importance, description`` (RAS mm).

    Slicer's markups logic imports it as a point list (``ImportControlPointsFromCSV``);
    that importer does not undo doubled quotes, so keep ``"`` out of labels.

    Parameters
    ----------
    path : path-like
        Output file; written atomically.
    points_lps : ndarray
        ``(N, 3)`` or ``(N, 2)`` LPS mm.
    names : sequence of str
        One label per point.
    importance : sequence of float, optional
        One importance per point (empty cells if omitted).
    descriptions : sequence of str, optional
        One description per point.
    """
    points = points_as_3d(points_lps)
    labels = _checked_labels(names, len(points))
    descs = _checked_descriptions(descriptions, len(points))
    weights = [math.nan] * len(points) if importance is None else [float(v) for v in importance]
    if len(weights) != len(points):
        raise InputError(f"Got {len(weights)} importance values for {len(points)} landmarks.")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["label", "r", "a", "s", "importance", "description"])
    for label, ras, weight, desc in zip(labels, lps_to_ras(points), weights, descs, strict=True):
        writer.writerow([label, *(_fmt(v) for v in ras), _number(weight), desc])
    return _write_text(path, out.getvalue())


def _number(value: float) -> str:
    return "" if math.isnan(value) else _fmt(value)


def _fmt(value: float) -> str:
    """Shortest exact text of a float; ``+ 0.0`` turns the -0.0 of a sign flip into 0.0."""
    return repr(float(value) + 0.0)


def _table_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    text = _read_text(path, "CSV")
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip().lower() for h in reader.fieldnames or []]
    rows = [{k.strip().lower(): (v or "") for k, v in row.items() if k} for row in reader]
    return header, rows


def _positions_lps(header: list[str], rows: list[dict[str, str]], path: Path) -> np.ndarray:
    if {"r", "a", "s"} <= set(header):
        columns, to_lps = ("r", "a", "s"), ras_to_lps
    elif {"l", "p", "s"} <= set(header):
        columns, to_lps = ("l", "p", "s"), (lambda p: p)
    else:
        raise InputError(f"{path} has no r,a,s (or l,p,s) columns; columns are {header}.")
    try:
        points = np.array([[float(row[c]) for c in columns] for row in rows], dtype=float)
    except ValueError as err:
        raise InputError(f"{path}: non-numeric coordinate ({err}).") from err
    return to_lps(points.reshape(-1, 3))


def read_csv(path: str | os.PathLike) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Read a table written by :func:`write_csv` (or Slicer's ``l,p,s`` export).

    Returns
    -------
    points_lps : ndarray
        ``(N, 3)`` LPS mm.
    names : list of str
        The ``label`` column.
    importance : ndarray
        ``(N,)``; NaN where missing.
    """
    path = Path(path)
    header, rows = _table_rows(path)
    points = _positions_lps(header, rows, path)
    names = [row.get("label", row.get("name", "")) for row in rows]
    importance = np.array([_float_or_nan(row.get("importance", "")) for row in rows], dtype=float)
    return points, names, importance


def _float_or_nan(text: str) -> float:
    try:
        return float(text) if text.strip() else math.nan
    except ValueError:
        return math.nan


# ----------------------------------------------------------------------------- batch table


def write_landmark_table(
    path: str | os.PathLike,
    rows: Iterable[tuple[str, np.ndarray, Sequence[str], Sequence[float]]],
    qc: Mapping[str, str] | None = None,
) -> Path:
    """Write one table for many subjects: ``subject, label, importance, r, a, s`` (RAS mm).

    Parameters
    ----------
    path : path-like
        Output ``.csv``; written atomically.
    rows : iterable of (subject, points_lps, names, importance)
        One entry per subject: its name, ``(N, 3)`` or ``(N, 2)`` LPS points,
        N labels and N importance values. Labels should be the same across
        subjects (they are stable landmark names) so that the table pivots to
        one row per subject for shape analysis.
    qc : mapping of str to str, optional
        Subject -> why its landmarks look implausible; given, a ``qc`` column holds
        ``ok`` or that reason on every row of the subject.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["subject", "label", "importance", "r", "a", "s", *(["qc"] if qc is not None else [])]
    )
    for subject, points_lps, names, importance in rows:
        points = points_as_3d(points_lps)
        labels = _checked_labels(names, len(points))
        weights = [float(v) for v in importance]
        if len(weights) != len(points):
            raise InputError(
                f"{subject}: {len(weights)} importance values for {len(points)} points."
            )
        verdict = [] if qc is None else [qc.get(subject, "ok")]
        for label, weight, ras in zip(labels, weights, lps_to_ras(points), strict=True):
            writer.writerow([subject, label, _number(weight), *(_fmt(v) for v in ras), *verdict])
    return _write_text(path, out.getvalue())


def read_landmark_table(
    path: str | os.PathLike,
) -> dict[str, tuple[np.ndarray, list[str], np.ndarray]]:
    """Read a table written by :func:`write_landmark_table`.

    Returns
    -------
    dict
        subject -> (``(N, 3)`` LPS points, labels, ``(N,)`` importance), in file order.
    """
    path = Path(path)
    header, rows = _table_rows(path)
    if "subject" not in header:
        raise InputError(f"{path} has no 'subject' column; is it a landmark table?")
    points = _positions_lps(header, rows, path)
    result: dict[str, tuple[list, list[str], list[float]]] = {}
    for row, point in zip(rows, points, strict=True):
        entry = result.setdefault(row["subject"], ([], [], []))
        entry[0].append(point)
        entry[1].append(row.get("label", ""))
        entry[2].append(_float_or_nan(row.get("importance", "")))
    return {
        subject: (np.asarray(p, dtype=float).reshape(-1, 3), names, np.asarray(w, dtype=float))
        for subject, (p, names, w) in result.items()
    }


# ----------------------------------------------------------------------------- by suffix


def markups_format(path: str | os.PathLike) -> str:
    """``"mrk.json"``, ``"fcsv"`` or ``"csv"`` from a file name.

    Raises
    ------
    InputError
        For any other suffix.
    """
    name = Path(path).name.lower()
    for suffix in MARKUPS_SUFFIXES:
        if name.endswith(suffix):
            return suffix[1:]
    raise InputError(
        f"Unknown landmark file type for {Path(path).name!r}; use .mrk.json (Slicer), "
        ".fcsv (legacy Slicer) or .csv (table)."
    )


def write_markups(
    path: str | os.PathLike,
    points_lps: np.ndarray,
    names: Sequence[str],
    importance: Sequence[float] | None = None,
    *,
    locked: bool = True,
    name: str | None = None,
) -> Path:
    """Write landmarks in the format the suffix names (.mrk.json, .fcsv or .csv).

    Importance, when given, goes into each point's description (markups files)
    or its own column (CSV) together with its rank.
    """
    fmt = markups_format(path)
    points = points_as_3d(points_lps)
    descriptions = None
    if importance is not None:
        weights = np.asarray(importance, dtype=float)
        if weights.shape != (len(points),):
            raise InputError(f"Got {weights.size} importance values for {len(points)} landmarks.")
        ranks = np.empty(len(weights), dtype=int)
        ranks[np.argsort(-weights, kind="stable")] = np.arange(1, len(weights) + 1)
        descriptions = [
            importance_description(w, int(r), len(weights))
            for w, r in zip(weights, ranks, strict=True)
        ]
    if fmt == "mrk.json":
        return write_mrk_json(path, points, names, descriptions, locked=locked, name=name)
    if fmt == "fcsv":
        return write_fcsv(path, points, names, descriptions, locked=locked)
    return write_csv(path, points, names, importance, descriptions)


def read_markups(path: str | os.PathLike) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Read any of the three formats: ``(points_lps (N, 3), names, importance (N,))``.

    Importance comes from the CSV column or the markups descriptions (NaN if absent).
    """
    fmt = markups_format(path)
    if fmt == "csv":
        return read_csv(path)
    reader = read_mrk_json if fmt == "mrk.json" else read_fcsv
    points, names, descriptions = reader(path)
    return points, names, np.array([importance_from_description(d) for d in descriptions])
