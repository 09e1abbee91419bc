"""A real MRML scene (PyPI ``slicer-core``, no Qt) for the modules' logic tests.

The scene is bootstrapped like Slicer's application does it (and like
trame-slicer's ``SlicerApp``): application logic, default colour nodes, then
the volumes, segmentations, markups and subject hierarchy logics registered
with the scene. Module folders (``CUTSSegment``, ``LandmarkDiscovery``,
``LabelFreeLib``'s folder) go on ``sys.path`` as they are inside Slicer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIRS = ("", "CUTSSegment", "LandmarkDiscovery")  # "": the root holds LabelFreeLib
for _name in MODULE_DIRS:
    _path = str(ROOT / _name) if _name else str(ROOT)
    if _path not in sys.path:
        sys.path.insert(0, _path)

slicer = pytest.importorskip("slicer", reason="needs slicer-core (pip install slicer-core)")
vtk = pytest.importorskip("vtk")

from LabelFreeLib.headless import newScene  # noqa: E402 (needs the path above)

# The direction of the oblique test volume: a rotation about a tilted axis, so that
# every element differs from the identity (columns are the i, j, k axes in RAS).
_AXIS = np.array([1.0, 2.0, 3.0]) / np.linalg.norm([1.0, 2.0, 3.0])
_ANGLE = np.deg2rad(25.0)
_K = np.array([[0, -_AXIS[2], _AXIS[1]], [_AXIS[2], 0, -_AXIS[0]], [-_AXIS[1], _AXIS[0], 0]])
OBLIQUE_DIRECTION_RAS = np.eye(3) + np.sin(_ANGLE) * _K + (1 - np.cos(_ANGLE)) * _K @ _K
OBLIQUE_SPACING = (0.8, 0.6, 2.5)
OBLIQUE_ORIGIN_RAS = (12.5, -30.0, 41.0)
OBLIQUE_SHAPE_KJI = (6, 32, 40)


@pytest.fixture
def scene():
    """A fresh scene with the core logics attached (see :func:`newScene`), cleared after the test."""
    scene, logics = newScene()
    yield scene
    scene.Clear(True)
    del logics


@pytest.fixture(scope="module")
def moduleScene():
    """Like ``scene``, shared by the tests of one file (for expensive set-ups)."""
    scene, logics = newScene()
    yield scene
    scene.Clear(True)
    del logics


def _makeVolumeNode(scene, array, spacing, originRas, directionRas, name="volume", vector=False):
    """Add a volume node holding ``array`` (``[k, j, i]`` or ``[k, j, i, c]``) with a geometry."""
    from vtk.util import numpy_support

    className = "vtkMRMLVectorVolumeNode" if vector else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(className, name)
    array = np.ascontiguousarray(array)
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    components = array.shape[3] if array.ndim == 4 else 1
    vtkArray = numpy_support.numpy_to_vtk(array.reshape(-1, components), deep=True)
    imageData.GetPointData().SetScalars(vtkArray)
    node.SetAndObserveImageData(imageData)
    node.SetSpacing(*spacing)
    node.SetOrigin(*originRas)
    directions = vtk.vtkMatrix4x4()
    for row in range(3):
        for col in range(3):
            directions.SetElement(row, col, float(directionRas[row][col]))
    node.SetIJKToRASDirectionMatrix(directions)
    node.CreateDefaultDisplayNodes()
    return node


def _syntheticPhantom(shape=OBLIQUE_SHAPE_KJI, seed=0) -> np.ndarray:
    """A small float32 volume with structure: background, a body, two inclusions, noise."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    volume = np.full(shape, 10.0, dtype=np.float32)
    volume[(j / 0.85) ** 2 + (i / 0.8) ** 2 < 1] = 100.0
    volume[(j + 0.3) ** 2 + (i + 0.25) ** 2 < 0.08] = 200.0
    volume[(j - 0.35) ** 2 + (i - 0.3) ** 2 < 0.05] = 40.0
    volume += rng.normal(0, 3, shape).astype(np.float32)
    return volume


@pytest.fixture
def phantomArray():
    """``phantomArray(shape=(6, 32, 40), seed=0)``: a float32 ``[k, j, i]`` volume with structure."""
    return _syntheticPhantom


def makeObliqueVolumeNode(scene, name="oblique"):
    """Add the oblique test volume (see ``obliqueVolumeNode``) to ``scene``."""
    return _makeVolumeNode(
        scene,
        _syntheticPhantom(),
        OBLIQUE_SPACING,
        OBLIQUE_ORIGIN_RAS,
        OBLIQUE_DIRECTION_RAS,
        name=name,
    )


@pytest.fixture
def obliqueVolumeNode(scene):
    """A scalar volume ``[k, j, i] = (6, 32, 40)`` with non-identity spacing, origin and direction."""
    return makeObliqueVolumeNode(scene)


@pytest.fixture
def makeVolumeNode(scene):
    """``makeVolumeNode(array, spacing, originRas, directionRas, name=..., vector=False)``."""

    def make(array, spacing=(1.0, 1.0, 1.0), originRas=(0.0, 0.0, 0.0), directionRas=None, **kw):
        direction = np.eye(3) if directionRas is None else directionRas
        return _makeVolumeNode(scene, array, spacing, originRas, direction, **kw)

    return make


@pytest.fixture
def ijkToRas():
    """``ijkToRas(node)``: a volume node's IJK-to-RAS matrix as a (4, 4) array."""
    return _ijkToRas


@pytest.fixture
def sceneSnapshot():
    """``sceneSnapshot(scene)``: sorted (ID, class) of every node, to check nothing changed."""
    return _sceneSnapshot


def _ijkToRas(node) -> np.ndarray:
    """A volume node's IJK-to-RAS matrix as a (4, 4) array."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _sceneSnapshot(scene) -> list[tuple[str, str]]:
    """The IDs and classes of every node and subject hierarchy item (to check nothing changed)."""
    nodes = scene.GetNodes()
    entries = [
        (nodes.GetItemAsObject(i).GetID(), nodes.GetItemAsObject(i).GetClassName())
        for i in range(nodes.GetNumberOfItems())
    ]
    shNode = scene.GetSubjectHierarchyNode()
    items = vtk.vtkIdList()
    shNode.GetItemChildren(shNode.GetSceneItemID(), items, True)
    for index in range(items.GetNumberOfIds()):
        dataNode = shNode.GetItemDataNode(items.GetId(index))
        entries.append((f"item {items.GetId(index)}", dataNode.GetID() if dataNode else "folder"))
    return sorted(entries)


@pytest.fixture(scope="session")
def addObliqueVolume():
    """``addObliqueVolume(scene, name="oblique")``: the oblique test volume in any scene."""
    return makeObliqueVolumeNode
