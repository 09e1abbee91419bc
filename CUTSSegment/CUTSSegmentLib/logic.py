"""CUTSSegment logic: a volume node in, CUTS label maps out as MRML nodes (Qt-free).

Usable from the Python console, a script or a test, without the module's GUI::

    from CUTSSegmentLib import CUTSSegmentLogic

    logic = CUTSSegmentLogic()                       # slicer.mrmlScene inside Slicer
    result = logic.segment(volumeNode)               # blocking; bundled model, all levels
    logic.setLevel(2)                                # swap the label map to the third level
    segmentationNode = logic.createSegmentation()    # one segment per cluster
    logic.segmentFromPoint([10.0, -4.5, 31.0])       # the structure under a RAS point
    logic.exportSegmentation("/tmp/cuts.seg.nrrd")

The GUI drives the same run step by step: :meth:`CUTSSegmentLogic.segmentSteps`
returns a generator of :class:`labelfree.progress.Progress` whose return
value is the result. Nodes are created only when it finishes; closing the
generator cancels the run and leaves the scene untouched.

torch and the other engine dependencies are imported when a run starts, not
when this module is imported, so that the module loads before they are installed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import vtk
from vtk.util import numpy_support

from CUTSSegmentLib import export, segments
from labelfree.errors import InputError
from labelfree.io import Image
from labelfree.progress import Progress, Steps, run_steps
from LabelFreeLib import modelPathOrNone
from LabelFreeLib.mrml import (
    createColorTableNode,
    createLabelmapNode,
    distinctColors,
    moduleParameterNode,
    placeInSubjectHierarchyBeside,
    rasToIjkIndex,
    removeNodes,
    sceneOrDefault,
    volumeNodeToImage,
)

MODULE_NAME = "CUTSSegment"
METHODS = ("levels", "persistent", "kmeans")
AXES = ("auto", 0, 1, 2)
MAX_KMEANS_CLUSTERS = 255  # as labelfree.cuts.volume, which is imported late (it loads torch)
DEVICES = ("auto", "cpu", "cuda")
# Throughput of a whole run (embedding + condensation) on a 2-core CPU, voxels per second,
# from the 197x233x189 brain target (under 60 s); a GPU embeds about ten times faster.
CPU_VOXELS_PER_SECOND = 1.5e5
GPU_SPEEDUP = 8.0


@dataclass
class CUTSSegmentResult:
    """A finished run: the nodes it created and the label maps the granularity slider walks.

    Attributes
    ----------
    inputVolumeNode, labelmapNode, colorNode : vtkMRMLNode
        The input and the created nodes.
    maps : list of ndarray
        ``(z, y, x)`` label maps (values from 1; 0 is unused), coarsest first: the
        condensation levels, or the single persistent-structures or k-means map.
    clusterCounts : list of int
        Number of clusters of each map.
    method : str
        ``"levels"``, ``"persistent"`` or ``"kmeans"``.
    image : Image
        The input's geometry (in world coordinates); its voxels are not kept.
    modelCard : dict
        The card of the model that embedded the volume.
    seconds : dict
        Timings reported by the engine.
    levelIndex : int
        The map shown in ``labelmapNode``.
    """

    inputVolumeNode: Any
    labelmapNode: Any
    colorNode: Any
    maps: list[np.ndarray]
    clusterCounts: list[int]
    method: str
    image: Image
    modelCard: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    levelIndex: int = 0
    _imageCache: list = field(default_factory=list, repr=False)

    @property
    def levelCount(self) -> int:
        """How many maps the granularity slider walks."""
        return len(self.maps)

    @property
    def currentLabels(self) -> np.ndarray:
        """The map shown now, ``(z, y, x)``."""
        return self.maps[self.levelIndex]

    @property
    def modelName(self) -> str:
        """A short name of the model for tags and names."""
        card = self.modelCard or {}
        return str(card.get("name") or card.get("file") or card.get("trained_on") or "CUTS model")


class CUTSSegmentLogic:
    """Runs CUTS on volume nodes and manages the resulting nodes.

    Parameters
    ----------
    scene : vtkMRMLScene, optional
        The scene to read from and add nodes to; ``slicer.mrmlScene`` inside Slicer.
    """

    def __init__(self, scene=None):
        self.scene = sceneOrDefault(scene, "CUTSSegmentLogic")
        self.result: CUTSSegmentResult | None = None

    # -- parameters ---------------------------------------------------------------------------

    def getParameterNode(self):
        """The module's singleton ``vtkMRMLScriptedModuleNode`` (created on first use).

        The widget wraps it with its typed ``parameterNodeWrapper`` class.
        """
        return moduleParameterNode(self.scene, MODULE_NAME)

    # -- running ------------------------------------------------------------------------------

    def checkInputs(self, inputVolumeNode, model=None, device: str = "auto") -> Image:
        """Check everything a run needs before it starts; returns the input as an engine image.

        Raises
        ------
        InputError
            No volume, a 4-D volume, an unknown or unavailable device.
        ModelFileError
            A model file that is missing, foreign, or not a CUTS model.
        """
        image = volumeNodeToImage(inputVolumeNode)
        if image.channels > 1 and image.spatial_shape[0] > 1:
            raise InputError(
                f"'{inputVolumeNode.GetName()}' is an RGB volume with {image.spatial_shape[0]} "
                "slices; CUTS segments RGB 2-D images and grayscale volumes. Convert it to "
                "grayscale first (Vector to Scalar Volume module)."
            )
        from labelfree.cuts.model import load_cuts_model
        from labelfree.devices import resolve_device

        resolve_device(device)
        load_cuts_model(modelPathOrNone(model), channels=image.channels)
        return image

    def segmentSteps(
        self,
        inputVolumeNode,
        model: str | os.PathLike | None = None,
        *,
        method: str = "levels",
        k: int = 10,
        axis: str | int = "auto",
        device: str = "auto",
        seed: int = 0,
        batchSize: int = 8,
        maxLevels: int = 12,
        poolSize: int | None = None,
        textureScale: float = 0.0,
        name: str | None = None,
    ) -> Steps[CUTSSegmentResult]:
        """Segment a volume step by step; the generator returns a :class:`CUTSSegmentResult`.

        Inputs are checked at once (this call raises on bad input); the work
        happens while the generator is advanced. Closing it cancels the run.

        Parameters
        ----------
        inputVolumeNode : vtkMRMLScalarVolumeNode or vtkMRMLVectorVolumeNode
            A grayscale or RGB 3-D volume (2-D images are one-slice volumes).
        model : path-like, optional
            A CUTS model file; the bundled default for the channel count if None or "".
        method : {"levels", "persistent", "kmeans"}
            Condensation levels (slider), persistent structures, or k-means with ``k``.
        k : int
            Clusters for ``"kmeans"``.
        axis : "auto" or int
            Slicing axis in numpy order (0 = k, 1 = j, 2 = i); "auto" picks the axial one.
        device : {"auto", "cpu", "cuda"}
            Where the encoder runs.
        seed : int
            Random seed; the same seed gives the same labels.
        batchSize, maxLevels : int
            Slices per encoder batch; most condensation levels kept.
        poolSize : int, optional
            Voxels pooled for condensation (the engine's default if None).
        textureScale : float
            0: condense the embeddings. Above 0: condense texture features pooled over this
            many pixels, for structures told apart by texture
            (:mod:`labelfree.cuts.texture`).
        name : str, optional
            Base name of the created nodes; from the input's name by default.
        """
        self._checkOptions(method, k, axis)
        image = self.checkInputs(inputVolumeNode, model, device)
        options = {
            "axis": axis,
            "method": method,
            "k": int(k),
            "device": device,
            "seed": int(seed),
            "batch_size": int(batchSize),
            "max_levels": int(maxLevels),
            "texture_scale": float(textureScale),
        }
        if poolSize is not None:
            options["pool_size"] = int(poolSize)
        baseName = name or f"{inputVolumeNode.GetName()} CUTS"
        return self._runSteps(inputVolumeNode, image, modelPathOrNone(model), options, baseName)

    @staticmethod
    def _checkOptions(method, k, axis) -> None:
        if method not in METHODS:
            raise InputError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
        if axis not in AXES:
            raise InputError("The slicing axis must be 'auto', 0, 1 or 2.")
        if method == "kmeans" and not 2 <= int(k) <= MAX_KMEANS_CLUSTERS:
            raise InputError(f"k-means needs k between 2 and {MAX_KMEANS_CLUSTERS} clusters.")

    def _runSteps(self, inputVolumeNode, image, modelPath, options, baseName):
        from labelfree.cuts.volume import segment_volume_steps

        engineSteps = segment_volume_steps(_engineImage(image), modelPath, **options)
        segmentation = yield from engineSteps
        return (yield from self._resultSteps(inputVolumeNode, image, segmentation, baseName))

    def _resultSteps(self, inputVolumeNode, image, segmentation, baseName):
        """Label maps as the slider's arrays (one per step), then the nodes (the last step)."""
        raw, counts = _mapsOf(segmentation, segmentation.method)
        maps = []
        for labels in raw:
            yield Progress(1.0, "Creating the label map")
            maps.append(_asVolume(_sliderArray(labels), image.spatial_shape))
        geometry = image.with_array(np.empty(image.spatial_shape, dtype=np.uint8))
        result = self._createNodes(inputVolumeNode, geometry, maps, counts, baseName)
        result.method = segmentation.method
        result.modelCard = dict(getattr(segmentation, "model_card", {}) or {})
        result.seconds = dict(getattr(segmentation, "seconds", {}) or {})
        self.result = result
        return result

    def segment(
        self, inputVolumeNode, model=None, progress: Callable[[Progress], None] | None = None, **kw
    ) -> CUTSSegmentResult:
        """Blocking :meth:`segmentSteps` (scripts and tests); ``progress`` gets every report."""
        return run_steps(self.segmentSteps(inputVolumeNode, model, **kw), progress)

    def estimateSeconds(self, inputVolumeNode, device: str = "cpu") -> float:
        """A rough duration of a run, for the status line before Apply."""
        imageData = inputVolumeNode.GetImageData() if inputVolumeNode is not None else None
        if imageData is None:
            return 0.0
        voxels = math.prod(imageData.GetDimensions())
        seconds = 2.0 + voxels / CPU_VOXELS_PER_SECOND
        if device == "cuda":
            seconds /= GPU_SPEEDUP
        return seconds

    def _createNodes(self, inputVolumeNode, image, maps, counts, baseName) -> CUTSSegmentResult:
        """Colour table and label map, with the first map shown; all or nothing."""
        created = []
        try:
            top = max(1, max(int(m.max()) for m in maps))
            names = [f"cluster {value}" for value in range(1, top + 1)]
            colorNode = createColorTableNode(self.scene, names, name=f"{baseName} colors")
            created.append(colorNode)
            labelmapNode = createLabelmapNode(self.scene, maps[0], image, baseName, colorNode)
            created.append(labelmapNode)
            placeInSubjectHierarchyBeside(self.scene, labelmapNode, inputVolumeNode)
        except Exception:
            removeNodes(self.scene, *reversed(created))
            raise
        result = CUTSSegmentResult(
            inputVolumeNode, labelmapNode, colorNode, maps, counts, "levels", image
        )
        result._imageCache = [_imageDataSharing(m) for m in maps]
        labelmapNode.SetAndObserveImageData(result._imageCache[0])
        return result

    # -- after a run --------------------------------------------------------------------------

    def _requireResult(self) -> CUTSSegmentResult:
        if self.result is None or self.result.labelmapNode.GetScene() is None:
            raise InputError("Run the segmentation first (Apply).")
        return self.result

    def setLevel(self, levelIndex: int) -> int:
        """Show map ``levelIndex`` (0 = coarsest) in the label map; returns its cluster count.

        The label maps are cached as image data, so switching swaps a pointer.
        """
        result = self._requireResult()
        if isinstance(levelIndex, bool) or not isinstance(levelIndex, (int, np.integer)):
            raise InputError(f"The level must be a whole number, not {levelIndex!r}.")
        if not 0 <= levelIndex < result.levelCount:
            raise InputError(
                f"Level {levelIndex} does not exist; choose 0 (coarsest) to "
                f"{result.levelCount - 1} (finest)."
            )
        levelIndex = int(levelIndex)
        result.labelmapNode.SetAndObserveImageData(result._imageCache[levelIndex])
        result.levelIndex = levelIndex
        return result.clusterCounts[levelIndex]

    def _tags(self, result: CUTSSegmentResult) -> dict[str, str]:
        return {
            "Method": result.method,
            "Level": str(result.levelIndex + 1),
            "Clusters": str(result.clusterCounts[result.levelIndex]),
            "Model": result.modelName,
            "Source": result.inputVolumeNode.GetName(),
        }

    def createSegmentation(self, name: str | None = None):
        """The current level as a segmentation node: one named, coloured, tagged segment per cluster."""
        result = self._requireResult()
        level = result.levelIndex + 1
        name = name or f"{result.labelmapNode.GetName()} level {level}"
        segmentationNode = segments.newSegmentationNode(
            self.scene, name, result.labelmapNode, result.inputVolumeNode
        )
        try:
            segments.importLabelmap(result.labelmapNode, segmentationNode, self._tags(result))
        except Exception:
            removeNodes(self.scene, segmentationNode)
            raise
        return segmentationNode

    def segmentFromPoint(
        self, pointRas, *, connected: bool = True, segmentationNode=None, name: str | None = None
    ):
        """Make one segment from the structure under a world RAS point (a click).

        Parameters
        ----------
        pointRas : sequence of 3 float
            The clicked position, RAS millimetres.
        connected : bool
            Keep only the part of the clicked cluster connected to the point.
        segmentationNode : vtkMRMLSegmentationNode, optional
            Where the segment goes; a new one beside the input by default.

        Returns
        -------
        (segmentationNode, segmentId)
        """
        result = self._requireResult()
        mask, label = self._structureMask(pointRas, connected)
        return self._addSegment(result, mask, label, segmentationNode, name)

    def structureAt(self, pointRas, *, connected: bool = True):
        """The structure under a world RAS point at the current level, as a binary image.

        What the Segment Editor's "CUTS pick" effect adds to (or removes from) the selected
        segment: a ``vtkOrientedImageData`` (unsigned char, 1 inside) on the label map's grid.
        """
        mask, _label = self._structureMask(pointRas, connected)
        return segments.orientedImageFromMask(mask, self.result.image)

    def pickSegmentation(self, segmentationNode=None):
        """Where Segment Editor picks go: a segmentation beside the input, with a segment selected.

        Returns ``(segmentationNode, segmentId)``: the given node (or a new one named
        ``<volume> CUTS picks`` on the label map's grid), and a new empty segment in it for
        the "CUTS pick" effect to add structures to.
        """
        result = self._requireResult()
        if segmentationNode is None or segmentationNode.GetScene() is not self.scene:
            segmentationNode = self._newPicksNode(result)
        segmentation = segmentationNode.GetSegmentation()
        number = segmentation.GetNumberOfSegments() + 1
        segmentId = segmentation.AddEmptySegment("", f"CUTS pick {number}")
        segments.setTags(segmentation.GetSegment(segmentId), self._tags(result))
        return segmentationNode, segmentId

    def _structureMask(self, pointRas, connected: bool):
        from labelfree.cuts.hint import binarise_by_point

        result = self._requireResult()
        index = rasToIjkIndex(result.image, pointRas)
        mask = binarise_by_point(result.currentLabels, index, connected=connected)
        return mask, int(result.currentLabels[index])

    def segmentFromLabel(self, label: int, *, segmentationNode=None, name: str | None = None):
        """Make one segment from every voxel of cluster ``label`` at the current level."""
        result = self._requireResult()
        mask = result.currentLabels == int(label)
        if not mask.any():
            raise InputError(
                f"Cluster {label} does not occur at this level (1 to "
                f"{int(result.currentLabels.max())}); pick another."
            )
        return self._addSegment(result, mask, int(label), segmentationNode, name)

    def _newPicksNode(self, result):
        """The segmentation that picks go to: beside the input, on the label map's grid."""
        return segments.newSegmentationNode(
            self.scene,
            f"{result.inputVolumeNode.GetName()} CUTS picks",
            result.labelmapNode,
            result.inputVolumeNode,
        )

    def _addSegment(self, result, mask, label, segmentationNode, name):
        created = segmentationNode is None
        if created:
            segmentationNode = self._newPicksNode(result)
        color = distinctColors(max(label, 1))[max(label, 1) - 1]
        rgba = [0.0, 0.0, 0.0, 0.0]
        result.colorNode.GetColor(label, rgba)
        if rgba[3] > 0:
            color = rgba[:3]
        tags = {**self._tags(result), "Label": str(label)}
        segmentName = name or f"level {result.levelIndex + 1} cluster {label}"
        try:
            segmentId = segments.addSegmentFromMask(
                segmentationNode, mask, result.image, segmentName, color, tags
            )
        except Exception:
            if created:
                removeNodes(self.scene, segmentationNode)
            raise
        return segmentationNode, segmentId

    # -- adapting the model -------------------------------------------------------------------

    def segmentationCommand(
        self,
        inputVolumeNode,
        workDir: str | os.PathLike,
        model=None,
        *,
        method: str = "levels",
        k: int = 10,
        axis: str | int = "auto",
        device: str = "auto",
        seed: int = 0,
        maxLevels: int = 12,
        textureScale: float = 0.0,
        python: str | None = None,
    ) -> list[str]:
        """Write the volume to ``workDir`` and return the command that segments it there.

        The GUI runs it with :class:`LabelFreeLib.training.TrainingProcess`, so that a long
        run never holds Slicer's main thread and cancel ends it at once; the command writes
        the result folder ``workDir/result`` whole or not at all. Load it into the scene with
        :meth:`loadSegmentation`. Inputs are checked as :meth:`segmentSteps` checks them.
        """
        from labelfree.io import write_image
        from LabelFreeLib.training import trainingCommand

        self._checkOptions(method, k, axis)
        image = self.checkInputs(inputVolumeNode, model, device)
        # Uncompressed: this runs on the main thread, and the file lives only as long as the run.
        volumePath = write_image(_engineImage(image), Path(workDir) / "input.nrrd", compress=False)
        return trainingCommand(
            "segment",
            [volumePath],
            Path(workDir) / "result",
            python=python,
            model=modelPathOrNone(model),
            method=method,
            k=int(k),
            axis=axis,
            device=device,
            seed=int(seed),
            max_levels=int(maxLevels),
            texture_scale=float(textureScale),
        )

    def loadSegmentation(self, inputVolumeNode, folder, name: str | None = None):
        """Turn a result folder of :meth:`segmentationCommand` into nodes beside the input.

        Returns the :class:`CUTSSegmentResult`, as :meth:`segment` does.
        """
        return run_steps(self.loadSegmentationSteps(inputVolumeNode, folder, name))

    def loadSegmentationSteps(self, inputVolumeNode, folder, name: str | None = None):
        """:meth:`loadSegmentation` one label file per step, for the GUI's timer."""
        from labelfree.cuts.folders import read_result_folder_steps

        image = volumeNodeToImage(inputVolumeNode)
        segmentation = yield from read_result_folder_steps(folder)
        baseName = name or f"{inputVolumeNode.GetName()} CUTS"
        return (yield from self._resultSteps(inputVolumeNode, image, segmentation, baseName))

    def adaptationCommand(
        self,
        inputVolumeNode,
        workDir: str | os.PathLike,
        modelOut: str | os.PathLike,
        *,
        initModel: str | os.PathLike | None = None,
        epochs: int = 5,
        seed: int = 0,
        device: str = "auto",
        python: str | None = None,
    ) -> list[str]:
        """Write the volume to ``workDir`` and return the command that adapts a model to it.

        Run the command with :class:`LabelFreeLib.training.TrainingProcess` (the GUI polls
        it from a timer); it writes ``modelOut`` and its card only if training finishes.
        ``initModel`` None starts from the bundled model.
        """
        from labelfree.io import write_image
        from LabelFreeLib.training import trainingCommand

        image = volumeNodeToImage(inputVolumeNode)
        volumePath = write_image(image, Path(workDir) / "adapt_input.nrrd")
        return trainingCommand(
            "cuts",
            [volumePath],
            modelOut,
            python=python,
            epochs=int(epochs),
            seed=int(seed),
            device=device,
            init_model=modelPathOrNone(initModel) or "default",
        )

    # -- export -------------------------------------------------------------------------------

    def exportLabelmap(self, path: str | os.PathLike) -> Path:
        """Write the current level's label map (``.nrrd`` or ``.nii.gz``)."""
        return export.exportLabelmapNode(self._requireResult().labelmapNode, path)

    def exportSegmentation(self, path: str | os.PathLike, segmentationNode=None) -> Path:
        """Write a segmentation (the current level's, made on the fly, if none given) as ``.seg.nrrd``."""
        if segmentationNode is not None:
            return export.exportSegmentationNode(segmentationNode, path)
        segmentationNode = self.createSegmentation()
        try:
            return export.exportSegmentationNode(segmentationNode, path)
        finally:
            removeNodes(self.scene, segmentationNode)


def _mapsOf(segmentation, method: str) -> tuple[list, list[int]]:
    """The engine maps the slider walks (labels 1..n; 0 = none) and their cluster counts."""
    if method == "levels":
        raw, counts = list(segmentation.levels), [int(n) for n in segmentation.n_clusters]
    else:
        raw = [segmentation.persistent if method == "persistent" else segmentation.kmeans]
        if raw[0] is None:
            raise InputError(f"The engine returned no {method} map; try the 'levels' method.")
        counts = [int(np.count_nonzero(np.bincount(np.asarray(raw[0]).reshape(-1))[1:]))]
    if not raw:
        raise InputError("The engine found no granularity level; check the input volume.")
    return raw, counts


def _sliderArray(labels) -> np.ndarray:
    """A label map as the slider shows it: int16 when the labels fit, contiguous."""
    labels = np.asarray(labels)
    dtype = np.int16 if int(labels.max()) < 2**15 else np.int32
    return np.ascontiguousarray(labels, dtype=dtype)


def _engineImage(image: Image) -> Image:
    """A one-slice volume (how Slicer holds a 2-D image) as the 2-D image the engine expects."""
    if image.ndim != 3 or image.spatial_shape[0] != 1:
        return image
    return Image(
        array=image.array[0],
        spacing=tuple(image.spacing[:2]),
        origin=tuple(image.origin[:2]),
        direction=np.asarray(image.direction)[:2, :2].copy(),
        channels=image.channels,
    )


def _asVolume(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Engine maps of a 2-D image back to the one-slice volume shape."""
    return labels.reshape(shape)


def _imageDataSharing(labels: np.ndarray) -> vtk.vtkImageData:
    """A ``vtkImageData`` viewing ``labels`` without a copy (the caller keeps ``labels`` alive)."""
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(labels.shape[2], labels.shape[1], labels.shape[0])
    imageData.GetPointData().SetScalars(numpy_support.numpy_to_vtk(labels.reshape(-1), deep=False))
    return imageData
