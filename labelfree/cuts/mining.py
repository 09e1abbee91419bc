"""Anchors and SSIM-mined positives inside one image (paper section 3.1.1).

For each image, ``n_anchors`` anchor pixels are drawn uniformly. For each
anchor, ``n_candidates`` neighbours within ``max_offset`` pixels (never the
anchor itself) are scored by SSIM between their 5 x 5 patches and the anchor's
(the whole patch as one window, all channels together, data range of the anchor
patch); the first candidate whose SSIM exceeds ``threshold`` is the positive.
Negatives are implicit: the other anchors and positives of the same image.

Two defects of the reference sampler are not reproduced:

- it reseeded its generator every batch, so every step saw the same anchors;
  here one :class:`numpy.random.Generator` runs through the whole training;
- when no candidate passed the SSIM check it silently used the anchor itself as
  its positive (a trivial pair); here the *best-SSIM candidate* is taken
  instead, so a positive is always a different, nearby pixel (the fraction of
  anchors that needed this fallback is reported).

Candidates that would fall outside the image have their offset mirrored back
(``a + o`` -> ``a - o`` per axis), which keeps them in the image and distinct
from the anchor for any image of at least ``2 * max_offset + 1`` pixels a side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labelfree.cuts.encoder import PATCH

K1, K2 = 0.01, 0.03


@dataclass
class Pairs:
    """Anchors and positives of a batch of images.

    Attributes
    ----------
    anchors, positives : ndarray
        ``(B, S, 2)`` int pixel coordinates ``(row, col)``.
    ssim : ndarray
        ``(B, S)`` SSIM of each chosen pair.
    fallback : ndarray
        ``(B, S)`` bool: no candidate passed the threshold; the best was taken.
    """

    anchors: np.ndarray
    positives: np.ndarray
    ssim: np.ndarray
    fallback: np.ndarray


def patch_ssim(anchor: np.ndarray, others: np.ndarray) -> np.ndarray:
    """SSIM of each ``other`` patch against ``anchor``, each patch as one window.

    Parameters
    ----------
    anchor : ndarray
        ``(..., P)`` flattened anchor patches (all channels together).
    others : ndarray
        ``(..., K, P)`` candidate patches.

    Returns
    -------
    ndarray
        ``(..., K)`` SSIM values in [-1, 1]; the data range is the anchor
        patch's (floored so that flat patches compare by their means).

    Notes
    -----
    Patches are expected in the encoder's [-1, 1] scale and are shifted to
    [0, 1] first: SSIM's luminance term assumes non-negative intensities (on
    zero-centred data an inverted patch would score high).
    """
    anchor = (anchor + 1.0) * 0.5
    others = (others + 1.0) * 0.5
    a = anchor[..., None, :]
    data_range = np.maximum(np.ptp(anchor, axis=-1), 5e-4)[..., None]
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu_a, mu_o = a.mean(-1), others.mean(-1)
    var_a, var_o = a.var(-1), others.var(-1)
    cov = ((a - mu_a[..., None]) * (others - mu_o[..., None])).mean(-1)
    return ((2 * mu_a * mu_o + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_o**2 + c1) * (var_a + var_o + c2)
    )


def _patches(padded: np.ndarray, rows: np.ndarray, cols: np.ndarray, half: int) -> np.ndarray:
    """``(B, C, H + 2h, W + 2h)`` padded images, ``(B, ...)`` centres -> ``(B, ..., C*(2h+1)^2)``."""
    grid = np.arange(-half, half + 1)
    r = rows[..., None, None] + half + grid[:, None]
    c = cols[..., None, None] + half + grid[None, :]
    b = np.arange(len(padded)).reshape((-1,) + (1,) * (r.ndim - 1))
    patches = padded[b[..., None], np.arange(padded.shape[1]), r[..., None], c[..., None]]
    return patches.reshape(*rows.shape, -1)


def mine_pairs(
    images: np.ndarray,
    rng: np.random.Generator,
    *,
    n_anchors: int = 8,
    n_candidates: int = 20,
    max_offset: int = 5,
    threshold: float = 0.5,
) -> Pairs:
    """Draw anchors and SSIM-mined positives in each image of a batch.

    Parameters
    ----------
    images : ndarray
        ``(B, C, H, W)`` normalised images, ``H, W >= 2 * max_offset + 1``.
    rng : numpy.random.Generator
        Advanced, never reseeded: every call draws new anchors.
    n_anchors : int
        Anchors per image ``S``.
    n_candidates : int
        Neighbours scored per anchor.
    max_offset : int
        Candidates lie within ``+-max_offset`` pixels on each axis.
    threshold : float
        SSIM a candidate must exceed to be taken at once.

    Returns
    -------
    Pairs
        Anchors and positives; a positive never equals its anchor.
    """
    batch, _, height, width = images.shape
    if min(height, width) < 2 * max_offset + 1:
        raise ValueError(f"images of {height} x {width} are too small for offsets of {max_offset}")
    anchors = np.stack(
        [rng.integers(0, height, (batch, n_anchors)), rng.integers(0, width, (batch, n_anchors))],
        axis=-1,
    )
    offsets = _nonzero_offsets(max_offset)
    chosen = offsets[rng.integers(0, len(offsets), (batch, n_anchors, n_candidates))]
    cand = anchors[:, :, None, :] + chosen
    size = np.array([height, width])
    outside = (cand < 0) | (cand >= size)
    cand = np.where(outside, anchors[:, :, None, :] - chosen, cand)

    half = PATCH // 2
    padded = np.pad(images, ((0, 0), (0, 0), (half, half), (half, half)), mode="edge")
    anchor_patches = _patches(padded, anchors[..., 0], anchors[..., 1], half)
    cand_patches = _patches(padded, cand[..., 0], cand[..., 1], half)
    scores = patch_ssim(anchor_patches, cand_patches)

    passed = scores > threshold
    fallback = ~passed.any(-1)
    pick = np.where(fallback, scores.argmax(-1), passed.argmax(-1))
    take = pick[..., None, None]
    positives = np.take_along_axis(cand, np.broadcast_to(take, (*take.shape[:3], 2)), axis=2)[
        :, :, 0
    ]
    ssim = np.take_along_axis(scores, pick[..., None], axis=-1)[..., 0]
    return Pairs(anchors, positives, ssim, fallback)


def _nonzero_offsets(max_offset: int) -> np.ndarray:
    span = np.arange(-max_offset, max_offset + 1)
    grid = np.stack(np.meshgrid(span, span, indexing="ij"), -1).reshape(-1, 2)
    return grid[(grid != 0).any(-1)]
