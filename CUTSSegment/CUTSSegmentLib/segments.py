"""Segmentation nodes from CUTS label maps (Qt-free).

A whole granularity level becomes one segment per cluster; a click or a
picked label becomes a single segment. Segments carry tags naming the level,
cluster count, method and model, so that their origin stays visible in the
Segment Editor and in saved ``.seg.nrrd`` files.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from labelfree.errors import InputError
from labelfree.io import Image
from LabelFreeLib.mrml import ijkToRasFromImage, placeInSubjectHierarchyBeside, removeNodes

TAG_PREFIX = "LabelFree."


def newSegmentationNode(scene, name: str, referenceVolumeNode, besideNode=None):
    """An empty segmentation node on the grid of ``referenceVolumeNode``, placed in the hierarchy."""
    segmentationNode = slicer.vtkMRMLSegmentationNode()
    segmentationNode.SetName(scene.GenerateUniqueName(name))
    scene.AddNode(segmentationNode)
    segmentationNode.CreateDefaultDisplayNodes()
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
    placeInSubjectHierarchyBeside(scene, segmentationNode, besideNode or referenceVolumeNode)
    return segmentationNode


def importLabelmap(labelmapNode, segmentationNode, tags: dict[str, str]) -> list[str]:
    """Import every label of ``labelmapNode`` as a segment (names and colours from its colour table).

    Returns
    -------
    list of str
        The IDs of the new segments.
    """
    segmentation = segmentationNode.GetSegmentation()
    before = set(segmentation.GetSegmentIDs())
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.ImportLabelmapToSegmentationNode(labelmapNode, segmentationNode):
        raise InputError(
            f"Could not turn '{labelmapNode.GetName()}' into segments; check that it holds labels."
        )
    newIds = [sid for sid in segmentation.GetSegmentIDs() if sid not in before]
    for segmentId in newIds:
        setTags(segmentation.GetSegment(segmentId), tags)
    return newIds


def orientedImageFromMask(mask: np.ndarray, image: Image):
    """A binary ``vtkOrientedImageData`` (unsigned char) on the grid of ``image``."""
    mask = np.ascontiguousarray(np.asarray(mask, dtype=np.uint8))
    oriented = slicer.vtkOrientedImageData()
    oriented.SetDimensions(mask.shape[2], mask.shape[1], mask.shape[0])
    oriented.SetImageToWorldMatrix(ijkToRasFromImage(image))
    oriented.GetPointData().SetScalars(numpy_support.numpy_to_vtk(mask.reshape(-1), deep=True))
    return oriented


def addSegmentFromMask(
    segmentationNode, mask: np.ndarray, image: Image, name: str, color, tags: dict[str, str]
) -> str:
    """Add one segment holding ``mask`` (``(z, y, x)`` booleans on the grid of ``image``).

    Returns
    -------
    str
        The new segment's ID.
    """
    if not np.any(mask):
        raise InputError("The selected region is empty; pick a point or label inside the volume.")
    segmentation = segmentationNode.GetSegmentation()
    segmentId = segmentation.AddEmptySegment("", name, [float(c) for c in color[:3]])
    oriented = orientedImageFromMask(mask, image)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    ok = logic.SetBinaryLabelmapToSegment(
        oriented, segmentationNode, segmentId, logic.MODE_REPLACE, oriented.GetExtent()
    )
    if not ok:
        segmentation.RemoveSegment(segmentId)
        raise InputError(f"Could not store the segment '{name}'.")
    setTags(segmentation.GetSegment(segmentId), tags)
    return segmentId


def setTags(segment, tags: dict[str, str]) -> None:
    """Write ``tags`` on a segment under the ``LabelFree.`` prefix."""
    for key, value in tags.items():
        segment.SetTag(TAG_PREFIX + key, str(value))


def segmentMask(segmentationNode, segmentId: str, referenceVolumeNode) -> np.ndarray:
    """A segment as a ``(z, y, x)`` boolean array on the grid of ``referenceVolumeNode`` (for checks)."""
    labelmapNode = slicer.vtkMRMLLabelMapVolumeNode()
    scene = segmentationNode.GetScene()
    scene.AddNode(labelmapNode)
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segmentId)
        slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentationNode, ids, labelmapNode, referenceVolumeNode
        )
        from LabelFreeLib.mrml import arrayFromVolumeNode

        return arrayFromVolumeNode(labelmapNode) > 0
    finally:
        removeNodes(scene, labelmapNode)
