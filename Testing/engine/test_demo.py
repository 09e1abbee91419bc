"""`labelfree demo`: the newcomer's command, end to end on the bundled sample and models."""

from __future__ import annotations

import json

import numpy as np

from labelfree import cli
from labelfree.demo import SAMPLE
from labelfree.io import read_image
from labelfree.markups import read_mrk_json


def test_demo_writes_levels_segmentation_landmarks_and_figures(tmp_path):
    assert cli.main(["demo", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "demo.json").read_text())
    clusters = record["cuts"]["clusters"]
    assert 5 <= len(clusters) <= 12 and clusters == sorted(clusters) and clusters[0] >= 2

    sample = read_image(SAMPLE)
    coarsest = read_image(tmp_path / record["cuts"]["levels"][0])
    assert coarsest.spatial_shape == sample.spatial_shape
    np.testing.assert_allclose(coarsest.direction, sample.direction)
    np.testing.assert_allclose(coarsest.origin, sample.origin)
    assert len(np.unique(coarsest.array)) == clusters[0]

    points, names, _ = read_mrk_json(tmp_path / "landmarks_3d.mrk.json")
    assert len(names) == record["landmarks"]["landmarks_3d"] and len(set(names)) == len(names)
    index = sample.physical_to_index(points)
    inside = np.all((index > -1) & (index < np.array(sample.spatial_shape[::-1])), axis=1)
    assert inside.mean() > 0.9

    for figure in ("levels.png", "landmarks_3d.png", "landmarks_2d.png", "training_curves.png"):
        assert (tmp_path / figure).stat().st_size > 10_000
    assert (tmp_path / "cuts_persistent.seg.nrrd").is_file()
