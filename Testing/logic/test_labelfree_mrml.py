"""LabelFreeLib.mrml: volume nodes <-> engine images on a real MRML scene."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from labelfree.errors import InputError  # noqa: E402
from labelfree.io import lps_to_ras  # noqa: E402
from LabelFreeLib import mrml  # noqa: E402  (the conftest sets sys.path)

ROOT = Path(__file__).resolve().parents[2]


def test_oblique_volume_geometry_round_trips(scene, obliqueVolumeNode, ijkToRas):
    image = mrml.volumeNodeToImage(obliqueVolumeNode)
    assert image.array.shape == (6, 32, 40)
    assert image.channels == 1
    np.testing.assert_allclose(image.spacing, (0.8, 0.6, 2.5))
    # Voxel (i, j, k) = (3, 5, 2) lands on the same physical point through both paths.
    expected = ijkToRas(obliqueVolumeNode) @ np.array([3, 5, 2, 1.0])
    lps = image.index_to_physical(np.array([[3, 5, 2]]))[0]
    np.testing.assert_allclose(lps_to_ras(lps), expected[:3], atol=1e-9)
    # The image is a copy: editing it leaves the node alone.
    image.array[:] = 0
    assert mrml.arrayFromVolumeNode(obliqueVolumeNode).max() > 0

    labels = (np.arange(image.array.size).reshape(image.spatial_shape) % 3).astype(np.uint8)
    colorNode = mrml.createColorTableNode(scene, ["a", "b"])
    labelNode = mrml.createLabelmapNode(scene, labels, image, "labels", colorNode)
    np.testing.assert_allclose(ijkToRas(labelNode), ijkToRas(obliqueVolumeNode), atol=1e-9)
    np.testing.assert_array_equal(mrml.arrayFromVolumeNode(labelNode), labels)
    assert labelNode.GetDisplayNode().GetColorNodeID() == colorNode.GetID()
    assert colorNode.GetColorName(2) == "b"


def test_linear_parent_transform_is_hardened(scene, obliqueVolumeNode, ijkToRas):
    transformNode = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 15.0)
    matrix.SetElement(0, 0, 0.0)
    matrix.SetElement(0, 1, -1.0)
    matrix.SetElement(1, 0, 1.0)
    matrix.SetElement(1, 1, 0.0)
    transformNode.SetMatrixTransformToParent(matrix)
    obliqueVolumeNode.SetAndObserveTransformNodeID(transformNode.GetID())
    image = mrml.volumeNodeToImage(obliqueVolumeNode)
    world = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    expected = world @ ijkToRas(obliqueVolumeNode) @ np.array([1, 2, 3, 1.0])
    got = lps_to_ras(image.index_to_physical(np.array([[1, 2, 3]]))[0])
    np.testing.assert_allclose(got, expected[:3], atol=1e-9)


def test_rgb_volume_keeps_three_channels(makeVolumeNode):
    rgba = np.random.default_rng(0).integers(0, 255, (1, 20, 30, 4), dtype=np.uint8)
    node = makeVolumeNode(rgba, vector=True, name="photo")
    image = mrml.volumeNodeToImage(node)
    assert image.channels == 3
    np.testing.assert_array_equal(image.array, rgba[..., :3])


def test_bad_inputs_are_refused_clearly(scene, makeVolumeNode, obliqueVolumeNode):
    with pytest.raises(InputError, match="No input volume"):
        mrml.volumeNodeToImage(None)
    frames = np.zeros((4, 8, 8, 5), dtype=np.float32)
    with pytest.raises(InputError, match="4-D"):
        mrml.volumeNodeToImage(makeVolumeNode(frames, vector=True, name="dwi"))
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no voxels"):
        mrml.volumeNodeToImage(empty)
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    obliqueVolumeNode.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(InputError, match="non-linear"):
        mrml.volumeNodeToImage(obliqueVolumeNode)


def test_ras_point_to_index(obliqueVolumeNode, ijkToRas):
    image = mrml.volumeNodeToImage(obliqueVolumeNode)
    ras = ijkToRas(obliqueVolumeNode) @ np.array([7, 4, 3, 1.0])
    assert mrml.rasToIjkIndex(image, ras[:3]) == (3, 4, 7)
    with pytest.raises(InputError, match="outside"):
        mrml.rasToIjkIndex(image, ras[:3] + 1000.0)


def test_subject_hierarchy_placement(scene, obliqueVolumeNode):
    shNode = scene.GetSubjectHierarchyNode()
    folder = shNode.CreateFolderItem(shNode.GetSceneItemID(), "study")
    shNode.CreateItem(folder, obliqueVolumeNode)
    other = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "result")
    mrml.placeInSubjectHierarchyBeside(scene, other, obliqueVolumeNode)
    assert shNode.GetItemParent(shNode.GetItemByDataNode(other)) == folder


def test_distinct_colors_are_distinct():
    colors = mrml.distinctColors(40)
    distances = np.linalg.norm(colors[:, None] - colors[None], axis=-1)
    assert distances[~np.eye(40, dtype=bool)].min() > 0.02


def test_requirements_are_found_and_checked(tmp_path):
    from LabelFreeLib import dependencies

    path = dependencies.requirementsPath()
    assert path.name == "requirements.txt" and path.parent.name == "Resources"
    toInstall = dependencies.requirementsToInstall(path)
    assert dependencies._missingPackages(toInstall) == []  # the test environment has them
    fake = tmp_path / "requirements.txt"
    fake.write_text("# comment\nscipy>=1.0\nno-such-package-labelfree>=1  # trailing\n")
    missing = dependencies._missingPackages(dependencies.requirementsToInstall(fake))
    assert missing == ["no-such-package-labelfree>=1"]


def test_packages_slicer_bundles_are_never_installed():
    """SimpleITK is built into Slicer with its own IO; scipy and numpy ship with it too."""
    from LabelFreeLib import dependencies

    toInstall = dependencies.requirementsToInstall(dependencies.requirementsPath())
    names = {dependencies._requirementName(line).lower() for line in toInstall}
    assert names and not names & {"simpleitk", "scipy", "numpy"}
    assert "scikit-image" in names


def test_torch_version_is_checked_against_the_requirement():
    from LabelFreeLib.dependencies import torchVersionSatisfies

    assert torchVersionSatisfies("2.13.0+cpu") and torchVersionSatisfies("2.1.0")
    assert not torchVersionSatisfies("2.0.1") and not torchVersionSatisfies("1.13.1+cu117")
    assert not torchVersionSatisfies("garbage")


def test_slicer_packaging_is_imported_by_name():
    """Slicer 5.12 imports slicer.packaging lazily; getattr(slicer, "packaging") misses it."""
    source = (ROOT / "LabelFreeLib" / "dependencies.py").read_text()
    assert "import slicer.packaging" in source
    assert 'getattr(slicer, "packaging"' not in source


def test_logics_without_a_scene_say_how_to_pass_one():
    from CUTSSegmentLib import CUTSSegmentLogic
    from LandmarkDiscoveryLib import LandmarkDiscoveryLogic

    assert getattr(slicer, "mrmlScene", None) is None  # slicer-core has no application scene
    for logicClass in (CUTSSegmentLogic, LandmarkDiscoveryLogic):
        with pytest.raises(InputError, match=f"pass one, e.g. {logicClass.__name__}"):
            logicClass()


def test_the_sample_data_source_points_at_the_bundled_sample():
    """What registerSampleData hands to Slicer's Sample Data module: a file URI it can copy,
    the right checksum, and a thumbnail that exists."""
    import hashlib
    import urllib.request

    from labelfree.demo import SAMPLE
    from LabelFreeLib.sampleData import sampleDataSources

    (source,) = sampleDataSources()
    local, _headers = urllib.request.urlretrieve(source["uris"])  # what SampleData does
    digest = hashlib.sha256(open(local, "rb").read()).hexdigest()
    assert source["checksums"] == f"SHA256:{digest}"
    assert digest == hashlib.sha256(SAMPLE.read_bytes()).hexdigest()
    assert Path(source["thumbnailFileName"]).is_file()
    # Only arguments that registerCustomSampleDataSource takes (Slicer 5.10's signature).
    accepted = {"category", "sampleName", "uris", "fileNames", "nodeNames", "customDownloader"}
    accepted |= {"thumbnailFileName", "loadFileTypes", "loadFiles", "loadFileProperties"}
    accepted |= {"checksums", "loadFileType"}
    assert set(source) <= accepted


def test_reload_picks_up_edits_to_a_package(tmp_path, monkeypatch):
    """What the widgets' onReload does for their Lib packages, on a package of our own."""
    import importlib
    import sys

    from LabelFreeLib import reloadPackages

    package = tmp_path / "EditedLib"
    package.mkdir()
    (package / "__init__.py").write_text("from .logic import VALUE\n")
    (package / "logic.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("EditedLib")
    assert module.VALUE == 1
    (package / "logic.py").write_text("VALUE = 2  # edited\n")
    importlib.invalidate_caches()
    assert reloadPackages("EditedLib") == ["EditedLib.logic", "EditedLib"]
    assert sys.modules["EditedLib"].VALUE == 2
    for name in ("EditedLib.logic", "EditedLib"):
        sys.modules.pop(name)


def test_the_parameter_node_is_made_as_slicers_template_makes_it(scene):
    from LabelFreeLib.mrml import moduleParameterNode

    node = moduleParameterNode(scene, "CUTSSegment")
    assert (
        node.GetSingletonTag() == "CUTSSegment" and node.GetAttribute("ModuleName") == "CUTSSegment"
    )
    node.RemoveAttribute("ModuleName")  # what a scene close leaves on the singleton
    assert moduleParameterNode(scene, "CUTSSegment") is node
    assert node.GetAttribute("ModuleName") == "CUTSSegment"
    assert scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode") == 1
