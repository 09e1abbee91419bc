import enum
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
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

import LabelFreeLib.pathWidgets  # noqa: E402, F401 (registers the str <-> ctkPathLineEdit connector)

#
# CUTSSegment
#


class CUTSSegment(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CUTS Segment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LabelFree contributors"]
        self.parent.helpText = _("""
Unsupervised, multi-granular segmentation with CUTS: a convolutional encoder trained without
labels embeds every voxel, and diffusion condensation groups the embeddings from coarse (body
versus background) to fine (tissues, lesions). Press Apply, scrub the granularity slider, click a
structure to make it a segment, export label maps and segmentations.
See the <a href="https://github.com/labelfree/SlicerLabelFree#cutssegment">documentation</a>.
""")
        self.parent.acknowledgementText = _("""
CUTS was described by Liu et al., "CUTS: A Deep Learning and Topological Framework for
Multigranular Unsupervised Medical Image Segmentation" (MICCAI 2024). This module was built on
the template of 3D Slicer's scripted modules.
""")
        # Once the application has started: the bundled sample in Sample Data, and the
        # "CUTS pick" effect in the Segment Editor.
        slicer.app.connect("startupCompleted()", registerSampleData)
        slicer.app.connect("startupCompleted()", registerSegmentEditorEffect)


def registerSegmentEditorEffect():
    """Add the "CUTS pick" effect to the Segment Editor (as extensions register effects)."""
    import qSlicerSegmentationsEditorEffectsPythonQt as effects

    path = os.path.join(
        os.path.dirname(__file__), "SegmentEditorEffect", "SegmentEditorCUTSPickEffect.py"
    )
    effect = effects.qSlicerSegmentEditorScriptedEffect(None)
    effect.setPythonSource(path.replace("\\", "/"))
    effect.self().register()


def registerSampleData():
    """Add the bundled MNI152 T1 sample to the Sample Data module (category LabelFree)."""
    import SampleData

    from LabelFreeLib.sampleData import CATEGORY, sampleDataSources

    logic = SampleData.SampleDataLogic
    if hasattr(logic, "registerCustomSampleDataCategory"):  # Slicer > 5.10 (SampleData.py)
        logic.registerCustomSampleDataCategory(CATEGORY, title=_("LabelFree"))
    for source in sampleDataSources():
        logic.registerCustomSampleDataSource(**source)


#
# CUTSSegmentParameterNode
#


class Method(enum.Enum):
    LEVELS = "levels"
    PERSISTENT = "persistent"
    KMEANS = "kmeans"

    def label(self):
        return {
            Method.LEVELS: _("Condensation levels"),
            Method.PERSISTENT: _("Persistent structures"),
            Method.KMEANS: _("k-means on embeddings"),
        }[self]


class Device(enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"

    def label(self):
        return {Device.AUTO: _("Auto"), Device.CPU: _("CPU"), Device.CUDA: _("CUDA (GPU)")}[self]


class SlicingAxis(enum.Enum):
    AUTO = "auto"
    K = 0
    J = 1
    I = 2  # noqa: E741 -- the volume's I axis

    def label(self):
        return {
            SlicingAxis.AUTO: _("Auto (axial)"),
            SlicingAxis.K: _("K slices"),
            SlicingAxis.J: _("J slices"),
            SlicingAxis.I: _("I slices"),
        }[self]


@parameterNodeWrapper
class CUTSSegmentParameterNode:
    """
    The parameters needed by the module.

    inputVolume - The grayscale or RGB volume to segment.
    modelPath - A CUTS model file; empty for the bundled model.
    device - Where the encoder runs.
    method - Condensation levels, persistent structures or k-means.
    k - Clusters for k-means.
    slicingAxis - The axis the 2-D encoder slices along.
    textureScale - Texture pooling in pixels; 0 condenses the embeddings themselves.
    seed - Random seed (the same seed gives the same labels).
    connectedPick - A click keeps only the connected part of the clicked cluster.
    adaptEpochs - Training epochs of "Adapt model to this volume".
    """

    inputVolume: vtkMRMLScalarVolumeNode
    modelPath: str = ""
    device: Device = Device.AUTO
    method: Method = Method.LEVELS
    k: Annotated[int, WithinRange(2, 64)] = 10
    slicingAxis: SlicingAxis = SlicingAxis.AUTO
    textureScale: Annotated[float, WithinRange(0.0, 64.0)] = 0.0
    seed: Annotated[int, WithinRange(0, 1000000)] = 0
    connectedPick: bool = True
    adaptEpochs: Annotated[int, WithinRange(1, 200)] = 5


#
# CUTSSegmentWidget
#


class CUTSSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
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
        self._jobs = None  # LabelFreeLib.jobs.JobRunner: "run" (segmentation), "training"
        self._lastPickNode = None  # picks of one session go into one segmentation

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CUTSSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        from CUTSSegmentLib import CUTSSegmentLogic

        from LabelFreeLib.jobs import JobRunner

        self.logic = CUTSSegmentLogic(slicer.mrmlScene)

        # Segmentation and training run in child processes; this timer polls them.
        self._jobs = JobRunner()
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.timeout.connect(self.onTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.granularitySlider.connect("valueChanged(int)", self.onGranularityChanged)
        self.ui.createSegmentationButton.connect("clicked(bool)", self.onCreateSegmentation)
        self.ui.pickButton.connect("clicked(bool)", self.onPickButton)
        self.ui.segmentFromLabelButton.connect("clicked(bool)", self.onSegmentFromLabel)
        self.ui.exportLabelmapButton.connect("clicked(bool)", self.onExportLabelmap)
        self.ui.exportSegmentationButton.connect("clicked(bool)", self.onExportSegmentation)
        self.ui.adaptButton.connect("clicked(bool)", self.onAdaptButton)

        self.initializeParameterNode()
        self._updateResultWidgets()

    def onReload(self) -> None:
        """Reload CUTSSegmentLib and LabelFreeLib too, then the module (Developer > Reload)."""
        from LabelFreeLib import reloadPackages

        reloadPackages("CUTSSegmentLib", "LabelFreeLib")
        ScriptedLoadableModuleWidget.onReload(self)

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if self._jobs is not None:
            self._jobs.cancelAll()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply
            )

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed: a running segmentation has nowhere to go."""
        self._jobs.cancel("run")
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        self.logic.result = None
        self._updateResultWidgets()
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        self.setParameterNode(CUTSSegmentParameterNode(self.logic.getParameterNode()))
        if not self._parameterNode.inputVolume:
            from LabelFreeLib.mrml import imageVolumes

            volumes = imageVolumes(slicer.mrmlScene)  # grey or RGB, never a label map
            if volumes:
                self._parameterNode.inputVolume = volumes[0]

    def setParameterNode(self, inputParameterNode: CUTSSegmentParameterNode | None) -> None:
        """Set and observe parameter node; the GUI follows it through connectGui."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply
            )
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        busy = self._jobs.busy()
        volume = self._parameterNode.inputVolume if self._parameterNode else None
        self.ui.kSpinBox.enabled = (
            bool(self._parameterNode) and self._parameterNode.method == Method.KMEANS
        )
        if busy:
            return
        self.ui.applyButton.enabled = volume is not None
        self.ui.adaptButton.enabled = volume is not None
        if volume is None:
            self.ui.applyButton.toolTip = _("Select an input volume")
            self.ui.estimateLabel.text = ""
            return
        self.ui.applyButton.toolTip = _("Segment the input volume with CUTS")
        onGpu = self._parameterNode.device == Device.CUDA
        seconds = int(round(self.logic.estimateSeconds(volume, "cuda" if onGpu else "cpu")))
        if onGpu:
            self.ui.estimateLabel.text = _("Estimated time: about {seconds} s on the GPU").format(
                seconds=seconds
            )
        else:
            self.ui.estimateLabel.text = _("Estimated time: about {seconds} s on the CPU").format(
                seconds=seconds
            )

    # -- run (a child process, polled by the timer) --------------------------------------------

    def onApplyButton(self) -> None:
        """Start a run, or cancel the one in progress (Apply turns into Cancel)."""
        if self._jobs.busy("run"):
            self.ui.statusLabel.text = _("Cancelling...")
            self._jobs.cancel("run")  # a child process: the job ends once its group has
            self._updateBusyState()
            return
        from LabelFreeLib.dependencies import ensureDependencies
        from LabelFreeLib.jobs import ProcessJob
        from LabelFreeLib.training import TrainingProcess

        if not ensureDependencies(_("CUTS Segment")):  # may prompt: no busy cursor yet
            return
        with slicer.util.tryWithErrorDisplay(
            _("Failed to start the segmentation."), waitCursor=True
        ):
            p = self._parameterNode
            workDir = tempfile.mkdtemp(prefix="CUTSSegment-", dir=slicer.app.temporaryPath)
            try:
                command = self.logic.segmentationCommand(
                    p.inputVolume,
                    workDir,
                    p.modelPath,
                    method=p.method.value,
                    k=p.k,
                    axis=p.slicingAxis.value,
                    device=p.device.value,
                    seed=p.seed,
                    textureScale=p.textureScale,
                    python=pythonSlicerExecutable(),
                )
                process = TrainingProcess(command, env=slicer.util.startupEnvironment())
            except Exception:
                shutil.rmtree(workDir, ignore_errors=True)
                raise
            volumeNode = p.inputVolume

            def finished(process):
                self._runFinished(process, volumeNode, workDir)

            self._startJob("run", ProcessJob(process, self._showProgress, finished))

    def _runFinished(self, process, volumeNode, workDir) -> None:
        """The child process has ended: load its result in short steps, or say why there is none."""
        from LabelFreeLib.jobs import StepJob

        if process.succeeded:
            steps = self.logic.loadSegmentationSteps(volumeNode, process.modelPath)

            def loaded(result):
                shutil.rmtree(workDir, ignore_errors=True)
                self._showResult(result)
                self._updateBusyState()

            def failed(error):
                shutil.rmtree(workDir, ignore_errors=True)
                self._updateBusyState()
                slicer.util.errorDisplay(
                    _("Failed to load the segmentation: {error}").format(error=error)
                )

            def cancelled():
                shutil.rmtree(workDir, ignore_errors=True)
                self.ui.statusLabel.text = _("Cancelled; nothing was added to the scene.")

            self._startJob("run", StepJob(steps, self._showProgress, loaded, failed, cancelled))
            return
        shutil.rmtree(workDir, ignore_errors=True)
        self._updateBusyState()
        if process.cancelled:
            self.ui.statusLabel.text = _("Cancelled; nothing was added to the scene.")
        else:
            slicer.util.errorDisplay(
                _("Segmentation failed: {error}").format(
                    error=process.errorMessage or "\n".join(process.log[-10:])
                )
            )

    def _startJob(self, name, job) -> None:
        self._jobs.start(name, job)
        self._updateBusyState()
        self._timer.start()

    def onTimer(self) -> None:
        """Poll the running jobs; the timer stops when none is left."""
        if not self._jobs.tick():
            self._timer.stop()

    def _showProgress(self, report) -> None:
        self.ui.progressBar.value = int(round(100 * report.fraction))
        self.ui.statusLabel.text = report.message

    def _updateBusyState(self) -> None:
        """Buttons and progress follow what runs (a run, a training, both or neither), so ending
        one never resets the other's Cancel button."""
        running, training = self._jobs.busy("run"), self._jobs.busy("training")
        if not self.ui.progressBar.visible and (running or training):
            self.ui.progressBar.value = 0
        self.ui.progressBar.visible = running or training
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.adaptButton.text = (
            _("Cancel adaptation") if training else _("Adapt model to this volume")
        )
        self.ui.applyButton.enabled = running or not training
        self.ui.adaptButton.enabled = training or not running
        if not running and not training:
            self._checkCanApply()

    def _showResult(self, result) -> None:
        slicer.util.setSliceViewerLayers(label=result.labelmapNode, labelOpacity=0.5)
        seconds = float(result.seconds.get("total", 0.0))
        self.ui.statusLabel.text = _("Done in {seconds:.1f} s: {levels} level(s).").format(
            seconds=seconds, levels=result.levelCount
        )
        self._updateResultWidgets()

    def _updateResultWidgets(self) -> None:
        result = self.logic.result if self.logic else None
        hasResult = result is not None
        for widget in (
            self.ui.granularitySlider,
            self.ui.createSegmentationButton,
            self.ui.pickButton,
            self.ui.labelSpinBox,
            self.ui.segmentFromLabelButton,
            self.ui.exportLabelmapButton,
            self.ui.exportSegmentationButton,
        ):
            widget.enabled = hasResult
        if not hasResult:
            self.ui.granularityLabel.text = ""
            return
        wasBlocked = self.ui.granularitySlider.blockSignals(True)
        self.ui.granularitySlider.maximum = result.levelCount - 1
        self.ui.granularitySlider.value = result.levelIndex
        self.ui.granularitySlider.blockSignals(wasBlocked)
        self.ui.granularitySlider.enabled = result.levelCount > 1
        self._updateLevelLabel()

    def _updateLevelLabel(self) -> None:
        result = self.logic.result
        clusters = result.clusterCounts[result.levelIndex]
        self.ui.granularityLabel.text = _("Level {level} of {count}: {clusters} clusters").format(
            level=result.levelIndex + 1, count=result.levelCount, clusters=clusters
        )
        self.ui.labelSpinBox.maximum = max(clusters, 1)

    # -- results --------------------------------------------------------------------------------

    def onGranularityChanged(self, value: int) -> None:
        """Switch levels from the cached arrays (instant)."""
        if self.logic.result is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to switch the level.")):
            self.logic.setLevel(value)
            self._updateLevelLabel()

    def onCreateSegmentation(self) -> None:
        with slicer.util.tryWithErrorDisplay(
            _("Failed to create the segmentation."), waitCursor=True
        ):
            segmentationNode = self.logic.createSegmentation()
            self.ui.statusLabel.text = _("Created '{name}'.").format(
                name=segmentationNode.GetName()
            )

    def onSegmentFromLabel(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to create the segment."), waitCursor=True):
            segmentationNode, _segmentId = self.logic.segmentFromLabel(self.ui.labelSpinBox.value)
            self.ui.statusLabel.text = _("Added a segment to '{name}'.").format(
                name=segmentationNode.GetName()
            )

    def onPickButton(self) -> None:
        """Pick in the Segment Editor: a new segment, with the "CUTS pick" effect active.

        The editor's effect gets the clicks (no other effect or place mode does), undo and the
        editor's masking; the granularity slider here sets how fine a click picks.
        """
        with slicer.util.tryWithErrorDisplay(_("Failed to start picking.")):
            segmentationNode, segmentId = self.logic.pickSegmentation(self._lastPickNode)
            self._lastPickNode = segmentationNode
            inputVolume = self.logic.result.inputVolumeNode
            slicer.util.selectModule("SegmentEditor")
            # qMRMLSegmentEditorWidget (Modules/Loadable/Segmentations/Widgets), Slicer 5.10
            editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
            editor.setSegmentationNode(segmentationNode)
            editor.setSourceVolumeNode(inputVolume)
            editor.setCurrentSegmentID(segmentId)
            editor.setActiveEffectByName("CUTS pick")

    def onExportLabelmap(self) -> None:
        path = qt.QFileDialog.getSaveFileName(
            self.parent, _("Export label map"), "", _("Label map (*.nrrd *.nii.gz)")
        )
        if path:
            with slicer.util.tryWithErrorDisplay(
                _("Failed to export the label map."), waitCursor=True
            ):
                written = self.logic.exportLabelmap(path)
                self.ui.statusLabel.text = _("Wrote {path}").format(path=written)

    def onExportSegmentation(self) -> None:
        path = qt.QFileDialog.getSaveFileName(
            self.parent, _("Export segmentation"), "", _("Segmentation (*.seg.nrrd)")
        )
        if path:
            if not path.endswith(".seg.nrrd"):
                path = os.path.splitext(path)[0] + ".seg.nrrd"
            with slicer.util.tryWithErrorDisplay(
                _("Failed to export the segmentation."), waitCursor=True
            ):
                written = self.logic.exportSegmentation(path)
                self.ui.statusLabel.text = _("Wrote {path}").format(path=written)

    # -- adapting the model (PythonSlicer subprocess) -----------------------------------------

    def onAdaptButton(self) -> None:
        """Train the encoder further on the input volume in a subprocess; cancel if running."""
        if self._jobs.busy("training"):
            # Never blocks: the timer keeps polling until the whole process group has ended.
            self._jobs.cancel("training")
            self.ui.statusLabel.text = _("Cancelling the adaptation...")
            return
        from LabelFreeLib.dependencies import ensureDependencies
        from LabelFreeLib.jobs import ProcessJob
        from LabelFreeLib.training import TrainingProcess

        if not ensureDependencies(_("CUTS Segment")):  # may prompt: no busy cursor yet
            return
        with slicer.util.tryWithErrorDisplay(
            _("Failed to start adapting the model."), waitCursor=True
        ):
            p = self._parameterNode
            workDir = tempfile.mkdtemp(prefix="CUTSSegment-", dir=slicer.app.temporaryPath)
            modelsDir = Path(slicer.app.slicerUserSettingsFilePath).parent / "LabelFree" / "models"
            safeName = re.sub(r"[^A-Za-z0-9_.-]+", "_", p.inputVolume.GetName())
            try:
                command = self.logic.adaptationCommand(
                    p.inputVolume,
                    workDir,
                    modelsDir / f"cuts_adapted_{safeName}.pt",
                    initModel=p.modelPath,
                    epochs=p.adaptEpochs,
                    seed=p.seed,
                    device=p.device.value,
                    python=pythonSlicerExecutable(),
                )
                process = TrainingProcess(command, env=slicer.util.startupEnvironment())
            except Exception:
                shutil.rmtree(workDir, ignore_errors=True)
                raise

            def finished(process):
                self._trainingFinished(process, workDir)

            self._startJob("training", ProcessJob(process, self._showProgress, finished))

    def _trainingFinished(self, training, workDir) -> None:
        shutil.rmtree(workDir, ignore_errors=True)
        self._updateBusyState()
        if training.succeeded:
            if self._parameterNode is not None:  # None while the scene is being closed
                self._parameterNode.modelPath = str(training.modelPath)
            self.ui.statusLabel.text = _(
                "Adapted model saved to {path}; press Apply to use it."
            ).format(path=training.modelPath)
        elif training.cancelled:
            self.ui.statusLabel.text = _("Adaptation cancelled; the model is unchanged.")
        else:
            slicer.util.errorDisplay(
                _("Adapting the model failed: {error}").format(
                    error=training.errorMessage or "\n".join(training.log[-10:])
                )
            )


def pythonSlicerExecutable() -> str:
    """The PythonSlicer executable shipped with this Slicer (Slicer's Python without the GUI)."""
    binDir = os.path.join(slicer.app.slicerHome, "bin")
    return shutil.which("PythonSlicer", path=binDir) or sys.executable


#
# CUTSSegmentTest
#


class CUTSSegmentTest(ScriptedLoadableModuleTest):
    """End-to-end test on synthetic data; downloads nothing.

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
        self.test_CUTSSegment1()

    def test_CUTSSegment1(self):
        """A synthetic phantom through Apply's logic, level switching, a pick and both exports."""
        import numpy as np
        from CUTSSegmentLib import CUTSSegmentLogic

        from LabelFreeLib.mrml import arrayFromVolumeNode

        self.delayDisplay("Starting the test")
        shape = (6, 48, 56)
        k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
        phantom = np.full(shape, 10.0, dtype=np.float32)
        phantom[(j / 0.85) ** 2 + (i / 0.8) ** 2 < 1] = 100.0
        phantom[(j + 0.3) ** 2 + (i + 0.25) ** 2 < 0.08] = 200.0
        phantom += np.random.default_rng(0).normal(0, 3, shape).astype(np.float32)
        volumeNode = slicer.util.addVolumeFromArray(phantom, name="CUTSSegmentTestPhantom")
        volumeNode.SetSpacing(0.8, 0.6, 2.5)
        volumeNode.SetOrigin(10.0, -20.0, 30.0)

        logic = CUTSSegmentLogic()
        result = logic.segment(volumeNode, maxLevels=6)
        self.assertGreaterEqual(result.levelCount, 1)
        labels = arrayFromVolumeNode(result.labelmapNode)
        self.assertEqual(labels.shape, shape)
        self.delayDisplay("Segmented")

        finest = logic.setLevel(result.levelCount - 1)
        self.assertEqual(int(arrayFromVolumeNode(result.labelmapNode).max()), finest)

        segmentationNode = logic.createSegmentation()
        self.assertEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), finest)
        pointRas = [0.0, 0.0, 0.0, 1.0]
        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        ijkToRas.MultiplyPoint([28, 24, 3, 1], pointRas)
        pickNode, segmentId = logic.segmentFromPoint(pointRas[:3])
        self.assertTrue(pickNode.GetSegmentation().GetSegment(segmentId))

        outDir = Path(slicer.app.temporaryPath) / "CUTSSegmentTest"
        self.assertTrue(logic.exportLabelmap(outDir / "labels.nii.gz").is_file())
        self.assertTrue(logic.exportSegmentation(outDir / "labels.seg.nrrd").is_file())
        self.delayDisplay("Test passed")
