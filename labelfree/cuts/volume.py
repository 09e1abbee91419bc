"""CUTS on a whole volume (or a 2-D image): label maps at several granularities.

Pipeline
--------
1. Normalise the whole volume with the model's normalisation and cut it into
   slices along one axis (default: the axial one, read from the direction
   matrix). A 2-D image, grey or RGB, is the one-slice case.
2. **Pool pass.** Embed up to ``pool_slices`` slices spread evenly over the
   volume and draw a seeded sample of ``pool_size`` pixel embeddings from them.
   With ``texture_scale`` > 0, words are first fitted to a sample of the
   embeddings, and every pixel's features become its local word histogram
   (:mod:`labelfree.cuts.texture`) from here on.
3. Run diffusion condensation (:func:`labelfree.cuts.condense`) once on that
   pool, keep the ``max_levels`` most persistent levels
   (:func:`labelfree.cuts.select_levels`), and optionally spectral k-means.
4. **Label pass.** Embed every slice and give each pixel its nearest
   micro-cluster ("node") of the pooled hierarchy. Every level, the persistent
   structures and the k-means map are then look-up tables over nodes, applied
   to one node-id volume.
5. With texture features, the boundaries of every level and of the persistent
   map are then refined to texture edges (:mod:`labelfree.cuts.refine`): levels
   no longer nest exactly, so persistent structures are chosen before.

Why one pooled condensation instead of harmonising per-slice hierarchies
----------------------------------------------------------------------
Labels must mean the same tissue on every slice, levels must nest, and a
granularity slider needs the *same* levels for the whole volume. Condensing
each slice separately gives every slice its own number of levels and
clusters; harmonising them afterwards needs cluster matching between slices
(which drifts along the volume and breaks nesting) and costs one condensation
per slice. Condensing a pool drawn from the whole volume gives one hierarchy
whose labels are consistent across slices, and nested across levels, *by
construction*: every pixel inherits all its labels from one node. It also
costs one condensation instead of ~190. The price is that a structure too
small to be represented among the pooled pixels (below about
``1 / pool_size`` of the sampled volume) cannot get a cluster of its own.

Measured on two adjacent axial MNI152 slices (a 10-epoch encoder, about
20,000 brain pixels each): condensed separately, they got different level
ladders (3/6/11/30... and 3/5/9/18... clusters) and at 4, 6 and 10 clusters
only 66 %, 22 % and 1 % of their shared pixels carried the same label id;
with one pooled hierarchy, 92 % did (the rest are real differences between
the slices). One condensation took 0.7-0.9 s on a busy 2-core CPU, so the
per-slice route would also cost ~2 minutes on 155 brain slices before any
harmonisation.

Speed
-----
The encoder is ~270k multiply-adds per pixel, so it dominates. Only
non-background pixels (see Background) need embeddings, so each slice is
embedded only inside the bounding box of its non-background content grown by
the 8-pixel halo its receptive fields see; replicate padding at that box's
edge then sees the same constant values the full image would, which makes
the crop *exact*, not an approximation. On the MNI152 template this leaves
37 % of the voxels to embed. The pool slices' embeddings are kept (within
``cache_bytes``) and not recomputed in the label pass; a pool slice too large
to keep is sampled from a seeded subset of its tiles. Slices larger than
``tile_pixels`` are embedded in tiles with the halo (exact as well).

Measured on the MNI152 T1 template (189 x 233 x 197, bundled encoder, CPU,
torch 2.13, 2 threads, on a 2-core AMD EPYC shared with other jobs, load
average ~9): 57-58 s wall, of which embed 47-49 s, assign 7 s, condense
0.6-0.8 s, label maps 0.5-0.8 s; 40 CPU-seconds in all. Peak resident memory
1.1 GB for the whole process (0.4 GB before the run); :func:`estimate_memory`
predicts 1.2 GB for the run. Switching
levels is a list lookup (microseconds). A 512 x 512 RGB fundus photograph:
7 s; the full 1411 x 1411 one: 47 s wall, 31 CPU-seconds, 1.5 GB peak (its
1 GB of embeddings exceed ``cache_bytes``, so the pool pass embeds only a
sample of small tiles and the label pass embeds it all in tiles; 103 s when
the pool pass embedded it all).

Memory
------
Embeddings are never held for the whole volume (197 x 233 x 189 x 128
float32 would be 4.4 GB): the label pass holds one batch of slices at a time.
The result holds one int32 volume per level plus the persistent and k-means
maps. :func:`estimate_memory` predicts the peak before anything large is
allocated; a volume that cannot fit raises :class:`~labelfree.errors.InputError`.

Stages
------
Each stage is a module of :mod:`labelfree.cuts.stages` (prepare, pool, hierarchy, assign,
labels), with the background rule in :mod:`~labelfree.cuts.stages.prepare` and the label
numbering in :mod:`~labelfree.cuts.stages.labels`; :func:`segment_volume_steps` only checks
its arguments and runs them in order.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labelfree.cuts.encoder import RECEPTIVE_FIELD
from labelfree.cuts.model import CutsModel
from labelfree.cuts.stages.assign import assign_steps
from labelfree.cuts.stages.hierarchy import kmeans_per_node, pooled_hierarchy
from labelfree.cuts.stages.labels import label_maps, refine_maps
from labelfree.cuts.stages.pool import pool_steps, word_steps
from labelfree.cuts.stages.prepare import check_image, load_model, prepare
from labelfree.cuts.stages.tiles import halo
from labelfree.devices import resolve_device
from labelfree.errors import InputError
from labelfree.io import Image
from labelfree.progress import Progress, run_steps, scaled
from labelfree.system import available_memory

__all__ = [
    "METHODS",
    "VolumeSegmentation",
    "choose_axis",
    "estimate_memory",
    "segment_volume",
    "segment_volume_steps",
]

METHODS = ("levels", "persistent", "kmeans")
AXIS_NAMES = {"sagittal": 0, "coronal": 1, "axial": 2}  # LPS physical axis: x=L, y=P, z=S
_GiB = 1024**3
MAX_KMEANS_CLUSTERS = 255
"""The most clusters ``method="kmeans"`` gives (labels fit 8 bits; far fewer than the nodes)."""


@dataclass
class VolumeSegmentation:
    """CUTS label maps of one image or volume, all in its spatial shape.

    Attributes
    ----------
    levels : list of ndarray of int32
        One label map per granularity, coarsest (fewest clusters) first;
        labels ``1..n`` by decreasing size, nested (each fine cluster lies in
        one coarse cluster) unless boundaries were refined (texture features).
    n_clusters : list of int
        Number of clusters of each level.
    persistent : ndarray of int32
        Persistent structures (CUTS section 3.2.2), chosen from the tree of the levels'
        segments by :func:`labelfree.cuts.stable_structures`; 0 where none.
    kmeans : ndarray of int32 or None
        Spectral k-means labels (only with ``method="kmeans"``): ``k`` clusters
        of the non-background voxels, plus the background as one more.
    axis : int
        Numpy axis the volume was sliced along (0 for 2-D images: one slice).
    seconds : dict of str to float
        Wall time per stage: ``prepare``, ``embed``, ``condense``,
        ``kmeans``, ``assign``, ``labels``, ``refine`` (with texture features), ``total``.
    model_card : dict
        The card of the model used.
    method : str
        The primary map the caller asked for: ``"levels"``, ``"persistent"``
        or ``"kmeans"``.
    persistence : list of int
        Diffusion steps each level lasted (larger is more stable); the added
        object-versus-background level gets one more than the largest.
    """

    levels: list[np.ndarray]
    n_clusters: list[int]
    persistent: np.ndarray
    kmeans: np.ndarray | None
    axis: int
    seconds: dict[str, float] = field(default_factory=dict)
    model_card: dict[str, Any] = field(default_factory=dict)
    method: str = "levels"
    persistence: list[int] = field(default_factory=list)

    def primary(self) -> list[np.ndarray]:
        """The maps of the chosen method: every level, or the single persistent/k-means map."""
        if self.method == "persistent":
            return [self.persistent]
        if self.method == "kmeans" and self.kmeans is not None:
            return [self.kmeans]
        return list(self.levels)


def choose_axis(image: Image, axis: int | str = "auto") -> int:
    """The numpy axis of ``image.array`` to slice along.

    Parameters
    ----------
    image : Image
        A 2-D image or a 3-D volume.
    axis : int or str
        A numpy axis (0, 1, 2 for ``(z, y, x)``), or ``"auto"``/``"axial"``
        (the index axis whose direction is closest to superior-inferior),
        ``"coronal"`` (anterior-posterior) or ``"sagittal"`` (left-right).

    Returns
    -------
    int
        The numpy axis; 0 for 2-D images.
    """
    if image.ndim == 2:
        return 0
    if isinstance(axis, str):
        name = "axial" if axis == "auto" else axis.lower()
        if name not in AXIS_NAMES:
            raise InputError(
                f"Unknown slicing axis {axis!r}; use auto, axial, coronal, sagittal, 0, 1 or 2."
            )
        direction = np.asarray(image.direction, dtype=float)
        itk_axis = int(np.argmax(np.abs(direction[AXIS_NAMES[name], :])))
        return image.ndim - 1 - itk_axis
    if isinstance(axis, (bool, np.bool_)) or int(axis) not in (0, 1, 2) or int(axis) != axis:
        raise InputError(f"Slicing axis must be 0, 1 or 2 (numpy z, y, x), not {axis!r}.")
    return int(axis)


def estimate_memory(
    spatial_shape: Sequence[int],
    channels: int = 1,
    *,
    axis: int = 0,
    batch_size: int = 8,
    max_levels: int = 12,
    embed_dim: int = 128,
    pool_slices: int = 16,
    cache_bytes: int = 256 * 1024**2,
    tile_pixels: int = 2**19,
    texture_words: int = 0,
) -> int:
    """Predicted peak memory of :func:`segment_volume_steps`, in bytes.

    Counts the normalised slices, the node-id volume, the result maps (one
    int32 volume per level plus persistent and k-means), one batch of slice
    embeddings with the encoder's intermediate activations, and the pool cache.

    Parameters
    ----------
    spatial_shape : sequence of int
        ``(z, y, x)`` or ``(y, x)``.
    channels : int
        1 or 3.
    axis, batch_size, max_levels, embed_dim, pool_slices, cache_bytes, tile_pixels
        As for :func:`segment_volume_steps`.
    texture_words : int
        Words of the texture features (``texture_words`` there), or 0 when they are off.

    Returns
    -------
    int
        Bytes.
    """
    shape = tuple(int(s) for s in spatial_shape)
    voxels = int(np.prod(shape, dtype=np.int64))
    plane = voxels // shape[axis] if len(shape) == 3 else voxels
    batch = min(int(batch_size), shape[axis] if len(shape) == 3 else 1)
    # Encoder: output (embed_dim) plus padded intermediates (16 + 32 + 64) and the
    # channels-last copy handed back: about 2.5 x the output, float32.
    pixels = min(batch * plane, int(tile_pixels))
    per_batch = int(2.5 * pixels * embed_dim * 4)
    # Texture features: a pixels-first copy of the embeddings, then word scores, one-hot
    # words and the padded passes of the separable blur, (pixels, words) float32 each. Measured
    # peak on 4 x 256 x 256 pixels, 128 words: 6.2 such arrays (789 MiB); counted: 6 + 1 copy.
    if texture_words:
        per_batch += (6 * int(texture_words) + embed_dim) * pixels * 4
    maps = voxels * 4 * (max_levels + 2)
    inputs = voxels * channels * 4 * 2  # raw float32 copy and normalised slices
    nodes = voxels * 2
    if texture_words:  # word ids (int16) and refinement's working arrays for one map:
        nodes += voxels * 20  # measured peak 16.7 bytes a voxel on 24 x 96 x 96, 128 words
    cache = min(int(cache_bytes), int(pool_slices) * plane * embed_dim * 4)
    return per_batch + maps + inputs + nodes + cache


def segment_volume_steps(
    image: Image,
    model: CutsModel | tuple | str | os.PathLike | None = None,
    *,
    axis: int | str = "auto",
    method: str = "levels",
    k: int = 10,
    device: str = "auto",
    seed: int = 0,
    bf16: bool = False,
    batch_size: int = 8,
    max_levels: int = 12,
    pool_size: int = 32768,
    pool_slices: int = 16,
    cache_bytes: int = 256 * 1024**2,
    tile_pixels: int = 2**19,
    max_memory: int | None = None,
    normalize: bool = False,
    texture_scale: float = 0.0,
    texture_words: int = 128,
    refine: bool = True,
) -> Generator[Progress, None, VolumeSegmentation]:
    """Segment an image or volume at several granularities, as steps.

    A generator: it yields :class:`~labelfree.progress.Progress` and returns a
    :class:`VolumeSegmentation`. Closing it cancels; nothing is written to disk.

    Parameters
    ----------
    image : Image
        A scalar volume ``(z, y, x)``, a scalar 2-D image ``(y, x)`` or an RGB
        2-D image ``(y, x, 3)``, with its geometry.
    model : CutsModel, tuple, path or None
        A CUTS model file, None for the bundled default for the image's
        channel count, ``(model, config, card)`` as
        :func:`~labelfree.cuts.model.load_cuts_model` returns it, or a bare
        :class:`CutsModel` (which carries no normalisation: the default one
        for its channel count is used).
    axis : int or str
        Slicing axis; see :func:`choose_axis`. Ignored for 2-D images.
    method : {"levels", "persistent", "kmeans"}
        The primary result. Levels and persistent structures are always
        computed; spectral k-means only for ``"kmeans"``.
    k : int
        Clusters of spectral k-means.
    device : {"auto", "cpu", "cuda"}
        Where the encoder runs.
    seed : int
        Seeds the pool sampling, condensation and k-means; same seed, same labels.
    bf16 : bool
        bf16 autocast in the encoder (fast on GPUs, slow on most CPUs).
    batch_size : int
        Slices per encoder pass.
    max_levels : int
        Most granularity levels kept (the most persistent ones).
    pool_size : int
        Pixels pooled from the volume for condensation.
    pool_slices : int
        Slices the pool is drawn from, spread evenly over the volume.
    cache_bytes : int
        Memory for keeping the pool slices' embeddings between the passes.
    tile_pixels : int
        Most pixels per encoder pass (all slices of a batch together); larger
        slices are embedded in tiles with an 8-pixel halo, which gives the
        same embeddings with bounded memory (2**19 pixels: 256 MiB of
        embeddings).
    max_memory : int, optional
        Refuse inputs predicted to need more bytes than this (default: the
        memory available now).
    normalize : bool
        L2-normalise embeddings before condensation, as the CUTS reference
        does. Off by default: on the MNI152 template (10-axial-slice slabs,
        hint protocol) un-normalised embeddings gave a level separating grey
        (Dice 0.86) from white matter (0.90), normalised ones never above
        GM 0.66, because the embedding's length carries intensity.
    texture_scale : float
        0 (default): condense the embeddings. Above 0: condense texture features instead,
        local histograms of ``texture_words`` embedding words pooled by a Gaussian of this
        many pixels (:mod:`labelfree.cuts.texture`), for structures that differ in texture
        rather than in local appearance (``bench/README.md`` section 9). Labels then follow
        edges only to about this scale.
    texture_words : int
        Words of the texture features (2-256; 128 was best of 64, 128 and 256 on the texture
        benchmark's tuning split).
    refine : bool
        With texture features, move the label boundaries to texture edges
        (:mod:`labelfree.cuts.refine`); ignored without them.

    Raises
    ------
    InputError
        Empty, constant, NaN/Inf, 4-D or multi-component input; RGB/grayscale
        mismatch with the model; slices under 17 x 17; too large for memory; texture
        options out of range.
    ModelFileError
        A missing, corrupted or foreign model file.
    """
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    if method not in METHODS:
        raise InputError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if int(max_levels) < 1 or int(batch_size) < 1 or int(pool_size) < 2 or int(pool_slices) < 1:
        raise InputError("max_levels, batch_size, pool_slices must be >= 1 and pool_size >= 2.")
    if method == "kmeans" and not 2 <= int(k) <= MAX_KMEANS_CLUSTERS:
        raise InputError(
            f"k-means needs k from 2 to {MAX_KMEANS_CLUSTERS} clusters, not {k} (it clusters "
            "the condensation's nodes, and labels are stored as 8-bit)."
        )
    check_image(image)
    axis_np = choose_axis(image, axis)
    shape = image.spatial_shape
    plane = tuple(s for i, s in enumerate(shape) if i != axis_np) if image.ndim == 3 else shape
    if min(plane) < RECEPTIVE_FIELD:
        raise InputError(
            f"The slices are {plane[0]} x {plane[1]} pixels; CUTS needs at least "
            f"{RECEPTIVE_FIELD} x {RECEPTIVE_FIELD} (its receptive field). Use a larger image"
            + (" or slice along another axis." if image.ndim == 3 else ".")
        )
    if not (0 <= float(texture_scale) < math.inf and 2 <= int(texture_words) <= 256):
        raise InputError(
            f"texture_scale must be >= 0 pixels (0 = off) and texture_words from 2 to 256, not "
            f"{texture_scale} and {texture_words}."
        )
    if int(tile_pixels) < 4096:
        raise InputError("tile_pixels must be at least 4096 (64 x 64 pixels).")
    batch_size = _fit_batch(
        shape,
        image.channels,
        axis_np,
        batch_size,
        max_levels,
        pool_slices,
        cache_bytes,
        tile_pixels,
        max_memory,
        int(texture_words) if texture_scale > 0 else 0,
    )
    yield Progress(0.0, "Loading the model")
    net, config, card = load_model(model, image.channels)
    torch_device = resolve_device(device)
    prepared = prepare(
        image, axis_np if image.ndim == 3 else None, config["normalisation"], halo(texture_scale)
    )
    has_background = prepared.background is not None
    seconds["prepare"] = time.perf_counter() - start

    t0 = time.perf_counter()
    texture = None
    if texture_scale > 0:
        yield Progress(0.0, "Fitting texture words")
        texture = yield from scaled(
            word_steps(
                net,
                prepared,
                seed,
                scale=float(texture_scale),
                n_words=int(texture_words),
                pool_slices=pool_slices,
                cache_bytes=cache_bytes,
                tile_pixels=tile_pixels,
                device=torch_device,
                bf16=bf16,
            ),
            0.0,
            0.1,
        )
    pool = yield from scaled(
        pool_steps(
            net,
            prepared,
            np.random.default_rng(seed),
            pool_size=pool_size,
            pool_slices=pool_slices,
            cache_bytes=cache_bytes,
            tile_pixels=tile_pixels,
            device=torch_device,
            bf16=bf16,
            texture=texture,
        ),
        0.0 if texture is None else 0.1,
        0.3,
    )
    seconds["embed"] = time.perf_counter() - t0

    yield Progress(0.3, f"Condensing {pool.embeddings.shape[0]} pooled pixels")
    t0 = time.perf_counter()
    hierarchy = pooled_hierarchy(
        pool.embeddings,
        seed=seed,
        normalize=normalize,
        max_levels=max_levels,
        background=has_background,
    )
    seconds["condense"] = time.perf_counter() - t0
    kmeans_nodes = None
    if method == "kmeans":
        yield Progress(0.35, "Spectral k-means")
        t0 = time.perf_counter()
        kmeans_nodes = kmeans_per_node(pool.embeddings, hierarchy, int(k), seed, normalize)
        seconds["kmeans"] = time.perf_counter() - t0
    pool.embeddings = None  # only the cached tiles are needed from here on

    nodes, words = yield from scaled(
        assign_steps(
            net,
            prepared,
            pool,
            hierarchy,
            batch_size=batch_size,
            tile_pixels=tile_pixels,
            device=torch_device,
            bf16=bf16,
            seconds=seconds,
            texture=texture,
        ),
        0.35,
        0.95,
    )
    del prepared, pool

    yield Progress(0.95, "Building the label maps")
    t0 = time.perf_counter()
    nodes = np.moveaxis(nodes, 0, axis_np) if image.ndim == 3 else nodes[0]
    maps = label_maps(
        nodes,
        hierarchy,
        max_levels=max_levels,
        background=has_background,
        kmeans_nodes=kmeans_nodes,
    )
    seconds["labels"] = time.perf_counter() - t0
    if words is not None and refine:
        yield Progress(0.97, "Refining boundaries")
        t0 = time.perf_counter()
        maps = refine_maps(maps, words, texture, axis_np if image.ndim == 3 else None)
        seconds["refine"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - start
    yield Progress(1.0, "Done")
    return VolumeSegmentation(
        levels=maps.levels,
        n_clusters=maps.n_clusters,
        persistent=maps.persistent,
        kmeans=maps.kmeans,
        axis=axis_np,
        seconds=seconds,
        model_card=dict(card),
        method=method,
        persistence=maps.persistence,
    )


def segment_volume(image: Image, model=None, **options) -> VolumeSegmentation:
    """Blocking :func:`segment_volume_steps` (same arguments)."""
    return run_steps(segment_volume_steps(image, model, **options))


def _fit_batch(
    shape: tuple[int, ...],
    channels: int,
    axis: int,
    batch_size: int,
    max_levels: int,
    pool_slices: int,
    cache_bytes: int,
    tile_pixels: int,
    max_memory: int | None,
    texture_words: int,
) -> int:
    """The largest batch size up to ``batch_size`` that fits; refuse if none does."""
    limit = available_memory() if max_memory is None else int(max_memory)
    if limit is None:
        return int(batch_size)
    batch = int(batch_size)
    while True:
        need = estimate_memory(
            shape,
            channels,
            axis=axis,
            batch_size=batch,
            max_levels=max_levels,
            pool_slices=pool_slices,
            cache_bytes=cache_bytes,
            tile_pixels=tile_pixels,
            texture_words=texture_words,
        )
        if need <= limit:
            return batch
        if batch == 1:
            raise InputError(
                f"Segmenting this {'x'.join(map(str, shape))} image needs about "
                f"{need / _GiB:.1f} GiB of memory but only {limit / _GiB:.1f} GiB is available. "
                "Crop or downsample it first (e.g. Slicer's Crop Volume module), or keep "
                "fewer levels (--max-levels)."
            )
        batch = max(1, batch // 2)
