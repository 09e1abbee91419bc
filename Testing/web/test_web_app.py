"""The web front end without a browser: the page's actions and mouse events through its views.

The application is built as ``labelfree web`` builds it (trame server, trame-slicer's remote
slice views, the modules' logic on its scene) but not started: the tests call what the page's
buttons call, set page state as the browser does, and send mouse events to the views' remote
adapters (the objects the browser's events reach). Frames are rendered by VTK (EGL, offscreen).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("trame_slicer", reason="needs the web extra (pip install -e '.[web]')")
pytest.importorskip("torch")

from labelfree.cuts.hint import binarise_by_point  # noqa: E402
from labelfree.demo import SAMPLE  # noqa: E402
from labelfree.io import read_image  # noqa: E402
from labelfree.markups import read_markups  # noqa: E402
from labelfree.web.app import LabelFreeWebApp  # noqa: E402
from labelfree.web.session import LABEL_OPACITY  # noqa: E402

VIEW_W, VIEW_H = 240, 200
CUTS = {"maxLevels": 6, "seed": 0, "device": "cpu"}


def _adapters(app) -> dict:
    """The remote view adapters by view name (Red, Green, Yellow): what browser events reach."""
    views = {}
    for factory in app.slicerApp.view_manager._factories:
        views.update({tag: view.view_adapter for tag, view in factory._views.items()})
    return views


def _frame(adapter) -> np.ndarray:
    """The view's current frame as the page receives it, ``(rows, cols, 3)`` uint8, top row first."""
    image, _, _ = adapter._rca.img_cols_rows
    return np.asarray(image)


def _mouse(adapter, kind: str, x: int, y: int) -> None:
    event = {"type": kind, "x": x, "y": y, "w": VIEW_W, "h": VIEW_H}
    adapter.on_interaction(None, {**event, "ctrlKey": 0, "altKey": 0, "shiftKey": 0})


def _click(adapter, x: int, y: int) -> None:
    _mouse(adapter, "LeftButtonPress", x, y)
    _mouse(adapter, "LeftButtonRelease", x, y)


def _onServerLoop(app, action) -> None:
    """Call a page action on an event loop, as the server does, and wait for its job to end."""

    async def wait():
        action()
        while app.session.runner.busy():
            await asyncio.sleep(0.01)

    asyncio.run(wait())


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    app = LabelFreeWebApp(outputDir=tmp_path_factory.mktemp("exports"))
    app.state.ready()  # what the server does when it starts: state changes now reach listeners
    app.openPath(str(SAMPLE))
    for adapter in _adapters(app).values():
        adapter.update_size(None, {"w": VIEW_W, "h": VIEW_H, "p": 1})
    return app


@pytest.fixture(scope="module")
def segmented(app):
    app.state.method = "levels"
    _onServerLoop(app, app.applyCuts)
    assert app.state.job == "" and not app.state.error, app.state.message
    return app


def test_the_sample_opens_in_three_slice_views(app):
    adapters = _adapters(app)
    assert set(adapters) == {"Red", "Green", "Yellow"}
    assert app.state.volumeName.startswith("mni152")
    for adapter in adapters.values():
        frame = _frame(adapter)
        assert frame.shape == (VIEW_H, VIEW_W, 3)
        # Brain in the middle, black background at the corner.
        assert frame[VIEW_H // 2, VIEW_W // 2].mean() > 60
        assert frame[2, 2].max() < 10


def test_apply_then_the_slider_switches_the_overlaid_level(segmented):
    app = segmented
    result = app.session.cuts.result
    assert app.state.levelCount == result.levelCount >= 3
    red = _adapters(app)["Red"]
    before = _frame(red)
    app.state.level = 2
    app.state.flush()  # as a slider move from the page does
    assert result.levelIndex == 2
    assert app.state.clusters == result.clusterCounts[2]
    after = _frame(red)
    assert np.abs(after.astype(int) - before.astype(int)).max() > 20


def test_the_overlay_has_the_label_colour_at_a_clicked_position(segmented):
    """The frame at a pixel is the grey background blended with the colour of the label there."""
    app = segmented
    session, red = app.session, _adapters(app)["Red"]
    view = next(v for v in session.sliceViews() if v.get_view_node().GetName() == "Red")
    x, y = VIEW_W // 2 + 17, VIEW_H // 2 + 9
    result = session.cuts.result
    labelled = _frame(red)[VIEW_H - 1 - y, x].astype(float)
    session._showLabels(None)
    grey = _frame(red)[VIEW_H - 1 - y, x].astype(float)
    session._showLabels(result.labelmapNode)

    index = _indexOf(result, session.viewToRas(view, x, y))
    label = int(result.currentLabels[index])
    rgba = [0.0] * 4
    result.colorNode.GetColor(label, rgba)
    expected = (1 - LABEL_OPACITY) * grey + LABEL_OPACITY * 255 * np.array(rgba[:3])
    np.testing.assert_allclose(labelled, expected, atol=6)


def test_a_click_in_a_slice_view_makes_that_structure_a_segment(segmented):
    app = segmented
    session, red = app.session, _adapters(app)["Red"]
    view = next(v for v in session.sliceViews() if v.get_view_node().GetName() == "Red")
    x, y = VIEW_W // 2 + 5, VIEW_H // 2 - 12
    count = len(app.state.segments)
    _mouse(red, "LeftButtonPress", x, y)  # a drag is window/level, not a pick
    _mouse(red, "MouseMove", x + 30, y)
    _mouse(red, "LeftButtonRelease", x + 30, y)
    assert len(app.state.segments) == count

    _click(red, x, y)
    assert len(app.state.segments) == count + 1, app.state.message
    result = session.cuts.result
    index = _indexOf(result, session.viewToRas(view, x, y))
    expected = binarise_by_point(result.currentLabels, index, connected=True)
    segmentation = session.picksNode.GetSegmentation()
    segmentId = segmentation.GetNthSegmentID(segmentation.GetNumberOfSegments() - 1)
    mask = _segmentArray(session.picksNode, segmentId, result.labelmapNode)
    np.testing.assert_array_equal(mask > 0, expected)


def test_exports_are_files_in_the_input_geometry(segmented, tmp_path):
    app = segmented
    result = app.session.cuts.result
    sample = read_image(SAMPLE)
    for suffix in (".nrrd", ".nii.gz"):
        app.export("labelmap", suffix)
        path = app.session.outputDir / app.state.files[-1]
        assert path.name.endswith(suffix)
        labels = read_image(path)
        np.testing.assert_array_equal(labels.array, result.currentLabels)
        np.testing.assert_allclose(labels.spacing, sample.spacing)
        np.testing.assert_allclose(labels.origin, sample.origin, atol=1e-4)
    app.export("segmentation", ".seg.nrrd")
    assert app.state.files[-1].endswith("picks.seg.nrrd")
    assert (app.session.outputDir / app.state.files[-1]).stat().st_size > 0
    app.export("labelmap", ".png")
    assert app.state.error and "Unknown format" in app.state.message


def test_landmarks_are_placed_and_exported(app):
    app.state.keep = 12
    red = _adapters(app)["Red"]
    before = _frame(red).astype(int)
    _onServerLoop(app, app.detectLandmarks)
    drawn = np.abs(_frame(red).astype(int) - before).sum(axis=-1) > 60
    assert drawn.sum() > 50  # the landmarks are drawn in the view
    assert not app.state.error, app.state.message
    assert app.state.landmarks == 12
    node = app.session.landmarksNode
    assert node.GetNumberOfControlPoints() == 12
    shown = np.array([node.GetNthControlPointPositionWorld(i) for i in range(12)])
    for suffix in (".mrk.json", ".fcsv", ".csv"):
        app.export("landmarks", suffix)
        path = app.session.outputDir / app.state.files[-1]
        assert path.name.endswith(suffix)
        pointsLps, names, _ = read_markups(path)
        assert len(names) == 12
        np.testing.assert_allclose(pointsLps * [-1, -1, 1], shown, atol=1e-3)


def test_cancel_leaves_the_scene_as_it_was(app):
    before = _nodeIds(app.slicerApp.scene)
    app.session.startSegmentation(None, "levels", **CUTS)
    app.session.tick()
    app.cancel()
    assert app.state.job == "" and "Cancelled" in app.state.message
    assert app.session.cuts.result is None
    after = _nodeIds(app.slicerApp.scene)
    assert after <= before  # the previous result is cleared at Apply; nothing half made stays
    assert not any("CUTS" in name for name in after - before)


def test_bad_input_is_a_status_line_not_a_crash(tmp_path):
    app = LabelFreeWebApp(outputDir=tmp_path / "exports")
    app.applyCuts()
    assert app.state.error and "Open a volume first" in app.state.message
    app.openPath(str(tmp_path / "missing.nrrd"))
    assert app.state.error and "No file" in app.state.message
    (tmp_path / "notanimage.nrrd").write_text("not an image")
    app.openPath(str(tmp_path / "notanimage.nrrd"))
    assert app.state.error


def _indexOf(result, pointRas):
    from LabelFreeLib.mrml import rasToIjkIndex

    return rasToIjkIndex(result.image, pointRas)


def _segmentArray(segmentationNode, segmentId, referenceNode) -> np.ndarray:
    import slicer
    import vtk

    from LabelFreeLib.mrml import arrayFromVolumeNode

    scene = segmentationNode.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segmentId)
        slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentationNode, ids, labelmap, referenceNode
        )
        return arrayFromVolumeNode(labelmap).copy()
    finally:
        scene.RemoveNode(labelmap)


def _nodeIds(scene) -> set[str]:
    nodes = scene.GetNodes()
    return {nodes.GetItemAsObject(i).GetName() or "" for i in range(nodes.GetNumberOfItems())}


def test_the_cli_refuses_a_missing_volume_with_exit_2(tmp_path, capsys):
    from labelfree.cli import main

    assert main(["web", str(tmp_path / "missing.nrrd")]) == 2
    assert "No volume at" in capsys.readouterr().err
