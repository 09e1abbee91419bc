"""CUTS: multi-granular unsupervised segmentation (encoder + diffusion condensation)."""
