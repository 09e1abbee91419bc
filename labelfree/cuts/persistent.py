"""Persistent structures: one label map from a stack of segmentation levels.

A *segment* is a set of pixels that is one cluster in some level. Its persistence is the
number of consecutive levels in which exactly that set of pixels is a cluster (CUTS
section 3.2.2 counts consecutive diffusion iterations; over the kept levels of a
:class:`~labelfree.cuts.condense.Hierarchy` the same idea counts levels, as the
reference implementation does). Segments seen in at least ``min_levels`` consecutive
levels and covering at least ``min_area_fraction`` of the image are painted, largest
first, so that smaller structures overwrite the larger ones containing them.

Why area order and not persistence order (the paper's wording): levels nest, so two
segments are either disjoint or one contains the other. Painting the smaller last means
every pixel shows the finest persistent structure it belongs to; painting by persistence
would let one long-lived coarse segment (e.g. "body") hide every persistent detail
inside it. Ties in area go to the more persistent segment.

That rule (:func:`persistent_structures`, the reference's) leaves pixels with no label where a
structure breaks into pieces under the minimum area, and lets fine pieces overwrite a
structure that was more persistent than they are. :func:`stable_structures`, which the volume
runner uses, picks one partition from the tree of segments instead, by HDBSCAN's rules:
- a segment goes on through a finer level as long as at most one of its parts there is at
  least the minimum area; the crumbs that fall off it do not end it (without this, a region
  shedding a few small clusters at every level was a new, short-lived segment each time, and
  the region that it was never won);
- its stability is the sum, over the levels it lives through, of its area there times the
  octaves of granularity to the next level (log2 of their cluster counts). Octaves, not
  levels, because the kept levels are spaced unevenly: the fine ones double the count;
- the excess-of-mass rule picks, bottom up, a segment or the best choice among its
  descendants, whichever is more stable.
- where the coarsest level holds one segment only (all of the image but crumbs), that segment
  is never the answer when it splits (HDBSCAN without ``allow_single_cluster``): on textures,
  condensation often keeps one cluster of 97-99 % of the image over the first levels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from labelfree.errors import InputError


def _as_levels(levels: Sequence[np.ndarray], n_pixels: int) -> list[np.ndarray]:
    if len(levels) == 0:
        raise InputError("Need at least one segmentation level.")
    out = []
    for level in levels:
        flat = np.asarray(level).ravel()
        if flat.size != n_pixels:
            raise InputError(
                f"A level has {flat.size} labels but the image has {n_pixels} pixels; pass "
                "levels of the image's shape or flattened to one label per pixel."
            )
        if not np.issubdtype(flat.dtype, np.integer):
            raise InputError(f"Levels must hold integer labels; got dtype {flat.dtype}.")
        _, inverse = np.unique(flat, return_inverse=True)
        out.append(inverse.ravel())
    return out


def _same_segments(coarse: np.ndarray, fine: np.ndarray) -> np.ndarray:
    """(n_pairs, 2) array of (coarse id, fine id) holding exactly the same pixels."""
    n_fine = int(fine.max()) + 1
    size_c = np.bincount(coarse)
    size_f = np.bincount(fine, minlength=n_fine)
    pair, count = np.unique(coarse.astype(np.int64) * n_fine + fine, return_counts=True)
    c, f = pair // n_fine, pair % n_fine
    same = (count == size_c[c]) & (count == size_f[f])
    return np.stack([c[same], f[same]], axis=1)


def _runs(flat: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per level and cluster: levels of the same segment before it, and run length."""
    sizes = [int(lv.max()) + 1 for lv in flat]
    before = [np.zeros(n, dtype=np.int64) for n in sizes]
    after = [np.zeros(n, dtype=np.int64) for n in sizes]
    links = [_same_segments(a, b) for a, b in zip(flat[:-1], flat[1:], strict=True)]
    for i, link in enumerate(links):
        before[i + 1][link[:, 1]] = before[i][link[:, 0]] + 1
    for i in range(len(links) - 1, -1, -1):
        link = links[i]
        after[i][link[:, 0]] = after[i + 1][link[:, 1]] + 1
    return before, [b + a + 1 for b, a in zip(before, after, strict=True)]


def segment_persistence(levels: Sequence[np.ndarray]) -> list[np.ndarray]:
    """For each level, the run length of each of its clusters.

    Parameters
    ----------
    levels : sequence of (N,) int arrays
        Labels of the same N pixels, ordered by granularity (either direction).

    Returns
    -------
    list of (n_l,) int arrays
        ``out[l][c]`` = number of consecutive levels, counting level ``l``, in which the
        pixels of cluster ``c`` of level ``l`` form one cluster.
    """
    if len(levels) == 0:
        raise InputError("Need at least one segmentation level.")
    return _runs(_as_levels(levels, np.asarray(levels[0]).size))[1]


def persistent_structures(
    levels: Sequence[np.ndarray],
    image_shape: tuple[int, ...],
    min_area_fraction: float = 0.01,
    min_levels: int = 2,
) -> np.ndarray:
    """Paint the segments that persist across levels into one label map.

    Parameters
    ----------
    levels : sequence of int arrays
        Segmentations of the same image, each ``image_shape``-shaped or flat with one
        label per pixel, ordered by granularity (e.g. ``Hierarchy.levels``).
    image_shape : tuple of int
        Shape of the label map to return.
    min_area_fraction : float
        Smallest segment kept, as a fraction of all pixels (reference: 1 %).
    min_levels : int
        Fewest consecutive levels a segment must be seen in (reference: 2).

    Returns
    -------
    ndarray of int32, shape ``image_shape``
        Labels ``1..K`` numbered from the largest painted structure down; 0 where no
        persistent structure covers a pixel.
    """
    n_pixels = int(np.prod(image_shape))
    if not 0.0 <= min_area_fraction <= 1.0 or min_levels < 1:
        raise InputError("Need 0 <= min_area_fraction <= 1 and min_levels >= 1.")
    flat = _as_levels(levels, n_pixels)
    before, runs = _runs(flat)
    min_area = min_area_fraction * n_pixels
    segments = []  # (area, persistence, level, cluster), one per run: where the run starts
    for li, level in enumerate(flat):
        area = np.bincount(level)
        keep = (area >= min_area) & (runs[li] >= min_levels) & (before[li] == 0)
        segments += [(int(area[c]), int(runs[li][c]), li, int(c)) for c in np.flatnonzero(keep)]
    segments.sort(key=lambda s: (-s[0], s[1]))
    out = np.zeros(n_pixels, dtype=np.int32)
    for value, (_, _, li, c) in enumerate(segments, start=1):
        out[flat[li] == c] = value
    # Structures wholly overwritten by smaller ones leave gaps in the numbering: close them.
    lut = np.zeros(len(segments) + 1, dtype=np.int32)
    shown = np.unique(out[out > 0])
    lut[shown] = np.arange(1, shown.size + 1, dtype=np.int32)
    return lut[out].reshape(image_shape)


def stable_structures(
    levels: Sequence[np.ndarray],
    weights: np.ndarray | None = None,
    min_area_fraction: float = 0.01,
) -> np.ndarray:
    """The most persistent partition: segments picked from the level tree by excess of mass.

    Levels nest, so their segments form a tree: a segment ends where it splits into two or
    more parts of at least ``min_area_fraction`` of the area, which become its children
    (smaller parts only fall off it). A segment's *stability* sums its area at each level it
    lives through times the octaves to the next level (log2 of the cluster counts; the
    finest level counts one octave). Going up from the finest segments, a segment is kept if
    it is at least as stable as the best choice among its descendants (HDBSCAN's
    excess-of-mass rule). The result covers the image with structures of whatever
    granularity is most persistent in each place (each kept segment with all it held when it
    appeared), instead of painting fine segments over coarse ones
    (:func:`persistent_structures`), which leaves the parts of a structure that split into
    small segments with no label.

    Parameters
    ----------
    levels : sequence of (N,) int arrays
        Labels of the same N items (pixels, or nodes standing for pixels), coarsest first,
        nested.
    weights : (N,) array, optional
        Area of each item (whole numbers, e.g. the voxels of each node); 1 by default.
    min_area_fraction : float
        Smallest segment kept, as a fraction of the total area (reference: 1 %).

    Returns
    -------
    (N,) ndarray of int32
        Labels ``1..K`` numbered by decreasing area; 0 for items in no kept segment: clusters
        under the minimum area at the coarsest level, and the crumbs a segment shed before
        it split, where its parts were kept instead of it.
    """
    n_items = np.asarray(levels[0]).size if len(levels) else 0
    flat = _as_levels(levels, n_items)
    weights = np.ones(n_items) if weights is None else np.asarray(weights, dtype=np.float64)
    minimum = min_area_fraction * float(weights.sum())
    counts = np.array([level.max() + 1 for level in flat] + [2 * (flat[-1].max() + 1)], float)
    width = np.log2(counts[1:] / counts[:-1])  # octaves from each level to the next
    return _most_stable_partition(flat, weights, minimum, width)


def _most_stable_partition(
    flat: list[np.ndarray],
    weights: np.ndarray,
    minimum: float,
    width: np.ndarray,
    exact: bool = False,
) -> np.ndarray:
    """:func:`stable_structures` on relabelled levels, with each level's lifetime ``width``.

    ``exact=True`` ends a segment at any change of its pixels, crumbs included (a probe in
    ``bench/persistent_rules.py`` compares both).
    """
    n_items = flat[0].size
    # One row per segment: the level and label where it first appears, area, stability, parent.
    first_level, label, area, stability, parent = [], [], [], [], []
    current: list[float] = []  # each segment's area at the latest level it lived through
    segment_of = None  # per cluster of the level above: its segment, -1 for fallen-off crumbs
    for i, level in enumerate(flat):
        sizes = np.bincount(level, weights=weights)
        big = sizes >= minimum
        if segment_of is None:  # the coarsest level: every big cluster is a root
            up = np.full(sizes.size, -1, dtype=np.int64)
            alive = big
        else:
            item = np.empty(sizes.size, dtype=np.int64)
            item[level] = np.arange(n_items)  # one item of each cluster
            up = segment_of[flat[i - 1][item]]  # the segment holding it at the level above
            alive = big & (up >= 0)
        big_children = np.bincount(up[alive & (up >= 0)], minlength=len(area))
        ids = np.full(sizes.size, -1, dtype=np.int64)
        for c in np.flatnonzero(alive):
            whole = not exact or (up[c] >= 0 and sizes[c] == current[up[c]])
            if up[c] >= 0 and big_children[up[c]] == 1 and whole:
                ids[c] = up[c]  # the segment goes on; only crumbs fell off it
                continue
            ids[c] = len(area)
            first_level.append(i)
            label.append(c)
            area.append(float(sizes[c]))
            stability.append(0.0)
            parent.append(int(up[c]))
            current.append(0.0)
        for c in np.flatnonzero(ids >= 0):
            stability[ids[c]] += sizes[c] * width[i]
            current[ids[c]] = float(sizes[c])
        segment_of = ids
    kept = _excess_of_mass(np.array(stability), np.array(parent, dtype=np.int64))
    out = np.zeros(n_items, dtype=np.int32)
    order = sorted(np.flatnonzero(kept), key=lambda s: (-area[s], s))
    for value, s in enumerate(order, start=1):
        out[flat[first_level[s]] == label[s]] = value
    return out


def _excess_of_mass(stability: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """Which segments to keep; parents come before their children in the arrays."""
    lone_root = np.count_nonzero(parent < 0) == 1
    below = np.zeros(stability.size)  # best value among each segment's descendants
    chosen = np.zeros(stability.size, dtype=bool)
    for s in range(stability.size - 1, -1, -1):
        chosen[s] = stability[s] > 0 and stability[s] >= below[s]
        if parent[s] < 0 and lone_root and below[s] > 0:
            chosen[s] = False  # HDBSCAN: one cluster holding everything is no answer
        if parent[s] >= 0:
            below[parent[s]] += stability[s] if chosen[s] else below[s]
    kept = np.zeros(stability.size, dtype=bool)
    covered = np.zeros(stability.size, dtype=bool)  # an ancestor is kept
    for s in range(stability.size):
        covered[s] = parent[s] >= 0 and (covered[parent[s]] or kept[parent[s]])
        kept[s] = chosen[s] and not covered[s]
    return kept
