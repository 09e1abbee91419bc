"""Geometry of embedding slices: content boxes, tiles with their halo, batches of slices.

The encoder sees 8 pixels around each pixel (its 17 x 17 receptive field), so a box of pixels
grown by that halo embeds exactly as the whole slice would: tiling and cropping change memory,
never results. Texture features (:mod:`labelfree.cuts.texture`) see further; their
:func:`halo` is larger.
"""

from __future__ import annotations

import numpy as np
import torch

from labelfree.cuts.embed import embed_slices
from labelfree.cuts.encoder import RECEPTIVE_FIELD
from labelfree.cuts.model import CutsModel
from labelfree.cuts.texture import TextureWords, radius

HALO = RECEPTIVE_FIELD // 2  # 8 pixels: how far an embedding sees


def halo(texture_scale: float = 0.0) -> int:
    """Pixels a pixel's features see on each side: 8, plus the texture pooling's reach."""
    return HALO + (radius(texture_scale) if texture_scale > 0 else 0)


Box = tuple[slice, slice]
Plan = list[tuple[Box, Box]]


def content_box(content: np.ndarray, shape: tuple[int, int], grow: int = HALO) -> Box | None:
    """The in-plane box of pixels that do not see only background, at least 17 px wide.

    ``content`` is a ``(H, W)`` bool mask of non-background pixels (or a
    union over slices); the box reaches ``grow`` pixels (the :func:`halo`) beyond it.
    None when nothing differs from the background.
    """
    rows = np.flatnonzero(content.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(content.any(axis=0))
    box = []
    for lo, hi, size in ((rows[0], rows[-1] + 1, shape[0]), (cols[0], cols[-1] + 1, shape[1])):
        lo, hi = max(int(lo) - grow, 0), min(int(hi) + grow, size)
        short = RECEPTIVE_FIELD - (hi - lo)
        if short > 0:  # the encoder needs 17 x 17; grow symmetrically inside the plane
            lo = max(0, lo - (short + 1) // 2)
            hi = min(size, lo + RECEPTIVE_FIELD)
            lo = max(0, hi - RECEPTIVE_FIELD)
        box.append(slice(lo, hi))
    return box[0], box[1]


def area(box: Box) -> int:
    """Pixels in ``box``."""
    return (box[0].stop - box[0].start) * (box[1].stop - box[1].start)


def union(boxes: list[Box]) -> Box:
    """The smallest box holding all ``boxes``."""
    return (
        slice(min(b[0].start for b in boxes), max(b[0].stop for b in boxes)),
        slice(min(b[1].start for b in boxes), max(b[1].stop for b in boxes)),
    )


def batches(boxes: list[Box | None], batch_size: int) -> list[list[int]]:
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


def _split(start: int, stop: int, side: int) -> list[tuple[int, int]]:
    count = -(-(stop - start) // side)
    edges = np.linspace(start, stop, count + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))


def tile_plan(
    box: Box, plane: tuple[int, int], tile_pixels: int, batch: int, grow: int = HALO
) -> Plan:
    """Cut ``box`` into ``(core, window)`` tiles of at most ``tile_pixels`` per batch.

    A box that fits is one tile (its own window: it already holds the halo its
    content needs). Otherwise each core's window is the core grown by the
    ``grow``-pixel halo (:func:`halo`), clamped to the plane, so every core pixel
    sees exactly the neighbourhood it has in the whole image: tiling changes
    memory, not results.
    """
    budget = max(int(tile_pixels) // max(int(batch), 1), 1)
    if area(box) <= budget:
        return [(box, box)]
    # A wide halo (texture features) would leave slivers of core in large windows: keep the
    # core at least as wide as the halo, so that it fills a quarter of its window or more.
    side = max(int(np.sqrt(budget)) - 2 * grow, 2 * RECEPTIVE_FIELD, 2 * grow)
    plan = []
    for r0, r1 in _split(box[0].start, box[0].stop, side):
        for c0, c1 in _split(box[1].start, box[1].stop, side):
            window = (
                slice(max(r0 - grow, 0), min(r1 + grow, plane[0])),
                slice(max(c0 - grow, 0), min(c1 + grow, plane[1])),
            )
            plan.append(((slice(r0, r1), slice(c0, c1)), window))
    return plan


def embed_plan(
    net: CutsModel,
    slices: np.ndarray,
    group: list[int],
    plan: Plan,
    device: torch.device,
    bf16: bool,
    texture: TextureWords | None = None,
):
    """Embed consecutive ``slices[group]`` tile by tile.

    Yields ``(core, embeddings, words)``: one ``(h, w, D)`` array per slice of ``group`` for
    the pixels of ``core``. With ``texture``, ``(h, w, K)`` texture features and, in
    ``words``, one ``(h, w)`` int16 array of word ids per slice; without, ``words`` is None.
    """
    first, last = group[0], group[-1] + 1
    for core, window in plan:
        out = embed_slices(
            net,
            slices[first:last, :, window[0], window[1]],
            device=device,
            batch_size=last - first,
            bf16=bf16,
            texture=texture,
        )
        inner = (
            slice(core[0].start - window[0].start, core[0].stop - window[0].start),
            slice(core[1].start - window[1].start, core[1].stop - window[1].start),
        )
        if texture is None:
            yield core, [np.ascontiguousarray(emb[inner]) for emb in out], None
            continue
        pairs = list(out)
        embs = [np.ascontiguousarray(feats[inner]) for feats, _ in pairs]
        yield core, embs, [np.ascontiguousarray(words[inner]) for _, words in pairs]
