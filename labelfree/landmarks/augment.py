"""Random changes that training draws itself: smooth warps and scanner-like appearance.

The warps (:func:`random_warp_points`, :func:`random_warps`) move a 3-per-axis grid of
control points and, optionally, the whole frame (shift, rotation, scale); their maps are
exact, so the equivariance term knows where every landmark must go.

The appearance changes (:func:`random_appearance`) stand for what differs between scanners
and protocols and not where anatomy is: a smooth multiplicative bias (exponential of a random
quadratic polynomial of position), a random monotone remapping of intensities (piecewise
linear, five pieces), a loss of resolution (Gaussian blur) and re-whitening. They are drawn
from families of their own, not from those of the evaluation subjects (``evaluation.py`` here,
which no trainer imports), so that models are scored on changes they were not trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from labelfree.landmarks.regressor import corner_landmarks
from labelfree.landmarks.tps import warp_image

# At strength 1: std over the image of the log bias (0.15: about +-35 % from end to end), std
# of the log slopes of the intensity curve, largest blur (input pixels).
APPEARANCE_BIAS = 0.15
APPEARANCE_CONTRAST = 0.4
APPEARANCE_BLUR_PX = 1.0
_CURVE_PIECES = 5


def random_warp_points(
    batch: int,
    shape: Sequence[int],
    sigma_px: float,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    shift_px: float = 0.0,
    pose: tuple[float, float] = (0.0, 0.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Control points of random smooth warps, as :func:`random_warps` draws them.

    Parameters
    ----------
    batch : int
        Number of warps.
    shape : sequence of int
        Array shape of the images, ``(y, x)`` or ``(z, y, x)``.
    sigma_px : float
        Displacement std in pixels.
    generator : torch.Generator, optional
        Source of randomness.
    dtype : torch.dtype
        Of the result.
    shift_px : float
        Std in pixels of a global translation on top (corners included), so
        that no part of the frame stays put; drawn after the local moves.
    pose : (float, float)
        Std of a rotation about the centre (degrees, per rotation plane) and of a
        log-scale per axis, applied last to every point (corners included), so that
        landmarks learn to follow a subject's pose; drawn only when not zero.

    Returns
    -------
    target, source : Tensor
        ``(batch, K, D)`` normalised ``(x, y[, z])``; the warped image at a
        point ``q`` shows the original at ``tps_map(q, target, source)``.
    """
    ndim = len(shape)
    axis = torch.linspace(-0.6, 0.6, 3, dtype=dtype)
    mesh = torch.meshgrid(*([axis] * ndim), indexing="ij")
    grid = torch.stack([m.ravel() for m in mesh], dim=-1)
    control = torch.cat([grid, corner_landmarks(ndim).to(dtype)])
    pixel = 2.0 / (torch.tensor(tuple(shape)[::-1], dtype=dtype) - 1)
    delta = torch.randn(batch, len(grid), ndim, generator=generator, dtype=dtype)
    delta = torch.cat([delta * sigma_px * pixel, torch.zeros(batch, 2**ndim, ndim, dtype=dtype)], 1)
    if shift_px > 0:
        shift = torch.randn(batch, 1, ndim, generator=generator, dtype=dtype)
        delta = delta + shift * shift_px * pixel
    target = control.expand(batch, -1, -1)
    source = target + delta
    if any(pose):
        source = source @ _random_linear(batch, ndim, pose, generator, dtype).transpose(1, 2)
    return target, source


def _random_linear(
    batch: int,
    ndim: int,
    pose: tuple[float, float],
    generator: torch.Generator | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``(batch, D, D)`` rotations (std ``pose[0]`` degrees per plane) times per-axis scales
    (log-scale std ``pose[1]``)."""
    planes = [(0, 1)] if ndim == 2 else [(0, 1), (0, 2), (1, 2)]
    angles = torch.randn(batch, len(planes), generator=generator, dtype=dtype)
    angles = angles * float(np.deg2rad(pose[0]))
    scales = torch.exp(torch.randn(batch, ndim, generator=generator, dtype=dtype) * pose[1])
    linear = torch.diag_embed(scales)
    for k, (a, b) in enumerate(planes):
        turn = torch.eye(ndim, dtype=dtype).repeat(batch, 1, 1)
        cos, sin = torch.cos(angles[:, k]), torch.sin(angles[:, k])
        turn[:, a, a], turn[:, b, b], turn[:, a, b], turn[:, b, a] = cos, cos, -sin, sin
        linear = turn @ linear
    return linear


def random_warps(
    images: torch.Tensor, sigma_px: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Augment images with random smooth warps (one per image).

    A 3-per-axis grid of control points in ``[-0.6, 0.6]`` moves by an
    isotropic Gaussian of ``sigma_px`` pixels; the corners stay put
    (:func:`random_warp_points`).

    Parameters
    ----------
    images : Tensor
        ``(B, C, *shape)``.
    sigma_px : float
        Displacement std in pixels of ``images``.
    generator : torch.Generator, optional
        Source of randomness.

    Returns
    -------
    Tensor
        Warped images, same shape.
    """
    target, source = random_warp_points(
        images.shape[0], images.shape[2:], sigma_px, generator, images.dtype
    )
    target, source = target.to(images.device), source.to(images.device)
    return warp_image(images, target, source, field_stride=4)


def random_appearance(
    images: torch.Tensor,
    strength: float,
    generator: torch.Generator | None = None,
    positions: Sequence[int] | None = None,
    draws: int | None = None,
) -> torch.Tensor:
    """Change whitened images as another scanner might show them (one change per image).

    Each image is mapped to ``[0, 1]``, remapped by a random increasing curve, multiplied by
    a smooth random bias, blurred by a Gaussian of random width and whitened again (zero mean,
    unit standard deviation), so the network sees what it always sees in range.

    Parameters
    ----------
    images : Tensor
        ``(B, C, *shape)`` whitened images, 2-D or 3-D.
    strength : float
        Scales every change (:data:`APPEARANCE_BIAS`, :data:`APPEARANCE_CONTRAST`,
        :data:`APPEARANCE_BLUR_PX` at 1); 0 returns ``images`` unchanged and draws nothing.
    generator : torch.Generator, optional
        Source of randomness (drawn on the CPU, so results do not depend on the device).
    positions, draws : optional
        Changes are drawn for a batch of ``draws`` images (``B`` by default) of which
        ``images`` holds those at ``positions`` (all by default), so that every rank of a
        distributed run draws the same.

    Returns
    -------
    Tensor
        Same shape, dtype and device.
    """
    if strength <= 0:
        return images
    draws = images.shape[0] if draws is None else draws
    positions = list(range(draws)) if positions is None else list(positions)
    shape = images.shape[2:]
    bias = _random_bias(draws, shape, strength, generator)[positions]
    slopes = torch.randn(draws, _CURVE_PIECES, generator=generator)[positions]
    sigmas = (torch.rand(draws, generator=generator) * strength * APPEARANCE_BLUR_PX)[positions]
    flat = images.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    unit = (images - _per_image(low, images)) / _per_image((high - low).clamp_min(1e-6), images)
    out = _curve(unit, slopes * strength * APPEARANCE_CONTRAST) * bias.to(images)
    out = torch.cat([_blur(out[i : i + 1], float(s)) for i, s in enumerate(sigmas)])
    mean = out.flatten(1).mean(1)
    std = out.flatten(1).std(1).clamp_min(1e-6)
    return (out - _per_image(mean, out)) / _per_image(std, out)


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.dim() - 1))).to(like)


def _curve(unit: torch.Tensor, log_slopes: torch.Tensor) -> torch.Tensor:
    """``unit`` (values in [0, 1]) through increasing piecewise-linear curves from 0 to 1
    with ``(B, pieces)`` log slopes over equal pieces."""
    batch, pieces = log_slopes.shape
    knots = torch.cat([torch.zeros(batch, 1), torch.cumsum(torch.exp(log_slopes), 1)], 1)
    knots = (knots / knots[:, -1:]).to(unit)
    scaled = unit.flatten(1).clamp(0, 1) * pieces
    piece = scaled.floor().clamp(max=pieces - 1)
    index = piece.long()
    left, right = torch.gather(knots, 1, index), torch.gather(knots, 1, index + 1)
    return (left + (scaled - piece) * (right - left)).reshape(unit.shape)


def _random_bias(
    batch: int, shape: Sequence[int], strength: float, generator: torch.Generator | None
) -> torch.Tensor:
    """``(B, 1, *shape)`` smooth positive fields: exp of random quadratic polynomials scaled
    to a log std of ``strength * APPEARANCE_BIAS`` each, in 2-D and 3-D alike."""
    axes = [torch.linspace(-1, 1, n) for n in shape]
    coords = torch.meshgrid(*axes, indexing="ij")
    terms = list(coords) + [a * b for i, a in enumerate(coords) for b in coords[i:]]
    basis = torch.stack([t.ravel() for t in terms])  # (terms, voxels)
    log_bias = torch.randn(batch, len(terms), generator=generator) @ basis
    log_bias = log_bias * (strength * APPEARANCE_BIAS / log_bias.std(1, keepdim=True))
    return torch.exp(log_bias).reshape(batch, 1, *shape)


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(1, C, *shape)`` (edges replicated); none below 0.1 px."""
    if sigma < 0.1:
        return image
    radius = max(1, int(np.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = image
    ndim = image.dim() - 2
    for axis in range(ndim):
        moved = out.movedim(2 + axis, -1)
        rows = moved.reshape(-1, 1, moved.shape[-1])
        rows = F.conv1d(F.pad(rows, (radius, radius), mode="replicate"), kernel.view(1, 1, -1))
        out = rows.reshape(moved.shape).movedim(-1, 2 + axis)
    return out
