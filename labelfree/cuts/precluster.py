"""Shrink a large point cloud to a few weighted nodes before diffusion.

Diffusion condensation and spectral clustering need a kernel between every pair of
points; on the H*W latents of an image that is an N x N matrix (2 GB at N = 16,384
in float64). Both run here on at most ``n_nodes`` micro-clusters instead, each carrying
its member count as a mass, so a node stands for its members in every kernel sum. Points
that share a micro-cluster are never separated afterwards: the finest level of a
hierarchy built on the nodes has at most ``n_nodes`` clusters (the reference's finest
kept level on a 128x128 image has 741).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from labelfree.errors import InputError

# Rows per block when comparing points with node centres: a (512 x 1024) float32 block
# of scores stays in cache between the product, the addition and the argmin.
_BLOCK = 512
# Points per block when searching neighbours of a few query points.
_NEIGHBOUR_BLOCK = 4096
# Points per node in the subsample that k-means refines its centres on.
_SAMPLE_PER_NODE = 4


@functools.lru_cache(maxsize=1)
def _blas_controller():
    """threadpoolctl's view of the loaded BLAS libraries (scanning them takes ~30 ms)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # optional: only a speed guard
        return None
    return ThreadpoolController()


@contextlib.contextmanager
def single_blas_thread() -> Iterator[None]:
    """Run numpy/scipy linear algebra on one thread inside the block.

    The products here are small (at most ~16k x 1024 x 32); a second BLAS thread gains
    little on an idle machine, and on a busy one (a shared CPU, Slicer rendering, the
    encoder's torch threads) OpenBLAS's spin-waiting threads made condensation of a
    128x128 image 15x slower (9.4 s instead of 0.64 s, measured here at load 10 on 2
    cores). Uses threadpoolctl when installed; otherwise changes nothing. Torch's own
    thread pool is not touched.
    """
    controller = _blas_controller()
    if controller is None:
        yield
        return
    with controller.limit(limits=1, user_api="blas"):
        yield


@dataclass(frozen=True)
class Reduction:
    """A fitted projection of points to a small space plus their micro-clusters.

    Attributes
    ----------
    mean : (D,) float32
        Mean removed before projection (after optional L2 normalisation).
    components : (D, d) float32 or None
        Orthonormal PCA directions; ``None`` keeps all ``D`` dimensions.
    normalize : bool
        Whether points are scaled to unit L2 norm first.
    node_of : (N,) int32
        Micro-cluster of every input point.
    nodes : (M, d) float32
        Micro-cluster centres in the projected space.
    mass : (M,) float64
        Number of points in each micro-cluster.
    neighbour_d2 : float
        Median squared distance (projected space) from a point to its ``knn``-th nearest
        other point, estimated on a sample of points: the scale at which diffusion
        between the points themselves would start.
    """

    mean: np.ndarray
    components: np.ndarray | None
    normalize: bool
    node_of: np.ndarray
    nodes: np.ndarray
    mass: np.ndarray
    neighbour_d2: float = 1.0

    def project(self, points: np.ndarray) -> np.ndarray:
        """Map (N', D) points into the projected (N', d) float32 space."""
        x = _check_points(points, dim=self.mean.shape[0])
        return _project(x, self.mean, self.components, self.normalize)

    def nearest_node(self, points: np.ndarray) -> np.ndarray:
        """Index of the nearest micro-cluster centre for each (N', D) point, (N',) int32."""
        with single_blas_thread():
            return nearest_centre(self.project(points), self.nodes)


def _check_points(points: np.ndarray, dim: int | None = None) -> np.ndarray:
    x = np.asarray(points)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise InputError(
            f"Expected points as an (N, D) array; got shape {x.shape}. Reshape embeddings "
            "to one row per pixel, e.g. latents.reshape(-1, D)."
        )
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"Expected at least one point with at least one feature; got {x.shape}.")
    if dim is not None and x.shape[1] != dim:
        raise InputError(f"Expected points with {dim} features, as when fitted; got {x.shape[1]}.")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise InputError(f"Expected real-valued points; got dtype {x.dtype}.")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise InputError(
            "Points contain NaN or infinite values; fix the embedding (or drop those rows) first."
        )
    return x


def _project(
    x: np.ndarray, mean: np.ndarray, components: np.ndarray | None, normalize: bool
) -> np.ndarray:
    if normalize:
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.maximum(norm, np.finfo(np.float32).tiny)
    x = x - mean
    if components is not None:
        x = x @ components
    return np.ascontiguousarray(x, dtype=np.float32)


def _pca(x: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray | None]:
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    if x.shape[1] <= n_components:
        return mean, None
    # D x D covariance, accumulated in float64 over row blocks: O(N D^2) time, no N x N
    # matrix and no float64 copy of all points.
    cov = np.zeros((x.shape[1], x.shape[1]))
    for start in range(0, x.shape[0], _NEIGHBOUR_BLOCK):
        xc = (x[start : start + _NEIGHBOUR_BLOCK] - mean).astype(np.float64)
        cov += xc.T @ xc
    _, vecs = np.linalg.eigh(cov)
    comps = vecs[:, ::-1][:, :n_components]
    # Fix signs so the projection is reproducible across LAPACK builds.
    signs = np.sign(comps[np.argmax(np.abs(comps), axis=0), np.arange(n_components)])
    comps = comps * np.where(signs == 0, 1.0, signs)
    return mean, comps.astype(np.float32)


def nearest_centre(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre for every row, computed in blocks.

    Parameters
    ----------
    x : (N, d) float32
    centres : (M, d) float32

    Returns
    -------
    (N,) int32
    """
    c2 = np.einsum("ij,ij->i", centres, centres).astype(x.dtype)
    scaled = (-2.0 * centres.T).astype(x.dtype)
    out = np.empty(x.shape[0], dtype=np.int32)
    for start in range(0, x.shape[0], _BLOCK):
        # ||x||^2 is the same for every centre, so it does not change the argmin.
        score = x[start : start + _BLOCK] @ scaled
        score += c2
        out[start : start + _BLOCK] = np.argmin(score, axis=1)
    return out


def _centres_of(x: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    count = np.bincount(labels, minlength=n).astype(np.float64)
    sums = np.empty((n, x.shape[1]), dtype=np.float64)
    for j in range(x.shape[1]):
        sums[:, j] = np.bincount(labels, weights=x[:, j], minlength=n)
    return sums, count


def _micro_clusters(
    x: np.ndarray, n_nodes: int, n_iter: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = x.shape[0]
    if n <= n_nodes:
        # Few points: every distinct point is a node; exact duplicates share one.
        nodes, node_of = np.unique(x, axis=0, return_inverse=True)
        mass = np.bincount(node_of.ravel(), minlength=nodes.shape[0]).astype(np.float64)
        return node_of.ravel().astype(np.int32), nodes.astype(np.float32), mass
    # Lloyd iterations on a subsample, then one pass over all points: the centres only
    # need to cover the data densely, not to be an exact k-means optimum.
    sample = x[np.sort(rng.choice(n, size=min(n, _SAMPLE_PER_NODE * n_nodes), replace=False))]
    centres = sample[np.sort(rng.choice(sample.shape[0], size=n_nodes, replace=False))]
    for _ in range(n_iter):
        labels = nearest_centre(sample, centres)
        sums, count = _centres_of(sample, labels, centres.shape[0])
        keep = count > 0
        centres = (sums[keep] / count[keep, None]).astype(np.float32)
    labels = nearest_centre(x, centres)
    # Drop centres that ended up empty (duplicates in the sample) and renumber.
    sums, count = _centres_of(x, labels, centres.shape[0])
    keep = count > 0
    remap = np.cumsum(keep) - 1
    node_of = remap[labels].astype(np.int32)
    nodes = (sums[keep] / count[keep, None]).astype(np.float32)
    return node_of, nodes, count[keep]


def reduce_points(
    points: np.ndarray,
    *,
    n_components: int = 32,
    n_nodes: int = 1024,
    n_iter: int = 4,
    normalize: bool = False,
    knn: int = 5,
    seed: int = 0,
) -> Reduction:
    """Project points with PCA and group them into weighted micro-clusters.

    Parameters
    ----------
    points : (N, D) array_like
        Finite real features, one row per point (pixel).
    n_components : int
        PCA dimensions kept when ``D`` is larger.
    n_nodes : int
        Largest number of micro-clusters. With ``N <= n_nodes`` each distinct point
        is its own node and nothing is approximated.
    n_iter : int
        Lloyd iterations refining the seeded random centres.
    normalize : bool
        Scale every point to unit L2 norm first (as the CUTS reference does with latents
        trained by a cosine-similarity contrastive loss).
    knn : int
        Neighbour rank of :attr:`Reduction.neighbour_d2`.
    seed : int
        Seed of the centre sampling; the result is deterministic for a seed.

    Returns
    -------
    Reduction
    """
    x = _check_points(points)
    if n_components < 1 or n_nodes < 1 or knn < 1:
        raise InputError("n_components, n_nodes and knn must be positive integers.")
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    mean, comps = _pca(x, n_components)
    y = _project(x, mean, comps, normalize=False)
    # Unit RMS spread: every later step is scale-free, and float32 squared distances then
    # neither overflow (features ~1e20) nor underflow (~1e-20).
    spread = float(np.sqrt(np.mean(np.square(y, dtype=np.float64)) * y.shape[1]))
    if np.isfinite(spread) and spread > 0:
        if comps is None:
            comps = np.eye(x.shape[1], dtype=np.float32)
        comps = (comps / spread).astype(np.float32)
        y = _project(x, mean, comps, normalize=False)
    rng = np.random.default_rng(seed)
    node_of, nodes, mass = _micro_clusters(y, n_nodes, n_iter, rng)
    scale = neighbour_scale(y, knn=knn, n_queries=256, rng=rng)
    return Reduction(mean, comps, normalize, node_of, nodes, mass, scale)


def neighbour_scale(y: np.ndarray, *, knn: int, n_queries: int, rng: np.random.Generator) -> float:
    """Median squared distance from a point to its ``knn``-th nearest other point.

    Estimated from up to ``n_queries`` sampled points against all points, in blocks, so
    it costs O(n_queries * N * d) time and O(_BLOCK * n_queries) memory. Exact duplicates
    (e.g. a constant background) are ignored, so the scale is that of distinct points.
    """
    n = y.shape[0]
    if n < 2:
        return 1.0
    pick = np.arange(n) if n <= n_queries else np.sort(rng.choice(n, n_queries, replace=False))
    queries = y[pick]
    q2 = np.einsum("ij,ij->i", queries, queries)
    k = min(knn, n - 1)
    best = np.full((pick.size, k), np.inf, dtype=np.float32)
    for start in range(0, n, _NEIGHBOUR_BLOCK):
        block = y[start : start + _NEIGHBOUR_BLOCK]
        d2 = queries @ (-2.0 * block.T)
        d2 += q2[:, None]
        d2 += np.einsum("ij,ij->i", block, block)[None, :]
        # Distances of ~0 are the query itself or its exact duplicates.
        d2[d2 <= 1e-6 * (q2[:, None] + 1e-12)] = np.inf
        if d2.shape[1] > k:
            d2 = np.partition(d2, k - 1, axis=1)[:, :k]
        best = np.partition(np.concatenate([best, d2], axis=1), k - 1, axis=1)[:, :k]
    kth = best.max(axis=1)
    kth = kth[np.isfinite(kth)]
    return float(np.median(kth)) if kth.size else 1.0
