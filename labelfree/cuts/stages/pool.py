"""Stage 2: embed the pool slices and draw a seeded sample of pixel embeddings from them.

Up to ``pool_slices`` content slices spread evenly over the volume are embedded; each gives a
share of the ``pool_size`` pooled pixels in proportion to its content. Their embeddings are kept
(within ``cache_bytes``) for the label pass; a slice too large to keep is embedded only in a
seeded sample of small tiles, enough for its share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from labelfree.cuts.model import CutsModel
from labelfree.cuts.stages.prepare import Prepared
from labelfree.cuts.stages.tiles import Box, area, embed_plan, halo, tile_plan
from labelfree.cuts.texture import TextureWords, fit_words
from labelfree.errors import InputError
from labelfree.progress import Progress, Steps

POOL_TILE = 2**16
"""Pixels per tile when only a sample of a large slice is pooled."""


@dataclass
class Pool:
    """The pooled embeddings and the pool slices' embeddings kept for the label pass.

    Attributes
    ----------
    embeddings : ndarray
        ``(N, D)`` float32 pooled pixel embeddings, slice by slice in raster order.
    cache : dict
        Slice index -> list of ``(core, (h, w, D) embeddings, (h, w) word ids or None)``
        tiles covering its box.
    """

    embeddings: np.ndarray
    cache: dict[int, list[tuple[Box, np.ndarray, np.ndarray | None]]] = field(default_factory=dict)


def pool_steps(
    net: CutsModel,
    prepared: Prepared,
    rng: np.random.Generator,
    *,
    pool_size: int,
    pool_slices: int,
    cache_bytes: int,
    tile_pixels: int,
    device: torch.device,
    bf16: bool,
    texture: TextureWords | None = None,
) -> Steps[Pool]:
    """Embed the pool slices, yielding progress per slice; returns the :class:`Pool`.

    ``rng`` draws the pooled pixels (and the tiles of slices too large to keep). With
    ``texture``, the pool holds texture features instead of embeddings.
    """
    content, boxes = prepared.content, prepared.boxes
    pool_ids = pool_indices(boxes, int(pool_slices))
    weights = np.array([np.count_nonzero(content[i]) for i in pool_ids], dtype=np.float64)
    quota = quotas(weights, int(pool_size))
    plane = content.shape[1:]
    dim = net.embed_dim if texture is None else texture.n_words
    grow = halo(texture.scale if texture is not None else 0.0)
    pool = Pool(np.empty((0, dim), np.float32))
    cached = 0
    parts = []
    for done, index in enumerate(pool_ids):
        box = boxes[index]
        keep_tiles = cached + area(box) * dim * 4 <= cache_bytes
        if keep_tiles:
            plan = tile_plan(box, plane, tile_pixels, 1, grow)
        else:
            plan = _sampled_tiles(box, content[index], tile_pixels, int(quota[done]), rng, grow)
        chosen = _chosen_pixels(content[index], plan, int(quota[done]), rng)
        order, picked, tiles = [], [], []
        for core, embs, words in embed_plan(
            net, prepared.slices, [index], plan, device, bf16, texture
        ):
            rr, cc = np.nonzero(chosen[core])
            order.append((rr + core[0].start) * plane[1] + cc + core[1].start)
            picked.append(embs[0][rr, cc])
            if keep_tiles:
                tiles.append((core, embs[0], None if words is None else words[0]))
                cached += embs[0].nbytes
        if keep_tiles:
            pool.cache[index] = tiles
        # Raster order of the slice however it was tiled, so that tiling never changes results.
        parts.append(np.concatenate(picked)[np.argsort(np.concatenate(order))])
        yield Progress((done + 1) / len(pool_ids), f"Embedding pool slice {done + 1}")
    pool.embeddings = np.concatenate(parts)
    return pool


def _sampled_tiles(box, content, tile_pixels, quota, rng, grow):
    """A seeded sample of small tiles of a slice too large to keep, enough for its quota."""
    plan = tile_plan(box, content.shape, min(int(tile_pixels), POOL_TILE), 1, grow)
    plan = [tile for tile in plan if content[tile[0]].any()]
    need = max(4 * quota, area(box) // 4)
    picked, covered = [], 0
    for i in rng.permutation(len(plan)):
        picked.append(int(i))
        covered += area(plan[i][0])
        if covered >= need:
            break
    return [plan[i] for i in sorted(picked)]


def _chosen_pixels(content, plan, quota, rng) -> np.ndarray:
    """``(H, W)`` mask of ``quota`` content pixels drawn from the cores of ``plan``."""
    eligible = np.zeros(content.shape, dtype=bool)
    for core, _ in plan:
        eligible[core] = content[core]
    positions = np.flatnonzero(eligible)
    take = rng.choice(positions.size, size=min(quota, positions.size), replace=False)
    chosen = np.zeros(content.shape, dtype=bool)
    chosen.flat[positions[take]] = True
    return chosen


def pool_indices(boxes: list[tuple[slice, slice] | None], count: int) -> list[int]:
    """Up to ``count`` content slices spread evenly over the volume."""
    content = [i for i, box in enumerate(boxes) if box is not None]
    if len(content) <= count:
        return content
    picks = np.linspace(0, len(content) - 1, count)
    return sorted({content[int(round(p))] for p in picks})


def quotas(weights: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` samples in proportion to ``weights`` (largest remainders)."""
    share = weights / weights.sum() * total
    quota = np.floor(share).astype(np.int64)
    rest = total - int(quota.sum())
    quota[np.argsort(-(share - quota), kind="stable")[:rest]] += 1
    return quota


WORD_SAMPLE = 8192
"""Pixel embeddings the texture words are fitted to."""


def word_steps(
    net: CutsModel,
    prepared: Prepared,
    seed: int,
    *,
    scale: float,
    n_words: int,
    pool_slices: int,
    cache_bytes: int,
    tile_pixels: int,
    device: torch.device,
    bf16: bool,
) -> Steps[TextureWords]:
    """Fit the texture words (:mod:`labelfree.cuts.texture`) to the image's own embeddings.

    A seeded sample of :data:`WORD_SAMPLE` pixels is drawn from the pool slices as the pool is
    (so it does not depend on the tiling either) and clustered into ``n_words`` words; the
    embeddings are then dropped. Its own generator, so the pool drawn afterwards does not
    depend on whether texture features are on.
    """
    rng = np.random.default_rng([int(seed), 1])
    sample = yield from pool_steps(
        net,
        prepared,
        rng,
        pool_size=WORD_SAMPLE,
        pool_slices=pool_slices,
        cache_bytes=cache_bytes,
        tile_pixels=tile_pixels,
        device=device,
        bf16=bf16,
    )
    if len(sample.embeddings) < 2:
        raise InputError(
            "Texture features need at least 2 pixels that are not background; this image has "
            "fewer. Set the texture scale to 0."
        )
    return fit_words(sample.embeddings, min(n_words, len(sample.embeddings)), scale, seed)
