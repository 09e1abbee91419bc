"""Stage 3: condense the pooled embeddings once and keep the granularity levels.

One hierarchy for the whole volume makes labels consistent across slices and nested across
levels by construction: every pixel inherits all its labels from its nearest node.
"""

from __future__ import annotations

import numpy as np

from labelfree.cuts.condense import Hierarchy, condense, select_levels
from labelfree.cuts.spectral import spectral_kmeans


def pooled_hierarchy(
    pool: np.ndarray, *, seed: int, normalize: bool, max_levels: int, background: bool
) -> Hierarchy:
    """Condense ``(N, D)`` pooled embeddings and keep the most persistent levels.

    The partition into the micro-clusters themselves is dropped (no granularity anyone asked
    for); with a ``background``, one level is left for "object versus background".
    """
    full = condense(pool, seed=seed, normalize=normalize)
    n_micro = full.reduction.nodes.shape[0]
    full = full.subset([i for i, n in enumerate(full.n_clusters) if n < n_micro] or [0])
    keep = int(max_levels) - (1 if background and int(max_levels) > 1 else 0)
    return select_levels(full, keep)


def kmeans_per_node(
    pool: np.ndarray, hierarchy: Hierarchy, k: int, seed: int, normalize: bool
) -> np.ndarray:
    """Spectral k-means label of each node (the majority over the node's pooled pixels)."""
    labels = spectral_kmeans(pool, k=k, seed=seed, normalize=normalize)
    node_of = hierarchy.node_of
    n_nodes = hierarchy.reduction.nodes.shape[0]
    votes = np.zeros((n_nodes, int(labels.max()) + 1), dtype=np.int64)
    np.add.at(votes, (node_of, labels), 1)
    return np.argmax(votes, axis=1).astype(np.int32)
