"""Boundary refinement: move each label map's boundaries to where the texture changes.

Texture features pool words over a Gaussian of the texture scale (8-16 px), so a label map
condensed from them follows texture boundaries only to within about that scale: a 16 px
pooling is a large part of a small structure, and its outline blurs. Refinement sharpens it,
the way a texton classifier would, without new training:

1. every segment gets the histogram of the words of its pixels (a Dirichlet ``prior`` per
   word keeps rare words from ruling out a segment);
2. every pixel's own neighbourhood is described at a finer ``scale`` (4 px): its local word
   histogram;
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

from labelfree.cuts.texture import local_histograms
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
        Any integer labels; each value is one segment.
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
    if words.size and int(words.max()) >= int(n_words):
        raise InputError(f"Word ids must be below n_words = {n_words}.")
    flat = labels[None] if labels.ndim == 2 else labels
    stack = words[None] if words.ndim == 2 else words
    values, segments = np.unique(flat, return_inverse=True)
    segments = segments.reshape(flat.shape).astype(np.int32)
    neighbourhoods = [_neighbourhood(w, n_words, scale) for w in stack]
    for _ in range(int(iterations)):
        log_hist = _log_histograms(segments, stack, values.size, n_words, prior)
        segments = np.stack(
            [
                _reassign(seg, w >= 0, hood, log_hist, int(reach))
                for seg, w, hood in zip(segments, stack, neighbourhoods, strict=True)
            ]
        )
    out = values[segments].astype(labels.dtype)
    return out[0] if labels.ndim == 2 else out


def _neighbourhood(words: np.ndarray, n_words: int, scale: float) -> np.ndarray:
    """``(H, W, K)`` float32 local word histogram of every pixel of one slice."""
    with torch.inference_mode():
        hist = local_histograms(torch.from_numpy(words.astype(np.int64))[None], n_words, scale)
    return hist[0].permute(1, 2, 0).contiguous().numpy()


def _log_histograms(segments, words, n_segments, n_words, prior) -> np.ndarray:
    """``(n, K)`` log word frequencies of each segment, with a Dirichlet prior."""
    valid = words >= 0
    pairs = segments[valid].astype(np.int64) * n_words + words[valid]
    counts = np.bincount(pairs, minlength=n_segments * n_words).reshape(n_segments, n_words)
    counts = counts + float(prior)
    return np.log(counts / counts.sum(axis=1, keepdims=True)).astype(np.float32)


def _reassign(segments, valid, hood, log_hist, reach) -> np.ndarray:
    """One slice's segments after one round: the likeliest segment within reach."""
    height, width = segments.shape
    best = np.full(segments.shape, -np.inf, dtype=np.float32)
    out = segments.copy()
    boxes = ndimage.find_objects(segments + 1)
    for segment, box in enumerate(boxes):
        if box is None:
            continue
        grown = (
            slice(max(box[0].start - reach, 0), min(box[0].stop + reach, height)),
            slice(max(box[1].start - reach, 0), min(box[1].stop + reach, width)),
        )
        near = ndimage.maximum_filter(
            (segments[grown] == segment).view(np.uint8), size=2 * reach + 1, mode="constant"
        ).astype(bool)
        score = hood[grown] @ log_hist[segment]
        better = near & valid[grown] & (score > best[grown])
        best[grown][better] = score[better]
        out[grown][better] = segment
    return out
