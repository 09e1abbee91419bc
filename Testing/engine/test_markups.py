"""Landmark files: round trips, coordinate systems, and Slicer's own readers (slicer-core)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from labelfree.errors import InputError
from labelfree.markups import (
    SCHEMA_URL,
    importance_from_description,
    markups_format,
    read_csv,
    read_fcsv,
    read_landmark_table,
    read_markups,
    read_mrk_json,
    write_csv,
    write_fcsv,
    write_landmark_table,
    write_markups,
    write_mrk_json,
)


def _oblique_points():
    """Physical (LPS) points of voxels of an oblique, anisotropic volume, computed by ITK."""
    img = sitk.Image(20, 30, 40, sitk.sitkFloat32)
    img.SetSpacing((0.7, 1.3, 2.5))
    img.SetOrigin((-12.0, 33.0, 7.5))
    angle = np.deg2rad(25.0)
    rot = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    img.SetDirection((rot @ np.diag([1.0, -1.0, 1.0])).ravel().tolist())
    indices = [(0.0, 0.0, 0.0), (19.0, 29.0, 39.0), (3.5, 17.25, 8.0), (10.0, 0.5, 22.0)]
    points = np.array([img.TransformContinuousIndexToPhysicalPoint(i) for i in indices])
    return points


NAMES = ["LM-01", "LM-02", "LM, with comma", 'LM "quoted"']
IMPORTANCE = np.array([1.0, 0.25, 0.5, 0.0])


@pytest.mark.parametrize("suffix", [".mrk.json", ".fcsv", ".csv"])
def test_round_trip_each_format(tmp_path, suffix):
    points = _oblique_points()
    path = write_markups(tmp_path / f"lm{suffix}", points, NAMES, IMPORTANCE)
    back, names, importance = read_markups(path)
    np.testing.assert_allclose(back, points, atol=1e-9)
    assert names == NAMES
    np.testing.assert_allclose(importance, IMPORTANCE, atol=1e-4)


def test_mrk_json_is_lps_and_has_slicer_structure(tmp_path):
    points = _oblique_points()
    path = write_mrk_json(tmp_path / "a.mrk.json", points, NAMES, ["d1", "d2", "d3", "d4"])
    doc = json.loads(path.read_text())
    assert doc["@schema"] == SCHEMA_URL
    (markup,) = doc["markups"]
    assert markup["type"] == "Fiducial"
    assert markup["coordinateSystem"] == "LPS"
    assert markup["coordinateUnits"] == "mm"
    assert markup["locked"] is True and markup["fixedNumberOfControlPoints"] is True
    ids = [cp["id"] for cp in markup["controlPoints"]]
    assert len(set(ids)) == len(ids) == 4
    for cp, point, name in zip(markup["controlPoints"], points, NAMES, strict=True):
        assert cp["label"] == name
        assert cp["positionStatus"] == "defined"
        assert len(cp["orientation"]) == 9
        assert cp["locked"] is True and cp["visibility"] is True
        # Stored as LPS, i.e. the ITK physical point itself, not RAS.
        np.testing.assert_allclose(cp["position"], point, atol=1e-12)


def test_fcsv_header_and_lps_values(tmp_path):
    points = _oblique_points()
    path = write_fcsv(tmp_path / "a.fcsv", points, NAMES)
    lines = path.read_text().splitlines()
    assert lines[0] == "# Markups fiducial file version = 4.11"
    assert lines[1] == "# CoordinateSystem = LPS"
    assert lines[2].startswith("# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc")
    first = lines[3].split(",")
    np.testing.assert_allclose([float(v) for v in first[1:4]], points[0])


def test_csv_columns_are_ras(tmp_path):
    points = _oblique_points()
    path = write_csv(tmp_path / "a.csv", points, NAMES, IMPORTANCE)
    header = path.read_text().splitlines()[0].split(",")
    assert header[:5] == ["label", "r", "a", "s", "importance"]
    row = path.read_text().splitlines()[1].split(",")
    np.testing.assert_allclose([float(v) for v in row[1:4]], points[0] * [-1, -1, 1])


def test_ras_files_are_read_back_as_lps(tmp_path):
    lps = _oblique_points()[:2]
    ras = lps * [-1, -1, 1]
    doc = {
        "@schema": SCHEMA_URL,
        "markups": [
            {
                "type": "Fiducial",
                "coordinateSystem": "RAS",
                "controlPoints": [
                    {"label": "A", "position": ras[0].tolist()},
                    {"label": "B", "position": ras[1].tolist()},
                ],
            }
        ],
    }
    (tmp_path / "r.mrk.json").write_text(json.dumps(doc))
    np.testing.assert_allclose(read_mrk_json(tmp_path / "r.mrk.json")[0], lps)
    # Slicer 4.x numeric header: 0 = RAS.
    rows = "\n".join(f"{i},{p[0]},{p[1]},{p[2]},0,0,0,1,1,1,0,P{i},,," for i, p in enumerate(ras))
    (tmp_path / "r.fcsv").write_text(
        "# Markups fiducial file version = 4.10\n# CoordinateSystem = 0\n" + rows + "\n"
    )
    back, names, _ = read_fcsv(tmp_path / "r.fcsv")
    np.testing.assert_allclose(back, lps)
    assert names == ["P0", "P1"]
    # Slicer's own table export, in LPS.
    (tmp_path / "s.csv").write_text(
        '"label","l","p","s","defined"\n' + "".join(f'"Q",{p[0]},{p[1]},{p[2]},1\n' for p in lps)
    )
    np.testing.assert_allclose(read_csv(tmp_path / "s.csv")[0], lps)


def test_2d_points_get_z_zero(tmp_path):
    points = np.array([[1.5, -2.0], [3.0, 4.0]])
    path = write_markups(tmp_path / "p.mrk.json", points, ["a", "b"])
    back, _, _ = read_mrk_json(path)
    np.testing.assert_allclose(back, [[1.5, -2.0, 0.0], [3.0, 4.0, 0.0]])


def test_landmark_table_round_trip(tmp_path):
    points = _oblique_points()
    rows = [("sub-01", points, NAMES, IMPORTANCE), ("sub-02", points + 1.0, NAMES, IMPORTANCE)]
    path = write_landmark_table(tmp_path / "t.csv", rows)
    assert path.read_text().splitlines()[0] == "subject,label,importance,r,a,s"
    table = read_landmark_table(path)
    assert list(table) == ["sub-01", "sub-02"]
    np.testing.assert_allclose(table["sub-02"][0], points + 1.0)
    assert table["sub-01"][1] == NAMES


def test_importance_description_parse():
    assert importance_from_description("importance=0.2500 rank=3/30") == pytest.approx(0.25)
    assert np.isnan(importance_from_description("a note"))


def test_bad_inputs_write_nothing(tmp_path):
    points = _oblique_points()
    with pytest.raises(InputError, match="Unknown landmark file type"):
        write_markups(tmp_path / "a.txt", points, NAMES)
    with pytest.raises(InputError, match="names"):
        write_markups(tmp_path / "b.mrk.json", points, NAMES[:2])
    with pytest.raises(InputError, match="NaN"):
        write_markups(tmp_path / "c.fcsv", points * np.nan, NAMES)
    with pytest.raises(InputError, match="shape"):
        write_markups(tmp_path / "d.csv", points.ravel(), NAMES)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "bad.mrk.json").write_text("{not json")
    with pytest.raises(InputError, match="JSON"):
        read_mrk_json(tmp_path / "bad.mrk.json")
    with pytest.raises(InputError, match="not found"):
        read_fcsv(tmp_path / "missing.fcsv")
    assert markups_format("X.MRK.JSON") == "mrk.json"


# ----------------------------------------------------------------------------- real Slicer readers


@pytest.fixture(scope="module")
def markups_scene():
    slicer = pytest.importorskip("slicer")
    scene = slicer.vtkMRMLScene()
    scene.AddNode(slicer.vtkMRMLSelectionNode())  # markups logic looks for one
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    logic = slicer.vtkSlicerMarkupsLogic()
    logic.SetMRMLApplicationLogic(app_logic)
    logic.SetMRMLScene(scene)
    # The markups logic keeps a raw pointer to the application logic: hold a reference
    # for the fixture's lifetime, or garbage collection leaves it dangling (segfault).
    yield slicer, scene, logic
    del app_logic


def _node_points_ras(node):
    out = []
    for i in range(node.GetNumberOfControlPoints()):
        p = [0.0, 0.0, 0.0]
        node.GetNthControlPointPosition(i, p)
        out.append(p)
    return np.array(out)


@pytest.mark.parametrize(
    ("suffix", "storage_class"),
    [
        (".mrk.json", "vtkMRMLMarkupsJsonStorageNode"),
        (".fcsv", "vtkMRMLMarkupsFiducialStorageNode"),
    ],
)
def test_slicer_storage_nodes_read_our_files_in_ras(tmp_path, markups_scene, suffix, storage_class):
    slicer, scene, _ = markups_scene
    points = _oblique_points()
    path = write_markups(tmp_path / f"lm{suffix}", points, NAMES, IMPORTANCE)
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    storage = getattr(slicer, storage_class)()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    np.testing.assert_allclose(_node_points_ras(node), points * [-1, -1, 1], atol=1e-9)
    labels = [node.GetNthControlPointLabel(i) for i in range(node.GetNumberOfControlPoints())]
    assert labels == NAMES
    desc = node.GetNthControlPointDescription(1)
    assert importance_from_description(desc) == pytest.approx(0.25)
    if suffix == ".mrk.json":
        assert node.GetLocked() and node.GetFixedNumberOfControlPoints()


def test_slicer_imports_our_csv_and_we_read_its_export(tmp_path, markups_scene):
    _, scene, logic = markups_scene
    # Slicer's CSV importer does not undo doubled quotes, so no quoted label here.
    points, names = _oblique_points()[:3], NAMES[:3]
    path = write_csv(tmp_path / "lm.csv", points, names, IMPORTANCE[:3])
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    assert logic.ImportControlPointsFromCSV(node, str(path))
    np.testing.assert_allclose(_node_points_ras(node), points * [-1, -1, 1], atol=1e-9)
    exported = tmp_path / "slicer.csv"
    assert logic.ExportControlPointsToCSV(node, str(exported))
    back, back_names, _ = read_csv(exported)
    # Slicer's export keeps 6 significant digits.
    np.testing.assert_allclose(back, points, atol=1e-4)
    assert back_names == names
