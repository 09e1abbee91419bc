"""Stage 5: the label maps, as look-up tables over nodes applied to the node-id volume.

Every map holds int32 labels ``1..n`` numbered by decreasing voxel count (1 = largest
cluster); 0 is unused in levels and k-means (every voxel is labelled) and means "no persistent
structure" in the persistent map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labelfree.cuts.condense import Hierarchy
from labelfree.cuts.persistent import stable_structures
from labelfree.cuts.refine import refine_boundaries
from labelfree.cuts.texture import TextureWords


@dataclass
class LabelMaps:
    """The maps of one volume: ``levels`` (coarsest first) with their ``n_clusters`` and
    ``persistence``, the ``persistent`` structures and the ``kmeans`` map (or None)."""

    levels: list[np.ndarray]
    n_clusters: list[int]
    persistence: list[int]
    persistent: np.ndarray
    kmeans: np.ndarray | None


def label_maps(
    nodes: np.ndarray,
    hierarchy: Hierarchy,
    *,
    max_levels: int,
    background: bool,
    kmeans_nodes: np.ndarray | None = None,
) -> LabelMaps:
    """Label maps of a node-id array (background pixels hold the extra node ``n_nodes``).

    With a ``background`` and room below ``max_levels``, a coarsest level "everything that is
    not background versus background" is added. Levels that partition the voxels as the level
    before do (e.g. because of empty nodes) are dropped.
    """
    n_nodes = hierarchy.reduction.nodes.shape[0]
    node_voxels = np.bincount(nodes.ravel(), minlength=n_nodes + 1).astype(np.float64)
    node_levels = [with_background(lab) for lab in hierarchy.node_levels]
    persistence = list(hierarchy.persistence)
    if background and len(node_levels) < int(max_levels):
        node_levels.insert(0, with_background(np.zeros(n_nodes, dtype=np.int32)))
        persistence.insert(0, max(persistence, default=0) + 1)
    luts, counts = [], []
    for node_level in node_levels:
        lut, n = size_order_lut(node_level, node_voxels)
        luts.append(lut)
        counts.append(n)
    levels, kept = [], []
    for i, (lut, n) in enumerate(zip(luts, counts, strict=True)):
        if i > 0 and n == counts[kept[-1]]:
            continue  # same partition of the voxels as the level before (e.g. empty nodes)
        levels.append(np.ascontiguousarray(lut[nodes]))
        kept.append(i)
    used = node_voxels > 0  # nodes without voxels would make equal segments look different
    persistent = np.zeros(n_nodes + 1, dtype=np.int32)
    persistent[used] = stable_structures(
        [node_levels[i][used] for i in kept], weights=node_voxels[used]
    )
    persistent = persistent[nodes]
    kmeans = None
    if kmeans_nodes is not None:
        kmeans = size_order_lut(with_background(kmeans_nodes), node_voxels)[0][nodes]
    return LabelMaps(
        levels=levels,
        n_clusters=[counts[i] for i in kept],
        persistence=[persistence[i] for i in kept],
        persistent=persistent,
        kmeans=kmeans,
    )


REFINE_SCALE = 0.75
"""A pixel's neighbourhood in refinement, as a fraction of the texture scale. Chosen on the
texture benchmark's tuning split (best level, blobs of 10-40 % and of 2-7 %, 8 and 16 px):
the best of 0.5, 0.75 and 1 times the scale and a fixed 2 or 4 px (``bench/README.md``
section 9)."""


def refine_maps(
    maps: LabelMaps, words: np.ndarray, texture: TextureWords, axis: int | None
) -> LabelMaps:
    """Refine the boundaries of the levels and persistent map of ``maps`` to texture edges.

    ``words`` are the ``(S, H, W)`` word ids of the label pass, in its slices; ``axis`` is
    the slicing axis of 3-D maps (None for 2-D). Persistent structures stay those chosen on
    the unrefined levels (refined levels no longer nest); the k-means map is left as it is.
    Labels are renumbered by decreasing voxel count again; the levels are reordered by their
    new cluster count and a level equal to the one before it is dropped. Changes ``maps`` and
    returns it.
    """
    scale = REFINE_SCALE * texture.scale

    def refined(labels: np.ndarray, keep_zero: bool) -> np.ndarray:
        sliced = labels[None] if axis is None else np.moveaxis(labels, axis, 0)
        out = refine_boundaries(sliced, words, texture.n_words, scale=scale)
        out = out[0] if axis is None else np.moveaxis(out, 0, axis)
        return np.ascontiguousarray(size_ordered(out, keep_zero))

    for i, level in enumerate(maps.levels):  # one at a time: the old map is freed at once
        maps.levels[i] = refined(level, keep_zero=False)
    maps.persistent = refined(maps.persistent, keep_zero=True)
    # Small segments can be absorbed by their neighbours, so a finer level may now hold fewer
    # clusters than a coarser one: reorder by cluster count (stable) rather than drop it, as
    # such levels are often the best; drop only a level equal to the one before it.
    counts = [int(level.max()) for level in maps.levels]
    order = sorted(range(len(counts)), key=counts.__getitem__)
    kept = [
        i
        for j, i in enumerate(order)
        if j == 0 or not np.array_equal(maps.levels[i], maps.levels[order[j - 1]])
    ]
    maps.levels = [maps.levels[i] for i in kept]
    maps.n_clusters = [counts[i] for i in kept]
    maps.persistence = [maps.persistence[i] for i in kept]
    return maps


def size_ordered(labels: np.ndarray, keep_zero: bool) -> np.ndarray:
    """Labels renumbered ``1..n`` by decreasing count (ties: smaller old label); with
    ``keep_zero``, 0 stays 0 and is not counted."""
    counts = np.bincount(labels.ravel()).astype(np.float64)  # labels >= 0, as every map holds
    if keep_zero:
        counts[0] = 0  # no area: size_order_lut leaves it 0
    return size_order_lut(np.arange(counts.size), counts)[0][labels]


def with_background(node_labels: np.ndarray) -> np.ndarray:
    """Append the background node as a cluster of its own: ``(M,) -> (M + 1,)``."""
    return np.append(node_labels, int(node_labels.max()) + 1).astype(np.int32)


def size_order_lut(node_labels: np.ndarray, node_voxels: np.ndarray) -> tuple[np.ndarray, int]:
    """Node -> label ``1..n`` numbered by decreasing voxel count (ties: smaller old id)."""
    n = int(node_labels.max()) + 1
    size = np.bincount(node_labels, weights=node_voxels, minlength=n)
    present = np.flatnonzero(size > 0)
    order = present[np.lexsort((present, -size[present]))]
    new = np.zeros(n, dtype=np.int32)
    new[order] = np.arange(1, order.size + 1, dtype=np.int32)
    return new[node_labels], int(order.size)
