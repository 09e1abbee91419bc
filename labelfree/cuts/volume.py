"""CUTS on a whole volume (or a 2-D image): label maps at several granularities.

Pipeline
--------
1. Normalise the whole volume with the model's normalisation and cut it into
   slices along one axis (default: the axial one, read from the direction
   matrix). A 2-D image, grey or RGB, is the one-slice case.
2. **Pool pass.** Embed up to ``pool_slices`` slices spread evenly over the
   volume and draw a seeded sample of ``pool_size`` pixel embeddings from them.
3. Run diffusion condensation (:func:`labelfree.cuts.condense`) once on that
   pool, keep the ``max_levels`` most persistent levels
   (:func:`labelfree.cuts.select_levels`), and optionally spectral k-means.
4. **Label pass.** Embed every slice and give each pixel its nearest
   micro-cluster ("node") of the pooled hierarchy. Every level, the persistent
   structures and the k-means map are then look-up tables over nodes, applied
   to one node-id volume.

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

Background
----------
Masked images (skull-stripped MRI, CT outside the field of view, photographs
with a black surround) have a *fill value*: the value covering most of the
volume's outer faces (at least half of them). Voxels holding exactly that
value are background: they are kept out of the pool and form one cluster of
their own at every level; the coarsest level is then "everything else versus
background". Without this, the pixels of the 8-pixel band just outside the
object, whose receptive fields see the object's edge, form a continuum of
embeddings that took most of the clusters (measured on the MNI152 template:
seven of the first fifteen clusters were such bands). Images with noisy
backgrounds have no fill value and are clustered whole.

Labels
------
Every map holds int32 labels ``1..n`` numbered by decreasing voxel count (1 =
largest cluster); 0 is unused in levels and k-means (every voxel is labelled)
and means "no persistent structure" in the persistent map.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelfree.cuts.condense import Hierarchy, condense, select_levels
from labelfree.cuts.embed import embed_slices, prepare_slices
from labelfree.cuts.encoder import RECEPTIVE_FIELD
from labelfree.cuts.model import CutsModel, load_cuts_model
from labelfree.cuts.persistent import segment_persistence
from labelfree.cuts.spectral import spectral_kmeans
from labelfree.devices import resolve_device
from labelfree.errors import InputError
from labelfree.io import Image
from labelfree.progress import Progress, run_steps
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
HALO = RECEPTIVE_FIELD // 2  # 8 pixels: how far an embedding sees
_POOL_TILE = 2**16  # pixels per tile when only a sample of a large slice is pooled
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
        one coarse cluster).
    n_clusters : list of int
        Number of clusters of each level.
    persistent : ndarray of int32
        Persistent structures (CUTS section 3.2.2); 0 where none.
    kmeans : ndarray of int32 or None
        Spectral k-means labels (only with ``method="kmeans"``): ``k`` clusters
        of the non-background voxels, plus the background as one more.
    axis : int
        Numpy axis the volume was sliced along (0 for 2-D images: one slice).
    seconds : dict of str to float
        Wall time per stage: ``prepare``, ``embed``, ``condense``,
        ``kmeans``, ``assign``, ``labels``, ``total``.
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
    per_batch = int(2.5 * min(batch * plane, int(tile_pixels)) * embed_dim * 4)
    maps = voxels * 4 * (max_levels + 2)
    inputs = voxels * channels * 4 * 2  # raw float32 copy and normalised slices
    nodes = voxels * 2
    cache = min(int(cache_bytes), int(pool_slices) * plane * embed_dim * 4)
    return per_batch + maps + inputs + nodes + cache


def _check_image(image: Image) -> None:
    """Refuse what CUTS cannot segment before anything large is allocated."""
    if image.ndim not in (2, 3):
        raise InputError(f"Expected a 2-D image or a 3-D volume, got {image.ndim} dimensions.")
    expected = image.ndim + (1 if image.channels > 1 else 0)
    if image.array.ndim != expected:
        raise InputError(
            f"The image array has shape {image.array.shape} but its geometry is {image.ndim}-D "
            f"with {image.channels} component(s); 4-D and multi-component volumes are not "
            "supported: extract one scalar volume first (e.g. with Slicer's Sequences module)."
        )
    if image.channels > 1 and (image.ndim == 3 or image.channels != 3):
        raise InputError(
            f"CUTS segments scalar images and volumes, and RGB 2-D images; this one has "
            f"{image.channels} components per {'voxel' if image.ndim == 3 else 'pixel'}. "
            "Extract one scalar volume first."
        )
    if image.array.size == 0:
        raise InputError(f"The image is empty (shape {image.array.shape}); load a non-empty image.")


def _load_model(
    model: CutsModel | tuple | str | os.PathLike | None, channels: int
) -> tuple[CutsModel, dict[str, Any], dict[str, Any]]:
    loaded = model[0] if isinstance(model, tuple) else model  # tuple: from load_cuts_model
    if isinstance(loaded, CutsModel) and loaded.in_channels != channels:
        raise InputError(
            f"The model takes {loaded.in_channels}-channel images but this image has "
            f"{channels} channel(s); use a {'RGB' if channels == 3 else 'grayscale'} model."
        )
    if isinstance(model, tuple):
        return model
    if isinstance(model, CutsModel):
        from labelfree.cuts.normalise import default_normalisation

        config = {
            "in_channels": model.in_channels,
            "embed_dim": model.embed_dim,
            "normalisation": dict(
                getattr(model, "normalisation", None) or default_normalisation(channels)
            ),
        }
        return model.eval(), config, dict(getattr(model, "card", {}) or {})
    return load_cuts_model(None if model is None else Path(model), channels)


def _content_box(content: np.ndarray, shape: tuple[int, int]) -> tuple[slice, slice] | None:
    """The in-plane box of pixels that do not see only background, at least 17 px wide.

    ``content`` is a ``(H, W)`` bool mask of non-background pixels (or a
    union over slices). None when nothing differs from the background.
    """
    rows = np.flatnonzero(content.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(content.any(axis=0))
    box = []
    for lo, hi, size in ((rows[0], rows[-1] + 1, shape[0]), (cols[0], cols[-1] + 1, shape[1])):
        lo, hi = max(int(lo) - HALO, 0), min(int(hi) + HALO, size)
        short = RECEPTIVE_FIELD - (hi - lo)
        if short > 0:  # the encoder needs 17 x 17; grow symmetrically inside the plane
            lo = max(0, lo - (short + 1) // 2)
            hi = min(size, lo + RECEPTIVE_FIELD)
            lo = max(0, hi - RECEPTIVE_FIELD)
        box.append(slice(lo, hi))
    return box[0], box[1]


def _background_value(slices: np.ndarray, share: float = 0.5) -> np.ndarray | None:
    """The fill value of a masked image, ``(C,)``, or None if it has no constant background.

    The most common value (per channel) on the outer faces of the ``(S, C, H,
    W)`` slices (for one slice, a 2-D image: its four edges), if it covers at
    least ``share`` of them: the zero outside a skull-stripped brain, the
    black of a masked photograph. Noisy backgrounds have none.
    """
    channels = slices.shape[1]
    edges = [slices[:, :, 0], slices[:, :, -1], slices[:, :, :, 0], slices[:, :, :, -1]]
    parts = [e.transpose(1, 0, 2).reshape(channels, -1) for e in edges]  # (S, C, n) -> (C, S*n)
    if slices.shape[0] > 1:
        parts += [slices[0].reshape(channels, -1), slices[-1].reshape(channels, -1)]
    border = np.concatenate(parts, axis=1).T
    values, counts = np.unique(border, axis=0, return_counts=True)
    best = int(np.argmax(counts))
    if counts[best] < share * border.shape[0]:
        return None
    return values[best].astype(np.float32)


def _batches(boxes: list[tuple[slice, slice] | None], batch_size: int) -> list[list[int]]:
    """Groups of consecutive content slices embedded together (in one union box)."""
    groups, current = [], []
    for index, box in enumerate(boxes):
        if box is None:
            continue
        if current and (len(current) >= batch_size or index != current[-1] + 1):
            groups.append(current)
            current = []
        current.append(index)
    if current:
        groups.append(current)
    return groups


def _union(boxes: list[tuple[slice, slice]]) -> tuple[slice, slice]:
    return (
        slice(min(b[0].start for b in boxes), max(b[0].stop for b in boxes)),
        slice(min(b[1].start for b in boxes), max(b[1].stop for b in boxes)),
    )


def _pool_indices(boxes: list[tuple[slice, slice] | None], count: int) -> list[int]:
    """Up to ``count`` content slices spread evenly over the volume."""
    content = [i for i, box in enumerate(boxes) if box is not None]
    if len(content) <= count:
        return content
    picks = np.linspace(0, len(content) - 1, count)
    return sorted({content[int(round(p))] for p in picks})


def _size_order_lut(node_labels: np.ndarray, node_voxels: np.ndarray) -> tuple[np.ndarray, int]:
    """Node -> label ``1..n`` numbered by decreasing voxel count (ties: smaller old id)."""
    n = int(node_labels.max()) + 1
    size = np.bincount(node_labels, weights=node_voxels, minlength=n)
    present = np.flatnonzero(size > 0)
    order = present[np.lexsort((present, -size[present]))]
    new = np.zeros(n, dtype=np.int32)
    new[order] = np.arange(1, order.size + 1, dtype=np.int32)
    return new[node_labels], int(order.size)


def _persistent_lut(
    node_levels: list[np.ndarray],
    node_voxels: np.ndarray,
    min_area_fraction: float = 0.01,
    min_levels: int = 2,
) -> np.ndarray:
    """Persistent structures over nodes: node -> label (0 = none).

    The rule of :func:`labelfree.cuts.persistent_structures` (segments seen in
    ``min_levels`` consecutive levels, covering ``min_area_fraction`` of the
    voxels, painted largest first so smaller ones overwrite), evaluated on the
    nodes with their voxel counts as areas, so that it costs O(nodes) instead
    of O(voxels) per level. Nodes without voxels are left out so that "the
    same set of nodes" means "the same set of voxels".
    """
    used = node_voxels > 0
    levels = [np.unique(lab[used], return_inverse=True)[1].ravel() for lab in node_levels]
    runs = segment_persistence(levels)
    weights = node_voxels[used]
    total = float(weights.sum())
    segments: dict[bytes, tuple[float, int, np.ndarray]] = {}
    for level, run in zip(levels, runs, strict=True):
        area = np.bincount(level, weights=weights)
        for cluster in np.flatnonzero((area >= min_area_fraction * total) & (run >= min_levels)):
            members = level == cluster
            key = np.packbits(members).tobytes()
            if key not in segments:
                segments[key] = (float(area[cluster]), int(run[cluster]), members)
    painted = np.zeros(levels[0].size, dtype=np.int32)
    ordered = sorted(segments.values(), key=lambda seg: (-seg[0], seg[1]))
    for value, (_, _, members) in enumerate(ordered, start=1):
        painted[members] = value
    # Renumber 1..K by decreasing visible area, closing gaps left by covered structures.
    visible = np.bincount(painted, weights=weights, minlength=len(ordered) + 1)
    visible[0] = 0
    shown = np.flatnonzero(visible > 0)
    order = shown[np.lexsort((shown, -visible[shown]))]
    renumber = np.zeros(len(ordered) + 1, dtype=np.int32)
    renumber[order] = np.arange(1, order.size + 1, dtype=np.int32)
    out = np.zeros(node_voxels.size, dtype=np.int32)
    out[used] = renumber[painted]
    return out


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

    Raises
    ------
    InputError
        Empty, constant, NaN/Inf, 4-D or multi-component input; RGB/grayscale
        mismatch with the model; slices under 17 x 17; too large for memory.
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
    _check_image(image)
    axis_np = choose_axis(image, axis)
    shape = image.spatial_shape
    plane = tuple(s for i, s in enumerate(shape) if i != axis_np) if image.ndim == 3 else shape
    if min(plane) < RECEPTIVE_FIELD:
        raise InputError(
            f"The slices are {plane[0]} x {plane[1]} pixels; CUTS needs at least "
            f"{RECEPTIVE_FIELD} x {RECEPTIVE_FIELD} (its receptive field). Use a larger image"
            + (" or slice along another axis." if image.ndim == 3 else ".")
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
    )
    yield Progress(0.0, "Loading the model")
    net, config, card = _load_model(model, image.channels)
    torch_device = resolve_device(device)
    slices = prepare_slices(image, axis_np if image.ndim == 3 else None, config["normalisation"])
    background = _background_value(slices)
    if background is None:
        content = np.ones(slices.shape[:1] + slices.shape[2:], dtype=bool)
    else:
        content = np.any(slices != background[None, :, None, None], axis=1)  # (S, H, W)
    boxes = [_content_box(c, c.shape) for c in content]
    seconds["prepare"] = time.perf_counter() - start

    # Pool pass.
    rng = np.random.default_rng(seed)
    pool_ids = _pool_indices(boxes, int(pool_slices))
    weights = np.array([np.count_nonzero(content[i]) for i in pool_ids], dtype=np.float64)
    quota = _quotas(weights, int(pool_size))
    cache: dict[int, list[tuple[tuple[slice, slice], np.ndarray]]] = {}
    cached = 0
    pool_parts = []
    t0 = time.perf_counter()
    for done, index in enumerate(pool_ids):
        box = boxes[index]
        plane = content.shape[1:]
        keep_tiles = cached + _area(box) * net.embed_dim * 4 <= cache_bytes
        if keep_tiles:
            plan = _tile_plan(box, plane, tile_pixels, 1)
        else:
            # Not kept for the label pass (a large slice): embed only a seeded sample of
            # small tiles, enough for this slice's share of the pool, instead of all of it.
            plan = _tile_plan(box, plane, min(int(tile_pixels), _POOL_TILE), 1)
            plan = [tile for tile in plan if content[index][tile[0]].any()]
            need = max(4 * int(quota[done]), _area(box) // 4)
            picked, area = [], 0
            for i in rng.permutation(len(plan)):
                picked.append(int(i))
                area += _area(plan[i][0])
                if area >= need:
                    break
            plan = [plan[i] for i in sorted(picked)]
        eligible = np.zeros(plane, dtype=bool)
        for core, _ in plan:
            eligible[core] = content[index][core]
        positions = np.flatnonzero(eligible)
        take = rng.choice(positions.size, size=min(quota[done], positions.size), replace=False)
        chosen = np.zeros(plane, dtype=bool)
        chosen.flat[positions[take]] = True
        order, parts, tiles = [], [], []
        for core, embs in _embed_plan(net, slices, [index], plan, torch_device, bf16):
            rr, cc = np.nonzero(chosen[core])
            order.append((rr + core[0].start) * plane[1] + cc + core[1].start)
            parts.append(embs[0][rr, cc])
            if keep_tiles:
                tiles.append((core, embs[0]))
                cached += embs[0].nbytes
        if keep_tiles:
            cache[index] = tiles
        # Raster order of the slice however it was tiled, so that tiling never changes results.
        pool_parts.append(np.concatenate(parts)[np.argsort(np.concatenate(order))])
        yield Progress(0.3 * (done + 1) / len(pool_ids), f"Embedding pool slice {done + 1}")
    pool = np.concatenate(pool_parts)
    del pool_parts
    seconds["embed"] = time.perf_counter() - t0

    yield Progress(0.3, f"Condensing {pool.shape[0]} pooled pixels")
    t0 = time.perf_counter()
    full = condense(pool, seed=seed, normalize=normalize)
    # The partition into the micro-clusters themselves is no granularity anyone asked for.
    n_micro = full.reduction.nodes.shape[0]
    full = full.subset([i for i, n in enumerate(full.n_clusters) if n < n_micro] or [0])
    keep = int(max_levels) - (1 if background is not None and int(max_levels) > 1 else 0)
    hierarchy = select_levels(full, keep)
    seconds["condense"] = time.perf_counter() - t0
    kmeans_nodes = None
    if method == "kmeans":
        yield Progress(0.35, "Spectral k-means")
        t0 = time.perf_counter()
        kmeans_nodes = _kmeans_per_node(pool, hierarchy, int(k), seed, normalize)
        seconds["kmeans"] = time.perf_counter() - t0
    del pool

    # Label pass: one node id per voxel; background voxels get the extra node n_nodes.
    n_nodes = hierarchy.reduction.nodes.shape[0]
    node_dtype = np.int16 if n_nodes + 1 < 2**15 else np.int32
    assign = (
        _NodeAssigner(hierarchy, torch_device)
        if torch_device.type == "cuda"
        else (lambda points: hierarchy.reduction.nearest_node(points))
    )
    nodes = np.full(content.shape, n_nodes, dtype=node_dtype)
    assign_seconds = 0.0
    todo = _batches([None if i in cache else b for i, b in enumerate(boxes)], batch_size)
    for index, tiles in cache.items():
        t0 = time.perf_counter()
        for core, emb in tiles:
            _assign_slice(nodes[index], content[index], core, emb, assign)
        assign_seconds += time.perf_counter() - t0
    cache.clear()
    total = max(len(todo), 1)
    for done, group in enumerate(todo):
        box = _union([boxes[i] for i in group])
        t0 = time.perf_counter()
        plan = _tile_plan(box, content.shape[1:], tile_pixels, len(group))
        for core, embs in _embed_plan(net, slices, group, plan, torch_device, bf16):
            t1 = time.perf_counter()
            for index, emb in zip(group, embs, strict=True):
                _assign_slice(nodes[index], content[index], core, emb, assign)
            assign_seconds += time.perf_counter() - t1
        seconds["embed"] += time.perf_counter() - t0
        yield Progress(0.35 + 0.6 * (done + 1) / total, f"Labelling slices ({done + 1}/{total})")
    seconds["embed"] -= assign_seconds
    seconds["assign"] = assign_seconds
    del slices, content

    yield Progress(0.95, "Building the label maps")
    t0 = time.perf_counter()
    nodes = np.moveaxis(nodes, 0, axis_np) if image.ndim == 3 else nodes[0]
    node_voxels = np.bincount(nodes.ravel(), minlength=n_nodes + 1).astype(np.float64)
    node_levels = [_with_background(lab) for lab in hierarchy.node_levels]
    persistence = list(hierarchy.persistence)
    if background is not None and len(node_levels) < int(max_levels):
        # Coarsest level: everything that is not background as one cluster (body vs air).
        node_levels.insert(0, _with_background(np.zeros(n_nodes, dtype=np.int32)))
        persistence.insert(0, max(persistence, default=0) + 1)
    luts, counts = [], []
    for node_level in node_levels:
        lut, n = _size_order_lut(node_level, node_voxels)
        luts.append(lut)
        counts.append(n)
    levels, kept = [], []
    for i, (lut, n) in enumerate(zip(luts, counts, strict=True)):
        if i > 0 and n == counts[kept[-1]]:
            continue  # same partition of the voxels as the level before (e.g. empty nodes)
        levels.append(np.ascontiguousarray(lut[nodes]))
        kept.append(i)
    counts = [counts[i] for i in kept]
    persistence = [persistence[i] for i in kept]
    persistent = _persistent_lut([node_levels[i] for i in kept], node_voxels)[nodes]
    kmeans = None
    if kmeans_nodes is not None:
        kmeans = _size_order_lut(_with_background(kmeans_nodes), node_voxels)[0][nodes]
    seconds["labels"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - start
    yield Progress(1.0, "Done")
    return VolumeSegmentation(
        levels=levels,
        n_clusters=counts,
        persistent=persistent,
        kmeans=kmeans,
        axis=axis_np,
        seconds=seconds,
        model_card=dict(card),
        method=method,
        persistence=persistence,
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


def _area(box: tuple[slice, slice]) -> int:
    return (box[0].stop - box[0].start) * (box[1].stop - box[1].start)


def _quotas(weights: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` samples in proportion to ``weights`` (largest remainders)."""
    share = weights / weights.sum() * total
    quota = np.floor(share).astype(np.int64)
    rest = total - int(quota.sum())
    quota[np.argsort(-(share - quota), kind="stable")[:rest]] += 1
    return quota


class _NodeAssigner:
    """Nearest node of the hierarchy for every pixel embedding, in torch on a GPU.

    The same rule as :meth:`Reduction.nearest_node` (optional L2 normalisation,
    centring, PCA projection, nearest micro-cluster centre), in blocks. On the
    CPU numpy's matmul and argmin were as fast, so this runs only on CUDA.
    """

    block = 16384  # rows per matmul: bounds the (block x nodes) score matrix to ~64 MB

    def __init__(self, hierarchy: Hierarchy, device: torch.device):
        red = hierarchy.reduction
        self.device = device
        self.normalize = bool(red.normalize)
        self.mean = torch.as_tensor(red.mean, dtype=torch.float32, device=device)
        comps = red.components
        self.components = (
            None if comps is None else torch.as_tensor(comps, dtype=torch.float32, device=device)
        )
        nodes = torch.as_tensor(red.nodes, dtype=torch.float32, device=device)
        self.nodes_t = nodes.T.contiguous()
        self.half_sq = 0.5 * (nodes * nodes).sum(dim=1)

    @torch.inference_mode()
    def __call__(self, points: np.ndarray) -> np.ndarray:
        """``(N, D)`` embeddings -> ``(N,)`` int32 node ids."""
        x_all = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
        n = x_all.shape[0]
        out = torch.empty(n, dtype=torch.int64)
        for start in range(0, n, self.block):
            x = x_all[start : start + self.block].to(self.device)
            if self.normalize:
                x = x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
            x = x - self.mean
            if self.components is not None:
                x = x @ self.components
            # argmin ||x - n||^2 = argmin (|n|^2 / 2 - x . n): |x|^2 is common to all nodes.
            score = torch.addmm(self.half_sq, x, self.nodes_t, alpha=-1.0)
            out[start : start + self.block] = score.argmin(dim=1).cpu()
        return out.numpy().astype(np.int32)


def _split(start: int, stop: int, side: int) -> list[tuple[int, int]]:
    count = -(-(stop - start) // side)
    edges = np.linspace(start, stop, count + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))


def _tile_plan(
    box: tuple[slice, slice], plane: tuple[int, int], tile_pixels: int, batch: int
) -> list[tuple[tuple[slice, slice], tuple[slice, slice]]]:
    """Cut ``box`` into ``(core, window)`` tiles of at most ``tile_pixels`` per batch.

    A box that fits is one tile (its own window: it already holds the halo its
    content needs). Otherwise each core's window is the core grown by the
    8-pixel halo, clamped to the plane, so every core pixel sees exactly the
    neighbourhood it has in the whole image: tiling changes memory, not results.
    """
    budget = max(int(tile_pixels) // max(int(batch), 1), 1)
    if _area(box) <= budget:
        return [(box, box)]
    side = max(int(np.sqrt(budget)) - 2 * HALO, 2 * RECEPTIVE_FIELD)
    plan = []
    for r0, r1 in _split(box[0].start, box[0].stop, side):
        for c0, c1 in _split(box[1].start, box[1].stop, side):
            window = (
                slice(max(r0 - HALO, 0), min(r1 + HALO, plane[0])),
                slice(max(c0 - HALO, 0), min(c1 + HALO, plane[1])),
            )
            plan.append(((slice(r0, r1), slice(c0, c1)), window))
    return plan


def _embed_plan(
    net: CutsModel,
    slices: np.ndarray,
    group: list[int],
    plan: list[tuple[tuple[slice, slice], tuple[slice, slice]]],
    device: torch.device,
    bf16: bool,
):
    """Embed consecutive ``slices[group]`` tile by tile.

    Yields ``(core, embeddings)``: one ``(h, w, D)`` array per slice of
    ``group`` for the pixels of ``core``.
    """
    first, last = group[0], group[-1] + 1
    for core, window in plan:
        embs = embed_slices(
            net,
            slices[first:last, :, window[0], window[1]],
            device=device,
            batch_size=last - first,
            bf16=bf16,
        )
        inner = (
            slice(core[0].start - window[0].start, core[0].stop - window[0].start),
            slice(core[1].start - window[1].start, core[1].stop - window[1].start),
        )
        yield core, [np.ascontiguousarray(emb[inner]) for emb in embs]


def _assign_slice(
    out: np.ndarray,
    content: np.ndarray,
    box: tuple[slice, slice],
    emb: np.ndarray,
    assign,
) -> None:
    """Write the node of every content pixel of one slice's box into ``out`` (H, W)."""
    inside = content[box]
    if inside.any():
        region = out[box]
        region[inside] = assign(emb[inside])


def _with_background(node_labels: np.ndarray) -> np.ndarray:
    """Append the background node as a cluster of its own: ``(M,) -> (M + 1,)``."""
    return np.append(node_labels, int(node_labels.max()) + 1).astype(np.int32)


def _kmeans_per_node(
    pool: np.ndarray, hierarchy: Hierarchy, k: int, seed: int, normalize: bool
) -> np.ndarray:
    """Spectral k-means label of each node (the majority over the node's pooled pixels)."""
    labels = spectral_kmeans(pool, k=k, seed=seed, normalize=normalize)
    node_of = hierarchy.node_of
    n_nodes = hierarchy.reduction.nodes.shape[0]
    votes = np.zeros((n_nodes, int(labels.max()) + 1), dtype=np.int64)
    np.add.at(votes, (node_of, labels), 1)
    return np.argmax(votes, axis=1).astype(np.int32)
