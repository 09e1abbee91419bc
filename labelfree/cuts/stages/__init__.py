"""The stages of :func:`labelfree.cuts.volume.segment_volume_steps`, one module each, in order.

1. :mod:`.prepare` — check the image, load the model, normalise and slice, find the
   background and each slice's content box.
2. :mod:`.pool` — embed the pool slices and draw the pooled pixel embeddings.
3. :mod:`.hierarchy` — condense the pool and keep the levels (and spectral k-means per node).
4. :mod:`.assign` — embed every slice and give each pixel its nearest node.
5. :mod:`.labels` — turn node ids into the label maps (levels, persistent structures, k-means).

:mod:`.tiles` holds the geometry the embedding stages share: content boxes, tiles with their
halo, and embedding a plan of tiles.
"""
