"""The warp-equivariance term: direction of the point map, and its use in training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labelfree.landmarks.augment import random_warp_points
from labelfree.landmarks.regressor import LandmarkRegressor
from labelfree.landmarks.synthetic import shepp_logan_population
from labelfree.landmarks.tps import tps_map, warp_image
from labelfree.landmarks.train import equivariance_error, train_landmarks

SIZE = 64


def _dot(centre_xy: torch.Tensor, sigma_px: float = 1.0) -> torch.Tensor:
    """A Gaussian dot at a normalised ``(x, y)`` position, ``(1, 1, SIZE, SIZE)``."""
    axis = torch.linspace(-1, 1, SIZE, dtype=torch.float64)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    r2 = (xx - centre_xy[0]) ** 2 + (yy - centre_xy[1]) ** 2
    sigma = sigma_px * 2 / (SIZE - 1)
    return torch.exp(-r2 / (2 * sigma**2))[None, None]


def _centroid(image: torch.Tensor) -> torch.Tensor:
    """Intensity centroid, normalised ``(x, y)``."""
    axis = torch.linspace(-1, 1, SIZE, dtype=image.dtype)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    weight = image[0, 0] / image[0, 0].sum()
    return torch.stack([(weight * xx).sum(), (weight * yy).sum()])


@pytest.mark.parametrize("seed", [1, 2, 3, 5])
def test_a_warped_dot_maps_back_through_the_warp(seed):
    dot_at = torch.tensor([0.25, -0.3], dtype=torch.float64)
    target, source = random_warp_points(
        1, (SIZE, SIZE), 3.0, torch.Generator().manual_seed(seed), torch.float64
    )
    warped = warp_image(_dot(dot_at), target, source)
    found = _centroid(warped)
    px = (SIZE - 1) / 2
    moved = float((found - dot_at).norm()) * px
    assert moved > 1.0  # the warp moves the dot enough for the direction to matter
    back = tps_map(found[None, None], target, source)[0, 0]
    assert float((back - dot_at).norm()) * px < 0.3
    # The other direction (mapping the original position through the warp) misses.
    forward = tps_map(dot_at[None, None], target, source)[0, 0]
    assert float((forward - found).norm()) * px > 1.0


def test_equivariance_error_vanishes_without_a_warp_and_grows_with_it():
    torch.manual_seed(0)
    model = LandmarkRegressor(2, 6, SIZE, channels=(4, 8, 8, 16)).eval()
    images = torch.from_numpy(np.stack(shepp_logan_population(3, size=SIZE, seed=4).images))
    images = images[:, None].float()
    with torch.no_grad():
        points = model.control_points(images)
        still = equivariance_error(model, images, points, 0.0, 0.0, None)
        moved = equivariance_error(model, images, points, 4.0, 0.0, torch.Generator())
    assert float(still) < 1e-10
    assert float(moved) > 1e-6


def test_training_with_equivariance_is_reproducible_and_recorded():
    images = list(shepp_logan_population(6, size=32, seed=2).images)
    kwargs = dict(
        ndim=2, n_landmarks=4, input_size=32, epochs=2, seed=1, channels=(4, 8), batch_size=3
    )
    first = train_landmarks(images, equivariance=50.0, **kwargs)
    second = train_landmarks(images, equivariance=50.0, **kwargs)
    plain = train_landmarks(images, **kwargs)
    assert np.isfinite(first.history["train"]).all()
    assert first.history == second.history
    assert first.history["train"] != plain.history["train"]
    assert first.settings["equivariance"] == 50.0
    assert plain.settings["equivariance"] == 0.0


def test_validation_scores_the_training_objective_with_the_same_warps_each_time():
    """The kept checkpoint must be the best at what training asks for, equivariance included."""
    from labelfree.landmarks.train import _validate, prepare_stack

    images = shepp_logan_population(4, size=SIZE, seed=6).images
    stack = prepare_stack(list(images), 2, SIZE)
    torch.manual_seed(0)
    model = LandmarkRegressor(2, 5, SIZE, channels=(4, 8, 8, 16))
    pairs = [(np.array([0, 1]), np.array([2, 3])), (np.array([2, 3]), np.array([1, 0]))]
    loss = dict(lam=4e-6, ridge=1e-6, match="mse", field_stride=2)
    plain, match = _validate(model, stack, pairs, 7, **loss)
    weighted, match_again = _validate(model, stack, pairs, 7, equivariance=100.0, **loss)
    repeat, _ = _validate(model, stack, pairs, 7, equivariance=100.0, **loss)
    assert match_again == match and repeat == weighted
    # The difference is the weighted equivariance error, on warps drawn from the seed.
    generator = torch.Generator().manual_seed(7)
    expected = []
    with torch.no_grad():
        for src, tgt in pairs:
            unique = np.unique(np.concatenate([src, tgt]))
            points = model.control_points(stack[unique])
            error = equivariance_error(model, stack[unique], points, 4.0, 0.0, generator)
            expected.append(100.0 * float(error))
    assert weighted - plain == pytest.approx(np.mean(expected), rel=1e-5)
    assert weighted - plain > 1e-4


def test_a_global_shift_moves_every_control_point_alike_and_maps_back():
    generator = torch.Generator().manual_seed(3)
    target, source = random_warp_points(1, (SIZE, SIZE), 0.0, generator, torch.float64, 3.0)
    moves = source - target
    assert float(moves.norm(dim=-1).min()) * (SIZE - 1) / 2 > 0.1  # corners move too
    torch.testing.assert_close(moves, moves[:, :1].expand_as(moves))
    # A dot seen through the shifted frame maps back to where it was.
    dot_at = torch.tensor([0.1, 0.2], dtype=torch.float64)
    found = _centroid(warp_image(_dot(dot_at), target, source))
    back = tps_map(found[None, None], target, source)[0, 0]
    assert float((back - dot_at).norm()) * (SIZE - 1) / 2 < 0.3
    fixed, unmoved = random_warp_points(1, (SIZE, SIZE), 0.0, generator, torch.float64)
    torch.testing.assert_close(unmoved, fixed, rtol=0, atol=0)  # no shift: the frame stays put
