"""CUTS: multi-granular unsupervised segmentation (encoder + diffusion condensation).

Importing this package is cheap (numpy/scipy only); the encoder and training modules,
which need torch, are imported from their own submodules.
"""

from labelfree.cuts.condense import Hierarchy, condense, select_levels
from labelfree.cuts.persistent import (
    persistent_structures,
    segment_persistence,
    stable_structures,
)
from labelfree.cuts.spectral import spectral_kmeans, spectral_node_labels

__all__ = [
    "Hierarchy",
    "condense",
    "persistent_structures",
    "segment_persistence",
    "select_levels",
    "spectral_kmeans",
    "spectral_node_labels",
    "stable_structures",
]
