"""Synthetic populations with known warps, to measure landmark correspondence.

Every image ``i`` of a population is the template seen through a smooth
thin-plate-spline warp: ``image_i(p) = template(g_i(p))``, where ``g_i``
maps image ``i``'s frame to the common (template) frame. ``g_i`` sends the
displaced control points ``displaced[i]`` to ``control`` and keeps the image
corners in place. Because ``g_i`` is known exactly,
:meth:`SyntheticPopulation.to_common` tells where any point of image ``i``
sits in the common frame, which :mod:`labelfree.landmarks.metrics` uses to
score landmark correspondence.

Coordinates are normalised ``(x, y[, z])`` as in
:mod:`labelfree.landmarks.tps`.

The Shepp-Logan population follows the reference data's variability, halved
for 128 pixels: control points on the ends of the skull's axes and of the
two dark ellipses' long axes, each moved by an isotropic Gaussian of about
2.4 px standard deviation (skull boundary position std ~2.3 px, dark
ellipse centroid std ~1.6 px, head area std ~4 %; :func:`population_stats`
measures them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from labelfree.errors import InputError
from labelfree.landmarks.model import resample
from labelfree.landmarks.regressor import corner_landmarks
from labelfree.landmarks.tps import identity_grid, tps_map

# Control points of the modified Shepp-Logan phantom (normalised x, y), measured
# on skimage's 400x400 phantom: ends of the skull's axes, then both ends of the
# long axis of the left and right dark ellipses.
PHANTOM_CONTROL = np.array(
    [
        [0.0, -0.92],
        [0.0, 0.92],
        [-0.69, 0.0],
        [0.69, 0.0],
        [-0.352, -0.388],
        [-0.088, 0.388],
        [0.315, -0.295],
        [0.125, 0.295],
    ]
)


@dataclass
class SyntheticPopulation:
    """Images made by warping one template, with their exact maps.

    Attributes
    ----------
    images : ndarray
        ``(N, *shape)`` float32.
    template : ndarray
        ``shape`` float32, the common frame.
    control : ndarray
        ``(P, D)`` control points in the common frame (normalised).
    displaced : ndarray
        ``(N, P, D)`` where each image shows them (normalised).
    spacing : tuple of float
        Pixel size ``(x, y[, z])`` in mm (1 for a phantom: errors in pixels).
    """

    images: np.ndarray
    template: np.ndarray
    control: np.ndarray
    displaced: np.ndarray
    spacing: tuple[float, ...]

    @property
    def ndim(self) -> int:
        """Spatial dimension."""
        return self.template.ndim

    def _anchors(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        corners = corner_landmarks(self.ndim).double().numpy()
        common = np.concatenate([self.control, corners])
        per_image = np.concatenate(
            [self.displaced[:n], np.broadcast_to(corners, (n, *corners.shape))], axis=1
        )
        return torch.from_numpy(per_image), torch.from_numpy(common)

    def to_common(self, points: np.ndarray, indices: np.ndarray | None = None) -> np.ndarray:
        """Map points of each image into the common frame (exact: ``g_i``).

        Parameters
        ----------
        points : ndarray
            ``(N, M, D)`` normalised points, one set per image (``N`` images
            selected by ``indices``, all images by default).
        indices : ndarray of int, optional
            Which images the point sets belong to.

        Returns
        -------
        ndarray
            ``(N, M, D)`` normalised points in the common frame.
        """
        indices = np.arange(len(self.images)) if indices is None else np.asarray(indices)
        per_image, common = self._anchors(len(self.images))
        target = per_image[indices]
        source = common.expand(len(indices), -1, -1)
        mapped = tps_map(torch.tensor(np.asarray(points), dtype=torch.float64), target, source)
        return mapped.numpy()

    def to_pixels(self, points: np.ndarray) -> np.ndarray:
        """Normalised coordinates to physical units (mm, or pixels when spacing is 1)."""
        sizes = np.asarray(self.template.shape[::-1], dtype=float)
        return (np.asarray(points) + 1) * 0.5 * (sizes - 1) * np.asarray(self.spacing)

    def subset(self, indices: np.ndarray) -> SyntheticPopulation:
        """The population restricted to some images."""
        indices = np.asarray(indices)
        return SyntheticPopulation(
            self.images[indices], self.template, self.control, self.displaced[indices], self.spacing
        )


def warp_template(
    template: np.ndarray,
    control: np.ndarray,
    n_images: int,
    sigma: float | np.ndarray,
    seed: int = 0,
    spacing: tuple[float, ...] | None = None,
) -> SyntheticPopulation:
    """Warp a template by random thin-plate splines.

    Parameters
    ----------
    template : ndarray
        ``(y, x)`` or ``(z, y, x)``, the common frame.
    control : ndarray
        ``(P, D)`` normalised control points in the template.
    n_images : int
        Population size.
    sigma : float or ndarray
        Standard deviation of each control point's displacement per axis, in
        pixels of ``template`` (scalar or ``(P,)``).
    seed : int
        Seed of the displacements.
    spacing : tuple of float, optional
        Pixel size ``(x, y[, z])`` in mm; 1 by default.

    Returns
    -------
    SyntheticPopulation
    """
    template = np.asarray(template, dtype=np.float32)
    ndim = template.ndim
    control = np.asarray(control, dtype=float)
    if control.ndim != 2 or control.shape[1] != ndim:
        raise InputError(f"control must be (P, {ndim}) for a {ndim}-D template.")
    if n_images < 1:
        raise InputError("n_images must be at least 1.")
    rng = np.random.default_rng(seed)
    px = 2.0 / (np.asarray(template.shape[::-1], dtype=float) - 1)  # one pixel, normalised
    sig = np.broadcast_to(np.asarray(sigma, dtype=float).reshape(-1, 1), (len(control), 1))
    displaced = control + rng.standard_normal((n_images, *control.shape)) * sig * px
    population = SyntheticPopulation(
        images=np.empty((n_images, *template.shape), np.float32),
        template=template,
        control=control,
        displaced=displaced,
        spacing=tuple(spacing or (1.0,) * ndim),
    )
    grid = identity_grid(template.shape, torch.float64).reshape(1, -1, ndim)
    mode = "bicubic" if ndim == 2 else "bilinear"
    source = torch.from_numpy(template)[None, None]
    lo, hi = float(template.min()), float(template.max())
    for i in range(n_images):
        mapped = population.to_common(grid.numpy(), np.array([i]))
        sample_at = torch.from_numpy(mapped).float().reshape(1, *template.shape, ndim)
        warped = F.grid_sample(
            source, sample_at, mode=mode, padding_mode="border", align_corners=True
        )
        population.images[i] = warped[0, 0].clamp(lo, hi).numpy()
    return population


def shepp_logan_template(size: int = 128) -> np.ndarray:
    """The modified Shepp-Logan phantom (scikit-image), anti-aliased to ``size`` pixels, in [0, 1]."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    return resize(shepp_logan_phantom(), (size, size), anti_aliasing=True).astype(np.float32)


def shepp_logan_population(
    n_images: int, size: int = 128, seed: int = 0, sigma: float | None = None
) -> SyntheticPopulation:
    """Shepp-Logan phantoms warped like the reference data (see module notes).

    Parameters
    ----------
    n_images : int
        Population size.
    size : int
        Side in pixels.
    seed : int
        Seed of the warps.
    sigma : float, optional
        Control-point displacement std in pixels; ``2.4 * size / 128`` by default.
    """
    sigma = 2.4 * size / 128 if sigma is None else sigma
    return warp_template(shepp_logan_template(size), PHANTOM_CONTROL, n_images, sigma, seed)


def volume_control_points(per_axis: int = 3, extent: float = 0.5) -> np.ndarray:
    """A regular ``per_axis ** 3`` grid of control points in ``[-extent, extent]^3``."""
    axis = np.linspace(-extent, extent, per_axis)
    mesh = np.meshgrid(axis, axis, axis, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


def volume_population(
    volume: np.ndarray,
    n_images: int,
    size: int = 48,
    sigma_mm: float = 4.0,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    seed: int = 0,
    control: np.ndarray | None = None,
) -> SyntheticPopulation:
    """Random smooth warps of a 3-D volume at reduced resolution.

    Parameters
    ----------
    volume : ndarray
        ``(z, y, x)``, e.g. the MNI152 template.
    n_images : int
        Population size.
    size : int
        The volume is resampled to ``size`` voxels per axis (corners to corners).
    sigma_mm : float
        Control-point displacement std per axis, in mm of the original volume.
    spacing : tuple of float
        The original voxel size ``(x, y, z)`` in mm.
    seed : int
        Seed of the warps.
    control : ndarray, optional
        ``(P, 3)`` normalised control points; a 3x3x3 grid in ``[-0.5, 0.5]^3``
        by default.

    Returns
    -------
    SyntheticPopulation
        With ``spacing`` the reduced voxel size, so errors come out in mm.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise InputError(f"volume_population needs a 3-D volume, got shape {volume.shape}.")
    reduced = resample(volume, size)
    new_spacing = tuple(
        float(s) * (n - 1) / (size - 1) for s, n in zip(spacing, volume.shape[::-1], strict=True)
    )
    control = volume_control_points() if control is None else control
    # Isotropic in mm: convert to voxels of the reduced volume per axis (use the mean).
    sigma_vox = sigma_mm / float(np.mean(new_spacing))
    return warp_template(reduced, control, n_images, sigma_vox, seed, spacing=new_spacing)


def population_stats(population: SyntheticPopulation) -> dict[str, float]:
    """Variability of a 2-D phantom population, to compare with the reference data.

    Returns
    -------
    dict
        ``head_area_std_percent``; ``boundary_std_px`` (std of the skull's axis
        ends, per axis, pooled); ``ellipse_centroid_std_px`` (of the two dark
        ellipses' centroids, pooled).
    """
    from scipy import ndimage

    areas, centroids = [], []
    for image in population.images:
        head = ndimage.binary_fill_holes(image > 0.5)
        areas.append(head.sum())
        dark = ndimage.label((image < 0.1) & head)[0]
        sizes = ndimage.sum(np.ones_like(dark), dark, range(1, dark.max() + 1))
        biggest = np.argsort(sizes)[::-1][:2] + 1
        cents = np.array(ndimage.center_of_mass(np.ones_like(dark), dark, biggest))
        centroids.append(cents[np.argsort(cents[:, 1])])
    px = population.to_pixels(population.displaced) - population.to_pixels(population.control)
    areas = np.asarray(areas, float)
    return {
        "head_area_std_percent": float(100 * areas.std() / areas.mean()),
        "boundary_std_px": float(px[:, :4].std(axis=0).mean()),
        "ellipse_centroid_std_px": float(np.asarray(centroids).std(axis=0).mean()),
    }
