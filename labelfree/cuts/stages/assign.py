"""Stage 4, the label pass: embed every slice and give each content pixel its nearest node.

The pool slices' embeddings kept by the pool stage are used as they are; the other slices are
embedded in batches of consecutive slices, tile by tile. Background pixels keep the extra node
``n_nodes``. With texture features, each content pixel's word is kept too (for
:mod:`labelfree.cuts.refine`).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from labelfree.cuts.condense import Hierarchy
from labelfree.cuts.model import CutsModel
from labelfree.cuts.stages.pool import Pool
from labelfree.cuts.stages.prepare import Prepared
from labelfree.cuts.stages.tiles import batches, embed_plan, halo, tile_plan, union
from labelfree.cuts.texture import TextureWords
from labelfree.progress import Progress, Steps


def assign_steps(
    net: CutsModel,
    prepared: Prepared,
    pool: Pool,
    hierarchy: Hierarchy,
    *,
    batch_size: int,
    tile_pixels: int,
    device: torch.device,
    bf16: bool,
    seconds: dict[str, float],
    texture: TextureWords | None = None,
) -> Steps[tuple[np.ndarray, np.ndarray | None]]:
    """Node ids ``(S, H, W)`` of every pixel, yielding progress per batch of slices.

    With ``texture``, pixels are labelled by their texture features, as the pool was, and the
    second array returned holds each content pixel's word id (int16, -1 on background);
    without, it is None.

    Empties ``pool.cache``. Adds the time spent embedding to ``seconds["embed"]`` and sets
    ``seconds["assign"]`` to the time spent finding nodes.
    """
    content, boxes = prepared.content, prepared.boxes
    n_nodes = hierarchy.reduction.nodes.shape[0]
    node_dtype = np.int16 if n_nodes + 1 < 2**15 else np.int32
    assign = (
        NodeAssigner(hierarchy, device)
        if device.type == "cuda"
        else (lambda points: hierarchy.reduction.nearest_node(points))
    )
    nodes = np.full(content.shape, n_nodes, dtype=node_dtype)
    words = None if texture is None else np.full(content.shape, -1, dtype=np.int16)
    assign_seconds = 0.0
    todo = batches([None if i in pool.cache else b for i, b in enumerate(boxes)], batch_size)
    for index, tiles in pool.cache.items():
        t0 = time.perf_counter()
        for core, emb, tile_words in tiles:
            assign_slice(nodes[index], content[index], core, emb, assign)
            if words is not None:
                keep_words(words[index], content[index], core, tile_words)
        assign_seconds += time.perf_counter() - t0
    pool.cache.clear()
    total = max(len(todo), 1)
    grow = halo(texture.scale if texture is not None else 0.0)
    for done, group in enumerate(todo):
        box = union([boxes[i] for i in group])
        t0 = time.perf_counter()
        plan = tile_plan(box, content.shape[1:], tile_pixels, len(group), grow)
        for core, embs, tile_words in embed_plan(
            net, prepared.slices, group, plan, device, bf16, texture
        ):
            t1 = time.perf_counter()
            for i, (index, emb) in enumerate(zip(group, embs, strict=True)):
                assign_slice(nodes[index], content[index], core, emb, assign)
                if words is not None:
                    keep_words(words[index], content[index], core, tile_words[i])
            assign_seconds += time.perf_counter() - t1
        seconds["embed"] += time.perf_counter() - t0
        yield Progress((done + 1) / total, f"Labelling slices ({done + 1}/{total})")
    seconds["embed"] -= assign_seconds
    seconds["assign"] = assign_seconds
    return nodes, words


def assign_slice(
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


def keep_words(
    out: np.ndarray, content: np.ndarray, box: tuple[slice, slice], words: np.ndarray
) -> None:
    """Write the word of every content pixel of one slice's box into ``out`` (H, W)."""
    inside = content[box]
    out[box][inside] = words[inside]


class NodeAssigner:
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
