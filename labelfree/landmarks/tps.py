"""Differentiable thin-plate splines in 2-D and 3-D, batched.

Conventions
-----------
- Points are in normalised coordinates ``[-1, 1]``, ordered ``(x, y[, z])``
  (``x`` = column), as :func:`torch.nn.functional.grid_sample` expects.
- One ``align_corners=True`` convention everywhere: ``-1`` and ``+1`` are the
  centres of the first and last pixels, so pixel ``i`` of an axis of ``n``
  pixels sits at ``2 i / (n - 1) - 1`` whatever the resolution.
- A spline maps a *target* frame to a *source* frame (backward warping): each
  target pixel looks up where to sample the source image. It is fitted as a
  displacement ``f(p) = p + d(p)`` so that equal landmark sets give exactly the
  identity.

Kernels: ``U(r) = r^2 log r`` in 2-D and ``U(r) = r`` in 3-D (the biharmonic
Green's functions). Both are written so that coincident points (``r = 0``)
give finite gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from labelfree.errors import InputError

_TINY = 1e-30


def tps_kernel(r2: torch.Tensor, ndim: int) -> torch.Tensor:
    """Radial basis ``U`` as a function of the squared distance.

    Parameters
    ----------
    r2 : Tensor
        Squared distances, any shape.
    ndim : int
        2 (``U = r^2 log r``) or 3 (``U = r``).

    Returns
    -------
    Tensor
        ``U`` with the shape of ``r2``. Where ``r2 == 0`` it is 0 in 2-D and
        ``1e-15`` in 3-D (negligible), with a finite gradient rather than NaN.
    """
    # Clamping keeps log/sqrt and their derivatives finite at r = 0, where the
    # gradient of r2 itself is 0, so coincident points stay differentiable.
    safe = r2.clamp_min(_TINY)
    if ndim == 2:
        return 0.5 * r2 * torch.log(safe)
    if ndim == 3:
        return torch.sqrt(safe)
    raise InputError(f"Thin-plate splines need 2 or 3 dimensions, got {ndim}.")


def _pairwise_r2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distances ``(B, N, M)`` between ``a (B, N, D)`` and ``b (B, M, D)``."""
    return (a.unsqueeze(-2) - b.unsqueeze(-3)).pow(2).sum(-1)


def _pairwise_r2_fast(points: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
    """As :func:`_pairwise_r2` through one matrix product (for many points, few controls)."""
    cross = points @ control.transpose(-1, -2)
    r2 = points.pow(2).sum(-1, keepdim=True) - 2 * cross + control.pow(2).sum(-1).unsqueeze(-2)
    return r2.clamp_min(0)


def tps_matrix(control: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """The TPS system matrix ``[[K + ridge I, P], [P^T, 0]]``.

    Parameters
    ----------
    control : Tensor
        ``(B, K, D)`` control points (the target landmarks).
    ridge : float
        Added to the kernel block's diagonal: 0 interpolates exactly; a small
        value regularises near-coincident points.

    Returns
    -------
    Tensor
        ``(B, K + D + 1, K + D + 1)``.
    """
    batch, k, ndim = control.shape
    kernel = tps_kernel(_pairwise_r2(control, control), ndim)
    if ridge:
        kernel = kernel + ridge * torch.eye(k, dtype=control.dtype, device=control.device)
    ones = torch.ones(batch, k, 1, dtype=control.dtype, device=control.device)
    p = torch.cat([ones, control], dim=-1)
    zeros = torch.zeros(batch, ndim + 1, ndim + 1, dtype=control.dtype, device=control.device)
    top = torch.cat([kernel, p], dim=-1)
    bottom = torch.cat([p.transpose(-1, -2), zeros], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def tps_fit(
    control: torch.Tensor,
    values: torch.Tensor,
    ridge: float = 0.0,
    matrix: torch.Tensor | None = None,
) -> torch.Tensor:
    """Coefficients of the spline taking ``values`` at ``control``.

    Parameters
    ----------
    control : Tensor
        ``(B, K, D)`` control points.
    values : Tensor
        ``(B, K, M)`` values to interpolate (e.g. displacements, ``M = D``).
    ridge : float
        See :func:`tps_matrix`.
    matrix : Tensor, optional
        A precomputed :func:`tps_matrix` of ``control``.

    Returns
    -------
    Tensor
        ``(B, K + D + 1, M)``: ``K`` kernel weights then the affine part
        (constant row first, then one row per coordinate).
    """
    if control.shape[-2] < control.shape[-1] + 1:
        raise InputError(
            f"A {control.shape[-1]}-D thin-plate spline needs at least {control.shape[-1] + 1} "
            f"landmarks, got {control.shape[-2]}."
        )
    if matrix is None:
        matrix = tps_matrix(control, ridge)
    batch, _, m = values.shape
    pad = torch.zeros(batch, control.shape[-1] + 1, m, dtype=values.dtype, device=values.device)
    return torch.linalg.solve(matrix, torch.cat([values, pad], dim=-2))


def tps_evaluate(
    points: torch.Tensor, control: torch.Tensor, coef: torch.Tensor, fast: bool = False
) -> torch.Tensor:
    """Evaluate a fitted spline.

    Parameters
    ----------
    points : Tensor
        ``(B, N, D)`` where to evaluate.
    control : Tensor
        ``(B, K, D)`` the control points it was fitted on.
    coef : Tensor
        ``(B, K + D + 1, M)`` from :func:`tps_fit`.
    fast : bool
        Distances through one matrix product: several times faster for dense
        grids, but in 3-D rounding shifts values at the control points by
        about ``1e-4`` (normalised units), so exact interpolation needs False.

    Returns
    -------
    Tensor
        ``(B, N, M)``.
    """
    k, ndim = control.shape[-2:]
    # U = r has an infinite slope at 0 in 3-D, where the matrix-product shortcut's
    # rounding would show; r^2 log r is flat there.
    r2 = _pairwise_r2_fast(points, control) if fast or ndim == 2 else _pairwise_r2(points, control)
    u = tps_kernel(r2, ndim)
    ones = torch.ones(*points.shape[:-1], 1, dtype=points.dtype, device=points.device)
    return u @ coef[..., :k, :] + torch.cat([ones, points], dim=-1) @ coef[..., k:, :]


def tps_map(
    points: torch.Tensor,
    target: torch.Tensor,
    source: torch.Tensor,
    ridge: float = 0.0,
) -> torch.Tensor:
    """Map points of the target frame to the source frame.

    The spline sends ``target[k]`` to ``source[k]`` (exactly when
    ``ridge == 0``) and is the identity when ``source == target``.

    Parameters
    ----------
    points : Tensor
        ``(B, N, D)`` points in the target frame.
    target, source : Tensor
        ``(B, K, D)`` corresponding landmarks.
    ridge : float
        See :func:`tps_matrix`.

    Returns
    -------
    Tensor
        ``(B, N, D)`` positions in the source frame.
    """
    coef = tps_fit(target, source - target, ridge)
    return points + tps_evaluate(points, target, coef)


def identity_grid(
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Normalised coordinates of every pixel, ``(*shape, D)`` in ``(x, y[, z])`` order.

    ``shape`` is in array order (``(y, x)`` or ``(z, y, x)``); pixel centres
    follow the ``align_corners=True`` convention.
    """
    axes = [torch.linspace(-1.0, 1.0, n, dtype=dtype, device=device) for n in shape]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(mesh[::-1], dim=-1)


def dense_map(
    target: torch.Tensor,
    coef: torch.Tensor,
    shape: tuple[int, ...],
    field_stride: int = 1,
) -> torch.Tensor:
    """Where every pixel of a ``shape`` target frame maps to, ``(B, *shape, D)``.

    Parameters
    ----------
    target : Tensor
        ``(B, K, D)`` control points of the spline.
    coef : Tensor
        Coefficients of the *displacement* spline (:func:`tps_fit` of
        ``source - target``).
    shape : tuple of int
        Array shape of the target frame.
    field_stride : int
        Evaluate the spline every ``field_stride`` pixels and interpolate the
        (smooth) displacement linearly in between; 1 is exact.
    """
    batch, _, ndim = target.shape
    shape = tuple(shape)
    coarse = tuple(max(2, -(-n // field_stride)) for n in shape) if field_stride > 1 else shape
    points = identity_grid(coarse, target.dtype, target.device).reshape(1, -1, ndim)
    displacement = tps_evaluate(points.expand(batch, -1, -1), target, coef, fast=True)
    displacement = displacement.reshape(batch, *coarse, ndim)
    if coarse != shape:
        mode = "bilinear" if ndim == 2 else "trilinear"
        channels_first = displacement.movedim(-1, 1)
        upsampled = F.interpolate(channels_first, size=shape, mode=mode, align_corners=True)
        displacement = upsampled.movedim(1, -1)
    return identity_grid(shape, target.dtype, target.device).unsqueeze(0) + displacement


def warp_image(
    source_image: torch.Tensor,
    target: torch.Tensor,
    source: torch.Tensor,
    ridge: float = 0.0,
    output_shape: tuple[int, ...] | None = None,
    padding_mode: str = "border",
    field_stride: int = 1,
) -> torch.Tensor:
    """Backward-warp ``source_image`` onto the target frame.

    Parameters
    ----------
    source_image : Tensor
        ``(B, C, H, W)`` or ``(B, C, Z, H, W)``.
    target, source : Tensor
        ``(B, K, D)`` corresponding landmarks (normalised, ``(x, y[, z])``).
    ridge : float
        See :func:`tps_matrix`.
    output_shape : tuple of int, optional
        Spatial shape of the result; the input's by default.
    padding_mode : str
        ``grid_sample``'s rule for positions outside the source.
    field_stride : int
        See :func:`dense_map`.

    Returns
    -------
    Tensor
        The warped image, ``(B, C, *output_shape)``; equals ``source_image``
        when ``source == target``.
    """
    ndim = source_image.dim() - 2
    if target.shape[-1] != ndim:
        raise InputError(f"{target.shape[-1]}-D landmarks cannot warp a {ndim}-D image.")
    shape = tuple(output_shape or source_image.shape[2:])
    coef = tps_fit(target, source - target, ridge)
    mapped = dense_map(target, coef, shape, field_stride)
    return F.grid_sample(
        source_image, mapped, mode="bilinear", padding_mode=padding_mode, align_corners=True
    )


def condition_number(matrix: torch.Tensor) -> torch.Tensor:
    """Frobenius condition number ``||A||_F ||A^-1||_F`` of each matrix, ``(B,)``.

    Its lower bound is the matrix size; it grows without bound as control
    points coincide, which is why it serves as a regulariser.
    """
    inverse = torch.linalg.inv(matrix)
    return torch.linalg.matrix_norm(matrix) * torch.linalg.matrix_norm(inverse)


def normalised_to_index(coords: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Normalised ``(x, y[, z])`` coordinates to continuous pixel indices, same order.

    ``shape`` is the array shape (``(y, x)`` or ``(z, y, x)``).
    """
    sizes = torch.tensor(shape[::-1], dtype=coords.dtype, device=coords.device)
    return (coords + 1) * 0.5 * (sizes - 1)


def index_to_normalised(index: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`normalised_to_index`."""
    sizes = torch.tensor(shape[::-1], dtype=index.dtype, device=index.device)
    return index / ((sizes - 1) * 0.5) - 1
