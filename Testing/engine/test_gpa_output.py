"""Batch landmark output that SlicerMorph's GPA reads without edits, and quality control
(issue 10, item 6).

GPA (SlicerMorph ``GPA/GPA.py``, ``loadLandmarks``, ``importLandMarks``, ``initDataArray``)
takes one file per specimen, the specimen ID being the file name without ``.mrk.json`` or
``.fcsv``. It requires the same number of points in every file and, in ``.mrk.json``, every
point's ``positionStatus`` to be ``defined``; a ``description`` equal to ``Semi`` marks a
semi-landmark. It reads ``.fcsv`` rows by splitting on commas (no quoting), coordinates in
columns 1-3 and the description in column 12, and uses the stored coordinates as they are.
``read_as_gpa`` below applies exactly those rules.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from labelfree.cli import main
from labelfree.io import Image, write_image
from labelfree.landmarks.quality import outside_image, population_outliers, procrustes_residuals
from labelfree.landmarks.synthetic import shepp_logan_population
from labelfree.markups import read_landmark_table


def read_as_gpa(files) -> tuple[list[str], np.ndarray, list[str]]:
    """Specimen IDs, ``(K, 3, S)`` coordinates and semi-landmark numbers, by GPA's rules."""
    ids, shapes, semi = [], [], []
    for path in files:
        name = path.name
        ids.append(name[: -len(".mrk.json")] if name.endswith(".mrk.json") else path.stem)
        if name.endswith(".mrk.json"):
            points = json.loads(path.read_text())["markups"][0]["controlPoints"]
            assert all(p["positionStatus"] == "defined" for p in points), name
            semi.append([str(i + 1) for i, p in enumerate(points) if p["description"] == "Semi"])
            shapes.append(np.array([p["position"] for p in points], float))
        else:
            rows = [r.strip().split(",") for r in path.read_text().splitlines() if r[:1] != "#"]
            semi.append([str(i + 1) for i, r in enumerate(rows) if r[12] == "Semi"])
            shapes.append(np.array([r[1:4] for r in rows], float))
        assert len(shapes[-1]) == len(shapes[0]), f"{name}: not the same number of landmarks"
    return ids, np.stack(shapes, axis=2), semi[0]


def _cohort(folder, count=6):
    folder.mkdir()
    population = shepp_logan_population(count, size=128, seed=7)
    for k, image in enumerate(population.images):
        write_image(Image(image, (0.5, 0.5), (0.0, 0.0), np.eye(2)), folder / f"sub-{k}.nrrd")
    return folder


@pytest.mark.parametrize("kind", ["mrk.json", "fcsv"])
def test_batch_files_read_by_gpa_rules_give_the_table(kind, tmp_path):
    cohort = _cohort(tmp_path / "images")
    out = tmp_path / "lm"
    assert main(["landmarks", "detect", str(cohort), "--out", str(out), "--format", kind]) == 0
    files = sorted(out.glob(f"*.{kind}"))
    ids, shapes, semi = read_as_gpa(files)
    assert ids == [f"sub-{k}" for k in range(6)] and semi == []
    table = read_landmark_table(out / "landmarks.csv")
    for k, name in enumerate(ids):  # every file in LPS, as its header says
        points_lps = table[name][0]
        np.testing.assert_allclose(shapes[:, :2, k], points_lps[:, :2], atol=1e-3)
        text = files[k].read_text()
        assert '"coordinateSystem": "LPS"' in text or "# CoordinateSystem = LPS" in text


def test_a_failed_case_is_flagged_in_the_table_and_the_log(tmp_path, capsys):
    cohort = _cohort(tmp_path / "images")
    noise = np.random.default_rng(0).normal(size=(128, 128)).astype(np.float32)
    write_image(Image(noise, (0.5, 0.5), (0.0, 0.0), np.eye(2)), cohort / "sub-noise.nrrd")
    out = tmp_path / "lm"
    assert main(["landmarks", "detect", str(cohort), "--out", str(out)]) == 0
    verdicts = {}
    for line in (out / "landmarks.csv").read_text().splitlines()[1:]:
        verdicts.setdefault(line.split(",")[0], set()).add(line.split(",")[-1])
    assert verdicts.pop("sub-noise") != {"ok"}
    assert all(v == {"ok"} for v in verdicts.values()), verdicts
    assert "sub-noise: far from the cohort's mean shape" in capsys.readouterr().err


def test_procrustes_ignores_pose_and_size_and_finds_a_scrambled_shape():
    rng = np.random.default_rng(1)
    mean = rng.normal(size=(12, 3)) * 20
    shapes = {}
    for k in range(8):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        q *= np.sign(np.linalg.det(q))  # a rotation
        shapes[f"s{k}"] = (1 + k / 10) * (mean + rng.normal(size=mean.shape) * 0.5) @ q + k
    assert procrustes_residuals(np.stack(list(shapes.values()))).max() < 1.5
    assert population_outliers(shapes) == {}
    shapes["swapped"] = mean[rng.permutation(12)]
    assert list(population_outliers(shapes)) == ["swapped"]


def test_outside_image_counts_points_beyond_half_a_voxel():
    index = np.array([[0.0, 0.0], [-0.6, 3.0], [9.4, 4.0], [9.6, 4.0]])
    assert outside_image(index, (5, 10)) == 2  # x in [-0.5, 9.5], y in [-0.5, 4.5]
