"""LabelFree engine: label-free anatomy from images and volumes.

Two methods share this package:

- :mod:`labelfree.cuts` -- CUTS multi-granular unsupervised segmentation
  (encoder, training, diffusion condensation, volume runner).
- :mod:`labelfree.landmarks` -- self-supervised landmark discovery
  (Siamese regressor, thin-plate splines, training, detection).

Shared helpers: :mod:`labelfree.io` (images with their geometry),
:mod:`labelfree.modelfile` (safe model files with model cards),
:mod:`labelfree.devices`, :mod:`labelfree.progress`, :mod:`labelfree.errors`.

The engine never imports ``slicer``, ``vtk`` or ``qt``.
"""

__version__ = "0.1.0"
