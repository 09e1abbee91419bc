"""Diffusion condensation: recovery of known structure, nesting, determinism, scale."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from labelfree.cuts import Hierarchy, condense, select_levels
from labelfree.errors import InputError


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Hubert-Arabie adjusted Rand index of two labelings."""
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a.ravel(), b.ravel()), 1)

    def pairs(v):
        return (v * (v - 1) / 2).sum()

    index = pairs(table)
    rows, cols, total = pairs(table.sum(1)), pairs(table.sum(0)), pairs(np.array([a.size]))
    expected = rows * cols / total
    best = (rows + cols) / 2
    if best == expected:
        return 1.0
    return float((index - expected) / (best - expected))


def nested_blobs(n_per: int, dim: int = 8, seed: int = 1):
    """4 well-separated blobs, each made of 2 sub-blobs: (points, coarse, fine)."""
    rng = np.random.default_rng(seed)
    big = rng.normal(size=(4, dim)) * 40.0
    points, coarse, fine = [], [], []
    for i in range(4):
        offsets = rng.normal(size=(2, dim))
        offsets *= 6.0 / np.linalg.norm(offsets, axis=1, keepdims=True)
        for j in range(2):
            points.append(big[i] + offsets[j] + rng.normal(scale=0.5, size=(n_per, dim)))
            coarse += [i] * n_per
            fine += [2 * i + j] * n_per
    order = rng.permutation(len(coarse))
    return (
        np.concatenate(points)[order].astype(np.float32),
        np.array(coarse)[order],
        np.array(fine)[order],
    )


def best_ari(h: Hierarchy, truth: np.ndarray) -> float:
    return max(adjusted_rand_index(level, truth) for level in h.levels)


def test_ari_helper_is_right():
    a = np.array([0, 0, 1, 1, 2, 2])
    assert adjusted_rand_index(a, 5 - a) == 1.0
    assert adjusted_rand_index(a, np.array([0, 1, 0, 1, 0, 1])) < 0.0


@pytest.mark.parametrize("n_per", [40, 600])  # exact nodes (N=320) and micro-clusters (N=4800)
def test_recovers_both_scales_of_nested_blobs(n_per):
    points, coarse, fine = nested_blobs(n_per)
    h = condense(points, seed=0)
    assert best_ari(h, coarse) == 1.0
    assert best_ari(h, fine) == 1.0
    assert 4 in h.n_clusters and 8 in h.n_clusters
    assert np.array_equal(h.labels_at(4), h.levels[h.n_clusters.index(4)])


def test_levels_nest_and_run_coarsest_first():
    points, _, _ = nested_blobs(300, seed=3)
    h = condense(points + np.random.default_rng(0).normal(scale=3.0, size=points.shape), seed=0)
    assert len(h.levels) >= 2
    counts = h.n_clusters
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    n = points.shape[0]
    for level, count in zip(h.levels, counts, strict=True):
        assert level.shape == (n,) and level.dtype == np.int32
        assert set(np.unique(level)) == set(range(count))
        assert 1 < count < n
    for coarse, fine in zip(h.levels[:-1], h.levels[1:], strict=True):
        # Each fine cluster maps to exactly one coarse cluster.
        pairs = np.unique(np.stack([fine, coarse]), axis=1)
        assert pairs.shape[1] == fine.max() + 1


def test_same_seed_same_labels_and_seed_is_used():
    rng = np.random.default_rng(5)
    points = rng.normal(size=(3000, 16)).astype(np.float32)
    a, b = condense(points, seed=7), condense(points, seed=7)
    assert a.n_clusters == b.n_clusters
    for la, lb in zip(a.levels, b.levels, strict=True):
        assert np.array_equal(la, lb)
    c = condense(points, seed=8)
    assert not np.array_equal(a.node_of, c.node_of)


def test_centroids_and_assign_map_new_points():
    points, coarse, fine = nested_blobs(300, seed=2)
    h = condense(points[:1600], seed=0)
    k = h.n_clusters.index(8)
    fresh = points[1600:]
    labels = h.assign(fresh, level=k)
    assert adjusted_rand_index(labels, fine[1600:]) == 1.0
    every = h.assign(fresh)
    assert every.shape == (len(h.levels), fresh.shape[0])
    assert np.array_equal(every[k], labels)
    cents = h.centroids[k]
    assert cents.shape == (8, points.shape[1])
    for c in range(8):
        assert np.allclose(cents[c], points[:1600][h.levels[k] == c].mean(0), atol=1e-3)


def test_select_levels_keeps_most_persistent_in_order():
    points, _, _ = nested_blobs(200)
    h = condense(points, seed=0, min_persistence=1)
    few = select_levels(h, max_levels=2)
    assert len(few.levels) == 2
    assert few.n_clusters == sorted(few.n_clusters)
    assert min(few.persistence) >= sorted(h.persistence)[-2]
    with pytest.raises(InputError):
        select_levels(h, max_levels=0)


def test_degenerate_inputs():
    one = condense(np.zeros((1, 4)))
    assert [lv.tolist() for lv in one.levels] == [[0]]
    same = condense(np.ones((500, 3)))
    assert len(same.levels) == 1 and not same.levels[0].any()
    line = condense(np.r_[np.zeros(50), np.full(50, 10.0)] + np.linspace(0, 0.1, 100))
    assert adjusted_rand_index(line.labels_at(2), np.repeat([0, 1], 50)) == 1.0
    two = condense(np.array([[0.0], [1.0]]))
    assert [lv.tolist() for lv in two.levels] == [[0, 0]]
    bad = np.zeros((10, 3))
    bad[3, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        condense(bad)
    with pytest.raises(InputError):
        condense(np.zeros((2, 3, 4)))
    with pytest.raises(InputError):
        condense(np.zeros((0, 3)))


def test_large_input_runs_without_dense_pairwise_matrix():
    n, dim = 65_536, 128
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, dim)) * 4
    points = (centres[rng.integers(0, 6, n)] + rng.normal(size=(n, dim))).astype(np.float32)
    tracemalloc.start()
    h = condense(points, seed=0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 0.01 * n * n * 8  # an N x N float64 matrix would be 34 GB
    assert h.levels[0].shape == (n,)


def test_normalize_clusters_by_direction_and_assign_applies_it():
    rng = np.random.default_rng(4)
    directions = np.eye(5)[:3] * 1.0
    truth = rng.integers(0, 3, 1500)
    scale = rng.uniform(0.5, 20.0, size=(1500, 1))  # lengths vary wildly, directions do not
    points = (directions[truth] + rng.normal(scale=0.02, size=(1500, 5))) * scale
    h = condense(points, seed=0, normalize=True)
    assert adjusted_rand_index(h.labels_at(3), truth) == 1.0
    plain = condense(points, seed=0)
    assert max(adjusted_rand_index(lv, truth) for lv in plain.levels) < 1.0
    k = h.n_clusters.index(3)
    assert adjusted_rand_index(h.assign(points * 7.0, level=k), truth) == 1.0


def test_levels_span_coarse_to_fine_on_a_continuum():
    # Uniform noise has no stable clusters: levels must still cover a range of granularities.
    points = np.random.default_rng(0).uniform(size=(6000, 3)).astype(np.float32)
    h = condense(points, seed=0)
    counts = h.n_clusters
    octaves = {int(np.log2(c)) for c in counts}
    assert len(octaves) >= 5
    assert counts[0] <= 8 and counts[-1] >= 256


def test_phantom_tissues_are_the_most_persistent_level():
    from skimage import data, transform

    phantom = transform.resize(data.shepp_logan_phantom(), (128, 128), order=0, anti_aliasing=False)
    _, truth = np.unique(np.round(phantom, 3), return_inverse=True)  # 6 intensity classes
    rng = np.random.default_rng(0)
    features = phantom.reshape(-1, 1) + rng.normal(scale=0.005, size=(phantom.size, 4))
    h = condense(features.astype(np.float32), seed=0)
    most_stable = int(np.argmax(h.persistence))
    assert h.n_clusters[most_stable] == 6
    assert adjusted_rand_index(h.levels[most_stable], truth.ravel()) == 1.0


@pytest.mark.parametrize("scale", [1e-25, 1e18])
def test_result_does_not_depend_on_the_units(scale):
    points, _, _ = nested_blobs(100)
    reference = condense(points, seed=0)
    scaled = condense(points.astype(np.float64) * scale, seed=0)
    assert scaled.n_clusters == reference.n_clusters
    for a, b in zip(reference.levels, scaled.levels, strict=True):
        assert adjusted_rand_index(a, b) == 1.0
