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
