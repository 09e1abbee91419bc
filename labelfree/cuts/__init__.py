"""CUTS: multi-granular unsupervised segmentation (encoder + diffusion condensation).

Importing this package is cheap (numpy/scipy only); the encoder and training modules,
which need torch, are imported from their own submodules.
"""

from labelfree.cuts.condense import Hierarchy, condense, select_levels

__all__ = ["Hierarchy", "condense", "select_levels"]
