"""Markups point lists holding landmarks: filled from arrays, read back into arrays.

Qt-free: only MRML classes and numpy. Positions here are RAS millimetres in the
node's own coordinate frame (before any parent transform), except where
``world=True`` asks for world coordinates (after the parent transforms).
"""

import numpy as np
import vtk

from labelfree.markups import importance_description, importance_from_description

IMPORTANCE_ATTRIBUTE = "LabelFree.importance"
MODEL_ATTRIBUTE = "LabelFree.model"


def importanceDescriptions(importance, total=None):
    """Descriptions carrying each landmark's importance and rank, e.g. ``importance=0.7312 rank=3/30``.

    ``total`` is the number of landmarks the model predicts (defaults to ``len(importance)``).
    """
    weights = np.asarray(importance, dtype=float)
    ranks = np.empty(len(weights), dtype=int)
    ranks[np.argsort(-weights, kind="stable")] = np.arange(1, len(weights) + 1)
    total = len(weights) if total is None else int(total)
    return [
        importance_description(float(w), int(r), total) for w, r in zip(weights, ranks, strict=True)
    ]


def fillLandmarksNode(node, pointsRas, names, descriptions, locked=True):
    """Replace the control points of ``node`` with ``pointsRas`` (K, 3), labelled and described.

    The point list is locked and fixed in number when ``locked`` is true, so a click in a view
    neither moves a landmark nor adds one. Observers see one modification at the end.
    """
    pointsRas = np.asarray(pointsRas, dtype=float).reshape(-1, 3)
    wasModifying = node.StartModify()
    try:
        node.SetFixedNumberOfControlPoints(False)
        node.SetLocked(False)
        node.RemoveAllControlPoints()
        for position, name, description in zip(pointsRas, names, descriptions, strict=True):
            index = node.AddControlPoint(vtk.vtkVector3d(*position), str(name))
            node.SetNthControlPointDescription(index, str(description))
            node.SetNthControlPointLocked(index, bool(locked))
        node.SetLocked(bool(locked))
        node.SetFixedNumberOfControlPoints(bool(locked))
    finally:
        node.EndModify(wasModifying)
    return node


def landmarksFromNode(node, world=True):
    """Control points of a point list as arrays.

    Returns
    -------
    pointsRas : ndarray
        ``(K, 3)`` RAS mm, in world coordinates when ``world`` is true.
    names : list of str
        Control point labels.
    importance : ndarray
        ``(K,)`` parsed from the descriptions; NaN where a description carries none.
    """
    count = node.GetNumberOfControlPoints()
    points = np.zeros((count, 3))
    position = [0.0, 0.0, 0.0]
    for i in range(count):
        if world:
            node.GetNthControlPointPositionWorld(i, position)
        else:
            node.GetNthControlPointPosition(i, position)
        points[i] = position
    names = [node.GetNthControlPointLabel(i) for i in range(count)]
    importance = np.array(
        [importance_from_description(node.GetNthControlPointDescription(i)) for i in range(count)],
        dtype=float,
    )
    return points, names, importance


class NodeSnapshot:
    """The control points, flags and transform of a point list, to put back after a failure."""

    def __init__(self, node):
        self.node = node
        self.points, self.names, _ = landmarksFromNode(node, world=False)
        count = node.GetNumberOfControlPoints()
        self.descriptions = [node.GetNthControlPointDescription(i) for i in range(count)]
        self.pointLocked = [node.GetNthControlPointLocked(i) for i in range(count)]
        self.locked = node.GetLocked()
        self.fixed = node.GetFixedNumberOfControlPoints()
        self.transformNodeID = node.GetTransformNodeID()
        self.attributes = {
            name: node.GetAttribute(name) for name in (IMPORTANCE_ATTRIBUTE, MODEL_ATTRIBUTE)
        }

    def restore(self):
        """Put the node back as it was when the snapshot was taken."""
        node = self.node
        wasModifying = node.StartModify()
        try:
            fillLandmarksNode(node, self.points, self.names, self.descriptions, locked=False)
            for i, pointLocked in enumerate(self.pointLocked):
                node.SetNthControlPointLocked(i, pointLocked)
            node.SetLocked(self.locked)
            node.SetFixedNumberOfControlPoints(self.fixed)
            node.SetAndObserveTransformNodeID(self.transformNodeID)
            for name, value in self.attributes.items():
                if value is None:
                    node.RemoveAttribute(name)
                else:
                    node.SetAttribute(name, value)
        finally:
            node.EndModify(wasModifying)
