"""Evaluation subjects (a warp family no trainer draws) and registration through landmarks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from labelfree.cli import main
from labelfree.errors import InputError
from labelfree.io import Image, read_image, write_image
from labelfree.landmarks.evaluation import (
    PHANTOM_VARIATION,
    evaluation_subjects,
    phantom_subjects,
)
from labelfree.landmarks.metrics import correspondence_error
from labelfree.landmarks.model import load_landmark_model, predict_landmarks
from labelfree.landmarks.registration import (
    carry_label_map,
    carry_points,
    fit_landmark_transform,
)
from labelfree.landmarks.synthetic import shepp_logan_template
from labelfree.markups import read_markups, write_markups

PACKAGE = Path(__file__).resolve().parents[2] / "labelfree"


# --- evaluation subjects ---------------------------------------------------------------


def test_subjects_are_the_template_through_their_exact_maps():
    template = shepp_logan_template(96)
    only_warp = replace(PHANTOM_VARIATION, bias=0, gamma=0, blur_mm=0, noise=0)
    population = evaluation_subjects(template, 3, seed=1, variation=only_warp)
    index = np.random.default_rng(0).integers(4, 92, (3, 60, 2))  # pixel centres (x, y)
    common = population.to_common(index / 95 * 2 - 1)
    for i in range(3):
        shown = population.images[i][index[i, :, 1], index[i, :, 0]]
        at = (common[i] + 1) / 2 * 95
        expected = map_coordinates(template, at[:, ::-1].T, order=1)
        assert np.abs(shown - expected).max() < 1e-4
    moved = np.linalg.norm(population.to_pixels(common) - index, axis=-1)
    assert moved.mean() > 2.0  # pose and shape really move anatomy (pixels)


def test_from_common_inverts_to_common_and_seeds_repeat():
    population = phantom_subjects(4, size=64, seed=2)
    points = np.random.default_rng(1).uniform(-0.9, 0.9, (4, 30, 2))
    back = population.from_common(population.to_common(points))
    assert np.abs(back - points).max() < 1e-6
    again = phantom_subjects(4, size=64, seed=2)
    assert np.array_equal(again.images, population.images)
    assert not np.array_equal(phantom_subjects(4, size=64, seed=3).images, population.images)


def test_subjects_differ_in_scanner_not_only_shape():
    template = shepp_logan_template(64)
    plain = replace(PHANTOM_VARIATION, bias=0, gamma=0, blur_mm=0, noise=0)
    warped = evaluation_subjects(template, 2, seed=4, variation=plain)
    scanned = evaluation_subjects(template, 2, seed=4, variation=PHANTOM_VARIATION)
    assert np.array_equal(warped.maps, scanned.maps)  # same anatomy...
    assert np.abs(warped.images - scanned.images).mean() > 0.01  # ...another scanner


def test_no_trainer_imports_the_evaluation_subjects():
    users = [
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if "landmarks.evaluation" in path.read_text() and path.name != "evaluation.py"
    ]
    assert users == []


# --- registration through landmarks -----------------------------------------------------


def _affine_pairs(seed: int = 0):
    rng = np.random.default_rng(seed)
    source = rng.uniform(-80, 80, (40, 3))
    matrix = np.eye(3) + rng.normal(0, 0.05, (3, 3))
    shift = np.array([3.0, -2.0, 5.0])
    return rng, source, lambda p: p @ matrix.T + shift


@pytest.mark.parametrize("kind", ["tps", "affine"])
def test_an_affine_map_is_recovered_exactly(kind):
    rng, source, truth = _affine_pairs()
    points = rng.uniform(-90, 90, (50, 3))
    carried = carry_points(points, source, truth(source), kind=kind)
    assert np.abs(carried - truth(points)).max() < 1e-8


def test_smoothing_picked_by_cross_validation_beats_interpolating_noise():
    rng, source, truth = _affine_pairs(1)
    noisy = truth(source) + rng.normal(0, 2.0, source.shape)
    points = rng.uniform(-80, 80, (200, 3))
    auto = fit_landmark_transform(source, noisy)
    through = fit_landmark_transform(source, noisy, smoothing=0)
    assert np.abs(through(source) - noisy).max() < 1e-5  # mm: lambda = 0 interpolates
    assert auto.smoothing > 0
    error = {n: np.linalg.norm(t(points) - truth(points), axis=1).mean() for n, t in
             (("auto", auto), ("through", through))}  # fmt: skip
    assert error["auto"] < 0.7 * error["through"]


def test_a_bending_map_needs_the_spline():
    rng = np.random.default_rng(2)
    source = rng.uniform(-80, 80, (40, 3))

    def truth(p):
        return p + 8 * np.sin(p / 30)

    points = rng.uniform(-70, 70, (200, 3))
    error = {
        kind: np.linalg.norm(carry_points(points, source, truth(source), kind) - truth(points), 1)
        for kind in ("tps", "affine")
    }
    assert error["tps"].mean() < 0.7 * error["affine"].mean()


def test_weights_let_reliable_landmarks_pull_harder():
    rng, source, truth = _affine_pairs(3)
    found = truth(source)
    found[:10] += rng.normal(0, 6.0, (10, 3))  # ten landmarks found badly...
    weights = np.ones(40)
    weights[:10] = 0.05  # ...and known to be imprecise
    points = rng.uniform(-80, 80, (200, 3))
    error = {
        label: np.linalg.norm(carry_points(points, source, found, weights=w) - truth(points), 1)
        for label, w in (("equal", None), ("weighted", weights))
    }
    assert error["weighted"].mean() < 0.7 * error["equal"].mean()


def test_a_label_map_lands_on_the_target_grid_where_the_landmarks_say():
    labels = np.zeros((40, 50, 60), np.int16)
    labels[10:20, 20:30, 25:45] = 7
    a = Image(labels, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    b = Image(np.zeros((30, 45, 70), np.float32), (1.5, 1.2, 2.0), (-12.0, 4.0, 6.0), np.eye(3))
    shift = np.array([5.0, -3.0, 8.0])  # mm, A to B
    landmarks = np.random.default_rng(4).uniform(0, 50, (20, 3))
    carried = carry_label_map(a, landmarks, landmarks + shift, b)
    assert carried.array.shape == b.array.shape and carried.array.dtype == np.int16
    assert carried.spacing == b.spacing and carried.origin == b.origin
    index = np.argwhere(carried.array == 7)[:, ::-1]  # (x, y, z)
    centre_in_a = a.index_to_physical(np.array([[34.5, 24.5, 14.5]]))[0]
    assert np.allclose(b.index_to_physical(index).mean(0), centre_in_a + shift, atol=1.0)
    assert set(np.unique(carried.array)) == {0, 7}


def test_bad_pairs_are_refused_with_what_to_do():
    source = np.zeros((10, 3))
    with pytest.raises(InputError, match="same shape"):
        fit_landmark_transform(source, np.zeros((9, 3)))
    with pytest.raises(InputError, match="at least 5"):
        fit_landmark_transform(source[:4], source[:4])
    with pytest.raises(InputError, match="smoothing"):
        fit_landmark_transform(source, source, smoothing="lots")
    image = Image(np.zeros((5, 5, 5), np.float32), (1.0,) * 3, (0.0,) * 3, np.eye(3))
    with pytest.raises(InputError, match="integer"):
        carry_label_map(image, source, source, image)


# --- the bundled 2-D model on subjects it never saw ---------------------------------------


@pytest.fixture(scope="module")
def unseen_phantoms():
    population = phantom_subjects(12, size=128, seed=3)
    regressor, config, _ = load_landmark_model(None, ndim=2)
    found = np.stack([predict_landmarks(regressor, config, im) for im in population.images])
    return population, found, np.asarray(config["importance"])


def test_keeping_the_most_important_landmarks_is_never_worse_than_all(unseen_phantoms):
    """Issue 10: importance is precision, so the top N are the reliable ones."""
    population, found, importance = unseen_phantoms
    error = correspondence_error(population, found)
    order = np.argsort(-importance, kind="stable")
    for share in (0.25, 0.5, 0.75):
        top = order[: round(share * len(order))]
        assert error[top].mean() <= error.mean()


def test_points_carried_through_landmarks_land_closer_than_unmoved(unseen_phantoms):
    population, found, importance = unseen_phantoms
    probes = np.random.default_rng(5).uniform(-0.6, 0.6, (40, 2))  # in subject 0
    common = population.to_common(probes[None], [0])[0]
    truth = population.to_pixels(population.from_common(common))  # where they are in each
    pixels = population.to_pixels(found)
    for j in range(1, 6):
        carried = carry_points(population.to_pixels(probes), pixels[0], pixels[j],
                               weights=importance**2)  # fmt: skip
        moved = np.linalg.norm(carried - truth[j], axis=1).mean()
        still = np.linalg.norm(population.to_pixels(probes) - truth[j], axis=1).mean()
        assert moved < 0.6 * still


# --- the command line ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_subjects(tmp_path_factory):
    folder = tmp_path_factory.mktemp("carry")
    population = phantom_subjects(2, size=128, seed=6)
    paths = []
    for i, array in enumerate(population.images):
        paths.append(folder / f"s{i}.nrrd")
        write_image(Image(array, (0.8, 0.8), (10.0, -5.0), np.eye(2)), paths[-1])
    labels = np.zeros((128, 128), np.uint8)
    labels[(shepp_logan_template(128) > 0.15) & (shepp_logan_template(128) < 0.25)] = 3
    labels_path = folder / "labels.nrrd"
    write_image(read_image(paths[0]).with_array(labels), labels_path)
    return folder, paths, labels_path


def test_cli_carries_points_and_a_label_map(two_subjects, capsys):
    folder, (a, b), labels = two_subjects
    points = read_image(a).index_to_physical(np.array([[40.0, 50.0], [80.0, 70.0]]))
    write_markups(folder / "in.mrk.json", points, ["P1", "P2"])
    out = folder / "out.fcsv"
    assert main(["landmarks", "carry", str(a), str(b), "--points", str(folder / "in.mrk.json"),
                 "--out", str(out)]) == 0  # fmt: skip
    moved, names, _ = read_markups(out)
    assert names == ["P1", "P2"] and moved.shape == (2, 3) and np.allclose(moved[:, 2], 0)
    assert "tps transform" in capsys.readouterr().out
    out_labels = folder / "carried.nrrd"
    assert main(["landmarks", "carry", str(a), str(b), "--labels", str(labels),
                 "--out", str(out_labels), "--transform", "affine"]) == 0  # fmt: skip
    carried = read_image(out_labels)
    assert carried.array.shape == (128, 128) and carried.spacing == read_image(b).spacing
    assert set(np.unique(carried.array)) == {0, 3}


def test_cli_refuses_bad_input_and_writes_nothing(two_subjects, capsys):
    folder, (a, b), labels = two_subjects
    out = folder / "never.txt"
    code = main(["landmarks", "carry", str(a), str(b), "--points", str(labels), "--out", str(out)])
    assert code == 2 and not out.exists()
    assert main(["landmarks", "carry", str(a), str(b), "--labels", str(a),
                 "--out", str(folder / "never.nrrd")]) == 2  # fmt: skip
    assert not (folder / "never.nrrd").exists()
    assert "integer" in capsys.readouterr().err
