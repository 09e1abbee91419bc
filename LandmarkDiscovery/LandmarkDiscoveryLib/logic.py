"""LandmarkDiscoveryLogic: landmarks of a volume node as a markups point list, export, batch.

Qt-free: MRML classes, vtk, numpy and the ``labelfree`` engine. torch is imported
only when detection runs, so loading the module never needs it.
"""

from pathlib import Path

import numpy as np
import vtk

from labelfree.errors import InputError, ModelFileError
from labelfree.io import Image, lps_to_ras
from LabelFreeLib import modelPathOrNone
from LabelFreeLib.mrml import (
    imageVolumes,
    moduleParameterNode,
    placeInSubjectHierarchyBeside,
    removeNodes,
    sceneOrDefault,
    volumeNodeToImage,
)

from .batch import batchDetectSteps, listVolumes
from .export import exportLandmarksNode
from .nodes import (
    IMPORTANCE_ATTRIBUTE,
    MODEL_ATTRIBUTE,
    NodeSnapshot,
    fillLandmarksNode,
    importanceDescriptions,
)

MODULE_NAME = "LandmarkDiscovery"


class LandmarkDiscoveryLogic:
    """Find self-supervised landmarks in volume nodes; export them; run over folders.

    Usable without the GUI: every method blocks until done, raises a
    :class:`labelfree.errors.LabelFreeError` (a ``ValueError``) with a message that says
    what to do, and leaves the scene as it was when it fails.

    Parameters
    ----------
    scene : vtkMRMLScene, optional
        The scene to work in; ``slicer.mrmlScene`` inside the application.

    Example
    -------
    In Slicer's Python console (or ``Slicer --no-main-window --python-script``)::

        from LandmarkDiscoveryLib import LandmarkDiscoveryLogic
        logic = LandmarkDiscoveryLogic()                    # works in slicer.mrmlScene
        volume = slicer.util.loadVolume("head.nrrd")
        landmarks = logic.detect(volume, keep=20)           # bundled model, 20 most important
        logic.exportLandmarks(landmarks, "head.mrk.json")   # or .fcsv, .csv
        result = logic.batchDetect("scans/", "out/", modelPath="my_model.pt")
        print(result.table, len(result.files), result.failures)
    """

    def __init__(self, scene=None):
        self.scene = sceneOrDefault(scene, "LandmarkDiscoveryLogic")
        self._modelCache = None

    def getParameterNode(self):
        """The module's singleton ``vtkMRMLScriptedModuleNode`` (created on first use).

        The widget wraps it with its typed ``parameterNodeWrapper`` class.
        """
        return moduleParameterNode(self.scene, MODULE_NAME)

    # ------------------------------------------------------------------ single volume

    def findLandmarks(
        self, volumeNode, modelPath=None, keep=None, minImportance=None, device="auto"
    ):
        """Run the engine on a volume node without touching the scene.

        Parameters
        ----------
        volumeNode : vtkMRMLScalarVolumeNode
            A 3-D scalar volume, or a single-slice volume (a 2-D image) for 2-D models.
        modelPath : str or Path, optional
            A LabelFree landmark model; ``None`` uses the bundled model for the volume's dimension.
        keep : int, optional
            Keep only this many of the most important landmarks.
        minImportance : float, optional
            Keep only landmarks at least this important (importance is 1 for the most important).
        device : str
            ``"auto"``, ``"cpu"`` or ``"cuda"``.

        Returns
        -------
        pointsRas : ndarray
            ``(K, 3)`` world RAS mm (through the volume's parent transforms).
        names : list of str
            Stable landmark names.
        importance : ndarray
            ``(K,)`` in ``[0, 1]``.
        total : int
            How many landmarks the model predicts before ``keep``/``minImportance``.
        """
        self._checkVolumeNode(volumeNode)
        image, engineImage = self._images(volumeNode)
        loaded = self._loadModel(_modelFile(modelPath), engineImage.ndim)
        return self._landmarksOf(image, engineImage, loaded, keep, minImportance, device)

    def _images(self, volumeNode):
        """The volume as an engine image, and as the 2-D image a one-slice volume stands for."""
        image = volumeNodeToImage(volumeNode)
        engineImage = _asEngineImage(image)
        if engineImage.ndim == 3 and engineImage.channels > 1:
            raise InputError(
                f"'{volumeNode.GetName()}' is a colour (RGB) volume; landmark models read scalar "
                "volumes. Convert it first (Vector to Scalar Volume module)."
            )
        return image, engineImage

    def _landmarksOf(self, image, engineImage, loaded, keep, minImportance, device):
        from labelfree.progress import run_steps

        return run_steps(
            self._landmarkSteps(image, engineImage, loaded, keep, minImportance, device)
        )

    def _landmarkSteps(self, image, engineImage, loaded, keep, minImportance, device):
        from labelfree.landmarks.detect import detect_landmarks_steps

        landmarks = yield from detect_landmarks_steps(
            engineImage, loaded, keep=keep, min_importance=minImportance, device=device
        )
        indexXyz = np.asarray(landmarks.index_xyz, dtype=float).reshape(len(landmarks.names), -1)
        if indexXyz.shape[1] == 2:  # a 2-D image is a one-slice volume: k = 0
            indexXyz = np.concatenate([indexXyz, np.zeros((len(indexXyz), 1))], axis=1)
        pointsLps = image.index_to_physical(indexXyz)
        importance = np.asarray(landmarks.importance, dtype=float)
        return (
            lps_to_ras(pointsLps),
            list(landmarks.names),
            importance,
            int(loaded[1]["n_landmarks"]),
        )

    def detectSteps(
        self,
        volumeNode,
        modelPath=None,
        keep=None,
        minImportance=None,
        outputNode=None,
        device="auto",
    ):
        """:meth:`detect` as steps, for the GUI: a generator of ``Progress`` returning the node.

        Arguments are checked at once (this call raises); each step (read the volume, load
        the model, detect, fill the point list) returns quickly, and closing the generator
        before its end leaves the scene unchanged.
        """
        if outputNode is not None and not outputNode.IsA("vtkMRMLMarkupsFiducialNode"):
            raise InputError(
                "The output must be a markups point list (vtkMRMLMarkupsFiducialNode)."
            )
        self._checkVolumeNode(volumeNode)
        model = _modelFile(modelPath)
        return self._detectSteps(volumeNode, model, keep, minImportance, outputNode, device)

    def _detectSteps(self, volumeNode, model, keep, minImportance, outputNode, device):
        from labelfree.progress import Progress, scaled

        yield Progress(0.0, "Reading the volume")
        image, engineImage = self._images(volumeNode)
        yield Progress(0.2, "Loading the model")
        loaded = self._loadModel(model, engineImage.ndim)
        yield Progress(0.4, "Finding landmarks")
        pointsWorld, names, importance, total = yield from scaled(
            self._landmarkSteps(image, engineImage, loaded, keep, minImportance, device), 0.4, 0.9
        )
        yield Progress(0.9, "Placing the points")
        transformNode = volumeNode.GetParentTransformNode()
        return self._writeNode(
            outputNode,
            volumeNode,
            transformNode,
            _worldToLocal(pointsWorld, transformNode),
            names,
            importanceDescriptions(importance, total),
            importance,
            str(model) if model is not None else "bundled",
        )

    def detect(
        self,
        volumeNode,
        modelPath=None,
        keep=None,
        minImportance=None,
        outputNode=None,
        device="auto",
    ):
        """Find landmarks in ``volumeNode`` and put them in a markups point list.

        The point list holds one control point per landmark, labelled with the landmark's
        name, its importance and rank in the description, locked and fixed in number. It is
        placed under the volume's parent transform (points follow the volume when the
        transform changes) and beside the volume in the subject hierarchy.

        Parameters
        ----------
        volumeNode, modelPath, keep, minImportance, device
            See :meth:`findLandmarks`.
        outputNode : vtkMRMLMarkupsFiducialNode, optional
            Reused (its points are replaced); a new node named ``<volume>_landmarks`` otherwise.

        Returns
        -------
        vtkMRMLMarkupsFiducialNode
            The point list.
        """
        from labelfree.progress import run_steps

        return run_steps(
            self.detectSteps(volumeNode, modelPath, keep, minImportance, outputNode, device)
        )

    def exportLandmarks(self, markupsNode, path, world=True):
        """Write a point list to ``.mrk.json``, ``.fcsv`` or ``.csv`` (by suffix); returns the path.

        ``world=True`` writes positions through the node's parent transforms (what the views
        show). Importance and rank travel in each point's description (and a column in CSV).
        """
        return exportLandmarksNode(markupsNode, path, world=world)

    # ------------------------------------------------------------------ batch

    def batchDetectSteps(
        self,
        inputs,
        outputFolder,
        modelPath=None,
        keep=None,
        minImportance=None,
        fileFormat=".mrk.json",
        device="auto",
        tableName="landmarks.csv",
        overwrite=False,
    ):
        """Batch detection as steps: a generator yielding ``Progress``, returning a ``CohortResult``.

        Reads files with the engine, never touches the scene. See :meth:`batchDetect`.
        """
        return batchDetectSteps(
            inputs,
            outputFolder,
            modelPath,
            keep,
            minImportance,
            fileFormat,
            device,
            tableName,
            overwrite,
        )

    def batchDetect(
        self,
        inputs,
        outputFolder,
        modelPath=None,
        keep=None,
        minImportance=None,
        fileFormat=".mrk.json",
        device="auto",
        tableName="landmarks.csv",
        overwrite=False,
        progressCallback=None,
    ):
        """Find landmarks in every volume of a folder (or a list of files), without any dialog.

        Writes ``<name><fileFormat>`` per volume into ``outputFolder``, one table
        ``tableName`` (``subject, label, importance, r, a, s``, RAS) of all of them for shape
        analysis, and ``provenance.json``. A volume that cannot be read is reported in
        ``failures`` and skipped; a rerun keeps the files of an earlier run with the same
        settings unless ``overwrite``.

        Returns
        -------
        labelfree.cohort.CohortResult
            ``files`` (landmark files, input order), ``table`` (the table path), ``failures``
            (``(path, message)`` pairs), ``skipped`` (cases kept from an earlier run).
        """
        from labelfree.progress import run_steps

        steps = self.batchDetectSteps(
            inputs,
            outputFolder,
            modelPath,
            keep,
            minImportance,
            fileFormat,
            device,
            tableName,
            overwrite,
        )
        return run_steps(steps, progressCallback)

    def batchDetectCommand(
        self,
        inputFolder,
        outputFolder,
        modelPath=None,
        keep=None,
        minImportance=None,
        fileFormat=".mrk.json",
        device="auto",
        tableName="landmarks.csv",
        overwrite=False,
        python=None,
    ):
        """The command that runs :meth:`batchDetect` in a child process (what the GUI does).

        Run it with :class:`LabelFreeLib.training.TrainingProcess`; it writes what
        :meth:`batchDetect` writes, and ``outputFolder/provenance.json`` lists the outcome of
        each volume. Arguments are checked here, before any process starts.
        """
        from labelfree.markups import markups_format
        from LabelFreeLib.training import trainingCommand

        markups_format("x" + fileFormat)
        listVolumes(inputFolder)
        model = modelPathOrNone(modelPath)
        if model is not None and not Path(model).is_file():
            raise InputError(f"Landmark model not found: {model}. Choose a .pt model file.")
        return trainingCommand(
            "detect",
            [inputFolder],
            outputFolder,
            python=python,
            model=model,
            keep=keep,
            min_importance=minImportance,
            format=fileFormat,
            table=tableName,
            device=device,
            overwrite=bool(overwrite),
        )

    # ------------------------------------------------------------------ training inputs

    def trainingInputs(self, workDir, volumeNodes=None, folder=None):
        """Image files to train a landmark model on: volume nodes (written as NRRD) or a folder's images.

        Volumes are written in world geometry (parent transforms hardened) to
        ``workDir/<name>.nrrd`` for the headless trainer
        (``Resources/Scripts/labelfree_train.py``, run by ``LabelFreeLib.training``).
        The Siamese regressor learns from pairs, so at least two images are needed.

        Returns
        -------
        list of Path
        """
        from labelfree.io import write_image

        if (volumeNodes is None) == (folder is None):
            raise InputError("Train on either volumes of the scene or the batch input folder.")
        if folder is not None:
            files = listVolumes(folder)
        else:
            files = []
            for number, volumeNode in enumerate(volumeNodes):
                self._checkVolumeNode(volumeNode)
                _, image = self._images(volumeNode)  # what detection refuses, training refuses
                name = "".join(
                    c if c.isalnum() or c in "-_." else "_" for c in volumeNode.GetName()
                )
                files.append(write_image(image, Path(workDir) / f"{number:03d}_{name}.nrrd"))
        if len(files) < 2:
            raise InputError(
                "Landmark training learns from pairs of images: load at least two volumes of the "
                "same kind (e.g. several subjects), or choose a folder of images."
            )
        return files

    def trainableVolumes(self):
        """Scalar volumes of the scene that training can use (no label maps, no RGB volumes)."""
        return imageVolumes(self.scene, scalarOnly=True)

    # ------------------------------------------------------------------ helpers

    def _loadModel(self, model, ndim):
        """The loaded model, kept while its file is unchanged (repeated Apply skips the load)."""
        from labelfree.landmarks.model import load_landmark_model

        stat = model.stat() if model is not None and model.is_file() else None
        key = (str(model), ndim, stat and (stat.st_mtime_ns, stat.st_size))
        if self._modelCache is None or self._modelCache[0] != key:
            self._modelCache = None  # a failed load must not leave an older model behind
            try:
                loaded = load_landmark_model(model, ndim=ndim)
            except ModelFileError as error:
                if model is not None:
                    raise
                raise ModelFileError(
                    f"No bundled {ndim}-D landmark model in this installation ({error}) Train "
                    "one (Train a model section, or `labelfree landmarks train`) and choose "
                    "it as the model file."
                ) from error
            self._modelCache = (key, loaded)
        return self._modelCache[1]

    def _checkVolumeNode(self, volumeNode):
        if volumeNode is None:
            raise InputError("No input volume selected; select a volume first.")
        if not volumeNode.IsA("vtkMRMLScalarVolumeNode"):
            raise InputError(
                f"'{volumeNode.GetName()}' is not a scalar volume; select an image volume."
            )
        if volumeNode.GetScene() is not self.scene:
            raise InputError(
                f"'{volumeNode.GetName()}' belongs to another scene than this logic's."
            )

    def _writeNode(
        self,
        outputNode,
        volumeNode,
        transformNode,
        pointsLocal,
        names,
        descriptions,
        importance,
        modelName,
    ):
        """Fill (or create) the point list; on any error put the scene back as it was."""
        created = outputNode is None
        snapshot = None if created else NodeSnapshot(outputNode)
        try:
            if created:
                outputNode = self.scene.AddNewNodeByClass(
                    "vtkMRMLMarkupsFiducialNode",
                    self.scene.GenerateUniqueName(f"{volumeNode.GetName()}_landmarks"),
                )
                outputNode.CreateDefaultDisplayNodes()
            outputNode.SetAndObserveTransformNodeID(
                transformNode.GetID() if transformNode else None
            )
            fillLandmarksNode(outputNode, pointsLocal, names, descriptions, locked=True)
            outputNode.SetAttribute(IMPORTANCE_ATTRIBUTE, " ".join(f"{w:.6g}" for w in importance))
            outputNode.SetAttribute(MODEL_ATTRIBUTE, modelName)
            if created:
                placeInSubjectHierarchyBeside(self.scene, outputNode, volumeNode)
        except Exception:
            if created and outputNode is not None:
                removeNodes(self.scene, outputNode)
            elif snapshot is not None:
                snapshot.restore()
            raise
        return outputNode


def _modelFile(modelPath) -> Path | None:
    """The model file to load; None for the bundled model."""
    path = modelPathOrNone(modelPath)
    return None if path is None else Path(path)


def _asEngineImage(image: Image) -> Image:
    """A one-slice volume becomes a 2-D image (index geometry) so 2-D models can run on it.

    Only ``index_xyz`` of the engine's result is used, so the 2-D geometry need not be physical.
    """
    if image.ndim == 3 and image.spatial_shape[0] == 1:
        array = image.array[0]
        return Image(array, image.spacing[:2], (0.0, 0.0), np.eye(2), image.channels)
    return image


def _worldToLocal(pointsWorldRas, transformNode):
    """World RAS points into the frame under ``transformNode`` (linear; checked on conversion)."""
    if transformNode is None:
        return np.asarray(pointsWorldRas, dtype=float)
    toWorld = vtk.vtkMatrix4x4()
    transformNode.GetMatrixTransformToWorld(toWorld)
    matrix = np.array([[toWorld.GetElement(r, c) for c in range(4)] for r in range(4)])
    homogeneous = np.c_[np.asarray(pointsWorldRas, dtype=float), np.ones(len(pointsWorldRas))]
    return (np.linalg.solve(matrix, homogeneous.T).T)[:, :3]
