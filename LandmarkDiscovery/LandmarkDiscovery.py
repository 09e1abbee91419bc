import enum
import logging
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# From source (Additional module paths), LabelFreeLib and labelfree sit one folder up;
# Slicer puts only this module's folder on sys.path (qSlicerScriptedLoadableModuleFactory.cxx).
_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_SOURCE_ROOT, "LabelFreeLib")) and _SOURCE_ROOT not in sys.path:
    sys.path.append(_SOURCE_ROOT)

from LandmarkDiscoveryLib import LandmarkDiscoveryLogic  # noqa: E402 (needs the path above)

import LabelFreeLib.pathWidgets  # noqa: E402, F401 (registers the str <-> ctkPathLineEdit connector)

#
# LandmarkDiscovery
#


class LandmarkDiscovery(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Landmark Discovery")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Shape Analysis")]
        self.parent.dependencies = ["Markups"]
        self.parent.contributors = ["LabelFree contributors"]
        self.parent.helpText = _("""
Finds K named, importance-ranked anatomical landmarks in a volume with a self-supervised
Siamese landmark regressor (no annotations needed), as a locked markups point list in the
volume's space. A batch mode writes one landmark file per volume of a folder and one table
for statistical shape analysis.
See the <a href="https://github.com/labelfree/SlicerLabelFree#landmarkdiscovery">documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Self-supervised landmark discovery after Bhalodia et al. (Siamese regressor trained through
thin-plate-spline registration). Part of the LabelFree extension.
""")


#
# LandmarkDiscoveryParameterNode
#


class TrainingData(enum.Enum):
    SCENE = "scene"
    FOLDER = "folder"

    def label(self):
        return {
            TrainingData.SCENE: _("Volumes in the scene"),
            TrainingData.FOLDER: _("Batch input folder"),
        }[self]


@parameterNodeWrapper
class LandmarkDiscoveryParameterNode:
    """
    The parameters needed by the module.

    inputVolume - The volume in which landmarks are found.
    useBundledModel - Use the model shipped with the extension.
    modelPath - A landmark model file (.pt) trained with LabelFree, used when useBundledModel is off.
    landmarkCount - How many of the most important landmarks to keep (0 keeps all).
    minImportance - Keep only landmarks at least this important (0 keeps all).
    device - Where the network runs.
    outputLandmarks - The markups point list that receives the landmarks.
    batchInputFolder - Folder of volumes for batch mode.
    batchOutputFolder - Folder that receives one landmark file per volume and the table.
    batchFormat - File type of the per-volume landmark files.
    trainingData - What "Train" learns from: the scene's volumes or the batch input folder.
    trainLandmarks - How many landmarks a trained model finds.
    trainEpochs - Training epochs.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    useBundledModel: bool = True
    modelPath: str = ""
    landmarkCount: Annotated[int, WithinRange(0, 1000)] = 0
    minImportance: Annotated[float, WithinRange(0.0, 1.0)] = 0.0
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    outputLandmarks: vtkMRMLMarkupsFiducialNode
    batchInputFolder: str = ""
    batchOutputFolder: str = ""
    batchFormat: Annotated[str, Choice([".mrk.json", ".fcsv", ".csv"])] = ".mrk.json"
    trainingData: TrainingData = TrainingData.SCENE
    trainLandmarks: Annotated[int, WithinRange(2, 500)] = 20
    trainEpochs: Annotated[int, WithinRange(1, 10000)] = 100


#
# LandmarkDiscoveryWidget
#


class LandmarkDiscoveryWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._jobs = None  # LabelFreeLib.jobs.JobRunner: "detect", "batch", "training"

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LandmarkDiscovery.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        # The logic does the work; it is Qt-free and can be used from scripts.
        from LabelFreeLib.jobs import JobRunner

        self.logic = LandmarkDiscoveryLogic(slicer.mrmlScene)
        # Detection runs in short steps, batch and training in child processes: one timer
        # drives them all from the main thread.
        self._jobs = JobRunner()
        self._timer = qt.QTimer()
        self._timer.setInterval(20)
        self._timer.timeout.connect(self.onTimer)

        # Connections
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.batchButton.connect("clicked(bool)", self.onBatchButton)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.progressBar.hide()

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()

    def onReload(self) -> None:
        """Reload LandmarkDiscoveryLib and LabelFreeLib too, then the module (Developer > Reload)."""
        from LabelFreeLib import reloadPackages

        reloadPackages("LandmarkDiscoveryLib", "LabelFreeLib")
        ScriptedLoadableModuleWidget.onReload(self)

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if self._jobs is not None:
            self._jobs.cancelAll()  # child processes: SIGTERM to each whole group
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        # Make sure parameter node exists and observed
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        # Do not react to parameter node changes (GUI will be updated when the user enters into the module)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply
            )

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        self._jobs.cancel("detect")  # its volume and point list are going away
        # Parameter node will be reset, do not use it anymore
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        # If this module is shown while the scene is closed then recreate a new parameter node immediately
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        # Parameter node stores all user choices in parameter values, node selections, etc.
        # so that when the scene is saved and reloaded, these settings are restored.
        self.setParameterNode(LandmarkDiscoveryParameterNode(self.logic.getParameterNode()))

        # Select default input nodes if nothing is selected yet to save a few clicks for the user
        if not self._parameterNode.inputVolume:
            from LabelFreeLib.mrml import imageVolumes

            volumes = imageVolumes(slicer.mrmlScene, scalarOnly=True)  # never a label map
            if volumes:
                self._parameterNode.inputVolume = volumes[0]

    def setParameterNode(self, inputParameterNode: LandmarkDiscoveryParameterNode | None) -> None:
        """
        Set and observe parameter node.
        Observation is needed because when the parameter node is changed then the GUI must be updated immediately.
        """
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply
            )
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Note: in the .ui file, a Qt dynamic property called "SlicerParameterName" is set on each
            # ui element that needs connection.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        node = self._parameterNode
        hasModel = node is not None and (node.useBundledModel or bool(node.modelPath))
        self.ui.modelPathLineEdit.enabled = node is not None and not node.useBundledModel
        if node and node.inputVolume and hasModel:
            self.ui.applyButton.toolTip = _("Find landmarks in the input volume")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.toolTip = _("Select an input volume and a model")
            self.ui.applyButton.enabled = False
        self.ui.exportButton.enabled = bool(node and node.outputLandmarks)
        batchReady = node is not None and hasModel and bool(node.batchInputFolder)
        batchReady = batchReady and bool(node.batchOutputFolder)
        self.ui.batchButton.enabled = batchReady or self._jobs.busy("batch")
        if node is not None and node.trainingData == TrainingData.FOLDER:
            trainReady = bool(node.batchInputFolder)
        else:
            trainReady = node is not None
        self.ui.trainButton.enabled = trainReady or self._jobs.busy("training")
        if self._jobs.busy("detect"):
            self.ui.applyButton.enabled = True  # it is the Cancel button now

    def _modelPath(self):
        return None if self._parameterNode.useBundledModel else self._parameterNode.modelPath

    def _ensureDependencies(self) -> bool:
        """Ask for consent and install torch and the engine's packages, if they are missing."""
        from LabelFreeLib import dependencies

        return dependencies.ensureDependencies(requester=_("Landmark Discovery"))

    def onApplyButton(self) -> None:
        """Find landmarks in short steps (the GUI stays responsive), or cancel them."""
        if self._jobs.busy("detect"):
            self._jobs.cancel("detect")
            self._jobFinished(_("Cancelled; the scene is unchanged."))
            return
        if not self._ensureDependencies():
            return
        from LabelFreeLib.jobs import StepJob

        with slicer.util.tryWithErrorDisplay(_("Failed to find landmarks.")):
            p = self._parameterNode
            steps = self.logic.detectSteps(
                p.inputVolume,
                modelPath=self._modelPath(),
                keep=p.landmarkCount or None,
                minImportance=p.minImportance or None,
                outputNode=p.outputLandmarks,
                device=p.device,
            )
            self._startJob(
                "detect",
                StepJob(steps, self._showProgress, self._detectFinished, self._detectFailed),
            )
            self.ui.applyButton.text = _("Cancel")

    def _detectFinished(self, outputNode) -> None:
        if self._parameterNode is not None:
            self._parameterNode.outputLandmarks = outputNode
        self._jobFinished(
            _("Found {count} landmarks.").format(count=outputNode.GetNumberOfControlPoints())
        )

    def _detectFailed(self, error) -> None:
        self._jobFinished("")
        logging.error(f"Landmark detection failed: {error}")
        slicer.util.errorDisplay(_("Failed to find landmarks: {error}").format(error=error))

    def _startJob(self, name, job) -> None:
        self._jobs.start(name, job)
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        self._timer.start()
        self._checkCanApply()

    def _jobFinished(self, message) -> None:
        """Buttons and progress follow what still runs; ``message`` goes to the status line."""
        self.ui.applyButton.text = _("Apply")
        self.ui.batchButton.text = _("Cancel") if self._jobs.busy("batch") else _("Run batch")
        self.ui.trainButton.text = (
            _("Cancel training") if self._jobs.busy("training") else _("Train")
        )
        self.ui.progressBar.visible = self._jobs.busy()
        if message:
            self.ui.statusLabel.text = message
        self._checkCanApply()

    def _showProgress(self, report) -> None:
        self.ui.progressBar.value = int(100 * report.fraction)
        self.ui.statusLabel.text = report.message

    def onTimer(self) -> None:
        """Advance or poll the running jobs; the timer stops when none is left."""
        if not self._jobs.tick():
            self._timer.stop()

    def onExportButton(self) -> None:
        """Write the output landmarks to .mrk.json, .fcsv or .csv."""
        node = self._parameterNode.outputLandmarks
        path = qt.QFileDialog.getSaveFileName(
            slicer.util.mainWindow(),
            _("Export landmarks"),
            node.GetName() + ".mrk.json",
            _("Markups JSON (*.mrk.json);;Fiducial CSV (*.fcsv);;Table (*.csv)"),
        )
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to export landmarks."), waitCursor=True):
            written = self.logic.exportLandmarks(node, path)
            self.ui.statusLabel.text = _("Wrote {path}").format(path=str(written))

    def onBatchButton(self) -> None:
        """Run batch detection over a folder in a child process, or cancel it."""
        if self._jobs.busy("batch"):
            self._jobs.cancel("batch")  # the job ends once the whole process group has
            self.ui.statusLabel.text = _("Cancelling the batch...")
            return
        if not self._ensureDependencies():
            return
        from LabelFreeLib.jobs import ProcessJob
        from LabelFreeLib.training import TrainingProcess

        with slicer.util.tryWithErrorDisplay(_("Failed to start batch detection.")):
            p = self._parameterNode
            command = self.logic.batchDetectCommand(
                p.batchInputFolder,
                p.batchOutputFolder,
                modelPath=self._modelPath(),
                keep=p.landmarkCount or None,
                minImportance=p.minImportance or None,
                fileFormat=p.batchFormat,
                device=p.device,
                python=pythonSlicerExecutable(),
            )
            process = TrainingProcess(command, env=slicer.util.startupEnvironment())
            self._startJob("batch", ProcessJob(process, self._showProgress, self._batchFinished))
            self.ui.batchButton.text = _("Cancel")

    def _batchFinished(self, process) -> None:
        warnings = [line[len("WARNING ") :] for line in process.log if line.startswith("WARNING ")]
        flagged = [line[len("QC ") :] for line in process.log if line.startswith("QC ")]
        for warning in warnings + flagged:
            logging.warning(warning)
        if process.succeeded:
            message = _(
                "Batch done in {folder}; {failed} volume(s) failed, {flagged} flagged for review "
                "in the table's qc column (see the log)."
            ).format(folder=str(process.modelPath), failed=len(warnings), flagged=len(flagged))
        elif process.cancelled:
            message = _("Batch cancelled; the table was not written.")
        else:
            message = ""
            slicer.util.errorDisplay(
                _("Batch detection failed: {error}").format(
                    error=process.errorMessage or "\n".join(process.log[-10:])
                )
            )
        self._jobFinished(message)

    # -- training a model (PythonSlicer subprocess) ---------------------------------------------

    def onTrainButton(self) -> None:
        """Train a landmark model in a subprocess; cancel it if one is running."""
        if self._jobs.busy("training"):
            # Never blocks: the timer keeps polling until the whole process group has ended.
            self._jobs.cancel("training")
            self.ui.statusLabel.text = _("Cancelling the training...")
            return
        if not self._ensureDependencies():
            return
        from LabelFreeLib.jobs import ProcessJob
        from LabelFreeLib.training import TrainingProcess, trainingCommand

        with slicer.util.tryWithErrorDisplay(_("Failed to start training."), waitCursor=True):
            p = self._parameterNode
            workDir = pathlib.Path(
                tempfile.mkdtemp(prefix="LandmarkDiscovery-", dir=slicer.app.temporaryPath)
            )
            try:
                if p.trainingData == TrainingData.FOLDER:
                    inputs = self.logic.trainingInputs(workDir, folder=p.batchInputFolder)
                    baseName = pathlib.Path(p.batchInputFolder).name
                else:
                    volumes = self.logic.trainableVolumes()
                    inputs = self.logic.trainingInputs(workDir, volumeNodes=volumes)
                    baseName = volumes[0].GetName()
                safeName = "".join(c if c.isalnum() or c in "-_." else "_" for c in baseName)
                modelsDir = pathlib.Path(slicer.app.slicerUserSettingsFilePath).parent
                modelPath = modelsDir / "LabelFree" / "models" / f"landmarks_{safeName}.pt"
                command = trainingCommand(
                    "landmarks",
                    inputs,
                    modelPath,
                    python=pythonSlicerExecutable(),
                    landmarks=p.trainLandmarks,
                    epochs=p.trainEpochs,
                    device=p.device,
                )
                process = TrainingProcess(command, env=slicer.util.startupEnvironment())
            except Exception:
                shutil.rmtree(workDir, ignore_errors=True)
                raise

            def finished(training):
                shutil.rmtree(workDir, ignore_errors=True)
                self._trainingFinished(training)

            self._startJob("training", ProcessJob(process, self._showProgress, finished))
            self.ui.trainButton.text = _("Cancel training")

    def _trainingFinished(self, training) -> None:
        """Select the new model, or show why there is none."""
        message = ""
        if training.succeeded:
            if self._parameterNode is not None:  # None while the scene is being closed
                self._parameterNode.modelPath = str(training.modelPath)
                self._parameterNode.useBundledModel = False
            message = _("Model saved to {path}; press Apply to use it.").format(
                path=str(training.modelPath)
            )
        elif training.cancelled:
            message = _("Training cancelled; no model was written.")
        else:
            slicer.util.errorDisplay(
                _("Training failed: {error}").format(
                    error=training.errorMessage or "\n".join(training.log[-10:])
                )
            )
        self._jobFinished(message)


def pythonSlicerExecutable() -> str:
    """The PythonSlicer executable of this Slicer (its Python without the application)."""
    binDir = os.path.join(slicer.app.slicerHome, "bin")
    return shutil.which("PythonSlicer", path=binDir) or sys.executable


#
# LandmarkDiscoveryTest
#


class LandmarkDiscoveryTest(ScriptedLoadableModuleTest):
    """
    This is the test case for your scripted module.
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        """Do whatever is needed to reset the state - typically a scene clear will be enough."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run as few or as many tests as needed here; skipped, saying why, without torch."""
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            # The engine needs torch, which the PyTorch extension installs on the first Apply.
            self.delayDisplay("Skipped: torch is not installed (install the PyTorch extension).")
            return
        self.setUp()
        self.test_LandmarkDiscovery1()

    def test_LandmarkDiscovery1(self):
        """Find landmarks on a synthetic oblique volume with a freshly made model, end to end:
        geometry, parent transform, locking, export and read-back, and a refused bad input.
        Nothing is downloaded.
        """
        import tempfile

        import numpy as np
        from LandmarkDiscoveryLib.testdata import makeSyntheticVolumeNode, makeTinyLandmarkModel

        self.delayDisplay("Starting the test")
        workDir = pathlib.Path(
            tempfile.mkdtemp(prefix="LandmarkDiscoveryTest", dir=slicer.app.temporaryPath)
        )
        modelPath = makeTinyLandmarkModel(workDir / "tiny.pt", ndim=3)
        volumeNode = makeSyntheticVolumeNode(slicer.mrmlScene, "SyntheticBlobs")
        self.delayDisplay("Made a synthetic volume and a small landmark model")

        logic = LandmarkDiscoveryLogic()
        markups = logic.detect(volumeNode, modelPath=modelPath, keep=5)
        self.assertEqual(markups.GetNumberOfControlPoints(), 5)
        self.assertTrue(markups.GetLocked())
        self.assertTrue(markups.GetFixedNumberOfControlPoints())

        # Every landmark lies inside the volume's bounds in RAS.
        bounds = [0.0] * 6
        volumeNode.GetRASBounds(bounds)
        positions = slicer.util.arrayFromMarkupsControlPoints(markups, world=True)
        for axis in range(3):
            self.assertTrue(np.all(positions[:, axis] >= bounds[2 * axis] - 1e-3))
            self.assertTrue(np.all(positions[:, axis] <= bounds[2 * axis + 1] + 1e-3))

        # A parent transform on the volume moves the landmarks with it.
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        matrix = vtk.vtkMatrix4x4()
        matrix.SetElement(0, 3, 25.0)
        transform.SetMatrixTransformToParent(matrix)
        volumeNode.SetAndObserveTransformNodeID(transform.GetID())
        moved = logic.detect(volumeNode, modelPath=modelPath, keep=5)
        movedPositions = slicer.util.arrayFromMarkupsControlPoints(moved, world=True)
        np.testing.assert_allclose(movedPositions, positions + [25.0, 0.0, 0.0], atol=1e-3)

        # Export and read back with Slicer's own reader.
        path = logic.exportLandmarks(moved, workDir / "landmarks.mrk.json")
        loaded = slicer.util.loadMarkups(str(path))
        np.testing.assert_allclose(
            slicer.util.arrayFromMarkupsControlPoints(loaded), movedPositions, atol=1e-3
        )
        self.delayDisplay("Detection, transform and export verified")

        # A bad input leaves the scene as it was.
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(ValueError):
            logic.detect(None, modelPath=modelPath)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)

        # Through the GUI: parameters set on the parameter node, then Apply.
        widget = slicer.modules.landmarkdiscovery.widgetRepresentation().self()
        widget.initializeParameterNode()  # as when the module is entered
        parameters = widget._parameterNode
        parameters.inputVolume = volumeNode
        parameters.useBundledModel = False
        parameters.modelPath = str(modelPath)
        parameters.landmarkCount = 3
        parameters.outputLandmarks = None
        self.assertTrue(widget.ui.applyButton.enabled)
        widget.onApplyButton()
        self.assertIsNotNone(parameters.outputLandmarks)
        self.assertEqual(parameters.outputLandmarks.GetNumberOfControlPoints(), 3)
        self.assertEqual(parameters.outputLandmarks.GetTransformNodeID(), transform.GetID())

        self.delayDisplay("Test passed")
