"""LandmarkDiscoveryLogic on a real MRML scene (PyPI slicer-core, no Qt).

The landmark models are small but real: the engine's regressor with seeded random
weights, written and read through the engine's model files. Expected positions are
computed independently of the module: the engine runs on an Image built here from the
node's own IJK-to-RAS matrix, and its LPS points are converted to RAS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from LandmarkDiscoveryLib import LandmarkDiscoveryLogic  # noqa: E402  (conftest sets sys.path)
from LandmarkDiscoveryLib.nodes import NodeSnapshot, landmarksFromNode  # noqa: E402
from LandmarkDiscoveryLib.testdata import makeTinyLandmarkModel  # noqa: E402

from labelfree.errors import InputError, LabelFreeError, ModelFileError  # noqa: E402
from labelfree.io import Image, lps_to_ras, read_image, write_image  # noqa: E402
from labelfree.landmarks.detect import detect_landmarks  # noqa: E402
from labelfree.markups import read_csv, read_landmark_table, read_markups  # noqa: E402

N_LANDMARKS = 8
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Paths of a 3-D and a 2-D landmark model and of a CUTS model (the wrong kind)."""
    from labelfree.cuts.model import CutsModel, save_cuts_model
    from labelfree.cuts.normalise import default_normalisation

    folder = tmp_path_factory.mktemp("models")
    cuts = CutsModel(1, embed_dim=8)
    return {
        3: makeTinyLandmarkModel(folder / "tiny3d.pt", ndim=3, nLandmarks=N_LANDMARKS),
        2: makeTinyLandmarkModel(folder / "tiny2d.pt", ndim=2, nLandmarks=N_LANDMARKS),
        "cuts": save_cuts_model(
            folder / "cuts.pt", cuts, {"normalisation": default_normalisation(1)}, {}
        ),
    }


def imageFromNodeMatrix(array, ijkToRasMatrix):
    """An engine Image of ``array`` [k, j, i] in the geometry of a 4x4 IJK-to-RAS matrix."""
    linear = ijkToRasMatrix[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    return Image(
        array=np.asarray(array),
        spacing=tuple(spacing),
        origin=tuple(LPS_FROM_RAS @ ijkToRasMatrix[:3, 3]),
        direction=LPS_FROM_RAS @ (linear / spacing),
    )


def nodeArray(volumeNode):
    from vtk.util import numpy_support

    imageData = volumeNode.GetImageData()
    dims = imageData.GetDimensions()
    scalars = numpy_support.vtk_to_numpy(imageData.GetPointData().GetScalars())
    return scalars.reshape(dims[2], dims[1], dims[0])


def worldPoints(node):
    return landmarksFromNode(node, world=True)[0]


def linearTransform(scene, angleDegrees=30.0, translation=(15.0, -7.0, 22.0)):
    angle = np.deg2rad(angleDegrees)
    matrix = np.eye(4)
    matrix[:3, :3] = [
        [1, 0, 0],
        [0, np.cos(angle), -np.sin(angle)],
        [0, np.sin(angle), np.cos(angle)],
    ]
    matrix[:3, 3] = translation
    vtkMatrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vtkMatrix.SetElement(r, c, matrix[r, c])
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    node.SetMatrixTransformToParent(vtkMatrix)
    return node, matrix


def test_landmarks_land_in_the_volume_geometry(scene, obliqueVolumeNode, models, ijkToRas):
    logic = LandmarkDiscoveryLogic(scene)
    markups = logic.detect(obliqueVolumeNode, modelPath=models[3], keep=5)

    matrix = ijkToRas(obliqueVolumeNode)
    engine = detect_landmarks(
        imageFromNodeMatrix(nodeArray(obliqueVolumeNode), matrix), models[3], keep=5
    )
    expected = lps_to_ras(engine.points_lps)
    np.testing.assert_allclose(worldPoints(markups), expected, atol=1e-6)
    # The same points through the node's own matrix from the engine's voxel indices.
    viaIndex = (matrix @ np.c_[engine.index_xyz, np.ones(5)].T).T[:, :3]
    np.testing.assert_allclose(worldPoints(markups), viaIndex, atol=1e-6)

    assert markups.IsA("vtkMRMLMarkupsFiducialNode")
    assert markups.GetScene() is scene
    assert markups.GetName() == "oblique_landmarks"
    assert markups.GetNumberOfControlPoints() == 5
    labels = [markups.GetNthControlPointLabel(i) for i in range(5)]
    assert labels == engine.names == ["LM-01", "LM-02", "LM-03", "LM-04", "LM-05"]
    _, _, importance = landmarksFromNode(markups)
    np.testing.assert_allclose(importance, engine.importance, atol=1e-4)
    assert markups.GetNthControlPointDescription(0).startswith("importance=1.0000 rank=1/8")
    assert markups.GetLocked() and markups.GetFixedNumberOfControlPoints()
    assert all(markups.GetNthControlPointLocked(i) for i in range(5))
    assert markups.GetAttribute("LabelFree.model") == str(models[3])
    assert markups.GetTransformNodeID() is None
    assert markups.GetDisplayNode() is not None
    # The point list goes beside the volume in the subject hierarchy (here: a subject folder).
    shNode = scene.GetSubjectHierarchyNode()
    subject = shNode.CreateFolderItem(shNode.GetSceneItemID(), "subject")
    shNode.CreateItem(subject, obliqueVolumeNode)
    again = logic.detect(obliqueVolumeNode, modelPath=models[3], keep=2)
    assert shNode.GetItemParent(shNode.GetItemByDataNode(again)) == subject
    # Fixed in number: adding a point is refused.
    markups.AddControlPoint(vtk.vtkVector3d(0, 0, 0))
    assert markups.GetNumberOfControlPoints() == 5


def test_importance_threshold_and_reused_output(scene, obliqueVolumeNode, models):
    logic = LandmarkDiscoveryLogic(scene)
    first = logic.detect(obliqueVolumeNode, modelPath=models[3])
    assert first.GetNumberOfControlPoints() == N_LANDMARKS
    again = logic.detect(
        obliqueVolumeNode, modelPath=models[3], minImportance=0.65, outputNode=first
    )
    assert again is first
    _, names, importance = landmarksFromNode(first)
    assert names == ["LM-01", "LM-02", "LM-03", "LM-04"]  # importance 1.0, 0.9, 0.8, 0.7
    assert np.all(importance >= 0.65)
    assert first.GetLocked() and first.GetFixedNumberOfControlPoints()
    assert scene.GetNodesByClass("vtkMRMLMarkupsFiducialNode").GetNumberOfItems() == 1


def test_parent_transform_is_respected(scene, obliqueVolumeNode, models, ijkToRas):
    logic = LandmarkDiscoveryLogic(scene)
    plain = worldPoints(logic.detect(obliqueVolumeNode, modelPath=models[3]))

    transformNode, matrix = linearTransform(scene)
    obliqueVolumeNode.SetAndObserveTransformNodeID(transformNode.GetID())
    markups = logic.detect(obliqueVolumeNode, modelPath=models[3])
    expected = (matrix @ np.c_[plain, np.ones(len(plain))].T).T[:, :3]
    np.testing.assert_allclose(worldPoints(markups), expected, atol=1e-6)
    # The points follow the volume: they sit under the same transform.
    assert markups.GetTransformNodeID() == transformNode.GetID()
    shifted = vtk.vtkMatrix4x4()
    shifted.DeepCopy(transformNode.GetMatrixTransformToParent())
    shifted.SetElement(2, 3, shifted.GetElement(2, 3) + 10.0)
    transformNode.SetMatrixTransformToParent(shifted)
    np.testing.assert_allclose(worldPoints(markups), expected + [0.0, 0.0, 10.0], atol=1e-6)


def test_single_slice_volume_with_2d_model(scene, makeVolumeNode, phantomArray, models, ijkToRas):
    array = phantomArray()[2:3]  # (1, 32, 40): a 2-D image as Slicer holds it
    node = makeVolumeNode(array, spacing=(0.5, 0.7, 1.0), originRas=(5.0, 6.0, 7.0), name="slice")
    markups = LandmarkDiscoveryLogic(scene).detect(node, modelPath=models[2])
    engine = detect_landmarks(Image(array[0], (1.0, 1.0), (0.0, 0.0), np.eye(2)), models[2])
    index = np.c_[engine.index_xyz, np.zeros(N_LANDMARKS), np.ones(N_LANDMARKS)]
    expected = (ijkToRas(node) @ index.T).T[:, :3]
    np.testing.assert_allclose(worldPoints(markups), expected, atol=1e-6)
    assert np.allclose(worldPoints(markups)[:, 2], 7.0)


@pytest.mark.parametrize("world", [True, False])
def test_exports_read_back_with_slicer_and_engine_readers(
    scene, obliqueVolumeNode, models, tmp_path, world
):
    logic = LandmarkDiscoveryLogic(scene)
    transformNode, _ = linearTransform(scene)
    obliqueVolumeNode.SetAndObserveTransformNodeID(transformNode.GetID())
    markups = logic.detect(obliqueVolumeNode, modelPath=models[3], keep=6)
    points, names, importance = landmarksFromNode(markups, world=world)
    descriptions = [markups.GetNthControlPointDescription(i) for i in range(6)]

    for suffix, storageClass in (
        (".mrk.json", "vtkMRMLMarkupsJsonStorageNode"),
        (".fcsv", "vtkMRMLMarkupsFiducialStorageNode"),
    ):
        path = logic.exportLandmarks(markups, tmp_path / f"landmarks{suffix}", world=world)
        readScene = slicer.vtkMRMLScene()
        loaded = readScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
        storage = readScene.AddNode(getattr(slicer, storageClass)())
        storage.SetFileName(str(path))
        assert storage.ReadData(loaded) == 1, suffix
        loadedPoints, loadedNames, loadedImportance = landmarksFromNode(loaded, world=False)
        np.testing.assert_allclose(loadedPoints, points, atol=1e-6, err_msg=suffix)
        assert loadedNames == names
        assert [loaded.GetNthControlPointDescription(i) for i in range(6)] == descriptions
        np.testing.assert_allclose(loadedImportance, importance, atol=1e-4)
        assert all(loaded.GetNthControlPointLocked(i) for i in range(6))
        if suffix == ".mrk.json":  # .fcsv has no list-level flags
            assert loaded.GetLocked() and loaded.GetFixedNumberOfControlPoints()

    path = logic.exportLandmarks(markups, tmp_path / "landmarks.csv", world=world)
    csvPoints, csvNames, csvImportance = read_csv(path)
    np.testing.assert_allclose(lps_to_ras(csvPoints), points, atol=1e-6)
    assert csvNames == names
    np.testing.assert_allclose(csvImportance, importance, atol=1e-4)


def test_export_refuses_unknown_suffix_and_empty_list(scene, tmp_path):
    logic = LandmarkDiscoveryLogic(scene)
    empty = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "empty")
    with pytest.raises(InputError, match="no control points"):
        logic.exportLandmarks(empty, tmp_path / "x.mrk.json")
    empty.AddControlPoint(vtk.vtkVector3d(1, 2, 3), "p")
    with pytest.raises(InputError, match="Unknown landmark file type"):
        logic.exportLandmarks(empty, tmp_path / "x.txt")
    assert list(tmp_path.iterdir()) == []


def test_export_to_unwritable_places_raises_the_projects_error(scene, tmp_path, small_disk):
    logic = LandmarkDiscoveryLogic(scene)
    markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "points")
    for index in range(2000):  # about 300 KiB of .mrk.json: more than the small disk holds
        markups.AddControlPoint(vtk.vtkVector3d(index, 2, 3), f"point {index}")
    aFile = tmp_path / "notes.txt"
    aFile.write_text("kept")
    (tmp_path / "folder.fcsv").mkdir()
    for target in (aFile / "x.mrk.json", tmp_path / "folder.fcsv", small_disk / "x.mrk.json"):
        with pytest.raises(LabelFreeError, match="Could not write"):
            logic.exportLandmarks(markups, target)
    assert list(small_disk.iterdir()) == [] and aFile.read_text() == "kept"


def writeBatchFolder(folder, phantomArray):
    """Three small volumes with different geometries, one broken file, one unrelated file."""
    folder.mkdir()
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    geometries = [
        ("case01.nrrd", (0.8, 0.6, 2.5), (10.0, -5.0, 3.0), np.eye(3)),
        ("case02.nii.gz", (1.0, 1.0, 1.5), (-4.0, 2.0, 9.0), rotation),
        ("case03.mha", (0.5, 0.9, 2.0), (0.0, 0.0, 0.0), np.diag([1.0, -1.0, -1.0])),
    ]
    for seed, (name, spacing, origin, direction) in enumerate(geometries):
        write_image(Image(phantomArray(seed=seed), spacing, origin, direction), folder / name)
    (folder / "broken.nrrd").write_text("this is not an image")
    (folder / "notes.txt").write_text("ignored")
    return [folder / name for name, *_ in geometries]


def test_batch_writes_one_file_per_volume_and_one_table(
    scene, models, tmp_path, phantomArray, sceneSnapshot
):
    volumes = writeBatchFolder(tmp_path / "in", phantomArray)
    before = sceneSnapshot(scene)
    logic = LandmarkDiscoveryLogic(scene)
    reports = []
    result = logic.batchDetect(
        tmp_path / "in",
        tmp_path / "out",
        modelPath=models[3],
        keep=4,
        progressCallback=reports.append,
    )

    assert sceneSnapshot(scene) == before  # batch mode reads files, not the scene
    assert [p.name for p in result.files] == [
        "case01.mrk.json",
        "case02.mrk.json",
        "case03.mrk.json",
    ]
    assert [p.name for p, _ in result.failures] == ["broken.nrrd"]
    assert "Could not read" in result.failures[0][1]
    assert reports[-1].fraction == 1.0
    assert all(a.fraction <= b.fraction for a, b in zip(reports, reports[1:], strict=False))

    table = read_landmark_table(result.table)
    assert list(table) == ["case01", "case02", "case03"]
    for volume, landmarkFile, subject in zip(volumes, result.files, table, strict=True):
        expected = detect_landmarks(read_image(volume), models[3], keep=4)
        points, names, importance = read_markups(landmarkFile)
        np.testing.assert_allclose(points, expected.points_lps, atol=1e-6)
        assert names == expected.names
        np.testing.assert_allclose(importance, expected.importance, atol=1e-4)
        tablePoints, tableNames, tableImportance = table[subject]
        np.testing.assert_allclose(tablePoints, expected.points_lps, atol=1e-6)
        assert tableNames == expected.names
    # The GUI's batch writes what the command line writes for the same volumes.
    from labelfree import cli

    command = ["landmarks", "detect", *map(str, volumes), "--model", str(models[3])]
    assert cli.main([*command, "--out", str(tmp_path / "cli"), "--keep", "4"]) == 0
    for landmarkFile in result.files:
        ours, theirs = (
            read_markups(landmarkFile),
            read_markups(tmp_path / "cli" / landmarkFile.name),
        )
        np.testing.assert_allclose(ours[0], theirs[0], atol=1e-9)
        assert ours[1] == theirs[1]
    assert (tmp_path / "cli" / "landmarks.csv").read_text() == result.table.read_text()
    assert sorted(
        p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")
    ) == sorted([p.name for p in result.files] + ["landmarks.csv", "provenance.json"])


def test_batch_cancelled_writes_no_table(models, tmp_path, phantomArray, scene):
    writeBatchFolder(tmp_path / "in", phantomArray)
    steps = LandmarkDiscoveryLogic(scene).batchDetectSteps(
        tmp_path / "in", tmp_path / "out", modelPath=models[3], fileFormat=".fcsv"
    )
    next(steps)
    next(steps)  # first volume done
    steps.close()
    assert not (tmp_path / "out" / "landmarks.csv").exists()


def test_batch_bad_arguments(scene, models, tmp_path, phantomArray):
    logic = LandmarkDiscoveryLogic(scene)
    with pytest.raises(InputError, match="not found"):
        logic.batchDetect(tmp_path / "missing", tmp_path / "out", modelPath=models[3])
    writeBatchFolder(tmp_path / "in", phantomArray)
    with pytest.raises(ModelFileError, match="'cuts' model"):
        logic.batchDetect(tmp_path / "in", tmp_path / "out", modelPath=models["cuts"])
    with pytest.raises(InputError, match="Unknown landmark file type"):
        logic.batchDetect(tmp_path / "in", tmp_path / "out", modelPath=models[3], fileFormat=".txt")
    assert not (tmp_path / "out" / "landmarks.csv").exists()


def test_bad_inputs_give_clear_errors_and_leave_the_scene(
    scene, obliqueVolumeNode, makeVolumeNode, phantomArray, models, sceneSnapshot
):
    logic = LandmarkDiscoveryLogic(scene)
    fourD = makeVolumeNode(np.stack([phantomArray()] * 5, axis=-1), name="fourD")
    rgb = makeVolumeNode(np.stack([phantomArray()] * 3, axis=-1).astype(np.uint8), vector=True)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    warped = makeVolumeNode(phantomArray(), name="warped")
    warp = scene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    spline = vtk.vtkThinPlateSplineTransform()
    source, target = vtk.vtkPoints(), vtk.vtkPoints()
    for point, shift in (
        ((0, 0, 0), (0, 0, 0)),
        ((10, 0, 0), (2, 1, 0)),
        ((0, 10, 0), (0, 0, 0)),
        ((0, 0, 10), (1, 0, 0)),
    ):
        source.InsertNextPoint(point)
        target.InsertNextPoint(np.add(point, shift))
    spline.SetSourceLandmarks(source)
    spline.SetTargetLandmarks(target)
    warp.SetAndObserveTransformToParent(spline)
    warped.SetAndObserveTransformNodeID(warp.GetID())
    before = sceneSnapshot(scene)
    cases = [
        (dict(volumeNode=None, modelPath=models[3]), InputError, "select a volume"),
        (dict(volumeNode=fourD, modelPath=models[3]), InputError, "4-D"),
        (dict(volumeNode=rgb, modelPath=models[3]), InputError, "colour"),
        (dict(volumeNode=empty, modelPath=models[3]), InputError, "no voxels"),
        (dict(volumeNode=warped, modelPath=models[3]), InputError, "non-linear"),
        (
            dict(volumeNode=obliqueVolumeNode, modelPath=models["cuts"]),
            ModelFileError,
            "'cuts' model",
        ),
        (dict(volumeNode=obliqueVolumeNode, modelPath=models[2]), InputError, "2-D landmark model"),
        (
            dict(volumeNode=obliqueVolumeNode, modelPath=Path("/no/such/model.pt")),
            ModelFileError,
            "not found",
        ),
        (
            dict(volumeNode=obliqueVolumeNode, modelPath=models[3], keep=99),
            InputError,
            "keep must be",
        ),
    ]
    for kwargs, errorType, message in cases:
        with pytest.raises(errorType, match=message):
            logic.detect(**kwargs)
        assert sceneSnapshot(scene) == before, kwargs


def test_failed_run_keeps_an_existing_point_list(scene, obliqueVolumeNode, models, sceneSnapshot):
    logic = LandmarkDiscoveryLogic(scene)
    userPoints = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "mine")
    userPoints.AddControlPoint(vtk.vtkVector3d(1.0, 2.0, 3.0), "keep me")
    before = sceneSnapshot(scene)
    with pytest.raises(LabelFreeError):
        logic.detect(obliqueVolumeNode, modelPath=models[2], outputNode=userPoints)
    assert sceneSnapshot(scene) == before
    points, names, _ = landmarksFromNode(userPoints)
    np.testing.assert_allclose(points, [[1.0, 2.0, 3.0]])
    assert names == ["keep me"] and not userPoints.GetLocked()


def test_snapshot_restores_a_point_list(scene, obliqueVolumeNode, models):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "mine")
    node.AddControlPoint(vtk.vtkVector3d(1.0, 2.0, 3.0), "a")
    node.SetNthControlPointDescription(0, "described")
    snapshot = NodeSnapshot(node)
    LandmarkDiscoveryLogic(scene).detect(obliqueVolumeNode, modelPath=models[3], outputNode=node)
    assert node.GetNumberOfControlPoints() == N_LANDMARKS and node.GetLocked()
    snapshot.restore()
    points, names, _ = landmarksFromNode(node)
    np.testing.assert_allclose(points, [[1.0, 2.0, 3.0]])
    assert names == ["a"] and node.GetNthControlPointDescription(0) == "described"
    assert not node.GetLocked() and not node.GetFixedNumberOfControlPoints()


def test_parameter_node_is_a_singleton(scene):
    logic = LandmarkDiscoveryLogic(scene)
    node = logic.getParameterNode()
    assert node.IsA("vtkMRMLScriptedModuleNode")
    assert logic.getParameterNode() is node
    assert LandmarkDiscoveryLogic(scene).getParameterNode().GetID() == node.GetID()
    assert node.GetAttribute("ModuleName") == "LandmarkDiscovery"


def test_self_test_data_gives_landmarks_inside_the_volume(scene, tmp_path):
    """The synthetic inputs of the in-app self-test work end to end (no download)."""
    from LandmarkDiscoveryLib.testdata import makeSyntheticVolumeNode

    modelPath = makeTinyLandmarkModel(tmp_path / "tiny.pt", ndim=3)
    volumeNode = makeSyntheticVolumeNode(scene)
    markups = LandmarkDiscoveryLogic(scene).detect(volumeNode, modelPath=modelPath, keep=5)
    bounds = np.zeros(6)
    volumeNode.GetRASBounds(bounds)
    points = worldPoints(markups)
    assert points.shape == (5, 3)
    assert np.all(points >= bounds[0::2] - 1e-6) and np.all(points <= bounds[1::2] + 1e-6)
    assert len({tuple(np.round(p, 3)) for p in points}) == 5


def test_training_inputs_from_scene_volumes(
    scene, obliqueVolumeNode, makeVolumeNode, phantomArray, tmp_path
):
    """What "Train" hands the headless trainer: the scene's volumes as files, in world geometry."""
    from LabelFreeLib.mrml import volumeNodeToImage

    logic = LandmarkDiscoveryLogic(scene)
    transformNode, _ = linearTransform(scene)
    obliqueVolumeNode.SetAndObserveTransformNodeID(transformNode.GetID())
    makeVolumeNode(phantomArray(seed=1), spacing=(1.0, 0.5, 2.0), name="second")
    scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")  # not trainable
    volumes = logic.trainableVolumes()
    assert [v.GetName() for v in volumes] == ["oblique", "second"]
    paths = logic.trainingInputs(tmp_path, volumeNodes=volumes)
    for path, node in zip(paths, volumes, strict=True):
        written, expected = read_image(path), volumeNodeToImage(node)
        np.testing.assert_array_equal(written.array, expected.array)
        np.testing.assert_allclose(written.origin, expected.origin, atol=1e-4)
        np.testing.assert_allclose(written.direction, expected.direction, atol=1e-6)
    with pytest.raises(InputError, match="either"):
        logic.trainingInputs(tmp_path)
    with pytest.raises(InputError, match="at least two"):
        logic.trainingInputs(tmp_path, volumeNodes=volumes[:1])


@pytest.mark.slow
def test_headless_training_gives_a_model_the_logic_uses(
    scene, obliqueVolumeNode, makeVolumeNode, phantomArray, tmp_path
):
    """The "Train" path without Qt: the trainer runs in a child process (as the widget starts
    it) on the scene's volumes, and its model finds landmarks on the volume (~30 s)."""
    import sys

    from LabelFreeLib.training import TrainingProcess, trainingCommand

    logic = LandmarkDiscoveryLogic(scene)
    makeVolumeNode(phantomArray(seed=1), spacing=(1.0, 0.5, 2.0), name="second")
    paths = logic.trainingInputs(tmp_path, volumeNodes=logic.trainableVolumes())
    command = trainingCommand(
        "landmarks",
        paths,
        tmp_path / "trained.pt",
        python=sys.executable,
        landmarks=4,
        epochs=1,
        input_size=48,
        device="cpu",
    )
    process = TrainingProcess(command)
    assert process.wait(timeout=300) == 0, "\n".join(process.log[-20:])
    assert process.succeeded and process.modelPath == tmp_path / "trained.pt"
    markups = logic.detect(obliqueVolumeNode, modelPath=process.modelPath)
    assert markups.GetNumberOfControlPoints() == 4


def test_logic_imports_without_torch_scipy_or_skimage():
    """Slicer loads the module before the user agreed to install torch: no eager imports."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    code = (
        f"import sys; sys.path[:0] = [r'{root}', r'{root}/LandmarkDiscovery'];"
        "import LandmarkDiscoveryLib, LandmarkDiscoveryLib.testdata;"
        "print(sorted(m for m in ('torch', 'scipy', 'skimage') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_retrained_model_file_is_reloaded(scene, obliqueVolumeNode, tmp_path):
    """The logic keeps the loaded model between runs, but not once the file changed."""
    path = makeTinyLandmarkModel(tmp_path / "model.pt", ndim=3, nLandmarks=6)
    logic = LandmarkDiscoveryLogic(scene)
    assert logic.detect(obliqueVolumeNode, modelPath=path).GetNumberOfControlPoints() == 6
    makeTinyLandmarkModel(tmp_path / "model.pt", ndim=3, nLandmarks=5, seed=1)
    assert logic.detect(obliqueVolumeNode, modelPath=path).GetNumberOfControlPoints() == 5


def test_batch_refuses_a_volume_whose_file_would_overwrite_the_table(scene, models, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    image = Image(
        np.random.default_rng(0).normal(size=(8, 12, 10)), (1.0, 1.0, 1.0), (0, 0, 0), np.eye(3)
    )
    write_image(image, folder / "landmarks.nrrd")
    write_image(image, folder / "other.nrrd")
    with pytest.raises(InputError, match="overwrite the table"):
        LandmarkDiscoveryLogic(scene).batchDetect(
            folder, tmp_path / "out", models[3], fileFormat=".csv"
        )
    assert not (tmp_path / "out" / "landmarks.csv").exists()


def test_bundled_model_or_a_clear_error_without_one(scene, obliqueVolumeNode, sceneSnapshot):
    from labelfree.landmarks.model import BUNDLED
    from labelfree.modelfile import WEIGHTS_DIR

    logic = LandmarkDiscoveryLogic(scene)
    if (WEIGHTS_DIR / BUNDLED[3]).is_file():
        markups = logic.detect(obliqueVolumeNode)
        assert markups.GetNumberOfControlPoints() > 0
        assert markups.GetAttribute("LabelFree.model") == "bundled"
    else:
        before = sceneSnapshot(scene)
        with pytest.raises(ModelFileError, match="No bundled 3-D landmark model"):
            logic.detect(obliqueVolumeNode)
        assert sceneSnapshot(scene) == before


def test_batch_in_a_child_process_writes_what_the_in_process_batch_writes(
    scene, models, tmp_path, phantomArray
):
    """The GUI runs the batch as a child process (the main thread stays free): same files."""
    from LabelFreeLib.training import TrainingProcess

    writeBatchFolder(tmp_path / "in", phantomArray)
    logic = LandmarkDiscoveryLogic(scene)
    inProcess = logic.batchDetect(tmp_path / "in", tmp_path / "here", modelPath=models[3], keep=4)
    command = logic.batchDetectCommand(tmp_path / "in", tmp_path / "child", models[3], keep=4)
    process = TrainingProcess(command)
    assert process.wait(timeout=300) == 0, "\n".join(process.log)
    assert process.succeeded and process.modelPath == tmp_path / "child"
    assert any(line.startswith("WARNING broken.nrrd") for line in process.log)
    for landmarkFile in inProcess.files:
        assert (tmp_path / "child" / landmarkFile.name).read_text() == landmarkFile.read_text()
    assert (tmp_path / "child" / "landmarks.csv").read_text() == inProcess.table.read_text()
    with pytest.raises(InputError, match="Unknown landmark file type"):
        logic.batchDetectCommand(tmp_path / "in", tmp_path / "x", models[3], fileFormat=".txt")
    with pytest.raises(InputError, match="not found"):
        logic.batchDetectCommand(tmp_path / "in", tmp_path / "x", tmp_path / "missing.pt")


def test_detect_steps_are_short_and_closing_them_leaves_the_scene(
    scene, obliqueVolumeNode, models, sceneSnapshot
):
    logic = LandmarkDiscoveryLogic(scene)
    before = sceneSnapshot(scene)
    steps = logic.detectSteps(obliqueVolumeNode, modelPath=models[3], keep=3)
    messages = []
    while not messages or messages[-1] != "Placing the points":
        messages.append(next(steps).message)
    assert messages[:3] == ["Reading the volume", "Loading the model", "Finding landmarks"]
    assert "Running the network" in messages
    steps.close()  # cancelled before the point list was filled
    assert sceneSnapshot(scene) == before
    node = logic.detect(obliqueVolumeNode, modelPath=models[3], keep=3)
    assert node.GetNumberOfControlPoints() == 3


def test_training_and_the_default_input_leave_out_label_maps_and_rgb(
    scene, makeVolumeNode, phantomArray, tmp_path
):
    from LabelFreeLib.mrml import imageVolumes

    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    label.SetAndObserveImageData(vtk.vtkImageData())
    rgb = makeVolumeNode(np.stack([phantomArray()] * 3, axis=-1).astype(np.uint8), vector=True)
    grey = [makeVolumeNode(phantomArray(seed=seed), name=f"grey{seed}") for seed in (1, 2)]
    assert imageVolumes(scene) == [rgb, *grey]  # scene order, the label map never
    assert imageVolumes(scene, scalarOnly=True) == grey
    logic = LandmarkDiscoveryLogic(scene)
    assert logic.trainableVolumes() == grey
    with pytest.raises(InputError, match="colour"):
        logic.trainingInputs(tmp_path, volumeNodes=[grey[0], rgb])
