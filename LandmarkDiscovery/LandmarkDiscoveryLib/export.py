"""Writing a landmarks point list to .mrk.json, .fcsv or .csv with the engine's writers.

The files hold what the user sees: world coordinates by default (through any parent
transform), each point's label and description (importance and rank), locked flags.
"""

from pathlib import Path

import numpy as np

from labelfree.errors import InputError
from labelfree.io import ras_to_lps
from labelfree.markups import markups_format, write_csv, write_fcsv, write_mrk_json

from .nodes import landmarksFromNode


def exportLandmarksNode(node, path, world=True):
    """Write the control points of ``node`` to ``path``; the suffix picks the format.

    Parameters
    ----------
    node : vtkMRMLMarkupsFiducialNode
        The point list.
    path : str or Path
        ``.mrk.json`` (Slicer markups, stored in LPS), ``.fcsv`` (legacy Slicer) or ``.csv``
        (``label, r, a, s, importance, description`` in RAS). Written atomically.
    world : bool
        Write positions after the node's parent transforms (what the views show); otherwise
        in the node's own frame, as Slicer's Save dialog does.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    labelfree.errors.InputError
        For an unknown suffix or a point list without points.
    """
    path = Path(path)
    fileFormat = markups_format(path)
    if node is None or not node.IsA("vtkMRMLMarkupsFiducialNode"):
        raise InputError("Select a markups point list to export.")
    pointsRas, names, importance = landmarksFromNode(node, world=world)
    if len(pointsRas) == 0:
        raise InputError(f"{node.GetName()} has no control points; run detection first.")
    count = node.GetNumberOfControlPoints()
    descriptions = [node.GetNthControlPointDescription(i) for i in range(count)]
    pointsLps = ras_to_lps(pointsRas)
    locked = bool(node.GetLocked())
    if fileFormat == "mrk.json":
        return write_mrk_json(
            path, pointsLps, names, descriptions, locked=locked, name=node.GetName()
        )
    if fileFormat == "fcsv":
        return write_fcsv(path, pointsLps, names, descriptions, locked=locked)
    weights = None if np.all(np.isnan(importance)) else importance
    return write_csv(path, pointsLps, names, weights, descriptions)
