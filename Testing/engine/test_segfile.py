"""The engine's .seg.nrrd writer, read back by Slicer's own segmentation storage node."""

from __future__ import annotations

import numpy as np
import pytest
import vtk
from vtk.util.numpy_support import vtk_to_numpy

from labelfree.errors import InputError
from labelfree.io import Image
from labelfree.segfile import label_colours, write_seg_nrrd

slicer = pytest.importorskip("slicer")


def oblique_labels() -> Image:
    angle = 0.3
    direction = np.eye(3)
    direction[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    labels = np.zeros((4, 5, 6), np.int32)
    labels[1:3, 1:4, 2:5] = 2
    labels[0, 0, 0] = 5
    return Image(labels, (0.5, 0.7, 2.0), (10.0, -20.0, 5.0), direction)


def read_with_slicer(path):
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    return node.GetSegmentation()


def test_seg_nrrd_opens_in_slicer_with_names_geometry_and_voxels(tmp_path):
    labels = oblique_labels()
    path = write_seg_nrrd(
        labels, tmp_path / "s.seg.nrrd", names=["two", "five"], tags={"LabelFree.level": "3"}
    )
    segmentation = read_with_slicer(path)
    assert segmentation.GetNumberOfSegments() == 2
    segment = segmentation.GetSegment("Segment_2")
    assert segment.GetName() == "two"
    np.testing.assert_allclose(segment.GetColor(), label_colours(2)[0], atol=1e-5)

    oriented = segment.GetRepresentation("Binary labelmap")
    matrix = vtk.vtkMatrix4x4()
    oriented.GetImageToWorldMatrix(matrix)
    ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    expected_lps = np.eye(4)
    expected_lps[:3, :3] = labels.direction * np.asarray(labels.spacing)
    expected_lps[:3, 3] = labels.origin
    expected_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ expected_lps
    np.testing.assert_allclose(ijk_to_ras, expected_ras, atol=1e-6)

    dims = oriented.GetDimensions()
    voxels = vtk_to_numpy(oriented.GetPointData().GetScalars()).reshape(dims[::-1])
    extent = oriented.GetExtent()
    full = np.zeros(labels.array.shape, voxels.dtype)
    full[extent[4] : extent[5] + 1, extent[2] : extent[3] + 1, extent[0] : extent[1] + 1] = voxels
    label_value = segment.GetLabelValue()
    np.testing.assert_array_equal(full == label_value, labels.array == 2)


def test_seg_nrrd_refuses_empty_or_mismatched(tmp_path):
    labels = oblique_labels()
    with pytest.raises(InputError, match="empty"):
        write_seg_nrrd(labels.with_array(np.zeros((2, 2, 2), np.int32)), tmp_path / "e.seg.nrrd")
    with pytest.raises(InputError, match="names"):
        write_seg_nrrd(labels, tmp_path / "n.seg.nrrd", names=["only one"])
    assert list(tmp_path.iterdir()) == []
