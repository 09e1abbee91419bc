"""CUTSSegmentLogic on a real MRML scene (slicer-core): geometry, levels, segments, exports, errors."""

from __future__ import annotations

import os

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")
torch = pytest.importorskip("torch")
pytest.importorskip("labelfree.cuts.volume")

from CUTSSegmentLib import CUTSSegmentLogic  # noqa: E402 (conftest puts the module on sys.path)
from CUTSSegmentLib.segments import segmentMask  # noqa: E402

from labelfree.cuts.hint import binarise_by_point  # noqa: E402
from labelfree.cuts.model import CutsModel, model_config, save_cuts_model  # noqa: E402
from labelfree.errors import InputError, LabelFreeError, ModelFileError  # noqa: E402
from labelfree.modelfile import ModelFile, save_model  # noqa: E402
from LabelFreeLib.mrml import arrayFromVolumeNode, removeNodes  # noqa: E402

RUN = {"maxLevels": 6, "seed": 0, "device": "cpu", "poolSize": 2048}


@pytest.fixture(scope="session")
def tinyModels(tmp_path_factory):
    """Randomly initialised CUTS models (real weights, real loading path), grey and RGB."""
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for channels in (1, 3):
        torch.manual_seed(channels)
        model = CutsModel(channels, embed_dim=16)
        paths[channels] = save_cuts_model(
            folder / f"tiny_{channels}.pt", model, model_config(model), {"name": f"tiny{channels}"}
        )
    landmarks = save_model(folder / "landmarks.pt", ModelFile("landmarks", {}, {}, {}))
    return {"grey": paths[1], "rgb": paths[3], "landmarks": landmarks}


def _tag(segment, key):
    value = vtk.reference("")
    assert segment.GetTag(key, value), f"segment has no tag {key}"
    return str(value)


def _ijkOfVoxel(node, ijk):
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return list(matrix.MultiplyPoint([*ijk, 1.0])[:3])


def test_segment_keeps_geometry_and_switches_levels(scene, obliqueVolumeNode, tinyModels, ijkToRas):
    shNode = scene.GetSubjectHierarchyNode()
    study = shNode.CreateFolderItem(shNode.GetSceneItemID(), "study")
    shNode.CreateItem(study, obliqueVolumeNode)
    logic = CUTSSegmentLogic(scene)
    reports = []
    result = logic.segment(obliqueVolumeNode, tinyModels["grey"], progress=reports.append, **RUN)

    assert reports and reports[-1].fraction == pytest.approx(1.0)
    fractions = [r.fraction for r in reports]
    assert fractions == sorted(fractions)
    labelmapNode = result.labelmapNode
    assert labelmapNode.IsA("vtkMRMLLabelMapVolumeNode")
    np.testing.assert_allclose(ijkToRas(labelmapNode), ijkToRas(obliqueVolumeNode), atol=1e-9)
    assert arrayFromVolumeNode(labelmapNode).shape == (6, 32, 40)
    assert labelmapNode.GetDisplayNode().GetColorNodeID() == result.colorNode.GetID()
    assert shNode.GetItemParent(shNode.GetItemByDataNode(labelmapNode)) == study
    assert result.modelCard.get("name") == "tiny1"

    assert result.levelCount >= 2
    assert result.clusterCounts == sorted(result.clusterCounts)
    for level in (result.levelCount - 1, 0, 1):
        clusters = logic.setLevel(level)
        shown = arrayFromVolumeNode(labelmapNode)
        np.testing.assert_array_equal(shown, result.maps[level])
        assert len(np.unique(shown)) == clusters == result.clusterCounts[level]
    # The input is untouched.
    assert obliqueVolumeNode.GetImageData().GetScalarTypeAsString() == "float"


@pytest.fixture(scope="module")
def segmented(moduleScene, tinyModels, addObliqueVolume):
    """One finished run shared by the tests below (they only add nodes, at level 2)."""
    volumeNode = addObliqueVolume(moduleScene)
    shNode = moduleScene.GetSubjectHierarchyNode()
    study = shNode.CreateFolderItem(shNode.GetSceneItemID(), "study")
    shNode.CreateItem(study, volumeNode)
    logic = CUTSSegmentLogic(moduleScene)
    logic.segment(volumeNode, tinyModels["grey"], **RUN)
    logic.setLevel(1)
    return logic


def _referenceGeometry(segmentationNode) -> np.ndarray:
    """The segmentation's reference image geometry: 16 matrix values then the extent."""
    text = segmentationNode.GetSegmentation().GetConversionParameter("Reference image geometry")
    return np.array([float(v) for v in text.split(";") if v.strip()])


def _parentItem(node):
    shNode = node.GetScene().GetSubjectHierarchyNode()
    return shNode.GetItemParent(shNode.GetItemByDataNode(node))


def test_same_seed_same_labels(scene, obliqueVolumeNode, tinyModels, segmented):
    again = CUTSSegmentLogic(scene).segment(obliqueVolumeNode, tinyModels["grey"], **RUN)
    assert len(again.maps) == len(segmented.result.maps)
    for a, b in zip(again.maps, segmented.result.maps, strict=True):
        np.testing.assert_array_equal(a, b)


def test_create_segmentation_from_current_level(segmented):
    result = segmented.result
    obliqueVolumeNode = result.inputVolumeNode
    segmentationNode = segmented.createSegmentation()
    segmentation = segmentationNode.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == result.clusterCounts[1]
    assert _parentItem(segmentationNode) == _parentItem(obliqueVolumeNode) != 0
    fromInput = segmented.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reference")
    fromInput.SetReferenceImageGeometryParameterFromVolumeNode(obliqueVolumeNode)
    geometry = _referenceGeometry(segmentationNode)
    assert geometry.size == 16 + 6  # matrix and extent
    np.testing.assert_allclose(geometry, _referenceGeometry(fromInput), atol=1e-6)
    labels = result.currentLabels
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segmentId)
        value = int(segment.GetName().split()[-1])
        assert segment.GetName() == f"cluster {value}"
        assert _tag(segment, "LabelFree.Level") == "2"
        assert _tag(segment, "LabelFree.Model") == "tiny1"
        np.testing.assert_array_equal(
            segmentMask(segmentationNode, segmentId, obliqueVolumeNode), labels == value
        )


def test_segment_from_one_point(segmented):
    result = segmented.result
    obliqueVolumeNode = result.inputVolumeNode
    zyx = (3, 16, 20)
    pointRas = _ijkOfVoxel(obliqueVolumeNode, zyx[::-1])
    expected = binarise_by_point(result.currentLabels, zyx, connected=True)
    segmentationNode, segmentId = segmented.segmentFromPoint(pointRas)
    mask = segmentMask(segmentationNode, segmentId, obliqueVolumeNode)
    np.testing.assert_array_equal(mask, expected)
    assert mask[zyx]
    assert _parentItem(segmentationNode) == _parentItem(obliqueVolumeNode)
    label = int(result.currentLabels[zyx])
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    assert _tag(segment, "LabelFree.Label") == str(label)

    # A second pick goes into the same node; a label pick takes the whole cluster.
    _, wholeId = segmented.segmentFromLabel(label, segmentationNode=segmentationNode)
    assert segmentationNode.GetSegmentation().GetNumberOfSegments() == 2
    whole = segmentMask(segmentationNode, wholeId, obliqueVolumeNode)
    np.testing.assert_array_equal(whole, result.currentLabels == label)
    assert whole.sum() >= mask.sum()

    with pytest.raises(InputError, match="outside"):
        segmented.segmentFromPoint([1e4, 1e4, 1e4])


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_labelmap_export_reads_back(segmented, tmp_path, suffix, ijkToRas, sceneSnapshot):
    scene = segmented.scene
    before = sceneSnapshot(scene)
    path = segmented.exportLabelmap(tmp_path / f"labels{suffix}")
    assert sceneSnapshot(scene) == before
    readNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(readNode)
    np.testing.assert_array_equal(arrayFromVolumeNode(readNode), segmented.result.currentLabels)
    np.testing.assert_allclose(
        ijkToRas(readNode), ijkToRas(segmented.result.labelmapNode), atol=1e-4
    )
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file left behind"


def test_segmentation_export_reads_back(segmented, tmp_path, sceneSnapshot):
    scene = segmented.scene
    before = sceneSnapshot(scene)
    path = segmented.exportSegmentation(tmp_path / "labels.seg.nrrd")
    assert sceneSnapshot(scene) == before, "exporting must not leave nodes behind"
    readNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(readNode)
    segmentation = readNode.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == segmented.result.clusterCounts[1]
    segment = segmentation.GetSegment(segmentation.GetNthSegmentID(0))
    assert _tag(segment, "LabelFree.Level") == "2"
    with pytest.raises(InputError, match=".seg.nrrd"):
        segmented.exportSegmentation(tmp_path / "labels.png")


def test_cancelled_run_leaves_scene_unchanged(scene, obliqueVolumeNode, tinyModels, sceneSnapshot):
    before = sceneSnapshot(scene)
    logic = CUTSSegmentLogic(scene)
    steps = logic.segmentSteps(obliqueVolumeNode, tinyModels["grey"], **RUN)
    next(steps)
    next(steps)
    steps.close()
    assert sceneSnapshot(scene) == before
    assert logic.result is None
    with pytest.raises(InputError, match="Apply"):
        logic.setLevel(0)


def test_bad_inputs_fail_clearly_and_leave_scene_unchanged(
    scene, obliqueVolumeNode, makeVolumeNode, tinyModels, sceneSnapshot, tmp_path
):
    logic = CUTSSegmentLogic(scene)
    frames = np.random.default_rng(0).random((4, 24, 24, 5)).astype(np.float32)
    fourD = makeVolumeNode(frames, vector=True, name="fourD")
    before = sceneSnapshot(scene)
    with pytest.raises(InputError, match="No input volume"):
        logic.segmentSteps(None, tinyModels["grey"])
    with pytest.raises(InputError, match="4-D"):
        logic.segmentSteps(fourD, tinyModels["grey"])
    with pytest.raises(ModelFileError, match="'landmarks' model"):
        logic.segmentSteps(obliqueVolumeNode, tinyModels["landmarks"])
    with pytest.raises(InputError, match="RGB"):
        logic.segmentSteps(obliqueVolumeNode, tinyModels["rgb"])
    with pytest.raises(ModelFileError, match="not found"):
        logic.segmentSteps(obliqueVolumeNode, tmp_path / "missing.pt")
    with pytest.raises(InputError, match="method"):
        logic.segmentSteps(obliqueVolumeNode, tinyModels["grey"], method="watershed")
    assert sceneSnapshot(scene) == before
    assert logic.result is None


def test_rgb_image_and_single_maps(scene, makeVolumeNode, tinyModels, ijkToRas):
    rng = np.random.default_rng(1)
    photo = np.zeros((1, 32, 40, 3), dtype=np.uint8)
    photo[0, :, :20] = (200, 40, 40)
    photo[0, :, 20:] = (30, 60, 220)
    photo = np.clip(photo + rng.integers(0, 20, photo.shape), 0, 255).astype(np.uint8)
    node = makeVolumeNode(photo, spacing=(0.1, 0.1, 1.0), vector=True, name="photo")
    logic = CUTSSegmentLogic(scene)
    result = logic.segment(node, tinyModels["rgb"], method="kmeans", k=3, **RUN)
    assert result.levelCount == 1
    labels = arrayFromVolumeNode(result.labelmapNode)
    assert labels.shape == (1, 32, 40)
    assert 1 <= result.clusterCounts[0] <= 3
    np.testing.assert_allclose(ijkToRas(result.labelmapNode), ijkToRas(node), atol=1e-9)

    rgbVolume = makeVolumeNode(np.repeat(photo, 3, axis=0), vector=True, name="rgbVolume")
    with pytest.raises(InputError, match="RGB volume"):
        logic.segmentSteps(rgbVolume, tinyModels["rgb"])


def test_persistent_method_under_a_linear_transform(scene, obliqueVolumeNode, tinyModels, ijkToRas):
    """A parent transform is hardened: the label map sits where the transformed input is shown."""
    transformNode = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 12.0)
    matrix.SetElement(2, 3, -7.5)
    transformNode.SetMatrixTransformToParent(matrix)
    obliqueVolumeNode.SetAndObserveTransformNodeID(transformNode.GetID())
    result = CUTSSegmentLogic(scene).segment(
        obliqueVolumeNode, tinyModels["grey"], method="persistent", **RUN
    )
    assert result.levelCount == 1
    shown = arrayFromVolumeNode(result.labelmapNode)
    assert shown.min() >= 0
    assert result.clusterCounts[0] == len(np.unique(shown[shown > 0]))
    expected = ijkToRas(obliqueVolumeNode)
    expected[:3, 3] += (12.0, 0.0, -7.5)
    np.testing.assert_allclose(ijkToRas(result.labelmapNode), expected, atol=1e-9)
    assert result.labelmapNode.GetParentTransformNode() is None


def test_set_level_refuses_levels_that_do_not_exist(segmented):
    """A script looping over levels must hear about a missing level, not get the last one again."""
    count = segmented.result.levelCount
    for bad in (count, 999, -1, -5, float("nan"), "abc", None, 1.0, True):
        with pytest.raises(InputError, match="level|Level"):
            segmented.setLevel(bad)
    assert segmented.result.levelIndex == 1  # unchanged by the refusals
    assert segmented.setLevel(np.int64(count - 1)) == segmented.result.clusterCounts[-1]
    segmented.setLevel(1)


def _fill(disk):
    """Fill a small disk to the last byte."""
    descriptor = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(descriptor, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(descriptor)


@pytest.mark.parametrize("name", ["labels.nrrd", "labels.nii.gz", "labels.seg.nrrd"])
def test_exports_to_unwritable_places_raise_the_projects_error(
    segmented, tmp_path, small_disk, sceneSnapshot, name
):
    export = (
        segmented.exportSegmentation if name.endswith(".seg.nrrd") else segmented.exportLabelmap
    )
    before = sceneSnapshot(segmented.scene)
    aFile = tmp_path / "notes.txt"
    aFile.write_text("kept")
    (tmp_path / name).mkdir()  # a folder where the file should go
    _fill(small_disk)
    for target, reason in (
        (aFile / name, "Could not write"),
        (tmp_path / name, "Could not write"),
        (small_disk / name, "disk"),
    ):
        with pytest.raises(LabelFreeError, match=reason):
            export(target)
    assert sceneSnapshot(segmented.scene) == before  # no node or subject hierarchy item left
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
    assert aFile.read_text() == "kept" and not list((tmp_path / name).iterdir())


def test_logic_limits_match_the_engine():
    from CUTSSegmentLib import logic

    from labelfree.cuts import volume

    assert logic.MAX_KMEANS_CLUSTERS == volume.MAX_KMEANS_CLUSTERS
    assert logic.METHODS == volume.METHODS


def test_segmentation_in_a_child_process_equals_the_in_process_run(
    scene, obliqueVolumeNode, tinyModels, tmp_path
):
    """What the widget runs (a child process, so Slicer's main thread stays free) gives the
    labels the logic computes in-process, texture features included; cancelling it leaves no
    result folder."""
    from LabelFreeLib.training import TrainingProcess

    logic = CUTSSegmentLogic(scene)
    options = {"maxLevels": 4, "seed": 3, "device": "cpu", "textureScale": 3.0}
    inProcess = logic.segment(obliqueVolumeNode, tinyModels["grey"], **options)
    inProcessMaps = [m.copy() for m in inProcess.maps]

    command = logic.segmentationCommand(obliqueVolumeNode, tmp_path, tinyModels["grey"], **options)
    process = TrainingProcess(command)
    assert process.wait(timeout=300) == 0, "\n".join(process.log)
    assert process.succeeded and process.modelPath == tmp_path / "result"
    loaded = logic.loadSegmentation(obliqueVolumeNode, process.modelPath)
    assert loaded.labelmapNode.GetScene() is scene and loaded.labelmapNode != inProcess.labelmapNode
    assert loaded.clusterCounts == inProcess.clusterCounts
    for ours, theirs in zip(loaded.maps, inProcessMaps, strict=True):
        np.testing.assert_array_equal(ours, theirs)

    cancelled = tmp_path / "cancelled"
    cancelled.mkdir()
    command = logic.segmentationCommand(obliqueVolumeNode, cancelled, tinyModels["grey"], **options)
    process = TrainingProcess(command, grace=2.0)
    while process.running and not any(line.startswith("PROGRESS") for line in process.log):
        process.poll()
    process.cancel()
    process.wait(timeout=60)
    assert process.cancelled and not process.succeeded
    assert sorted(p.name for p in cancelled.iterdir()) == ["input.nrrd"]


def test_the_structure_under_a_click_is_what_the_segment_editor_effect_adds(segmented, ijkToRas):
    """The "CUTS pick" effect hands logic.structureAt's image to the editor; on the label map's
    grid, it holds the clicked cluster's connected part, and merging it adds to a segment."""
    from CUTSSegmentLib.segments import newSegmentationNode

    result = segmented.result
    labelmapNode = result.labelmapNode
    pointRas = list((ijkToRas(labelmapNode) @ [20, 16, 3, 1])[:3])  # voxel i=20, j=16, k=3
    structure = segmented.structureAt(pointRas)
    matrix = vtk.vtkMatrix4x4()
    structure.GetImageToWorldMatrix(matrix)
    np.testing.assert_allclose(
        [[matrix.GetElement(r, c) for c in range(4)] for r in range(4)],
        ijkToRas(labelmapNode),
        atol=1e-9,
    )
    from vtk.util import numpy_support

    voxels = numpy_support.vtk_to_numpy(structure.GetPointData().GetScalars())
    expected = binarise_by_point(result.currentLabels, (3, 16, 20), connected=True)
    assert voxels.sum() == expected.sum() > 0

    scene = segmented.scene
    segmentationNode = newSegmentationNode(scene, "edited", labelmapNode)
    segmentId = segmentationNode.GetSegmentation().AddEmptySegment("", "picked", [1, 0, 0])
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    assert logic.SetBinaryLabelmapToSegment(
        structure, segmentationNode, segmentId, logic.MODE_MERGE_MAX, structure.GetExtent()
    )
    np.testing.assert_array_equal(segmentMask(segmentationNode, segmentId, labelmapNode), expected)
    with pytest.raises(InputError, match="outside"):
        segmented.structureAt([1e4, 1e4, 1e4])
    removeNodes(scene, segmentationNode)


def test_picks_go_to_a_new_segment_of_one_segmentation(segmented):
    first, firstId = segmented.pickSegmentation()
    again, secondId = segmented.pickSegmentation(first)
    assert again is first and firstId != secondId
    segmentation = first.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 2
    assert _tag(segmentation.GetSegment(secondId), "LabelFree.Level") == "2"
    shNode = segmented.scene.GetSubjectHierarchyNode()
    volumeItem = shNode.GetItemByDataNode(segmented.result.inputVolumeNode)
    assert shNode.GetItemParent(shNode.GetItemByDataNode(first)) == shNode.GetItemParent(volumeItem)
    removeNodes(segmented.scene, first)
