"""Test-time pose refinement: the affine fit, the resampling, the stored reference, the gain."""

from __future__ import annotations

import numpy as np
import pytest

from labelfree.errors import InputError, ModelFileError
from labelfree.io import Image
from labelfree.landmarks.detect import detect_landmarks
from labelfree.landmarks.evaluation import phantom_subjects
from labelfree.landmarks.model import (
    load_landmark_model,
    predict_landmarks,
    predict_prepared,
    prepare_image,
)
from labelfree.landmarks.refine import (
    fit_affine,
    pose_distance_px,
    refine_landmarks,
    resample_affine,
    stored_pose_reference,
)
from labelfree.landmarks.synthetic import shepp_logan_template


def _rotation(degrees: float, scale: float = 1.0) -> np.ndarray:
    a = np.deg2rad(degrees)
    return scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def test_fit_affine_recovers_an_affine_map_and_refuses_too_few_points():
    rng = np.random.default_rng(0)
    source = rng.uniform(-1, 1, (12, 3))
    matrix = np.eye(3) + rng.normal(0, 0.1, (3, 3))
    offset = np.array([0.1, -0.2, 0.05])
    fitted, shift = fit_affine(source, source @ matrix.T + offset)
    np.testing.assert_allclose(fitted, matrix, atol=1e-10)
    np.testing.assert_allclose(shift, offset, atol=1e-10)
    assert pose_distance_px(source, source, 64) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(InputError):
        fit_affine(source[:3], source[:3])


def test_the_identity_resampling_is_the_plain_network_input():
    _, config, _ = load_landmark_model(None, ndim=2)
    template = shepp_logan_template(128)
    plain = prepare_image(template, config)
    same = resample_affine(template, np.eye(2), np.zeros(2), int(config["input_size"]))
    np.testing.assert_allclose(same, plain, atol=1e-4)


def test_resampling_follows_the_map_from_output_to_input_coordinates():
    image = np.zeros((33, 33), np.float32)
    image[16, 24] = 1.0  # x = +0.5, y = 0 in normalised coordinates
    shifted = resample_affine(image, np.eye(2), np.array([0.5, 0.0]), 33)
    y, x = np.unravel_index(np.argmax(shifted), shifted.shape)
    assert (y, x) == (16, 16)  # output (0, 0) samples input (0.5, 0)


def test_refinement_undoes_a_pose_the_model_was_not_trained_on():
    """A rotated and scaled phantom: the refined landmarks land nearer the truth."""
    regressor, config, _ = load_landmark_model(None, ndim=2)
    layout, threshold, residual_limit = stored_pose_reference(config)
    template = shepp_logan_template(128)
    on_template = predict_prepared(regressor, prepare_image(template, config))
    matrix, offset = _rotation(9.0, 1.06), np.array([0.04, -0.03])
    # The posed image at u shows the template at matrix^-1 (u - offset): a template point t
    # appears at matrix t + offset.
    inverse = np.linalg.inv(matrix)
    posed = resample_affine(template, inverse, -inverse @ offset, 128)
    truth = on_template @ matrix.T + offset
    plain = predict_prepared(regressor, prepare_image(posed, config))
    assert pose_distance_px(layout, plain, 128) > threshold  # beyond the training poses
    refined, done = refine_landmarks(
        regressor, config, posed, layout, threshold, residual_limit, first=plain
    )
    assert done
    plain_error = np.linalg.norm(plain - truth, axis=1).mean()
    refined_error = np.linalg.norm(refined - truth, axis=1).mean()
    assert refined_error < 0.8 * plain_error


def _image(array: np.ndarray) -> Image:
    return Image(array, (1.0, 1.0), (0.0, 0.0), np.eye(2))


def test_detection_refines_only_subjects_posed_beyond_training():
    assert not detect_landmarks(_image(shepp_logan_template(128))).pose_refined
    subjects = phantom_subjects(6, seed=300)  # the evaluation family: pose beyond training
    found = [detect_landmarks(_image(im)) for im in subjects.images]
    plain = [detect_landmarks(_image(im), refine=False) for im in subjects.images]
    assert any(f.pose_refined for f in found)
    assert not any(p.pose_refined for p in plain)
    regressor, config, _ = load_landmark_model(None, ndim=2)
    for image, f, p in zip(subjects.images, found, plain, strict=True):
        np.testing.assert_allclose(p.normalised, predict_landmarks(regressor, config, image))
        assert np.allclose(f.normalised, p.normalised) != f.pose_refined


def test_a_malformed_pose_reference_is_refused():
    _, config, _ = load_landmark_model(None, ndim=2)
    assert stored_pose_reference({**config, "pose_reference": None}) is None
    for bad in (
        {"layout": [[0.0, 0.0]], "threshold_px": 1.0},
        {**config["pose_reference"], "threshold_px": float("nan")},
        {**config["pose_reference"], "residual_limit_px": None},
        {"threshold_px": 1.0},
    ):
        with pytest.raises(ModelFileError):
            stored_pose_reference({**config, "pose_reference": bad})
