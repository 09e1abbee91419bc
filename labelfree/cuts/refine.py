"""Boundary refinement: move each label map's boundaries to where the texture changes.

Texture features pool words over a Gaussian of the texture scale (8-16 px), so a label map
condensed from them follows texture boundaries only to within about that scale: a 16 px
pooling is a large part of a small structure, and its outline blurs. Refinement sharpens it,
the way a texton classifier would, without new training:

1. every segment gets the histogram of the words of its pixels (a Dirichlet ``prior`` per
   word keeps rare words from ruling out a segment);
2. every pixel's own neighbourhood is described at a finer ``scale`` (the runner uses 0.75 x
   the texture scale): its local word histogram;
3. each pixel goes to the segment, among those within ``reach`` pixels of it in its slice,
   under whose histogram its neighbourhood is most likely (the cross-entropy of the two);
4. repeat with the new segments' histograms, ``iterations`` times.

Labels move only near existing boundaries, a segment never appears where it was not within
reach, and pixels without a word (background) keep their label and count for no histogram.
Segments are the labels of the map (not their connected parts). Volumes are refined slice by
slice, in the slices the words were computed in, with histograms over the whole volume.

Measured on the texture benchmark (``bench/texture_cuts.py``, ``bench/README.md`` section 9).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from labelfree.cuts.texture import gaussian_pool, radius
from labelfree.errors import InputError


def refine_boundaries(
    labels: np.ndarray,
    words: np.ndarray,
    n_words: int,
    *,
    scale: float = 4.0,
    reach: int = 16,
    iterations: int = 3,
    prior: float = 0.5,
) -> np.ndarray:
    """Move the boundaries of a label map to texture edges.

    Parameters
    ----------
    labels : (H, W) or (S, H, W) array of int
        Labels >= 0; each value is one segment.
    words : array of int, same shape as ``labels``
        Each pixel's word id in ``0..n_words - 1``, or -1 where the pixel holds no word
        (e.g. background): such pixels keep their label.
    n_words : int
        ``K``, the number of words.
    scale : float
        Standard deviation of the Gaussian over which a pixel's neighbourhood is described,
        pixels.
    reach : int
        A pixel may join a segment only if that segment has a pixel within ``reach`` pixels
        (Chebyshev distance) of it in the same slice.
    iterations : int
        Rounds of histograms and reassignment.
    prior : float
        Dirichlet prior (pseudo-count per word) of the segments' histograms, > 0.

    Returns
    -------
    ndarray
        The refined labels: same shape and dtype, values taken from ``labels``.
    """
    labels = np.asarray(labels)
    words = np.asarray(words)
    if labels.shape != words.shape or labels.ndim not in (2, 3):
        raise InputError(
            f"Labels and words must be two arrays of one (H, W) or (S, H, W) shape, got "
            f"{labels.shape} and {words.shape}."
        )
    if not (prior > 0 and scale > 0 and int(reach) >= 0 and int(iterations) >= 0):
        raise InputError("Refinement needs prior > 0, scale > 0, reach >= 0 and iterations >= 0.")
    if labels.size == 0 or int(labels.min()) < 0:
        raise InputError("Refinement needs a non-empty map of labels >= 0.")
    if int(words.max()) >= int(n_words):
        raise InputError(f"Word ids must be below n_words = {n_words}.")
    flat = labels[None] if labels.ndim == 2 else labels
    stack = words[None] if words.ndim == 2 else words
    # Lookup tables rather than np.unique: its sort would hold ~24 bytes per voxel.
    values = np.flatnonzero(np.bincount(flat.ravel()))
    lut = np.zeros(int(values[-1]) + 1, dtype=np.int32)
    lut[values] = np.arange(values.size, dtype=np.int32)
    segments = lut[flat]
    weights = [_pool(w >= 0, scale) for w in stack]
    for _ in range(int(iterations)):
        log_hist = _log_histograms(segments, stack, values.size, n_words, prior)
        segments = np.stack(
            [
                _reassign(seg, w, weight, log_hist, scale, int(reach))
                for seg, w, weight in zip(segments, stack, weights, strict=True)
            ]
        )
    out = values[segments].astype(labels.dtype)
    return out[0] if labels.ndim == 2 else out


def _pool(x: np.ndarray, scale: float) -> np.ndarray:
    """:func:`~labelfree.cuts.texture.gaussian_pool` of one ``(h, w)`` array, float32."""
    with torch.inference_mode():
        tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]
        return gaussian_pool(tensor, scale)[0, 0].numpy()


def _log_histograms(segments, words, n_segments, n_words, prior) -> np.ndarray:
    """``(n, K)`` log word frequencies of each segment, with a Dirichlet prior."""
    counts = np.full((n_segments, n_words), float(prior))
    for seg, w in zip(segments, words, strict=True):  # slice by slice: memory of one plane
        valid = w >= 0
        pairs = seg[valid].astype(np.int64) * n_words + w[valid]
        counts += np.bincount(pairs, minlength=n_segments * n_words).reshape(counts.shape)
    return np.log(counts / counts.sum(axis=1, keepdims=True)).astype(np.float32)


def _reassign(segments, words, weight, log_hist, scale, reach) -> np.ndarray:
    """One slice's segments after one round: the likeliest segment within reach.

    A pixel's score for segment ``j`` is the mean of ``log_hist[j]`` over the words of its
    neighbourhood, Gaussian-weighted: the blur of the per-pixel log-likelihood map, computed
    in the segment's box grown by the reach and, for the blur to be exact there, its radius.
    """
    height, width = segments.shape
    valid = words >= 0
    margin = radius(scale)
    best = np.full(segments.shape, -np.inf, dtype=np.float32)
    out = segments.copy()
    for segment, box in enumerate(ndimage.find_objects(segments + 1)):
        if box is None:
            continue
        grown = _grow(box, reach, height, width)
        padded = _grow(grown, margin, height, width)
        likelihood = np.where(valid[padded], log_hist[segment][words[padded]], 0.0)
        inner = tuple(
            slice(g.start - p.start, g.stop - p.start) for g, p in zip(grown, padded, strict=True)
        )
        score = _pool(likelihood, scale)[inner] / np.maximum(weight[grown], 1e-30)
        near = ndimage.maximum_filter(
            (segments[grown] == segment).view(np.uint8), size=2 * reach + 1, mode="constant"
        ).astype(bool)
        better = near & valid[grown] & (score > best[grown])
        best[grown][better] = score[better]
        out[grown][better] = segment
    return out


def _grow(box: tuple[slice, slice], by: int, height: int, width: int) -> tuple[slice, slice]:
    return (
        slice(max(box[0].start - by, 0), min(box[0].stop + by, height)),
        slice(max(box[1].start - by, 0), min(box[1].stop + by, width)),
    )
