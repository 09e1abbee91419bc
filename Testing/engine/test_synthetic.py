"""Synthetic populations with known warps, and the correspondence metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labelfree.errors import InputError
from labelfree.landmarks.metrics import correspondence_error, registration_mse_ratio
from labelfree.landmarks.synthetic import (
    population_stats,
    shepp_logan_population,
    volume_population,
    warp_template,
)
from labelfree.landmarks.tps import warp_image


@pytest.fixture(scope="module")
def phantoms():
    return shepp_logan_population(12, size=64, seed=3)


def test_population_shapes_and_determinism(phantoms):
    assert phantoms.images.shape == (12, 64, 64)
    assert phantoms.displaced.shape == (12, len(phantoms.control), 2)
    again = shepp_logan_population(12, size=64, seed=3)
    np.testing.assert_array_equal(again.images, phantoms.images)
    other = shepp_logan_population(12, size=64, seed=4)
    assert not np.allclose(other.images, phantoms.images)


def test_known_maps_send_displaced_control_points_home(phantoms):
    mapped = phantoms.to_common(phantoms.displaced)
    np.testing.assert_allclose(mapped, np.broadcast_to(phantoms.control, mapped.shape), atol=1e-9)


def test_images_are_the_template_seen_through_the_known_map(phantoms):
    """Sampling the template at g_i(p) reproduces image i (away from sharp edges' aliasing)."""
    i = 5
    template = torch.from_numpy(phantoms.template)[None, None].double()
    # Warp the template with the map's own landmark pairs, full resolution.
    corners = torch.tensor([[-1.0, -1], [-1, 1], [1, -1], [1, 1]], dtype=torch.float64)
    target = torch.cat([torch.from_numpy(phantoms.displaced[i]), corners])[None]
    source = torch.cat([torch.from_numpy(phantoms.control), corners])[None]
    warped = warp_image(template, target, source)[0, 0].numpy()
    assert np.mean(np.abs(warped - phantoms.images[i])) < 0.01
    assert np.mean(np.abs(phantoms.template - phantoms.images[i])) > 0.01


def test_variability_matches_the_reference_data_at_128_pixels():
    stats = population_stats(shepp_logan_population(40, size=128, seed=0))
    # Reference (halved for 128 px): boundary ~2.25 px, centroids ~1.65 px, area 4.4 %.
    assert 1.5 < stats["boundary_std_px"] < 3.0
    assert 1.0 < stats["ellipse_centroid_std_px"] < 2.3
    assert 2.0 < stats["head_area_std_percent"] < 6.5


def test_true_landmarks_have_zero_error_and_fixed_ones_do_not(phantoms):
    # Points that move with the anatomy: the displaced control points.
    assert correspondence_error(phantoms, phantoms.displaced).max() < 1e-6
    # Points fixed in the image frame ignore the warp: error about the warp's size.
    fixed = np.broadcast_to(phantoms.control, phantoms.displaced.shape)
    error = correspondence_error(phantoms, fixed)
    assert 0.5 < error.mean() < 5  # pixels at 64 px, sigma 1.2 px


def test_mse_ratio_perfect_for_true_landmarks(phantoms):
    true = registration_mse_ratio(phantoms.images[:6], phantoms.displaced[:6])
    none = registration_mse_ratio(
        phantoms.images[:6], np.broadcast_to(phantoms.control, (6, *phantoms.control.shape))
    )
    assert none == pytest.approx(1.0)
    assert true < 0.3


def test_volume_population_reports_millimetres():
    volume = np.zeros((30, 34, 32), np.float32)
    volume[8:22, 9:25, 10:22] = 1
    pop = volume_population(volume, 3, size=16, sigma_mm=2.0, spacing=(2.0, 2.0, 2.0), seed=1)
    assert pop.images.shape == (3, 16, 16, 16)
    assert pop.spacing == pytest.approx((2 * 31 / 15, 2 * 33 / 15, 2 * 29 / 15))
    mapped = pop.to_common(pop.displaced)
    np.testing.assert_allclose(mapped, np.broadcast_to(pop.control, mapped.shape), atol=1e-9)
    fixed = np.broadcast_to(pop.control, pop.displaced.shape)
    assert 0.5 < correspondence_error(pop, fixed).mean() < 8  # mm, sigma 2 mm per axis


def test_bad_arguments():
    with pytest.raises(InputError):
        warp_template(np.zeros((8, 8)), np.zeros((3, 3)), 2, 1.0)
    with pytest.raises(InputError):
        warp_template(np.zeros((8, 8)), np.zeros((3, 2)), 0, 1.0)
    with pytest.raises(InputError):
        volume_population(np.zeros((8, 8)), 2)
