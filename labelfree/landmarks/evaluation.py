"""Evaluation subjects: warps and scanners that no trainer draws, with exact correspondence.

Training (:mod:`labelfree.landmarks.train`) and the training populations
(:mod:`labelfree.landmarks.synthetic`) deform images with thin-plate splines through a
few control points. A landmark model that only learned those warps would look good when
scored on more of them. The subjects here come from another family, used only to score:

- **pose**: rotation about the image centre (up to ``rotation_deg`` per axis), anisotropic
  scale (``1 +- scale``), shear (``+- shear``) and shift (``+- shift_mm`` per axis);
- **shape**: a dense displacement, Gaussian-smoothed white noise of ``smoothing_mm``
  correlation length scaled to ``displacement_mm`` RMS per axis;
- **scanner**: a smooth multiplicative bias field (``exp(+- bias)``), a gamma change of
  contrast (``exp(+- gamma)``), blur up to ``blur_mm`` (lower resolution) and Gaussian noise
  of ``noise`` times the intensity range. These change what an image looks like, not
  where anatomy is.

Each subject ``i`` shows the template through a map ``g_i`` from its frame to the template's:
``subject_i(p) = template(g_i(p))``. ``g_i`` is stored on a coarse grid of nodes (about
three per smoothing length) and is trilinear (bilinear in 2-D) in between, for the image
and for :meth:`EvaluationPopulation.to_common` alike, so correspondence is exact.
:meth:`EvaluationPopulation.from_common` inverts it (template points to where they sit in a
subject) by a fixed-point iteration.

The population has the interface of :class:`labelfree.landmarks.synthetic.SyntheticPopulation`
that :func:`labelfree.landmarks.metrics.correspondence_error` uses. Coordinates are
normalised ``(x, y[, z])`` as in :mod:`labelfree.landmarks.tps`; millimetres are per axis
``(x, y[, z])`` with the template's ``spacing``.

Nothing under ``labelfree`` that trains may import this module (a test checks it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from scipy import ndimage

from labelfree.errors import InputError, LabelFreeError

_INVERSE_TOLERANCE = 1e-7  # normalised units: ~1e-5 voxel
_INVERSE_STEPS = 60


@dataclass(frozen=True)
class SubjectVariation:
    """Amplitudes of the evaluation family (see the module notes); lengths in mm."""

    rotation_deg: float = 8.0
    scale: float = 0.07
    shear: float = 0.03
    shift_mm: float = 6.0
    displacement_mm: float = 3.0
    smoothing_mm: float = 24.0
    bias: float = 0.2
    gamma: float = 0.2
    blur_mm: float = 1.5
    noise: float = 0.02


# 2-D phantoms: pixels are the unit (spacing 1), amplitudes for a 128-pixel image.
PHANTOM_VARIATION = SubjectVariation(
    rotation_deg=8.0,
    scale=0.06,
    shear=0.03,
    shift_mm=4.0,
    displacement_mm=1.5,
    smoothing_mm=16.0,
    blur_mm=0.8,
)


@dataclass
class EvaluationPopulation:
    """Subjects made from one template by the evaluation family, with their exact maps.

    Attributes
    ----------
    images : ndarray
        ``(N, *shape)`` float32 subjects on the template's grid.
    template : ndarray
        ``shape`` float32, the common frame.
    maps : ndarray
        ``(N, *nodes, D)`` ``g_i`` at the nodes of a coarse grid spanning the image:
        normalised template coordinates ``(x, y[, z])``.
    linear : ndarray
        ``(N, D, D)`` the pose's linear part in normalised coordinates (for inversion).
    spacing : tuple of float
        Pixel size ``(x, y[, z])`` in mm (1 for a phantom: errors in pixels).
    """

    images: np.ndarray
    template: np.ndarray
    maps: np.ndarray
    linear: np.ndarray
    spacing: tuple[float, ...]

    @property
    def ndim(self) -> int:
        """Spatial dimension."""
        return self.template.ndim

    def to_common(self, points: np.ndarray, indices: np.ndarray | None = None) -> np.ndarray:
        """Map points of each subject into the template frame (exact: ``g_i``).

        Parameters
        ----------
        points : ndarray
            ``(N, M, D)`` normalised points, one set per subject selected by ``indices``
            (all subjects by default).
        indices : ndarray of int, optional
            Which subjects the point sets belong to.

        Returns
        -------
        ndarray
            ``(N, M, D)`` normalised points in the template frame.
        """
        indices = np.arange(len(self.images)) if indices is None else np.asarray(indices)
        points = torch.as_tensor(np.asarray(points), dtype=torch.float64)
        if points.shape[0] != len(indices):
            raise InputError(f"{points.shape[0]} point sets for {len(indices)} subjects.")
        return _sample_map(torch.from_numpy(self.maps[indices]), points).numpy()

    def from_common(self, points: np.ndarray, indices: np.ndarray | None = None) -> np.ndarray:
        """Where template points sit in each subject: ``g_i^-1``, to ~1e-5 voxel.

        Parameters
        ----------
        points : ndarray
            ``(M, D)`` normalised template points (the same for every subject), or
            ``(N, M, D)`` one set per subject.
        indices : ndarray of int, optional
            Which subjects (all by default).

        Returns
        -------
        ndarray
            ``(N, M, D)`` normalised points of each subject.

        Raises
        ------
        LabelFreeError
            If the iteration does not converge (a warp that folds).
        """
        indices = np.arange(len(self.images)) if indices is None else np.asarray(indices)
        target = torch.as_tensor(np.asarray(points), dtype=torch.float64)
        if target.ndim == 2:
            target = target.expand(len(indices), -1, -1)
        maps = torch.from_numpy(self.maps[indices])
        inverse = torch.linalg.inv(torch.from_numpy(self.linear[indices]))
        found = target.clone()
        for _ in range(_INVERSE_STEPS):
            residual = _sample_map(maps, found) - target
            found = found - residual @ inverse.transpose(-1, -2)
            if float(residual.abs().max()) < _INVERSE_TOLERANCE:
                return found.numpy()
        raise LabelFreeError("The evaluation warp could not be inverted (it folds).")

    def to_pixels(self, points: np.ndarray) -> np.ndarray:
        """Normalised coordinates to physical units (mm, or pixels when spacing is 1)."""
        sizes = np.asarray(self.template.shape[::-1], dtype=float)
        return (np.asarray(points) + 1) * 0.5 * (sizes - 1) * np.asarray(self.spacing)

    def subset(self, indices: np.ndarray) -> EvaluationPopulation:
        """The population restricted to some subjects."""
        indices = np.asarray(indices)
        return EvaluationPopulation(
            self.images[indices], self.template, self.maps[indices], self.linear[indices],
            self.spacing,
        )  # fmt: skip


def evaluation_subjects(
    template: np.ndarray,
    n_subjects: int,
    seed: int = 0,
    spacing: tuple[float, ...] | None = None,
    variation: SubjectVariation = SubjectVariation(),
) -> EvaluationPopulation:
    """Draw subjects of the evaluation family from a template.

    Parameters
    ----------
    template : ndarray
        ``(y, x)`` or ``(z, y, x)``.
    n_subjects : int
        How many.
    seed : int
        Seed of every random draw.
    spacing : tuple of float, optional
        Pixel size ``(x, y[, z])`` in mm; 1 by default.
    variation : SubjectVariation
        Amplitudes.

    Returns
    -------
    EvaluationPopulation
    """
    template = np.asarray(template, dtype=np.float32)
    ndim = template.ndim
    if ndim not in (2, 3):
        raise InputError(f"Evaluation subjects need a 2-D or 3-D template, got {template.shape}.")
    if n_subjects < 1:
        raise InputError("n_subjects must be at least 1.")
    spacing = tuple(float(s) for s in (spacing or (1.0,) * ndim))
    half = 0.5 * (np.asarray(template.shape[::-1], dtype=float) - 1) * np.asarray(spacing)
    # Anatomy and scanner draw from their own streams: the same seed gives the same anatomy
    # whatever the scanner amplitudes.
    rng, scanner_rng = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])
    maps, linear, images = [], [], []
    for _ in range(n_subjects):
        pose = _random_pose(ndim, variation, rng)
        shift = rng.uniform(-1, 1, ndim) * variation.shift_mm
        nodes, field_mm = _smooth_displacement(half, variation, rng)
        mapped_mm = nodes @ pose.T + shift + field_mm
        maps.append(mapped_mm / half)
        linear.append(pose * half[None, :] / half[:, None])  # D^-1 A D, D = diag(half)
        image = _sample_template(template, maps[-1])
        images.append(_scanner(image, spacing, variation, scanner_rng))
    return EvaluationPopulation(
        np.stack(images), template, np.stack(maps), np.stack(linear), spacing
    )


def phantom_subjects(n_subjects: int, size: int = 128, seed: int = 0) -> EvaluationPopulation:
    """Shepp-Logan phantoms of the evaluation family (:data:`PHANTOM_VARIATION`, in pixels
    of a 128-pixel image, scaled with ``size``)."""
    from dataclasses import replace

    from labelfree.landmarks.synthetic import shepp_logan_template

    k = size / 128
    variation = replace(
        PHANTOM_VARIATION,
        shift_mm=PHANTOM_VARIATION.shift_mm * k,
        displacement_mm=PHANTOM_VARIATION.displacement_mm * k,
        smoothing_mm=PHANTOM_VARIATION.smoothing_mm * k,
        blur_mm=PHANTOM_VARIATION.blur_mm * k,
    )
    return evaluation_subjects(shepp_logan_template(size), n_subjects, seed, variation=variation)


def _random_pose(ndim: int, variation: SubjectVariation, rng: np.random.Generator) -> np.ndarray:
    """``(D, D)`` rotation x shear x scale, in mm about the image centre."""
    angles = np.deg2rad(rng.uniform(-1, 1, 1 if ndim == 2 else 3) * variation.rotation_deg)
    rotation = np.eye(ndim)
    planes = [(0, 1)] if ndim == 2 else [(1, 2), (0, 2), (0, 1)]
    for angle, (a, b) in zip(angles, planes, strict=True):
        turn = np.eye(ndim)
        turn[a, a] = turn[b, b] = np.cos(angle)
        turn[a, b], turn[b, a] = -np.sin(angle), np.sin(angle)
        rotation = rotation @ turn
    shear = np.eye(ndim)
    upper = np.triu_indices(ndim, k=1)
    shear[upper] = rng.uniform(-1, 1, len(upper[0])) * variation.shear
    scale = np.diag(1 + rng.uniform(-1, 1, ndim) * variation.scale)
    return rotation @ shear @ scale


def _smooth_displacement(
    half: np.ndarray, variation: SubjectVariation, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Node positions and a smooth displacement there, both ``(*nodes, D)`` in mm from the
    centre, ``(x, y[, z])`` last."""
    ndim = len(half)
    step = variation.smoothing_mm / 3  # three nodes per correlation length
    counts = [max(4, int(np.ceil(2 * h / step)) + 1) for h in half[::-1]]  # array order
    axes = [np.linspace(-h, h, n) for h, n in zip(half[::-1], counts, strict=True)]
    nodes = np.stack(np.meshgrid(*axes, indexing="ij")[::-1], axis=-1)
    if variation.displacement_mm <= 0:
        return nodes, np.zeros_like(nodes)
    sigma = [
        variation.smoothing_mm / (2 * h / (n - 1)) for h, n in zip(half[::-1], counts, strict=True)
    ]
    noise = rng.standard_normal((ndim, *counts))
    field = np.stack([ndimage.gaussian_filter(c, sigma, mode="reflect") for c in noise], -1)
    field -= field.mean(axis=tuple(range(ndim)))  # the pose holds the shift
    field *= variation.displacement_mm / np.sqrt((field**2).mean(axis=tuple(range(ndim))))
    return nodes, field


def _sample_map(maps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``maps (N, *nodes, D)`` interpolated at ``points (N, M, D)`` (normalised)."""
    ndim = points.shape[-1]
    channels = maps.movedim(-1, 1)
    at = points.reshape(points.shape[0], *([1] * (ndim - 1)), points.shape[1], ndim)
    sampled = F.grid_sample(
        channels.to(points.dtype), at, mode="bilinear", padding_mode="border", align_corners=True
    )
    return sampled.reshape(points.shape[0], ndim, -1).transpose(1, 2)


def _sample_template(template: np.ndarray, mapped: np.ndarray) -> np.ndarray:
    """The template seen through a node map (interpolated to every pixel)."""
    ndim = template.ndim
    mode = "bilinear" if ndim == 2 else "trilinear"
    channels = torch.from_numpy(mapped).float().movedim(-1, 0)[None]
    dense = F.interpolate(channels, size=template.shape, mode=mode, align_corners=True)
    grid = dense[0].movedim(0, -1)[None]
    source = torch.from_numpy(template)[None, None]
    image = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return image[0, 0].numpy()


def _scanner(
    image: np.ndarray,
    spacing: tuple[float, ...],
    variation: SubjectVariation,
    rng: np.random.Generator,
) -> np.ndarray:
    """Bias field, contrast, resolution and noise of another scanner."""
    lo, hi = float(image.min()), float(image.max())
    span = hi - lo if hi > lo else 1.0
    unit = (image - lo) / span
    unit = unit ** float(np.exp(rng.uniform(-1, 1) * variation.gamma))
    coords = np.meshgrid(*[np.linspace(-1, 1, n) for n in image.shape], indexing="ij")
    slope = rng.uniform(-1, 1, image.ndim)
    curve = rng.uniform(-1, 1, image.ndim)
    field = sum(s * c + q * (c**2 - 1 / 3) for s, q, c in zip(slope, curve, coords, strict=True))
    field = field / max(float(np.abs(field).max()), 1e-12)
    unit = unit * np.exp(variation.bias * field)
    blur_mm = rng.uniform(0, variation.blur_mm)
    if blur_mm > 0:
        unit = ndimage.gaussian_filter(unit, [blur_mm / s for s in spacing[::-1]])
    unit = unit + rng.standard_normal(image.shape) * variation.noise
    return (lo + unit * span).astype(np.float32)
