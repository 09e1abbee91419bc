"""The LabelFree web page: trame-slicer slice views around :class:`~labelfree.web.session.WebSession`.

Everything the page does goes through the session (and from there through the Slicer
modules' own logic); this module only lays out widgets and binds their state. Long work
runs in time slices on the server's event loop, so the page stays live and Cancel works.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from dataclasses import asdict
from pathlib import Path

from trame.app import TrameApp
from trame.ui.vuetify3 import SinglePageWithDrawerLayout
from trame.widgets import html
from trame.widgets import vuetify3 as v3
from trame_server.utils.typed_state import TypedState
from trame_slicer import module as trame_slicer_module
from trame_slicer.app.ui.load_volume_ui import LoadVolumeButton, LoadVolumeItemsState
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.utils import write_client_files_to_dir
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

from labelfree.errors import LabelFreeError
from labelfree.web.session import LABELMAP_SUFFIXES, LANDMARK_SUFFIXES, WebSession

LOG = logging.getLogger(__name__)
LAYOUT = "LabelFree"
EXPORTS_URL = "labelfree_exports"
JOB_PAUSE_S = 0.01  # between time slices of a job: lets the page's events in


def threeSliceLayout() -> Layout:
    """Axial on the left; coronal above sagittal on the right."""
    return Layout(
        LayoutDirection.Horizontal,
        [
            ViewLayoutDefinition.axial_view(),
            Layout(
                LayoutDirection.Vertical,
                [ViewLayoutDefinition.coronal_view(), ViewLayoutDefinition.sagittal_view()],
            ),
        ],
    )


class LabelFreeWebApp(TrameApp):
    """The page: a volume in three slice views, CUTSSegment and LandmarkDiscovery beside them.

    Parameters
    ----------
    server : trame server or str, optional
        The trame server (a new one by default).
    outputDir : path-like, optional
        Where exports go (served for download); a temporary folder by default.
    """

    def __init__(self, server=None, outputDir=None):
        super().__init__(server, client_type="vue3")
        self._tmp = tempfile.TemporaryDirectory(prefix="labelfree_web_")
        outputDir = Path(outputDir) if outputDir else Path(self._tmp.name) / "exports"
        outputDir.mkdir(parents=True, exist_ok=True)
        self.server.enable_module(trame_slicer_module)
        self.server.enable_module({"serve": {EXPORTS_URL: str(outputDir)}})
        self.slicerApp = SlicerApp()
        register_rca_factories(self.slicerApp.view_manager, self.server)
        self.session = WebSession(self.slicerApp, outputDir, onChange=self._pushState)
        self.layoutManager = LayoutManager(
            self.slicerApp.scene, self.slicerApp.view_manager, self.server
        )
        self.layoutManager.register_layout(LAYOUT, threeSliceLayout())
        self.layoutManager.set_layout(LAYOUT)
        for view in self.session.sliceViews():
            self.session.observeView(view)
        self._jobTask = None
        self._initState()
        self._buildUi()

    # -- state ----------------------------------------------------------------------------

    def _initState(self) -> None:
        self.state.update(asdict(self.session.state))
        self.state.update(
            {
                "pickEnabled": True,
                "method": "levels",
                "keep": 0,
                "serverPath": "",
                "modelPath": "",
                "landmarkModel": "",
                "exportsUrl": EXPORTS_URL,
            }
        )
        self.state.change("level")(self._onLevel)
        self.state.change("pickEnabled")(self._onPickEnabled)

    def _pushState(self, sessionState) -> None:
        with self.state:
            self.state.update(asdict(sessionState))

    def _onLevel(self, level, **_):
        if level is None or self.session.cuts.result is None:
            return
        if int(level) != self.session.cuts.result.levelIndex:
            self._guarded(self.session.setLevel, int(level))

    def _onPickEnabled(self, pickEnabled, **_):
        self.session.pickEnabled = bool(pickEnabled)

    def _guarded(self, action, *args):
        """Run a page action; a LabelFree error becomes the status line, not a server error."""
        try:
            return action(*args)
        except LabelFreeError as error:
            self.session._fail(error)
        except Exception as error:  # the page must survive anything; the log has the trace
            LOG.exception("LabelFree web action failed")
            self.session._fail(RuntimeError(f"Unexpected error: {error}"))
        return None

    # -- actions (the page's buttons call these) ------------------------------------------

    def openPath(self, path=None) -> None:
        """Open a volume from a path on the server."""
        self._guarded(self.session.loadVolume, path or self.state.serverPath)

    def openUploads(self, files: list[dict]) -> None:
        """Open the first uploaded file as the volume."""
        path = self._savedUpload(files)
        if path:
            self.openPath(path)

    def useUploadedModel(self, files: list[dict]) -> None:
        """Use an uploaded landmark model file for detection."""
        path = self._savedUpload(files)
        if path:
            with self.state:
                self.state.landmarkModel = path

    def _savedUpload(self, files: list[dict]) -> str | None:
        """The first uploaded file, written to a folder of its own; None if nothing came."""
        paths = write_client_files_to_dir(files, tempfile.mkdtemp(dir=self._tmp.name))
        return paths[0] if paths else None

    def applyCuts(self) -> None:
        """Start CUTS on the volume with the page's method."""
        self._guarded(
            self.session.startSegmentation, self.state.modelPath or None, self.state.method
        )
        self._runJobs()

    def detectLandmarks(self) -> None:
        """Start landmark detection with the bundled or the uploaded model."""
        self._guarded(
            self.session.startLandmarks, self.state.landmarkModel or None, int(self.state.keep)
        )
        self._runJobs()

    def cancel(self) -> None:
        """Cancel the running job."""
        self.session.cancel()

    def export(self, kind: str, suffix: str) -> None:
        """Write an export into the download folder (``kind``: labelmap, segmentation, landmarks)."""
        actions = {
            "labelmap": self.session.exportLabelmap,
            "segmentation": lambda _suffix: self.session.exportSegmentation(),
            "landmarks": self.session.exportLandmarks,
        }
        self._guarded(actions[kind], suffix)

    def _runJobs(self) -> None:
        if not self.session.runner.busy() or (self._jobTask and not self._jobTask.done()):
            return
        self._jobTask = asyncio.ensure_future(self._jobLoop())

    async def _jobLoop(self) -> None:
        while self._guarded(self.session.tick):
            await asyncio.sleep(JOB_PAUSE_S)

    # -- layout ---------------------------------------------------------------------------

    def _buildUi(self) -> None:
        with SinglePageWithDrawerLayout(self.server, full_height=True) as self.ui:
            self.ui.title.set_text("LabelFree")
            with self.ui.drawer as drawer:
                drawer.width = 360
                with v3.VContainer(classes="pa-3"):
                    self._volumeCard()
                    self._cutsCard()
                    self._landmarksCard()
                    self._filesCard()
            with self.ui.content:
                with html.Div(style="display: flex; flex-direction: column; height: 100%;"):
                    html.Div(
                        "{{ message }}",
                        classes=("error ? 'text-error pa-2' : 'pa-2'",),
                        style="flex: none;",
                        id="lf-message",
                    )
                    with html.Div(style="flex: 1; position: relative; min-height: 0;"):
                        self.layoutManager.initialize_layout_grid(self.ui)

    def _volumeCard(self) -> None:
        with v3.VCard(title="Volume", subtitle=("volumeName || 'none loaded'",), classes="mb-3"):
            with v3.VCardText():
                v3.VTextField(
                    v_model=("serverPath",), label="Path on the server", density="compact"
                )
                with html.Div(classes="d-flex align-center"):
                    v3.VBtn("Open", click=self.openPath, id="lf-open", classes="mr-3")
                    self._uploadButton(
                        "Upload a volume", "mdi-file-upload", "lfVol", self.openUploads
                    )

    def _cutsCard(self) -> None:
        with v3.VCard(title="CUTSSegment", classes="mb-3"):
            with v3.VCardText():
                v3.VSelect(
                    v_model=("method",),
                    items=("['levels', 'persistent', 'kmeans']",),
                    label="Method",
                    density="compact",
                )
                with html.Div(classes="d-flex"):
                    v3.VBtn(
                        "Apply",
                        click=self.applyCuts,
                        disabled=("!volumeName || !!job",),
                        color="primary",
                        id="lf-apply",
                        classes="mr-2",
                    )
                    v3.VBtn("Cancel", click=self.cancel, disabled=("!job",), id="lf-cancel")
                v3.VProgressLinear(model_value=("progress * 100",), classes="my-2", height=6)
                v3.VSlider(
                    v_model=("level",),
                    min=0,
                    max=("Math.max(levelCount - 1, 0)",),
                    step=1,
                    disabled=("levelCount < 2",),
                    label="Granularity",
                    id="lf-level",
                    classes="lf-level",
                    hide_details=True,
                )
                html.Div("Level {{ level + 1 }} of {{ levelCount }}: {{ clusters }} clusters")
                v3.VSwitch(
                    v_model=("pickEnabled",),
                    label="Click a structure to make it a segment",
                    density="compact",
                    hide_details=True,
                )
                with v3.VChipGroup(column=True):
                    v3.VChip("{{ name }}", v_for="name in segments", key="name", size="small")
                with html.Div(classes="d-flex flex-wrap"):
                    for suffix in LABELMAP_SUFFIXES:
                        self._exportButton(f"Labels {suffix}", "labelmap", suffix, "levelCount")
                    self._exportButton(
                        "Segments .seg.nrrd", "segmentation", ".seg.nrrd", "levelCount"
                    )

    def _landmarksCard(self) -> None:
        with v3.VCard(title="LandmarkDiscovery", classes="mb-3"):
            with v3.VCardText():
                with html.Div(classes="d-flex align-center"):
                    v3.VTextField(
                        v_model=("keep",),
                        type="number",
                        label="Keep the N most important (0 = all)",
                        density="compact",
                        id="lf-keep",
                    )
                    self._uploadButton(
                        "Upload a landmark model (.pt)", "mdi-brain", "lfMod", self.useUploadedModel
                    )
                html.Div("Model: {{ landmarkModel ? landmarkModel.split('/').pop() : 'bundled' }}")
                v3.VBtn(
                    "Detect",
                    click=self.detectLandmarks,
                    disabled=("!volumeName || !!job",),
                    color="primary",
                    id="lf-detect",
                )
                html.Div("{{ landmarks }} landmarks", v_if=("landmarks",))
                with html.Div(classes="d-flex flex-wrap"):
                    for suffix in LANDMARK_SUFFIXES:
                        self._exportButton(f"Landmarks {suffix}", "landmarks", suffix, "landmarks")

    def _uploadButton(self, text: str, icon: str, namespace: str, onFiles) -> None:
        """trame-slicer's chunked file upload; ``onFiles(files)`` when a file has arrived."""
        button = LoadVolumeButton(
            name=text,
            load_directory=False,
            icon=icon,
            typed_state=TypedState(self.state, LoadVolumeItemsState, namespace=namespace),
        )
        button.on_load_volume.connect(onFiles)

    def _exportButton(self, text, kind, suffix, enabledBy) -> None:
        v3.VBtn(
            text,
            click=(self.export, f"['{kind}', '{suffix}']"),
            disabled=(f"!{enabledBy} || !!job",),
            size="small",
            variant="outlined",
            classes="ma-1",
            id=f"lf-export-{kind}{suffix.replace('.', '-')}",
        )

    def _filesCard(self) -> None:
        with v3.VCard(title="Downloads"):
            with v3.VList(density="compact"):
                with v3.VListItem(v_for="name in files", key="name"):
                    html.A("{{ name }}", href=("`${exportsUrl}/${name}`",), download=("name",))


def main(volume=None, host: str = "127.0.0.1", port: int = 8080, outputDir=None, **kwargs):
    """Serve the page; opens ``volume`` (the bundled sample by default) first."""
    from labelfree.demo import SAMPLE

    app = LabelFreeWebApp(outputDir=outputDir)
    app.openPath(str(volume or SAMPLE))
    # timeout=0: keep serving when the last page closes (a page may be reloaded).
    app.server.start(host=host, port=port, open_browser=False, timeout=0, **kwargs)
    return app
