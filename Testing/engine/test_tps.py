"""Thin-plate splines: interpolation, identity, conventions, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labelfree.errors import InputError
from labelfree.landmarks.loss import image_match, registration_loss
from labelfree.landmarks.tps import (
    condition_number,
    identity_grid,
    index_to_normalised,
    normalised_to_index,
    tps_evaluate,
    tps_fit,
    tps_kernel,
    tps_map,
    tps_matrix,
    warp_image,
)


def _points(batch, k, ndim, seed=0, spread=0.9):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, k, ndim, generator=gen, dtype=torch.float64) * 2 - 1) * spread


@pytest.mark.parametrize("ndim", [2, 3])
def test_interpolates_control_points_exactly(ndim):
    target = _points(3, 12, ndim, seed=1)
    source = target + 0.05 * _points(3, 12, ndim, seed=2)
    mapped = tps_map(target, target, source)
    np.testing.assert_allclose(mapped.numpy(), source.numpy(), atol=1e-10)


@pytest.mark.parametrize("ndim", [2, 3])
def test_ridge_smooths_instead_of_interpolating(ndim):
    target = _points(1, 12, ndim, seed=1)
    source = target + 0.05 * _points(1, 12, ndim, seed=2)
    exact = (tps_map(target, target, source) - source).abs().max()
    smoothed = (tps_map(target, target, source, ridge=1.0) - source).abs().max()
    assert exact < 1e-10 < 1e-4 < smoothed


@pytest.mark.parametrize("ndim", [2, 3])
def test_affine_maps_are_reproduced_everywhere(ndim):
    target = _points(2, 10, ndim, seed=3)
    gen = torch.Generator().manual_seed(4)
    matrix = torch.eye(ndim, dtype=torch.float64) + 0.1 * torch.randn(
        ndim, ndim, generator=gen, dtype=torch.float64
    )
    shift = torch.tensor([0.1, -0.2, 0.05][:ndim], dtype=torch.float64)
    source = target @ matrix.T + shift
    elsewhere = _points(2, 50, ndim, seed=5)
    mapped = tps_map(elsewhere, target, source)
    np.testing.assert_allclose(mapped.numpy(), (elsewhere @ matrix.T + shift).numpy(), atol=1e-9)


@pytest.mark.parametrize("ndim", [2, 3])
def test_smooth_displacement_field_is_recovered(ndim):
    def field(p):
        # A smooth, non-affine displacement of about 0.05 (3 pixels at 128).
        x, y = p[..., 0], p[..., 1]
        z = p[..., 2] if ndim == 3 else 0 * x
        dx = 0.05 * torch.sin(1.5 * y) * torch.cos(z)
        dy = 0.04 * torch.cos(1.2 * x + 0.3 * z)
        parts = [dx, dy] + ([0.03 * torch.sin(x + y)] if ndim == 3 else [])
        return torch.stack(parts, dim=-1)

    axis = torch.linspace(-1, 1, 7 if ndim == 2 else 5, dtype=torch.float64)
    mesh = torch.meshgrid(*([axis] * ndim), indexing="ij")
    control = torch.stack([m.ravel() for m in mesh], dim=-1)[None]
    coef = tps_fit(control, field(control))
    probe = _points(1, 200, ndim, seed=6, spread=0.8)
    error = (tps_evaluate(probe, control, coef) - field(probe)).abs().max()
    assert error < field(probe).abs().max() * (0.05 if ndim == 2 else 0.1)


@pytest.mark.parametrize("shape", [(9, 13), (5, 7, 6)])
def test_identity_warp_returns_the_image(shape):
    ndim = len(shape)
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(2, 1, *shape, generator=gen)
    landmarks = _points(2, 8, ndim, seed=7).float()
    warped = warp_image(image, landmarks, landmarks)
    torch.testing.assert_close(warped, image, atol=1e-5, rtol=0)


def test_translation_by_one_pixel_shifts_by_one_pixel():
    """The align_corners=True convention: one pixel is 2 / (n - 1) in normalised units."""
    image = torch.rand(1, 1, 10, 12, dtype=torch.float64)
    target = _points(1, 6, 2, seed=8)
    source = target + torch.tensor([2 / 11, 0.0], dtype=torch.float64)
    warped = warp_image(image, target, source)
    torch.testing.assert_close(warped[..., :-1], image[..., 1:], atol=1e-9, rtol=0)


def test_grid_and_index_conventions():
    grid = identity_grid((4, 5))
    assert grid.shape == (4, 5, 2)
    assert grid[0, 0].tolist() == [-1, -1] and grid[-1, -1].tolist() == [1, 1]
    assert grid[0, -1].tolist() == [1, -1]  # x is the column
    index = normalised_to_index(grid.reshape(-1, 2), (4, 5))
    assert index[:, 0].max() == 4 and index[:, 1].max() == 3
    torch.testing.assert_close(index_to_normalised(index, (4, 5)), grid.reshape(-1, 2))


@pytest.mark.parametrize("ndim", [2, 3])
def test_gradcheck_of_the_spline(ndim):
    target = _points(1, ndim + 3, ndim, seed=9).requires_grad_()
    source = (target.detach() + 0.1 * _points(1, ndim + 3, ndim, seed=10)).requires_grad_()
    probe = _points(1, 4, ndim, seed=11)

    def mapped(t, s):
        return tps_map(probe, t, s)

    assert torch.autograd.gradcheck(mapped, (target, source))
    assert torch.autograd.gradcheck(lambda t: condition_number(tps_matrix(t)), (target,))


@pytest.mark.parametrize("ndim", [2, 3])
def test_kernel_is_finite_and_differentiable_at_zero(ndim):
    r2 = torch.tensor([0.0, 1e-12, 0.25, 1.0], dtype=torch.float64, requires_grad=True)
    u = tps_kernel(r2, ndim)
    u.sum().backward()
    assert torch.isfinite(u).all() and torch.isfinite(r2.grad).all()
    assert abs(float(u[0].detach())) < 1e-12
    expected = 0.5 * 0.25 * np.log(0.25) if ndim == 2 else 0.5
    assert float(u[2].detach()) == pytest.approx(expected)


def test_coincident_landmarks_give_finite_gradients():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 1, 16, 16, generator=gen)
    target = _points(2, 6, 2, seed=12).float()
    target[:, 1] = target[:, 0]  # two landmarks on top of each other
    target.requires_grad_()
    source = (target.detach() + 0.02).requires_grad_()
    terms = registration_loss(images[:1], images[1:], source[:1], target[:1], ridge=1e-6)
    terms.total.backward()
    assert torch.isfinite(terms.total)
    assert torch.isfinite(target.grad).all() and torch.isfinite(source.grad).all()


def test_condition_number_grows_as_landmarks_crowd():
    spread = _points(1, 12, 2, seed=13)
    crowded = spread.clone()
    crowded[:, 1] = crowded[:, 0] + 1e-3
    good = float(condition_number(tps_matrix(spread)))
    bad = float(condition_number(tps_matrix(crowded)))
    assert good >= np.sqrt(12 + 3)  # ||A||_F ||A^-1||_F >= ||I||_F
    assert bad > 100 * good


def test_loss_field_stride_approximates_the_full_warp():
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(2, 1, 32, 32, generator=gen, dtype=torch.float64)
    target = _points(2, 8, 2, seed=14, spread=0.7)
    source = target + 0.02 * _points(2, 8, 2, seed=15)
    full = registration_loss(images[:1], images[1:], source[:1], target[:1])
    coarse = registration_loss(images[:1], images[1:], source[:1], target[:1], field_stride=2)
    assert abs(float(full.match) - float(coarse.match)) < 0.05 * float(full.match)


def test_image_match_kinds():
    a = torch.rand(2, 1, 8, 8)
    assert float(image_match(a, a).max()) == 0
    assert float(image_match(a, 3 * a + 1, "ncc").abs().max()) < 1e-5
    with pytest.raises(InputError):
        image_match(a, a, "mutual-information")


def test_too_few_landmarks_is_an_input_error():
    with pytest.raises(InputError):
        tps_map(_points(1, 5, 3), _points(1, 3, 3), _points(1, 3, 3))
    with pytest.raises(InputError):
        warp_image(torch.rand(1, 1, 4, 4), _points(1, 5, 3), _points(1, 5, 3))


@pytest.mark.parametrize("ndim", [2, 3])
def test_bending_energy_is_zero_for_affine_and_positive_otherwise(ndim):
    from labelfree.landmarks.loss import bending_energy

    target = _points(2, 10, ndim, seed=16)
    affine = 1.1 * target + 0.05
    bent = target + 0.05 * _points(2, 10, ndim, seed=17)
    zero = bending_energy(target, tps_fit(target, affine - target))
    positive = bending_energy(target, tps_fit(target, bent - target))
    assert zero.abs().max() < 1e-10
    assert (positive > 1e-4).all()
