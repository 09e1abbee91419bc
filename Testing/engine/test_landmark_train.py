"""Landmark training, model files and prediction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from labelfree.errors import InputError, ModelFileError
from labelfree.landmarks.model import (
    load_landmark_model,
    predict_landmarks,
    prepare_image,
    save_landmark_model,
)
from labelfree.landmarks.regressor import LandmarkRegressor, corner_landmarks
from labelfree.landmarks.synthetic import shepp_logan_population
from labelfree.landmarks.train import (
    PRIOR_FLOOR,
    train_from_files,
    train_landmarks,
    train_landmarks_steps,
)
from labelfree.progress import Progress

SMALL = {"channels": (4, 8, 8, 16), "batch_size": 4}


@pytest.fixture(scope="module")
def phantoms():
    return list(shepp_logan_population(8, size=64, seed=2).images)


@pytest.mark.parametrize("head", ["fc", "heatmap"])
def test_regressor_starts_with_the_same_landmarks_for_every_image(head):
    torch.manual_seed(1)
    model = LandmarkRegressor(2, 6, 64, channels=(4, 8, 8, 16), head=head)
    out = model.control_points(torch.randn(3, 1, 64, 64))
    assert out.shape == (3, 10, 2)
    assert out.abs().max() <= 1
    torch.testing.assert_close(out[0], out[2])
    torch.testing.assert_close(out[0, 6:], corner_landmarks(2))
    assert (out[0, :6] - out[0, :6].mean(0)).abs().max() > 0.05  # spread, not coincident
    model3 = LandmarkRegressor(3, 5, 32, fixed_corners=True, channels=(4, 4, 8), head=head)
    assert model3.control_points(torch.randn(2, 1, 32, 32, 32)).shape == (2, 13, 3)


def test_a_few_steps_lower_the_loss_and_are_reproducible(phantoms):
    kwargs = dict(
        ndim=2,
        n_landmarks=6,
        input_size=32,
        epochs=6,
        seed=3,
        learning_rate=3e-3,
        channels=(4, 8),
        batch_size=4,
        prior_fade=None,  # a fading prior changes the objective it is scored on
    )
    first = train_landmarks(phantoms, **kwargs)
    assert first.history["val"][first.best_epoch - 1] < first.history["val"][0]
    assert np.isfinite(first.history["train"]).all()
    second = train_landmarks(phantoms, **kwargs)
    for a, b in zip(
        first.regressor.state_dict().values(), second.regressor.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert first.history == second.history


def test_steps_report_progress_and_return_the_result(phantoms):
    steps = train_landmarks_steps(
        phantoms[:4], ndim=2, n_landmarks=4, input_size=64, epochs=2, **SMALL
    )
    reports = []
    while True:
        try:
            reports.append(next(steps))
        except StopIteration as stop:
            result = stop.value
            break
    assert all(isinstance(r, Progress) for r in reports)
    assert reports[-1].fraction == pytest.approx(1.0)
    assert result.regressor.n_landmarks == 4
    assert result.seconds > 0 and result.cpu_seconds >= 0


def _prior_after_training(phantoms, prior_fade):
    torch.manual_seed(0)
    start = LandmarkRegressor(2, 4, 32, channels=(4, 8), head="heatmap").prior.clone()
    result = train_landmarks(
        phantoms[:4],
        ndim=2,
        n_landmarks=4,
        input_size=32,
        epochs=4,
        seed=0,
        channels=(4, 8),
        batch_size=4,
        prior_fade=prior_fade,
    )
    return start, result


def test_the_heatmap_prior_fades_out_and_the_model_file_keeps_it_faded(phantoms, tmp_path):
    start, kept = _prior_after_training(phantoms, None)
    torch.testing.assert_close(kept.regressor.prior, start)  # same seed, same prior
    assert start.abs().max() > 1  # a real prior to fade
    _, faded = _prior_after_training(phantoms, 0.5)
    assert faded.best_epoch >= 2  # kept only once the prior was gone
    torch.testing.assert_close(faded.regressor.prior, start * PRIOR_FLOOR)
    assert faded.settings["prior_fade"] == 0.5
    path = save_landmark_model(tmp_path / "m.pt", faded.regressor, faded.config, {})
    reloaded, _, _ = load_landmark_model(path)
    torch.testing.assert_close(reloaded.prior, start * PRIOR_FLOOR)


@pytest.mark.parametrize("head", ["fc", "heatmap"])
def test_coincident_landmarks_train_without_nan(head):
    """Every landmark starts at the same place: the ridge keeps the solve finite."""
    images = list(shepp_logan_population(4, size=32, seed=0).images)
    result = train_landmarks(
        images,
        ndim=2,
        n_landmarks=5,
        input_size=32,
        epochs=2,
        fixed_corners=True,
        channels=(4, 8),
        batch_size=4,
        head=head,
    )
    with torch.no_grad():  # every landmark at the same place, on top of each other
        if head == "fc":
            result.regressor.head.bias.zero_()
            result.regressor.head.weight.zero_()
        else:
            result.regressor.prior.zero_()
            result.regressor.heatmap.weight.zero_()
            result.regressor.heatmap.bias.zero_()
    from labelfree.landmarks.train import _pair_loss, prepare_stack

    stack = prepare_stack(images, 2, 32)
    result.regressor.train()
    terms = _pair_loss(
        result.regressor,
        stack,
        np.array([0, 1]),
        np.array([2, 3]),
        0.05,
        None,
        4e-6,
        1e-6,
        "mse",
        2,
    )
    points = result.regressor(stack[:2])
    assert (points - points[:, :1]).abs().max() < 1e-6  # really coincident
    terms.total.backward()
    grads = [p.grad for p in result.regressor.parameters() if p.grad is not None]
    assert torch.isfinite(terms.total)
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize(
    ("images", "kwargs"),
    [
        ([], {}),
        ([np.zeros((64, 64))], {}),
        ([np.zeros((64, 64))] * 3, {"n_landmarks": 300}),
        ([np.zeros((64, 64))] * 3, {"n_landmarks": 0}),
        ([np.zeros((64, 64))] * 3, {"ndim": 3}),
        ([np.zeros((64, 64)), np.zeros((8, 64, 64))], {}),
        ([np.full((64, 64), np.nan)] * 3, {}),
    ],
)
def test_bad_inputs_are_input_errors(images, kwargs):
    args = {"ndim": 2, "n_landmarks": 4, "input_size": 64, "epochs": 1, **SMALL, **kwargs}
    with pytest.raises(InputError):
        train_landmarks(images, **args)


def test_model_file_round_trip_and_dimension_checks(tmp_path):
    torch.manual_seed(0)
    model = LandmarkRegressor(2, 5, 64, channels=(4, 8, 8, 16))
    config = {"importance": [0.5, 0.4, 0.3, 0.2, 0.1]}
    path = save_landmark_model(tmp_path / "m.pt", model, config, {"trained_on": "test"})
    loaded, cfg, card = load_landmark_model(path, ndim=2)
    assert cfg["n_landmarks"] == 5 and cfg["n_fixed"] == 4 and cfg["input_size"] == 64
    assert cfg["importance"] == config["importance"]
    assert card["trained_on"] == "test" and card["kind"] == "landmarks"
    image = np.random.default_rng(0).random((70, 90)).astype(np.float32)
    got = predict_landmarks(loaded, cfg, image)
    with torch.no_grad():
        expected = model(torch.from_numpy(prepare_image(image, cfg))[None, None])[0]
    np.testing.assert_allclose(got, expected.double().numpy(), atol=1e-6)
    assert got.shape == (5, 2)
    with pytest.raises(InputError):
        load_landmark_model(path, ndim=3)
    with pytest.raises(InputError):
        predict_landmarks(loaded, cfg, np.zeros((10, 20, 30)))
    with pytest.raises(ModelFileError):
        load_landmark_model(tmp_path / "missing.pt")


def test_prepare_image_whitens_and_resamples_corners_to_corners():
    image = np.zeros((33, 65), np.float32)
    image[0, 0] = 10.0
    cfg = {"ndim": 2, "input_size": 16}
    out = prepare_image(image, cfg)
    assert out.shape == (16, 16)
    assert abs(out.mean()) < 1e-5 and out.std() == pytest.approx(1, abs=1e-4)
    assert np.unravel_index(np.argmax(out), out.shape) == (0, 0)
    rgb = np.stack([image] * 3, axis=-1)
    np.testing.assert_allclose(prepare_image(rgb, cfg), out, atol=1e-5)


def test_train_from_files_writes_model_card_and_curve(tmp_path, phantoms):
    paths = []
    for i, image in enumerate(phantoms[:5]):
        # Mixed sizes and spacings are resampled to the input size.
        img = sitk.GetImageFromArray(image if i % 2 else image[:, :60])
        img.SetSpacing((0.5, 0.5) if i % 2 else (1.0, 1.0))
        paths.append(tmp_path / f"p{i}.nrrd")
        sitk.WriteImage(img, str(paths[-1]))
    out = train_from_files(
        paths, tmp_path / "lm.pt", n_landmarks=4, epochs=2, input_size=64, device="cpu", **SMALL
    )
    assert out.is_file()
    card = json.loads((tmp_path / "lm.card.json").read_text())
    assert card["trained_on"]["n_images"] == 5
    assert len(card["trained_on"]["spacings_xyz_mm"]) == 2
    assert (tmp_path / "lm.loss.png").stat().st_size > 1000
    regressor, cfg, _ = load_landmark_model(out, ndim=2)
    assert predict_landmarks(regressor, cfg, phantoms[0]).shape == (4, 2)
    with pytest.raises(InputError):
        train_from_files([], tmp_path / "x.pt", n_landmarks=4)


@pytest.mark.parametrize("head", ["fc", "heatmap"])
def test_3d_training_runs(head):
    rng = np.random.default_rng(0)
    base = np.zeros((20, 20, 20), np.float32)
    base[5:15, 6:14, 4:16] = 1
    vols = [np.roll(base, rng.integers(-2, 3, 3), axis=(0, 1, 2)) for _ in range(3)]
    result = train_landmarks(
        vols,
        ndim=3,
        n_landmarks=4,
        input_size=16,
        epochs=2,
        channels=(4, 8),
        batch_size=3,
        head=head,
    )
    assert result.regressor.ndim == 3
    assert np.isfinite(result.history["val"]).all()


def test_random_warps_are_smooth_seeded_and_keep_corners():
    from labelfree.landmarks.augment import random_warps

    image = torch.rand(2, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    same = random_warps(image, 0.0)
    torch.testing.assert_close(same, image, atol=1e-5, rtol=0)
    a = random_warps(image, 2.0, torch.Generator().manual_seed(1))
    b = random_warps(image, 2.0, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - image).abs().mean() > 0.01
    torch.testing.assert_close(a[..., 0, 0], image[..., 0, 0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_pose_in_the_equivariance_warps_is_a_rotation_and_scale_about_the_centre(ndim):
    from labelfree.landmarks.augment import random_warp_points
    from labelfree.landmarks.tps import tps_map

    shape = (32,) * ndim
    target, source = random_warp_points(
        3, shape, 0.0, torch.Generator().manual_seed(0), torch.float64, pose=(10.0, 0.05)
    )
    points = torch.rand(3, 20, ndim, dtype=torch.float64) * 2 - 1
    mapped = tps_map(points, target, source).numpy()
    for b in range(3):
        linear = np.linalg.lstsq(points[b].numpy(), mapped[b], rcond=None)[0]
        assert np.abs(points[b].numpy() @ linear - mapped[b]).max() < 1e-9  # linear, no shift
        assert np.abs(linear - np.eye(ndim)).max() > 0.02  # and really a pose change
    # Off by default, and then it draws nothing: earlier seeds give the same warps.
    plain = random_warp_points(2, shape, 2.0, torch.Generator().manual_seed(1), shift_px=2.0)
    zero = random_warp_points(
        2, shape, 2.0, torch.Generator().manual_seed(1), shift_px=2.0, pose=(0.0, 0.0)
    )
    assert all(torch.equal(a, b) for a, b in zip(plain, zero, strict=True))


def test_heatmap_model_round_trips(tmp_path):
    torch.manual_seed(0)
    model = LandmarkRegressor(2, 5, 64, channels=(4, 8, 8, 16), head="heatmap")
    path = save_landmark_model(tmp_path / "h.pt", model)
    loaded, cfg, _ = load_landmark_model(path, ndim=2)
    assert cfg["network"]["head"] == "heatmap"
    image = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(prepare_image(image, cfg))[None, None])[0]
    np.testing.assert_allclose(predict_landmarks(loaded, cfg, image), expected.numpy(), atol=1e-6)
