"""How much each learned landmark contributes to registration (redundancy removal).

After training, every image pair is re-registered with all landmarks and with
each learned landmark left out of both sets; the registration loss with and
without it says how much the warp needs it. The fixed corner landmarks are
never left out.

Two scores, both averaged over pairs ``p`` and normalised so that the largest
is 1:

``"increase"``
    ``max(0, mean_p(L_without_k - L_all))``: the expected rise of the
    registration loss when landmark ``k`` is dropped, in the loss's own
    units. Signed before averaging, so a landmark whose removal *improves*
    registration (it pulls the warp the wrong way) scores 0, and a landmark
    that only matters on one odd pair is not over-weighted.
``"reference"``
    ``mean_p((L_all - L_without_k) ** 2)``, the rule of the paper's public
    code. Squaring treats a harmful landmark like a useful one and lets a few
    pairs with large changes dominate; kept for comparison.
``"precision"`` (default)
    Not a leave-one-out score: ``min_j e_j / e_k``, where ``e_k`` is the RMS
    disagreement of landmark ``k`` under random smooth warps of the images
    (found on ``I o W`` and mapped through ``W``, against found on ``I``; the
    training equivariance term, per landmark), so the most important landmark
    is the most repeatable one. ``n_pairs`` counts the warps.

The registration loss is the mean squared difference between the whitened
target and the source warped by the thin-plate spline through the landmarks
(the training match term), evaluated on a grid of ``eval_size`` pixels per
axis.

Measured on a phantom model (12 landmarks, 64 px, 60 epochs; importance from
8 images, registration scored on 16 other images' pairs, whitened MSE):
all 12 landmarks 0.239, corners only 0.598; keeping the top 3 / 6 / 9 by
``"increase"`` 0.348 / 0.273 / 0.243, by ``"reference"`` 0.348 / 0.271 /
0.245, random subsets 0.420 / 0.341 / 0.280. Both rankings work; the default
is the one whose sign means something.

But a landmark the warp needs is not a landmark found reliably: on unseen warps the top quarter
by ``"increase"`` of the bundled models was *less* precise than all landmarks (2-D 1.91 px
against 1.23, 3-D 2.35 mm against 2.19), while the top quarter by ``"precision"`` was more
precise (0.87 px, 1.93 mm; ``bench/landmark_importance.py``). Users keep the top landmarks to
get the reliable ones, so ``"precision"`` is the default.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from labelfree.errors import InputError, LabelFreeError
from labelfree.landmarks.model import load_landmark_model, prepare_image, save_landmark_model
from labelfree.landmarks.tps import identity_grid, tps_fit, tps_kernel

METHODS = ("increase", "reference", "precision")
DEFAULT_RIDGE = 1e-6  # what training keeps on the spline kernel
# Elements per chunk of warped sets (grid positions and images): ~128 MB float32.
_CHUNK_ELEMENTS = 2**25


def image_pairs(n_images: int, n_pairs: int, seed: int = 0) -> np.ndarray:
    """Ordered pairs ``(source, target)`` of distinct images, ``(P, 2)`` int.

    All ``n (n - 1)`` ordered pairs when there are at most ``n_pairs`` of them,
    else ``n_pairs`` drawn without replacement.

    Raises
    ------
    InputError
        Fewer than 2 images, or ``n_pairs < 1``.
    """
    if n_images < 2:
        raise InputError(f"Landmark importance needs at least 2 images, got {n_images}.")
    if n_pairs < 1:
        raise InputError(f"n_pairs must be at least 1, got {n_pairs}.")
    all_pairs = np.array(
        [(s, t) for s in range(n_images) for t in range(n_images) if s != t], dtype=int
    )
    if len(all_pairs) <= n_pairs:
        return all_pairs
    rng = np.random.default_rng(seed)
    return all_pairs[np.sort(rng.choice(len(all_pairs), n_pairs, replace=False))]


def _fit(target_sets: torch.Tensor, source_sets: torch.Tensor, ridge: float) -> torch.Tensor:
    """Backward-warp spline coefficients ``(B, M + D + 1, D)`` of each landmark set."""
    try:
        return tps_fit(target_sets, source_sets - target_sets, ridge)
    except RuntimeError as err:  # torch.linalg errors on a singular spline system
        raise LabelFreeError(
            "The thin-plate spline through the predicted landmarks is singular: two "
            "landmarks coincide. The model has collapsed; retrain it (more epochs, a "
            "larger regularisation weight) or use fewer landmarks."
        ) from err


def leave_one_out_losses(
    source_image: torch.Tensor,
    target_image: torch.Tensor,
    source_points: torch.Tensor,
    target_points: torch.Tensor,
    n_fixed: int = 0,
    ridge: float = 0.0,
) -> tuple[float, np.ndarray]:
    """Registration loss of one pair with all landmarks and without each learned one.

    The warp of each set is the one :func:`labelfree.landmarks.tps.warp_image`
    computes (backward thin-plate spline, bilinear, border padding,
    ``align_corners=True``). The kernel between the grid and the landmarks is
    evaluated once and shared by all ``K + 1`` splines: leaving landmark ``k``
    out is a zero weight on its column, so the cost per left-out landmark is
    one solve and one matrix product.

    Parameters
    ----------
    source_image, target_image : Tensor
        ``(1, 1, *S)`` whitened images on the grid where the loss is measured.
    source_points, target_points : Tensor
        ``(K + n_fixed, D)`` normalised landmarks, learned first, fixed last.
    n_fixed : int
        Trailing landmarks that are never left out.
    ridge : float
        Kernel ridge of the spline (:func:`labelfree.landmarks.tps.tps_matrix`).

    Returns
    -------
    loss_all : float
        Loss with every landmark.
    loss_without : ndarray
        ``(K,)`` loss with learned landmark ``k`` left out of both sets.
    """
    total, ndim = target_points.shape
    n_learned = total - n_fixed
    if total - 1 < ndim + 1:
        raise InputError(
            f"Leaving one landmark out needs at least {ndim + 2} landmarks in {ndim}-D "
            f"(learned + fixed), got {total}."
        )
    dtype, device = target_points.dtype, target_points.device
    keep = ~torch.eye(n_learned, total, dtype=torch.bool, device=device)
    coef_all = _fit(target_points[None], source_points[None], ridge)
    coef_loo = _fit(
        target_points[None].expand(n_learned, -1, -1)[keep].view(n_learned, total - 1, ndim),
        source_points[None].expand(n_learned, -1, -1)[keep].view(n_learned, total - 1, ndim),
        ridge,
    )
    # Kernel weights on all `total` columns (0 for the left-out one), affine parts apart.
    weights = torch.zeros(1 + n_learned, total, ndim, dtype=dtype, device=device)
    weights[0] = coef_all[0, :total]
    weights[1:][keep] = coef_loo[:, : total - 1].reshape(-1, ndim)
    affine = torch.cat([coef_all[:, total:], coef_loo[:, total - 1 :]])
    shape = tuple(target_image.shape[2:])
    grid = identity_grid(shape, dtype, device).reshape(-1, ndim)
    kernel = tps_kernel((grid[:, None, :] - target_points[None]).pow(2).sum(-1), ndim)
    basis = torch.cat([torch.ones_like(grid[:, :1]), grid], dim=1)
    n_sets = 1 + n_learned
    chunk = max(1, _CHUNK_ELEMENTS // (grid.numel() * 4))
    losses = []
    for start in range(0, n_sets, chunk):
        w, a = weights[start : start + chunk], affine[start : start + chunk]
        mapped = (
            grid + torch.einsum("nm,bmd->bnd", kernel, w) + torch.einsum("ne,bed->bnd", basis, a)
        )
        warped = F.grid_sample(
            source_image.expand(len(w), *source_image.shape[1:]),
            mapped.view(len(w), *shape, ndim),
            mode="bilinear",
            padding_mode="border",
            align_corners=True,
        )
        losses.append((warped - target_image).pow(2).flatten(1).mean(1))
    losses = torch.cat(losses).double()
    return float(losses[0]), losses[1:].numpy()


def score_importance(loss_all: np.ndarray, loss_without: np.ndarray, method: str) -> np.ndarray:
    """Turn per-pair losses into normalised importance (max 1; all 0 if nothing matters).

    Parameters
    ----------
    loss_all : ndarray
        ``(P,)`` loss of each pair with all landmarks.
    loss_without : ndarray
        ``(P, K)`` loss of each pair without each learned landmark.
    method : str
        ``"increase"`` or ``"reference"`` (see the module docstring).

    Returns
    -------
    ndarray
        ``(K,)`` in ``[0, 1]``.
    """
    delta = np.asarray(loss_without, dtype=float) - np.asarray(loss_all, dtype=float)[:, None]
    if method == "increase":
        raw = np.clip(delta.mean(0), 0.0, None)
    elif method == "reference":
        raw = (delta**2).mean(0)
    else:
        raise InputError(f"Unknown importance method {method!r}; choose one of {METHODS}.")
    top = raw.max() if raw.size else 0.0
    if not np.isfinite(top):
        raise LabelFreeError("Landmark importance is not finite; the landmarks are degenerate.")
    return raw / top if top > 0 else np.zeros_like(raw)


def importance_from_landmarks(
    images: np.ndarray,
    points: np.ndarray,
    n_fixed: int,
    pairs: np.ndarray,
    method: str = "increase",
    ridge: float = 0.0,
) -> np.ndarray:
    """Importance of each learned landmark given images and their landmarks.

    Parameters
    ----------
    images : ndarray
        ``(N, *S)`` images as the loss should compare them (whitened, on the
        evaluation grid).
    points : ndarray
        ``(N, K + n_fixed, D)`` normalised ``(x, y[, z])`` landmarks of each
        image, learned first.
    n_fixed : int
        Trailing fixed landmarks per image (never scored).
    pairs : ndarray
        ``(P, 2)`` ``(source, target)`` image indices (:func:`image_pairs`).
    method : str
        ``"increase"`` or ``"reference"``.
    ridge : float
        Kernel ridge of the spline.

    Returns
    -------
    ndarray
        ``(K,)`` importance in ``[0, 1]``, max 1.
    """
    if method not in METHODS:
        raise InputError(f"Unknown importance method {method!r}; choose one of {METHODS}.")
    imgs = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    pts = torch.as_tensor(np.asarray(points), dtype=torch.float32)
    if pts.ndim != 3 or pts.shape[-1] != imgs.ndim - 1 or len(pts) != len(imgs):
        raise InputError(
            f"Need (N, M, {imgs.ndim - 1}) landmarks for {len(imgs)} images, got {tuple(pts.shape)}."
        )
    loss_all, loss_without = [], []
    with torch.no_grad():
        for s, t in np.asarray(pairs, dtype=int):
            a, w = leave_one_out_losses(
                imgs[s][None, None], imgs[t][None, None], pts[s], pts[t], n_fixed, ridge
            )
            loss_all.append(a)
            loss_without.append(w)
    return score_importance(np.array(loss_all), np.stack(loss_without), method)


def _as_array(image: Any) -> np.ndarray:
    return image.array if hasattr(image, "array") else np.asarray(image)


def landmark_importance(
    regressor: torch.nn.Module,
    config: dict[str, Any],
    images: Sequence[Any],
    n_pairs: int = 64,
    seed: int = 0,
    *,
    method: str = "precision",
    eval_size: int | None = None,
    ridge: float = DEFAULT_RIDGE,
) -> np.ndarray:
    """Leave-one-out importance of each learned landmark of a trained model.

    Parameters
    ----------
    regressor : LandmarkRegressor
        The trained network (see :func:`labelfree.landmarks.model.load_landmark_model`).
    config : dict
        Its configuration (``ndim``, ``input_size``, ``n_fixed``).
    images : sequence of ndarray or labelfree.io.Image
        At least 2 images of the kind the model was trained on, any size.
    n_pairs : int
        Number of ordered image pairs to average over (all pairs if fewer exist).
    seed : int
        Seed of the pair draw.
    method : str
        ``"precision"`` (default), ``"increase"`` or ``"reference"``; see the module
        docstring.
    eval_size : int, optional
        Pixels per axis of the grid where the loss is measured; default
        ``input_size`` in 2-D and ``min(input_size, 48)`` in 3-D (memory and time).
    ridge : float
        Kernel ridge of the spline; training keeps ``1e-6`` throughout, so the
        same here keeps near-coincident landmarks finite.

    Returns
    -------
    ndarray
        ``(K,)`` float, one per learned landmark, max 1. Store it as
        ``config["importance"]`` (a list) with the model.
    """
    ndim, input_size = int(config["ndim"]), int(config["input_size"])
    if eval_size is None:
        eval_size = input_size if ndim == 2 else min(input_size, 48)
    prepared = np.stack([prepare_image(_as_array(img), config) for img in images])
    pairs = image_pairs(len(prepared), n_pairs, seed)
    device = next(regressor.parameters()).device
    was_training = regressor.training
    regressor.eval()
    try:
        with torch.no_grad():
            batch = torch.from_numpy(prepared)[:, None].to(device)
            points = torch.cat([regressor.control_points(chunk) for chunk in batch.split(16)]).cpu()
    finally:
        regressor.train(was_training)
    grid = torch.from_numpy(prepared)[:, None]
    if eval_size != input_size:
        mode = "bilinear" if ndim == 2 else "trilinear"
        grid = F.interpolate(grid, size=(eval_size,) * ndim, mode=mode, align_corners=True)
    n_fixed = int(config.get("n_fixed", points.shape[1] - config["n_landmarks"]))
    if method == "precision":
        error = warp_disagreement(regressor, torch.from_numpy(prepared)[:, None], n_pairs, seed)
        learned = error[: points.shape[1] - n_fixed]
        return learned.min() / np.maximum(learned, 1e-12)
    return importance_from_landmarks(
        grid[:, 0].numpy(), points.numpy(), n_fixed, pairs, method, ridge
    )


def warp_disagreement(
    regressor: torch.nn.Module,
    images: torch.Tensor,
    n_warps: int,
    seed: int = 0,
    sigma_px: float | None = None,
) -> np.ndarray:
    """RMS disagreement of each landmark under random smooth warps, in input pixels.

    Parameters
    ----------
    regressor : LandmarkRegressor
        A trained network.
    images : Tensor
        ``(N, 1, *input)`` prepared images.
    n_warps : int
        Warps in all, spread over the images in turn.
    seed : int
        Seed of the warps.
    sigma_px : float, optional
        Warp displacement std in input pixels; default the training equivariance
        warps' (about the displacement between two images of a population).

    Returns
    -------
    ndarray
        ``(K + n_fixed,)``: for each control point, the RMS over warps of the distance
        between the landmark found on the warped image, mapped back, and the one found
        on the image (0 for the fixed corners).
    """
    from labelfree.landmarks.augment import random_warp_points
    from labelfree.landmarks.tps import tps_map, warp_image
    from labelfree.landmarks.train import DEFAULT_EQUIVARIANCE_PX

    ndim = images.ndim - 2
    sigma_px = DEFAULT_EQUIVARIANCE_PX[ndim] if sigma_px is None else sigma_px
    generator = torch.Generator().manual_seed(int(seed))
    source_index = np.arange(max(int(n_warps), 1)) % images.shape[0]
    pixel = (torch.tensor(images.shape[2:][::-1], dtype=torch.float64) - 1) / 2
    device = next(regressor.parameters()).device
    was_training = regressor.training
    regressor.eval()
    squared = []
    try:
        with torch.no_grad():
            for chunk in np.array_split(source_index, max(1, len(source_index) // 8)):
                clean = images[chunk].to(device)
                target, source = random_warp_points(
                    len(chunk), images.shape[2:], sigma_px, generator
                )
                target, source = target.to(device), source.to(device)
                warped = warp_image(clean, target, source, field_stride=4)
                found = regressor.control_points(clean).double().cpu()
                mapped = tps_map(regressor.control_points(warped), target, source).double().cpu()
                squared.append((((mapped - found) * pixel) ** 2).sum(-1))
    finally:
        regressor.train(was_training)
    return np.sqrt(torch.cat(squared).mean(0).numpy())


def store_importance(
    model_path: str | os.PathLike,
    images: Sequence[Any],
    n_pairs: int = 64,
    seed: int = 0,
    *,
    method: str = "precision",
) -> np.ndarray:
    """Compute landmark importance for a model file and store it in the file.

    The model is rewritten atomically with ``config["importance"]`` (list of
    K floats, max 1) and ``config["importance_method"]``; its card records
    how the importance was measured.

    Parameters
    ----------
    model_path : path-like
        A landmark model file; rewritten in place.
    images : sequence of ndarray or labelfree.io.Image
        Images of the training distribution (the training set is fine).
    n_pairs, seed, method
        As :func:`landmark_importance`.

    Returns
    -------
    ndarray
        ``(K,)`` the stored importance.
    """
    regressor, config, card = load_landmark_model(model_path)
    ridge = float(card.get("training", {}).get("ridge", DEFAULT_RIDGE))
    importance = landmark_importance(
        regressor, config, images, n_pairs, seed, method=method, ridge=ridge
    )
    config = {**config, "importance": [float(v) for v in importance], "importance_method": method}
    n_images = len(images)
    card = {
        **card,
        "importance": {
            "method": method,
            "pairs": int(min(n_pairs, n_images * (n_images - 1))),
            "images": n_images,
            "seed": seed,
            "kept_above_0.1": int((importance >= 0.1).sum()),
        },
    }
    save_landmark_model(model_path, regressor, config, card)
    return importance
