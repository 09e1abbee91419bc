"""MRML <-> engine conversions shared by the LabelFree modules.

Volume nodes become :class:`labelfree.io.Image` objects (arrays with LPS
geometry) and engine results become MRML nodes again, in the same geometry.
Qt-free: this file imports ``slicer`` (MRML classes) and ``vtk`` only, so it
runs inside Slicer and against a bare MRML scene from the PyPI package
``slicer-core``.

Geometry conventions
--------------------
- A volume node's ``IJKToRAS`` matrix maps voxel indices ``(i, j, k)`` to RAS
  millimetres. ``Image`` uses ITK's LPS: the first two rows flip sign.
- Arrays of ``vtkImageData`` are indexed ``[k, j, i]`` (``z, y, x``), which is
  the order of ``Image.array``.
- A linear parent transform is hardened: the image (and every output made from
  it) lives in world coordinates. Non-linear transforms are refused.

Example
-------
>>> image = volumeNodeToImage(volumeNode)           # doctest: +SKIP
>>> labels = someEngineFunction(image)              # (z, y, x) integers
>>> colorNode = createColorTableNode(scene, ["body", "air"])
>>> labelNode = createLabelmapNode(scene, labels, image, "labels", colorNode)
"""

from __future__ import annotations

import colorsys

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from labelfree.errors import InputError
from labelfree.io import Image

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
_ORTHOGONALITY_TOLERANCE = 1e-3

__all__ = [
    "arrayFromVolumeNode",
    "createColorTableNode",
    "createLabelmapNode",
    "distinctColors",
    "ijkToRasFromImage",
    "imageFromVolumeNode",
    "imageVolumes",
    "moduleParameterNode",
    "placeInSubjectHierarchyBeside",
    "rasToIjkIndex",
    "removeNodes",
    "updateVolumeFromArray",
    "volumeNodeToImage",
    "worldIJKToRASMatrix",
]


def sceneOrDefault(scene, logicName: str):
    """``scene``, else ``slicer.mrmlScene`` inside the application; a clear error outside it."""
    if scene is None:
        scene = getattr(slicer, "mrmlScene", None)
    if scene is None:
        raise InputError(f"No MRML scene: pass one, e.g. {logicName}(slicer.vtkMRMLScene()).")
    return scene


def moduleParameterNode(scene, moduleName: str):
    """A module's singleton ``vtkMRMLScriptedModuleNode``, as Slicer's template makes it.

    Same node, tag, name and ``ModuleName`` attribute as
    ``ScriptedLoadableModuleLogic.getParameterNode`` (``Base/Python/slicer/
    ScriptedLoadableModule.py``), including restoring the attribute that a scene
    close removes; the widget wraps the node in its ``parameterNodeWrapper`` class.
    """
    node = scene.GetSingletonNode(moduleName, "vtkMRMLScriptedModuleNode")
    if node is not None:
        if node.GetAttribute("ModuleName") != moduleName:
            node.SetAttribute("ModuleName", moduleName)
        return node
    node = slicer.vtkMRMLScriptedModuleNode()
    node.SetSingletonTag(moduleName)
    node.SetAttribute("ModuleName", moduleName)
    node.SetName(scene.GenerateUniqueName(moduleName))
    return scene.AddNode(node)


def arrayFromVolumeNode(volumeNode) -> np.ndarray:
    """A numpy view of a volume node's voxels, indexed ``[k, j, i]`` (plus a component axis).

    ``slicer.util.arrayFromVolume`` without the Slicer application; the view shares
    memory with the node, so copy it before keeping it.
    """
    imageData = volumeNode.GetImageData() if volumeNode is not None else None
    if imageData is None or imageData.GetPointData().GetScalars() is None:
        raise InputError("The volume has no voxels; load an image into it first.")
    scalars = imageData.GetPointData().GetScalars()
    dims = imageData.GetDimensions()
    shape = (dims[2], dims[1], dims[0])
    components = scalars.GetNumberOfComponents()
    if components > 1:
        shape += (components,)
    return numpy_support.vtk_to_numpy(scalars).reshape(shape)


def worldIJKToRASMatrix(volumeNode) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of a volume node with its parent transforms hardened.

    Raises
    ------
    InputError
        If a parent transform is non-linear (warping), which cannot be hardened
        into a voxel grid without resampling.
    """
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    matrix = _numpyFromVtkMatrix(ijkToRas)
    transformNode = volumeNode.GetParentTransformNode()
    if transformNode is None:
        return matrix
    if not transformNode.IsTransformToWorldLinear():
        raise InputError(
            f"'{volumeNode.GetName()}' is under the non-linear transform "
            f"'{transformNode.GetName()}'. Harden the transform on the volume first "
            "(Data module: right-click the volume > Harden transform), then try again."
        )
    toWorld = vtk.vtkMatrix4x4()
    transformNode.GetMatrixTransformToWorld(toWorld)
    return _numpyFromVtkMatrix(toWorld) @ matrix


def volumeNodeToImage(volumeNode) -> Image:
    """Copy a scalar or RGB volume node into an engine :class:`~labelfree.io.Image`.

    Parameters
    ----------
    volumeNode : vtkMRMLScalarVolumeNode or vtkMRMLVectorVolumeNode
        A 3-D volume (a 2-D image is a volume one slice thick). RGB(A)
        vector volumes keep three channels; alpha is dropped.

    Returns
    -------
    Image
        ``array`` ``(z, y, x)`` or ``(z, y, x, 3)``, a copy; spacing ``(x, y, z)``
        in mm; origin and direction in LPS, with linear parent transforms hardened.

    Raises
    ------
    InputError
        No volume, no voxels, a 4-D (multi-frame or multi-component) volume, a
        time point of a sequence, a non-linear or shearing parent transform.
    """
    if volumeNode is None:
        raise InputError("No input volume selected; select a volume first.")
    if not volumeNode.IsA("vtkMRMLVolumeNode"):
        raise InputError(f"'{volumeNode.GetName()}' is not a volume; select an image volume.")
    _refuseSequenceFrame(volumeNode)
    array = arrayFromVolumeNode(volumeNode)
    channels = array.shape[3] if array.ndim == 4 else 1
    isVector = volumeNode.IsA("vtkMRMLVectorVolumeNode")
    if channels > 1 and not (isVector and channels in (3, 4)):
        raise InputError(
            f"'{volumeNode.GetName()}' has {channels} values per voxel (a 4-D or multi-component "
            "volume); extract one 3-D frame first (e.g. with the Sequences or Multivolume module)."
        )
    if channels == 4:
        array, channels = array[..., :3], 3
    matrix = worldIJKToRASMatrix(volumeNode)
    spacing, origin, direction = _geometryFromIJKToRAS(matrix, volumeNode.GetName())
    return Image(
        array=np.array(array, copy=True),
        spacing=tuple(spacing),
        origin=tuple(origin),
        direction=direction,
        channels=channels,
    )


imageFromVolumeNode = volumeNodeToImage


def ijkToRasFromImage(image: Image) -> vtk.vtkMatrix4x4:
    """The IJK-to-RAS ``vtkMatrix4x4`` of an :class:`~labelfree.io.Image` (3-D)."""
    if image.ndim != 3:
        raise InputError("Only 3-D images map onto volume nodes; add a slice axis first.")
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_FROM_RAS @ np.asarray(image.direction) @ np.diag(image.spacing)
    matrix[:3, 3] = LPS_FROM_RAS @ np.asarray(image.origin, dtype=float)
    vtkMatrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for col in range(4):
            vtkMatrix.SetElement(row, col, float(matrix[row, col]))
    return vtkMatrix


def rasToIjkIndex(image: Image, pointRas) -> tuple[int, int, int]:
    """The ``(z, y, x)`` array index of the voxel holding a world RAS point.

    Raises
    ------
    InputError
        If the point lies outside the image.
    """
    pointLps = LPS_FROM_RAS @ np.asarray(pointRas, dtype=float)
    ijk = np.rint(image.physical_to_index(pointLps[None, :])[0]).astype(int)
    index = (int(ijk[2]), int(ijk[1]), int(ijk[0]))
    if any(i < 0 or i >= n for i, n in zip(index, image.spatial_shape, strict=True)):
        raise InputError("The point is outside the volume; click inside the segmented volume.")
    return index


def updateVolumeFromArray(volumeNode, array: np.ndarray) -> None:
    """Replace a volume node's voxels with ``array`` ``[k, j, i]`` (geometry kept).

    ``slicer.util.updateVolumeFromArray`` without the Slicer application: one
    copy into a new ``vtkImageData``, milliseconds for a brain-sized volume.
    """
    array = np.ascontiguousarray(array)
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    vtkArray = numpy_support.numpy_to_vtk(array.reshape(-1), deep=True)
    imageData.GetPointData().SetScalars(vtkArray)
    volumeNode.SetAndObserveImageData(imageData)


def distinctColors(count: int) -> np.ndarray:
    """``count`` well separated RGB colours in [0, 1], ``(count, 3)``, deterministic.

    Hues follow the golden angle so that neighbouring labels differ; saturation
    and value alternate so that many labels stay distinguishable.
    """
    golden = 0.618033988749895
    colors = []
    for index in range(count):
        hue = (0.1 + index * golden) % 1.0
        saturation = (0.55, 0.8, 0.4)[index % 3]
        value = (0.95, 0.75, 0.85)[(index // 3) % 3]
        colors.append(colorsys.hsv_to_rgb(hue, saturation, value))
    return np.asarray(colors, dtype=float).reshape(count, 3)


def createColorTableNode(scene, names, name: str = "LabelFree colors", colors=None):
    """A ``vtkMRMLColorTableNode``: value 0 is a transparent background, value ``i`` is ``names[i-1]``.

    Parameters
    ----------
    scene : vtkMRMLScene
        Where the node is added.
    names : sequence of str
        One name per label value, starting at 1.
    name : str
        The node's name.
    colors : (N, 3) array, optional
        RGB in [0, 1]; :func:`distinctColors` by default.
    """
    names = list(names)
    colors = distinctColors(len(names)) if colors is None else np.asarray(colors, dtype=float)
    colorNode = slicer.vtkMRMLColorTableNode()
    colorNode.SetTypeToUser()
    colorNode.SetNumberOfColors(len(names) + 1)
    colorNode.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    for value, (label, rgb) in enumerate(zip(names, colors, strict=True), start=1):
        colorNode.SetColor(value, str(label), float(rgb[0]), float(rgb[1]), float(rgb[2]), 1.0)
    colorNode.SetName(scene.GenerateUniqueName(name))
    colorNode.SetHideFromEditors(False)
    scene.AddNode(colorNode)
    return colorNode


def createLabelmapNode(scene, labels: np.ndarray, image: Image, name: str, colorNode=None):
    """A ``vtkMRMLLabelMapVolumeNode`` holding ``labels`` in the geometry of ``image``.

    Parameters
    ----------
    scene : vtkMRMLScene
        Where the node is added.
    labels : (z, y, x) integer array
        Label values; 0 is background.
    image : Image
        The geometry (as returned by :func:`volumeNodeToImage`, so in world RAS).
    name : str
        Base name; made unique in the scene.
    colorNode : vtkMRMLColorTableNode, optional
        Colours and names of the labels, set on the display node.
    """
    labels = np.asarray(labels)
    if labels.shape != tuple(image.spatial_shape):
        raise InputError(
            f"Labels of shape {labels.shape} do not match the image shape {image.spatial_shape}."
        )
    labelNode = slicer.vtkMRMLLabelMapVolumeNode()
    labelNode.SetName(scene.GenerateUniqueName(name))
    scene.AddNode(labelNode)
    labelNode.SetIJKToRASMatrix(ijkToRasFromImage(image))
    updateVolumeFromArray(labelNode, labels.astype(_labelDtype(labels), copy=False))
    labelNode.CreateDefaultDisplayNodes()
    if colorNode is not None and labelNode.GetDisplayNode() is not None:
        labelNode.GetDisplayNode().SetAndObserveColorNodeID(colorNode.GetID())
    return labelNode


def placeInSubjectHierarchyBeside(scene, node, referenceNode) -> None:
    """Put ``node`` under the same subject hierarchy parent (patient/study/folder) as ``referenceNode``.

    Items are created when missing: outside the application no plugin creates them.
    """
    shNode = scene.GetSubjectHierarchyNode()
    if shNode is None or node is None:
        return
    parentItem = shNode.GetSceneItemID()
    if referenceNode is not None:
        referenceItem = shNode.GetItemByDataNode(referenceNode)
        if referenceItem:
            parentItem = shNode.GetItemParent(referenceItem)
    item = shNode.GetItemByDataNode(node)
    if item:
        shNode.SetItemParent(item, parentItem)
    else:
        shNode.CreateItem(parentItem, node)


def imageVolumes(scene, scalarOnly: bool = False) -> list:
    """The scene's image volumes with voxels, in scene order: never label maps.

    ``vtkMRMLLabelMapVolumeNode`` and ``vtkMRMLVectorVolumeNode`` (RGB) both derive from
    ``vtkMRMLScalarVolumeNode``; ``scalarOnly`` also leaves out the vector volumes.
    """
    nodes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    volumes = [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]
    return [
        v
        for v in volumes
        if not v.IsA("vtkMRMLLabelMapVolumeNode")
        and not (scalarOnly and v.IsA("vtkMRMLVectorVolumeNode"))
        and v.GetImageData() is not None
    ]


def removeNodes(scene, *nodes) -> None:
    """Remove nodes with their display and storage nodes and subject hierarchy items.

    Plain MRML leaves the attached nodes behind, and the subject hierarchy item
    is removed only by the application's Qt plugin logic
    (``qSlicerSubjectHierarchyPluginLogic::onNodeAboutToBeRemoved``, which calls
    ``RemoveItem(item, false, false)``): outside the GUI it would stay, orphaned.
    """
    shNode = scene.GetSubjectHierarchyNode()
    for node in nodes:
        if node is None or node.GetScene() is None:
            continue
        item = shNode.GetItemByDataNode(node) if shNode is not None else 0
        if item:
            shNode.RemoveItem(item, False, False)
        attached = []
        for getCount, getNth in (
            ("GetNumberOfDisplayNodes", "GetNthDisplayNode"),
            ("GetNumberOfStorageNodes", "GetNthStorageNode"),
        ):
            if hasattr(node, getCount):
                attached += [getattr(node, getNth)(i) for i in range(getattr(node, getCount)())]
        scene.RemoveNode(node)
        for other in attached:
            if other is not None and other.GetScene() is not None:
                scene.RemoveNode(other)


def _labelDtype(labels: np.ndarray):
    """The smallest signed type that Slicer's labelmap tools accept for these values."""
    maximum = int(labels.max()) if labels.size else 0
    return np.int16 if maximum < 2**15 else np.int32


def _numpyFromVtkMatrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _geometryFromIJKToRAS(matrix: np.ndarray, nodeName: str):
    """Split a 4x4 IJK-to-RAS matrix into spacing, LPS origin and LPS direction."""
    linear = matrix[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"'{nodeName}' has a zero voxel size; fix its spacing (Volumes module).")
    directionRas = linear / spacing
    if np.abs(directionRas.T @ directionRas - np.eye(3)).max() > _ORTHOGONALITY_TOLERANCE:
        raise InputError(
            f"'{nodeName}' has a sheared voxel grid (through its transform); resample it "
            "first (Resample Scalar/Vector/DWI Volume module)."
        )
    direction = LPS_FROM_RAS @ directionRas
    origin = LPS_FROM_RAS @ matrix[:3, 3]
    return [float(s) for s in spacing], [float(o) for o in origin], direction


def _refuseSequenceFrame(volumeNode) -> None:
    """Refuse the proxy node of a sequence: it is one time point of a 4-D series."""
    scene = volumeNode.GetScene()
    if scene is None:
        return
    browsers = scene.GetNodesByClass("vtkMRMLSequenceBrowserNode")
    for index in range(browsers.GetNumberOfItems()):
        if browsers.GetItemAsObject(index).IsProxyNodeID(volumeNode.GetID()):
            raise InputError(
                f"'{volumeNode.GetName()}' shows one time point of a 4-D sequence. Copy the time "
                "point you want into its own volume first (Data module: right-click > Clone)."
            )
