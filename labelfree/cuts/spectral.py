"""Spectral k-means: one segmentation with k clusters from a diffusion-map embedding.

The CUTS reference embeds all H*W latents with PHATE (a landmark diffusion potential)
and runs k-means (k = 10) on it: 27 s per 128x128 image. Here the diffusion runs on the
mass-weighted micro-clusters of :mod:`.precluster`: a self-tuning Gaussian kernel
(bandwidth of each node = distance to its ``knn``-th neighbour), the random walk over
points P = D^-1 K W (W = node masses), its top eigenvectors via the symmetric conjugate,
diffusion coordinates psi_l * lambda_l^t, then weighted k-means with k-means++ seeding
and several restarts. Labels are mapped back to the points through their node.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg
from scipy.sparse.linalg import eigsh

from labelfree.cuts.precluster import Reduction, reduce_points, single_blas_thread
from labelfree.errors import InputError


def _sq_dists(x: np.ndarray) -> np.ndarray:
    sq = np.einsum("ij,ij->i", x, x)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    return np.maximum(d2, 0.0, out=d2)


def diffusion_map(
    x: np.ndarray, mass: np.ndarray, n_eigen: int, *, knn: int = 10, t: int = 2
) -> np.ndarray:
    """Diffusion-map coordinates of weighted nodes.

    Parameters
    ----------
    x : (M, d) float
        Node positions.
    mass : (M,) float
        Points each node stands for.
    n_eigen : int
        Non-trivial eigenvectors kept (at most M - 1).
    knn : int
        Neighbour whose distance sets each node's kernel bandwidth.
    t : int
        Diffusion time: eigenvector l is scaled by lambda_l^t.

    Returns
    -------
    (M, n_eigen) float64
    """
    m = x.shape[0]
    x = x.astype(np.float64)
    d2 = _sq_dists(x)
    k = min(knn, m - 1)
    kth = np.sqrt(np.partition(d2 + np.diag(np.full(m, np.inf)), k - 1, axis=1)[:, k - 1])
    positive = kth[kth > 0]
    sigma = np.maximum(kth, positive.min() if positive.size else 1.0)
    kernel = np.exp(-d2 / np.outer(sigma, sigma))
    degree = kernel @ mass
    root = np.sqrt(mass / degree)
    sym = root[:, None] * kernel * root[None, :]
    n_eigen = min(n_eigen, m - 1)
    if m > 4 * (n_eigen + 1):
        # Lanczos on the few top eigenpairs: several times faster than LAPACK's dense
        # solvers here; the start vector (the top eigenvector itself) keeps it deterministic.
        vals, vecs = eigsh(sym, k=n_eigen + 1, which="LA", v0=np.sqrt(mass * degree))
    else:
        vals, vecs = linalg.eigh(sym, subset_by_index=[m - n_eigen - 1, m - 1])
    order = np.argsort(-vals, kind="stable")
    vals, vecs = vals[order], vecs[:, order]
    psi = vecs / np.sqrt(mass * degree)[:, None]
    # Fix each eigenvector's sign so results do not depend on the LAPACK build.
    flip = np.sign(psi[np.argmax(np.abs(psi), axis=0), np.arange(psi.shape[1])])
    psi = psi * np.where(flip == 0, 1.0, flip)
    return psi[:, 1:] * np.clip(vals[1:], 0.0, None) ** t


def weighted_kmeans(
    x: np.ndarray,
    weight: np.ndarray,
    k: int,
    rng: np.random.Generator,
    *,
    n_init: int = 10,
    max_iter: int = 100,
) -> np.ndarray:
    """Lloyd's k-means with point weights, k-means++ seeding, best of ``n_init`` runs.

    Returns
    -------
    (M,) int64 labels in ``0..k-1``
    """
    best, best_cost = None, np.inf
    x2 = np.einsum("ij,ij->i", x, x)
    for _ in range(n_init):
        centres = _kmeans_pp(x, weight, k, rng)
        labels = None
        for _ in range(max_iter):
            d2 = x2[:, None] - 2.0 * (x @ centres.T) + np.einsum("ij,ij->i", centres, centres)
            new = np.argmin(d2, axis=1)
            if labels is not None and np.array_equal(new, labels):
                break
            labels = new
            mass = np.bincount(labels, weights=weight, minlength=k)
            filled = mass > 0
            for j in range(x.shape[1]):
                sums = np.bincount(labels, weights=weight * x[:, j], minlength=k)
                centres[filled, j] = sums[filled] / mass[filled]
        cost = float((weight * np.maximum(d2[np.arange(x.shape[0]), labels], 0.0)).sum())
        if cost < best_cost:
            best, best_cost = labels, cost
    return best


def _kmeans_pp(x: np.ndarray, weight: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.choice(x.shape[0], p=weight / weight.sum())]
    closest = ((x - centres[0]) ** 2).sum(1)
    for c in range(1, k):
        p = weight * closest
        total = p.sum()
        pick = rng.choice(x.shape[0], p=p / total) if total > 0 else rng.integers(x.shape[0])
        centres[c] = x[pick]
        closest = np.minimum(closest, ((x - centres[c]) ** 2).sum(1))
    return centres


def spectral_kmeans(
    points: np.ndarray,
    k: int = 10,
    seed: int = 0,
    *,
    normalize: bool = False,
    n_components: int = 32,
    n_nodes: int = 1024,
    knn: int = 10,
    t: int = 2,
    n_init: int = 10,
) -> np.ndarray:
    """Cluster points into ``k`` groups by k-means on a diffusion-map embedding.

    Parameters
    ----------
    points : (N, D) array_like
        Finite features, one row per point (pixel).
    k : int
        Number of clusters (reference: 10). Fewer come back when there are fewer
        distinct points.
    seed : int
        Seed of the micro-clusters and the k-means restarts.
    normalize, n_components, n_nodes
        As for :func:`labelfree.cuts.condense`.
    knn, t
        Kernel bandwidth neighbour and diffusion time of :func:`diffusion_map`.
    n_init : int
        k-means restarts; the lowest weighted inertia wins.

    Returns
    -------
    (N,) int32
        Labels ``0..k'-1`` with ``k' <= k``, numbered by decreasing cluster size.
    """
    if k < 1 or n_init < 1 or knn < 1 or t < 0:
        raise InputError("Need k >= 1, n_init >= 1, knn >= 1 and t >= 0.")
    with single_blas_thread():
        red = reduce_points(
            points, n_components=n_components, n_nodes=n_nodes, normalize=normalize, seed=seed
        )
    node_labels = spectral_node_labels(red, k=k, seed=seed, knn=knn, t=t, n_init=n_init)
    labels = node_labels[red.node_of]
    # Number clusters by size (largest first; ties by first occurrence) for stable colours.
    ids, first, size = np.unique(labels, return_index=True, return_counts=True)
    order = ids[np.lexsort((first, -size))]
    lut = np.empty(int(labels.max()) + 1, dtype=np.int32)
    lut[order] = np.arange(order.size, dtype=np.int32)
    return lut[labels]


def spectral_node_labels(
    reduction: Reduction,
    k: int = 10,
    seed: int = 0,
    *,
    knn: int = 10,
    t: int = 2,
    n_init: int = 10,
) -> np.ndarray:
    """Spectral k-means of the micro-clusters of a :class:`~.precluster.Reduction`.

    Use it to cluster with the nodes a hierarchy already has (``hierarchy.reduction``):
    the labels of points are then ``out[hierarchy.node_of]``, and of new points
    ``out[hierarchy.reduction.nearest_node(points)]``.

    Returns
    -------
    (M,) int32
        A cluster ``0..k'-1`` per node (not ordered by size).
    """
    if k < 1 or n_init < 1 or knn < 1 or t < 0:
        raise InputError("Need k >= 1, n_init >= 1, knn >= 1 and t >= 0.")
    m = reduction.nodes.shape[0]
    if m <= k:
        return np.arange(m, dtype=np.int32)
    with single_blas_thread():
        coords = diffusion_map(reduction.nodes, reduction.mass, n_eigen=k, knn=knn, t=t)
        rng = np.random.default_rng(seed)
        labels = weighted_kmeans(coords, reduction.mass, k, rng, n_init=n_init)
    return np.unique(labels, return_inverse=True)[1].ravel().astype(np.int32)
