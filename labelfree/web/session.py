"""What the web page does, without the page: one MRML scene, the two modules' logic, the views.

:class:`WebSession` is the web front end's controller. It owns no widgets and no
server: it holds a trame-slicer ``SlicerApp`` (the real MRML scene and slice views),
drives ``CUTSSegmentLogic`` and ``LandmarkDiscoveryLogic`` on that scene through the
same :class:`~LabelFreeLib.jobs.JobRunner` the Slicer modules use, and turns a click
in a slice view into a segment. The trame application (:mod:`labelfree.web.app`)
only binds page state to these methods, so the tests drive exactly what the page drives.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import slicer

from labelfree.errors import InputError
from labelfree.web.modules import addModuleFolders

addModuleFolders()

from CUTSSegmentLib import CUTSSegmentLogic  # noqa: E402 (the folders above hold them)
from LandmarkDiscoveryLib import LandmarkDiscoveryLogic  # noqa: E402

from LabelFreeLib.jobs import JobRunner, StepJob  # noqa: E402
from LabelFreeLib.mrml import removeNodes  # noqa: E402

LABEL_OPACITY = 0.5
LANDMARK_PROJECTION_OPACITY = 0.8
LABELMAP_SUFFIXES = (".nrrd", ".nii.gz")
LANDMARK_SUFFIXES = (".mrk.json", ".fcsv", ".csv")
# A press and a release this close (view pixels) are a click; farther apart, a drag
# (window/level, panning), which the slice view's own interaction handles.
CLICK_TOLERANCE_PX = 3
# Volume nodes read from files are named after the file, suffix included.
IMAGE_SUFFIX = r"\.(nii\.gz|nrrd|nhdr|nii|mha|mhd|png|jpe?g|tiff?|bmp)$"


@dataclass
class SessionState:
    """What the page shows; :class:`WebSession` keeps it current.

    Attributes
    ----------
    volumeName : str
        The loaded volume's node name ("" before a volume is loaded).
    job : str
        The running job ("cuts", "landmarks") or "".
    progress : float
        Fraction done of the running job, 0 to 1.
    message : str
        The last status line (progress text, result, or error).
    error : bool
        Whether ``message`` reports a failure.
    levelCount, level, clusters : int
        Granularity levels of the last CUTS run, the one shown (0 = coarsest), its clusters.
    segments : list of str
        Names of the segments made by clicks, in order.
    landmarks : int
        Landmarks placed by the last detection.
    files : list of str
        Names of the exported files in the output folder, newest last.
    """

    volumeName: str = ""
    job: str = ""
    progress: float = 0.0
    message: str = ""
    error: bool = False
    levelCount: int = 0
    level: int = 0
    clusters: int = 0
    segments: list[str] = field(default_factory=list)
    landmarks: int = 0
    files: list[str] = field(default_factory=list)


class WebSession:
    """The scene, the modules' logic and the slice views of one web page.

    Parameters
    ----------
    slicerApp : trame_slicer.core.SlicerApp
        The application: scene, logics, view manager (with a view factory registered).
    outputDir : path-like
        Where exports are written (the page serves this folder for downloads).
    onChange : callable, optional
        ``onChange(state)`` after every change of :attr:`state` (the page pushes it).
    """

    def __init__(self, slicerApp, outputDir, onChange: Callable | None = None):
        self.app = slicerApp
        self.scene = slicerApp.scene
        self.outputDir = Path(outputDir)
        self.outputDir.mkdir(parents=True, exist_ok=True)
        self.cuts = CUTSSegmentLogic(self.scene)
        self.landmarkLogic = LandmarkDiscoveryLogic(self.scene)
        self.runner = JobRunner()
        self.state = SessionState()
        self.volumeNode = None
        self.picksNode = None
        self.landmarksNode = None
        self.pickEnabled = True
        self._onChange = onChange
        self._pressed: dict[str, tuple[int, int]] = {}

    # -- state ----------------------------------------------------------------------------

    def _update(self, **changes) -> None:
        for key, value in changes.items():
            setattr(self.state, key, value)
        if self._onChange is not None:
            self._onChange(self.state)

    def _fail(self, error: Exception) -> None:
        self._update(job="", progress=0.0, message=str(error), error=True)

    # -- the volume -----------------------------------------------------------------------

    def loadVolume(self, path) -> None:
        """Open an image file as the volume to work on (replacing the previous one and its results).

        Raises
        ------
        InputError
            A missing file, or one the volume readers cannot read.
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(f"No file at {path}; give the path of an image (.nrrd, .nii.gz, ...).")
        self.runner.cancelAll()
        nodes = self.app.io_manager.load_volumes(str(path))
        if not nodes:
            raise InputError(f"{path.name} could not be read as an image volume.")
        self._clearResults()
        removeNodes(self.scene, self.volumeNode)
        self.volumeNode = nodes[0]
        self.app.display_manager.show_volume_in_slice_background(self.volumeNode)
        for view in self.sliceViews():
            view.fit_view_to_content()
        self._update(
            volumeName=self.volumeNode.GetName(),
            message=f"Loaded {path.name}.",
            error=False,
        )

    def _idleVolume(self):
        """The volume to start a job on; refuses while there is none or a job runs."""
        if self.volumeNode is None or self.volumeNode.GetScene() is None:
            raise InputError("Open a volume first.")
        if self.runner.busy():
            raise InputError("Wait for the running job to finish, or cancel it.")
        return self.volumeNode

    def _clearResults(self) -> None:
        result = self.cuts.result
        if result is not None:
            removeNodes(self.scene, result.labelmapNode, result.colorNode)
            self.cuts.result = None
        removeNodes(self.scene, self.picksNode, self.landmarksNode)
        self.picksNode = self.landmarksNode = None
        self._update(levelCount=0, level=0, clusters=0, segments=[], landmarks=0)

    # -- views ----------------------------------------------------------------------------

    def sliceViews(self) -> list:
        """The slice views of the page (axial, coronal, sagittal)."""
        return list(self.app.view_manager.get_slice_views())

    def observeView(self, view) -> None:
        """Fit ``view`` to the volume when the page resizes it; make a click in it a segment.

        A click is a press and a release in place; a drag stays the view's own
        interaction (window/level).
        """
        name = view.get_view_node().GetName()
        interactor = view.interactor()
        interactor.AddObserver("WindowResizeEvent", lambda *_: self._fit(view), -1.0)
        interactor.AddObserver(
            "LeftButtonPressEvent", lambda caller, _e: self._press(name, caller), 1.0
        )
        interactor.AddObserver(
            "LeftButtonReleaseEvent", lambda caller, _e: self._release(view, name, caller), 1.0
        )

    def _fit(self, view) -> None:
        if self.volumeNode is not None:
            view.fit_view_to_content()

    def _press(self, name, interactor) -> None:
        self._pressed[name] = tuple(interactor.GetEventPosition())

    def _release(self, view, name, interactor) -> None:
        start = self._pressed.pop(name, None)
        x, y = interactor.GetEventPosition()
        if start is None or max(abs(x - start[0]), abs(y - start[1])) > CLICK_TOLERANCE_PX:
            return
        if not self.pickEnabled or self.cuts.result is None or self.state.job:
            return
        try:
            self.pickAt(view, x, y)
        except InputError as error:
            self._fail(error)

    @staticmethod
    def viewToRas(view, x: float, y: float) -> list[float]:
        """The RAS point (mm) under view pixel ``(x, y)`` (origin bottom left) on the slice plane."""
        xyToRas = view.get_view_node().GetXYToRAS()
        return list(xyToRas.MultiplyPoint([float(x), float(y), 0.0, 1.0])[:3])

    def pickAt(self, view, x: float, y: float) -> str:
        """Make a segment of the structure under view pixel ``(x, y)``; returns its name."""
        pointRas = self.viewToRas(view, x, y)
        node, segmentId = self.cuts.segmentFromPoint(pointRas, segmentationNode=self.picksNode)
        self.picksNode = node
        name = node.GetSegmentation().GetSegment(segmentId).GetName()
        self._update(
            segments=[*self.state.segments, name], message=f"Added segment '{name}'.", error=False
        )
        return name

    def _showLabels(self, labelmapNode) -> None:
        for view in self.sliceViews():
            composite = _compositeNode(view)
            composite.SetLabelVolumeID(labelmapNode.GetID() if labelmapNode else None)
            composite.SetLabelOpacity(LABEL_OPACITY)
            view.schedule_render()

    # -- CUTS -----------------------------------------------------------------------------

    def startSegmentation(self, model=None, method: str = "levels", **options) -> None:
        """Start CUTS on the volume (``options`` as ``CUTSSegmentLogic.segmentSteps``).

        Advance it with :meth:`tick`; :meth:`cancel` stops it and leaves the scene as it was.
        Inputs are checked now (raises :class:`InputError`).
        """
        volume = self._idleVolume()
        steps = self.cuts.segmentSteps(volume, model, method=method, **options)
        self._clearResults()
        self._startJob("cuts", steps, self._segmented, "Segmenting...")

    def _startJob(self, name: str, steps, onDone, message: str) -> None:
        job = StepJob(
            steps,
            onProgress=self._progress,
            onDone=onDone,
            onError=self._fail,
            onCancel=self._cancelled,
        )
        self.runner.start(name, job)
        self._update(job=name, progress=0.0, message=message, error=False)

    def _progress(self, report) -> None:
        self._update(progress=float(report.fraction), message=str(report.message))

    def _cancelled(self) -> None:
        self._update(job="", progress=0.0, message="Cancelled; nothing was changed.", error=False)

    def _segmented(self, result) -> None:
        self._showLabels(result.labelmapNode)
        self._update(
            job="",
            progress=1.0,
            levelCount=result.levelCount,
            level=result.levelIndex,
            clusters=result.clusterCounts[result.levelIndex],
            message=f"{result.levelCount} granularity levels; click a structure to segment it.",
            error=False,
        )

    def setLevel(self, level: int) -> int:
        """Show granularity level ``level`` (0 = coarsest); returns its cluster count."""
        clusters = self.cuts.setLevel(int(level))
        for view in self.sliceViews():
            view.schedule_render()
        self._update(level=int(level), clusters=clusters)
        return clusters

    # -- landmarks ------------------------------------------------------------------------

    def startLandmarks(self, model=None, keep: int | None = None) -> None:
        """Start landmark detection (the bundled model for the volume's dimension by default)."""
        volume = self._idleVolume()
        steps = self.landmarkLogic.detectSteps(
            volume, model or None, keep=keep or None, outputNode=self.landmarksNode
        )
        self._startJob("landmarks", steps, self._landmarksFound, "Finding landmarks...")

    def _landmarksFound(self, node) -> None:
        self.landmarksNode = node
        display = node.GetDisplayNode()
        if display is not None:
            # Few landmarks lie on the three shown slices: project them all onto each view,
            # without their names (which overlap; the exports carry them).
            display.SetSliceProjection(True)
            display.SetSliceProjectionOpacity(LANDMARK_PROJECTION_OPACITY)
            display.SetPointLabelsVisibility(False)
        for view in self.sliceViews():
            view.schedule_render()
        count = node.GetNumberOfControlPoints()
        self._update(job="", progress=1.0, landmarks=count, message=f"Placed {count} landmarks.")

    # -- jobs -----------------------------------------------------------------------------

    def tick(self) -> bool:
        """Advance the running job a little; returns whether one still runs."""
        return self.runner.tick()

    def cancel(self) -> None:
        """Cancel the running job; the scene stays as it was before it started."""
        self.runner.cancelAll()

    # -- export ---------------------------------------------------------------------------

    def exportLabelmap(self, suffix: str = ".nrrd") -> Path:
        """Write the shown level's label map to the output folder (``.nrrd`` or ``.nii.gz``)."""
        _checkSuffix(suffix, LABELMAP_SUFFIXES)
        level = self.state.level + 1
        return self._exported(self.cuts.exportLabelmap(self._outPath(f"level{level}", suffix)))

    def exportSegmentation(self) -> Path:
        """Write the clicked segments (or, before any click, every cluster) as ``.seg.nrrd``."""
        if self.picksNode is not None:
            path = self.cuts.exportSegmentation(self._outPath("picks", ".seg.nrrd"), self.picksNode)
        else:
            level = self.state.level + 1
            path = self.cuts.exportSegmentation(self._outPath(f"level{level}", ".seg.nrrd"))
        return self._exported(path)

    def exportLandmarks(self, suffix: str = ".mrk.json") -> Path:
        """Write the landmarks (``.mrk.json``, ``.fcsv`` or ``.csv``) to the output folder."""
        _checkSuffix(suffix, LANDMARK_SUFFIXES)
        if self.landmarksNode is None:
            raise InputError("Find landmarks first.")
        path = self._outPath("landmarks", suffix)
        return self._exported(self.landmarkLogic.exportLandmarks(self.landmarksNode, path))

    def _outPath(self, what: str, suffix: str) -> Path:
        name = re.sub(IMAGE_SUFFIX, "", self.state.volumeName or "volume", flags=re.IGNORECASE)
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "volume"
        return self.outputDir / f"{stem}_{what}{suffix}"

    def _exported(self, path) -> Path:
        path = Path(path)
        files = [name for name in self.state.files if name != path.name] + [path.name]
        self._update(files=files, message=f"Wrote {path.name}.", error=False)
        return path


def _compositeNode(view):
    """The slice composite node (background, foreground and label layers) of a slice view."""
    node = slicer.vtkMRMLSliceLogic.GetSliceCompositeNode(view.get_view_node())
    if node is None:
        raise RuntimeError(
            f"The slice view {view.get_view_node().GetName()} has no composite node."
        )
    return node


def _checkSuffix(suffix: str, allowed: tuple[str, ...]) -> None:
    if suffix not in allowed:
        raise InputError(f"Unknown format {suffix!r}; choose one of {', '.join(allowed)}.")
