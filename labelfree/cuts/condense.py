"""Diffusion condensation: a coarse-to-fine hierarchy of clusters from point features.

The process of CUTS section 3.2.1 (Brugnone et al. 2019): build a Gaussian affinity
kernel from the current positions, row-normalise it into a diffusion operator, move
every point to its local centre of gravity (X <- P X), merge points that have met, widen
the kernel, and repeat until one cluster is left. Every change in the number of clusters
is a partition; a partition is *stable* when it survives several widenings of the kernel.

What differs from the reference (Multiscale PHATE on all H*W points) and why:

- It runs on at most ``n_nodes`` mass-weighted micro-clusters (:mod:`.precluster`)
  instead of all N points, with dense kernels between nodes: O(M^2) memory, never N x N.
  A node's mass multiplies its column of the kernel, so it pulls as hard as its members
  would; members of a node move together, which is what the first few steps of the full
  process do to such tight groups anyway.
- Kept levels: every partition that lasts at least ``min_persistence`` diffusion steps
  (kernel widenings by ``growth``, i.e. persistence in log-bandwidth), plus the longest-
  lived partition of each octave of cluster counts (2-3, 4-7, 8-15, ...). The reference
  keeps levels where the per-step movement reaches a running minimum; persistence is the
  quantity the paper itself ranks segments by (section 3.2.2), it is scale-free and does
  not depend on how fast points happen to drift. The octave rule guarantees a slider
  from coarse to fine even on continuous data (real latents), where every fine partition
  lives a single step. On a 128x128 image this gives about 8-10 levels, e.g.
  2/4/5/13/21/44/65/132/260/812 clusters (reference: 2/3/4/11/14/73/102/741).
- Positions are PCA-reduced to ``n_components`` dimensions (reference: 100 for PHATE).
- Points are not L2-normalised unless ``normalize=True`` (the reference normalises CUTS
  latents; a general-purpose function should not project data onto a sphere silently).
- The first bandwidth is the points' own neighbour scale (median squared distance to the
  5th neighbour), as if diffusing the points, not the coarser scale of the nodes: this
  brought the levels closer to exact condensation of all points (ARI about 0.9 vs 0.85 on
  a 64x64 image, where the exact process is affordable; two seeds of ours agree to about 0.9).

Speed and memory (16,384 latents of a 128x128 MNI slice, 128-d, 2-core EPYC shared with
other jobs): 0.15-0.2 s of CPU time and 25-35 MB traced peak (reference: 61 s, 4.4 GB).
Linear algebra runs on one BLAS thread (:func:`~.precluster.single_blas_thread`): on a
busy machine two OpenBLAS threads made the same call 15x slower.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy import sparse

from labelfree.cuts.precluster import Reduction, reduce_points, single_blas_thread
from labelfree.errors import InputError


@dataclass(frozen=True, eq=False)
class Hierarchy:
    """Nested partitions of N points, coarsest first.

    Each level is stored over the M micro-clusters (``node_levels``) and expanded to
    the N points on first access of :attr:`levels`.

    Attributes
    ----------
    node_of : (N,) int32
        Micro-cluster of each point.
    node_levels : list of (M,) int32
        Cluster of each micro-cluster per level, labels ``0..n-1``, coarsest first.
    persistence : list of int
        Diffusion steps each level stayed unchanged (larger = more stable).
    epsilon : list of float
        Kernel bandwidth (squared distance units of the reduced space) when the level formed.
    reduction : Reduction
        Projection and micro-clusters, for :meth:`assign`.
    node_sums : (M, D) float64
        Sum of the input points of each micro-cluster, for :attr:`centroids`.
    """

    node_of: np.ndarray
    node_levels: list[np.ndarray]
    persistence: list[int]
    epsilon: list[float]
    reduction: Reduction = field(repr=False)
    node_sums: np.ndarray = field(repr=False)

    @property
    def n_clusters(self) -> list[int]:
        """Number of clusters per level, coarsest first (non-decreasing)."""
        return [int(lab.max()) + 1 for lab in self.node_levels]

    @cached_property
    def levels(self) -> list[np.ndarray]:
        """(N,) int32 label arrays, coarsest first; a coarse cluster is a union of finer ones."""
        return [lab[self.node_of] for lab in self.node_levels]

    @property
    def centroids(self) -> list[np.ndarray]:
        """Per level, the (n_k, D) mean of the input points of each cluster (input space)."""
        mass = self.reduction.mass
        out = []
        for lab in self.node_levels:
            n = int(lab.max()) + 1
            agg = sparse.csr_matrix(
                (np.ones(lab.size), (lab, np.arange(lab.size))), shape=(n, lab.size)
            )
            out.append((agg @ self.node_sums) / (agg @ mass)[:, None])
        return out

    def __len__(self) -> int:
        return len(self.node_levels)

    def labels_at(self, n_clusters: int) -> np.ndarray:
        """The level whose cluster count is closest to ``n_clusters`` (the finer one on ties).

        Returns
        -------
        (N,) int32
        """
        counts = np.asarray(self.n_clusters)
        gap = np.abs(np.log(counts) - np.log(max(int(n_clusters), 1)))
        best = np.flatnonzero(gap == gap.min())[-1]
        return self.levels[best]

    def assign(self, points: np.ndarray, level: int | None = None) -> np.ndarray:
        """Label new points (e.g. another slice's pixels) with this hierarchy's clusters.

        Each point takes the labels of its nearest micro-cluster in the reduced space, so
        clusters keep their (possibly non-convex) shapes.

        Parameters
        ----------
        points : (N', D) array_like
            Features in the same space as the points the hierarchy was built from.
        level : int, optional
            Index into :attr:`levels`; by default all levels.

        Returns
        -------
        (N',) int32 for one level, else (L, N') int32 with levels coarsest first.
        """
        node = self.reduction.nearest_node(points)
        if level is not None:
            return self.node_levels[level][node]
        return np.stack([lab[node] for lab in self.node_levels])

    def subset(self, indices: list[int]) -> Hierarchy:
        """A hierarchy holding only the given levels (kept in coarsest-first order)."""
        idx = sorted(set(int(i) for i in indices))
        return Hierarchy(
            self.node_of,
            [self.node_levels[i] for i in idx],
            [self.persistence[i] for i in idx],
            [self.epsilon[i] for i in idx],
            self.reduction,
            self.node_sums,
        )


def select_levels(hierarchy: Hierarchy, max_levels: int = 8) -> Hierarchy:
    """Keep the ``max_levels`` most persistent levels, e.g. for a granularity slider.

    Ties go to the coarser level. The result stays coarsest first and nested.
    """
    if max_levels < 1:
        raise InputError("max_levels must be at least 1.")
    order = sorted(range(len(hierarchy)), key=lambda i: (-hierarchy.persistence[i], i))
    return hierarchy.subset(order[:max_levels])


def _sq_dists(x: np.ndarray) -> np.ndarray:
    sq = np.einsum("ij,ij->i", x, x)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    np.maximum(d2, 0.0, out=d2)
    return d2


def _diffusion_step(x: np.ndarray, d2: np.ndarray, mass: np.ndarray, eps: float) -> np.ndarray:
    # Subtracting each row's minimum keeps exp() from underflowing to an all-zero row;
    # float32 halves the cost of exp() and the kernel is normalised per row anyway.
    arg = (d2 - d2.min(axis=1, keepdims=True)).astype(np.float32)
    arg *= np.float32(-1.0 / eps)
    kernel = np.exp(arg, out=arg)
    kernel *= mass.astype(np.float32)[None, :]
    kernel /= kernel.sum(axis=1, keepdims=True)
    return (kernel @ x.astype(np.float32)).astype(np.float64)


def _components(d2: np.ndarray, radius: float) -> tuple[int, np.ndarray] | None:
    """Groups of points closer than ``radius``; ``None`` when no two points are."""
    close = d2 <= radius * radius
    np.fill_diagonal(close, False)
    i, j = np.nonzero(close)
    if i.size == 0:
        return None
    # Min-label propagation with pointer jumping: few pairs, few rounds, no sparse matrix.
    label = np.arange(d2.shape[0])
    while True:
        low = label.copy()
        np.minimum.at(low, i, label[j])
        low = low[low]
        if np.array_equal(low, label):
            break
        label = low
    _, comp = np.unique(label, return_inverse=True)
    comp = comp.ravel()
    return int(comp.max()) + 1, comp


def _condense_nodes(
    x: np.ndarray,
    mass: np.ndarray,
    *,
    eps: float,
    growth: float,
    merge_tol: float,
    max_steps: int,
) -> tuple[list[np.ndarray], list[int], list[float]]:
    """Run condensation on weighted nodes; return every distinct partition with its life.

    A partition's life is the number of diffusion steps (kernel widenings) it lasted.
    """
    x = x.astype(np.float64)
    mass = mass.astype(np.float64)
    centre = (mass @ x) / mass.sum()
    spread = float(np.sqrt((mass @ ((x - centre) ** 2).sum(axis=1)) / mass.sum()))
    radius = merge_tol * spread
    cluster_of = np.arange(x.shape[0])  # current cluster of each original node
    partitions, born, eps_at = [cluster_of.copy()], [0], [eps]
    step = 0
    while True:
        d2 = _sq_dists(x)
        merged = _components(d2, radius)
        if merged is not None:
            n_now, comp = merged
            x = _weighted_means(x, mass, comp, n_now)
            mass = np.bincount(comp, weights=mass, minlength=n_now)
            cluster_of = comp[cluster_of]
            partitions.append(cluster_of.copy())
            born.append(step)
            eps_at.append(eps)
            # Merged points were within `radius` of each other, so any member's distances
            # stand for the group's to within `radius`: enough for the next kernel.
            rep = np.unique(comp, return_index=True)[1]
            d2 = d2[np.ix_(rep, rep)]
        if x.shape[0] == 1 or step >= max_steps:
            break
        step += 1
        x = _diffusion_step(x, d2, mass, eps)
        eps *= growth
    lives = [b2 - b1 for b1, b2 in zip(born[:-1], born[1:], strict=True)]
    lives.append(max(step - born[-1], 1) if x.shape[0] > 1 else max_steps + 1)
    return partitions, lives, eps_at


def _weighted_means(x: np.ndarray, mass: np.ndarray, comp: np.ndarray, n: int) -> np.ndarray:
    total = np.bincount(comp, weights=mass, minlength=n)
    out = np.empty((n, x.shape[1]))
    for j in range(x.shape[1]):
        out[:, j] = np.bincount(comp, weights=mass * x[:, j], minlength=n)
    return out / total[:, None]


def _relabel(labels: np.ndarray) -> np.ndarray:
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.ravel().astype(np.int32)


def condense(
    points: np.ndarray,
    seed: int = 0,
    *,
    normalize: bool = False,
    n_components: int = 32,
    n_nodes: int = 1024,
    growth: float = 1.025,
    knn: int = 5,
    merge_tol: float = 1e-3,
    min_persistence: int = 10,
    max_steps: int = 2000,
) -> Hierarchy:
    """Diffusion condensation of points into nested clusters, coarsest level first.

    Parameters
    ----------
    points : (N, D) array_like
        Finite features, one row per point (e.g. the H*W pixel embeddings of a slice).
    seed : int
        Seed of the micro-cluster sampling; same seed and input give identical labels.
    normalize : bool
        Scale points to unit L2 norm first (the CUTS reference does this to its latents).
    n_components : int
        PCA dimensions used for the diffusion (features beyond are dropped).
    n_nodes : int
        Number of weighted micro-clusters the diffusion runs on (bounds the finest level).
    growth : float
        Factor widening the kernel bandwidth epsilon after every step (reference: 1.025).
    knn : int
        The initial epsilon is the median squared distance of a point to its knn-th
        nearest other point (estimated on a sample), as if diffusing the points themselves.
    merge_tol : float
        Points closer than ``merge_tol`` times the RMS spread of the data are merged.
    min_persistence : int
        A partition lasting at least this many steps is always a level; besides, the
        longest-lived partition of each octave of cluster counts is one.
    max_steps : int
        Upper bound on diffusion steps.

    Returns
    -------
    Hierarchy
        ``levels`` nested, coarsest first; never the all-in-one partition unless that is
        all there is, never the partition of every point into its own cluster.

    Raises
    ------
    InputError
        If points are not a finite real (N, D) array or an option is out of range.
    """
    if growth <= 1.0 or knn < 1 or merge_tol <= 0 or min_persistence < 1 or max_steps < 1:
        raise InputError(
            "Need growth > 1, knn >= 1, merge_tol > 0, min_persistence >= 1, max_steps >= 1."
        )
    with single_blas_thread():
        red = reduce_points(
            points,
            n_components=n_components,
            n_nodes=n_nodes,
            normalize=normalize,
            knn=knn,
            seed=seed,
        )
        partitions, lives, eps_at = _condense_nodes(
            red.nodes,
            red.mass,
            eps=red.neighbour_d2,
            growth=growth,
            merge_tol=merge_tol,
            max_steps=max_steps,
        )
    n_points = red.node_of.size
    keep = _stable(partitions, lives, n_points, min_persistence)
    keep.sort(key=lambda i: -i)  # later partitions are coarser
    node_levels = [_relabel(partitions[i]) for i in keep]
    # Per-node sums of the input points, column by column: no float64 copy of all points.
    x = np.asarray(points).reshape(n_points, -1)
    m = red.nodes.shape[0]
    node_sums = np.empty((m, x.shape[1]))
    for j in range(x.shape[1]):
        node_sums[:, j] = np.bincount(red.node_of, weights=x[:, j], minlength=m)
    return Hierarchy(
        node_of=red.node_of,
        node_levels=node_levels,
        persistence=[int(lives[i]) for i in keep],
        epsilon=[float(eps_at[i]) for i in keep],
        reduction=red,
        node_sums=node_sums,
    )


def _stable(
    partitions: list[np.ndarray], lives: list[int], n_points: int, min_persistence: int
) -> list[int]:
    """Indices of the partitions kept as levels.

    Kept: every partition lasting ``min_persistence`` steps or more, and in each octave
    of cluster counts (2-3, 4-7, 8-15, ...) the longest-lived partition (the coarser on
    ties), so that a granularity slider spans coarse to fine even on data whose fine
    structure is a continuum, where no fine partition lasts long.
    """
    counts = [int(p.max()) + 1 for p in partitions]
    candidates = [i for i, c in enumerate(counts) if 1 < c < n_points]
    if not candidates:
        return [len(partitions) - 1]
    keep = {i for i in candidates if lives[i] >= min_persistence}
    best: dict[int, int] = {}
    for i in candidates:
        octave = int(np.log2(counts[i]))
        j = best.get(octave)
        if j is None or (lives[i], -counts[i]) > (lives[j], -counts[j]):
            best[octave] = i
    return sorted(keep | set(best.values()))
