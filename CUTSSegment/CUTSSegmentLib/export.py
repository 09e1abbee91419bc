"""Writing CUTS results with Slicer's own storage nodes (Qt-free, atomic).

Files are written to a temporary name beside the target, read back, and
renamed only when they read back whole: the storage nodes report success on a
full disk with a truncated file, so a failed export never leaves a
half-written file. The storage nodes are not added to the scene: exporting
does not change it.
"""

from __future__ import annotations

import os
from pathlib import Path

import SimpleITK as sitk
import slicer

from labelfree import filechecks
from labelfree.errors import InputError, OutputError
from labelfree.io import atomic_path
from LabelFreeLib.mrml import arrayFromVolumeNode

LABELMAP_SUFFIXES = (".nrrd", ".nii.gz", ".nii", ".mha", ".mhd")
SEGMENTATION_SUFFIXES = (".seg.nrrd",)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".seg.nrrd", ".nii.gz"):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def exportLabelmapNode(labelmapNode, path: str | os.PathLike) -> Path:
    """Write a labelmap volume as ``.nrrd`` or ``.nii.gz`` (also ``.nii``, ``.mha``).

    Raises
    ------
    InputError
        Nothing to write, an unsupported extension, or a failed write.
    """
    path = Path(path)
    if labelmapNode is None or labelmapNode.GetImageData() is None:
        raise InputError("There is no label map to export; run the segmentation first.")
    if _suffix(path) not in LABELMAP_SUFFIXES or _suffix(path) == ".seg.nrrd":
        raise InputError(
            f"Cannot write a label map as '{path.name}'; use .nrrd or .nii.gz "
            "(or .seg.nrrd through 'Export segmentation')."
        )
    storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storageNode.SetUseCompression(True)
    return _write(storageNode, labelmapNode, path, arrayFromVolumeNode(labelmapNode))


def exportSegmentationNode(segmentationNode, path: str | os.PathLike) -> Path:
    """Write a segmentation node as ``.seg.nrrd`` (segment names, colours and tags kept)."""
    path = Path(path)
    if segmentationNode is None or segmentationNode.GetSegmentation().GetNumberOfSegments() == 0:
        raise InputError("There is no segmentation to export; create one first.")
    if _suffix(path) not in SEGMENTATION_SUFFIXES:
        raise InputError(f"Cannot write a segmentation as '{path.name}'; use .seg.nrrd.")
    storageNode = slicer.vtkMRMLSegmentationStorageNode()
    storageNode.SetUseCompression(True)
    return _write(storageNode, segmentationNode, path)


def _write(storageNode, node, path: Path, expected=None) -> Path:
    with atomic_path(path) as tmp:
        storageNode.SetFileName(str(tmp))
        if not storageNode.WriteData(node):
            raise OutputError(
                f"Writing {path} failed; check that the folder is writable and has free space."
            )
        _verifyWritten(tmp, path, expected)
    return path


def _verifyWritten(tmp: Path, path: Path, expected) -> None:
    """Read the file back: whole, and (for a label map) the same voxels."""
    try:
        filechecks.check_nifti_complete(tmp)
        back = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp)))
    except (RuntimeError, InputError) as error:
        raise OutputError(
            f"{path} was not written in full (it reads back damaged); is the disk full? "
            "Nothing was replaced."
        ) from error
    if expected is not None and not (back.shape == expected.shape and (back == expected).all()):
        raise OutputError(f"{path} reads back different from the label map; is the disk full?")
