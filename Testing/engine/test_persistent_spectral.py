"""Persistent structures and spectral k-means."""

from __future__ import annotations

import numpy as np
import pytest

from labelfree.cuts import (
    condense,
    persistent_structures,
    segment_persistence,
    spectral_kmeans,
    spectral_node_labels,
    stable_structures,
)
from labelfree.errors import InputError


def ari(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index (Hubert-Arabie)."""
    _, a = np.unique(np.ravel(a), return_inverse=True)
    _, b = np.unique(np.ravel(b), return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)
    comb = lambda v: (v * (v - 1) / 2).sum()  # noqa: E731
    index, rows, cols = comb(table), comb(table.sum(1)), comb(table.sum(0))
    expected = rows * cols / comb(np.array([a.size]))
    if rows + cols == 2 * expected:
        return 1.0
    return float((index - expected) / ((rows + cols) / 2 - expected))


@pytest.fixture
def object_levels():
    """10x10 image: background (75 px) and a 5x5 object whose 2x2 core splits off at L2.

    L0 = L1 = {background, object}; L2 = L3 = {background, rim (21 px), core (4 px)}.
    Labels are arbitrary integers to check they are not taken as ids across levels.
    """
    obj = np.zeros((10, 10), dtype=bool)
    obj[:5, 5:] = True
    core = np.zeros((10, 10), dtype=bool)
    core[1:3, 6:8] = True
    l0 = np.where(obj, 7, 3)
    l1 = np.where(obj, 1, 42)
    l2 = np.where(core, 9, np.where(obj, 5, 0))
    l3 = np.where(core, 2, np.where(obj, 0, 1))
    return [l0, l1, l2, l3], obj, core


def test_segment_persistence_counts_consecutive_identical_sets(object_levels):
    levels, _, _ = object_levels
    runs = segment_persistence([lv.ravel() for lv in levels])
    # Background spans all four levels; object, rim and core two each.
    assert [sorted(r.tolist()) for r in runs] == [[2, 4], [2, 4], [2, 2, 4], [2, 2, 4]]


def test_smaller_persistent_structures_overwrite_larger(object_levels):
    levels, obj, core = object_levels
    painted = persistent_structures(levels, (10, 10))
    expected = np.where(core, 3, np.where(obj, 2, 1))  # background 1, rim 2... by area
    assert painted.dtype == np.int32 and painted.shape == (10, 10)
    assert np.array_equal(painted, expected)


def test_small_structures_fall_back_to_their_container(object_levels):
    levels, obj, core = object_levels
    painted = persistent_structures(levels, (10, 10), min_area_fraction=0.05)
    # The 4-pixel core is below 5 %: it shows the object that contains it.
    expected = np.where(core, 2, np.where(obj, 3, 1))
    assert np.array_equal(painted, expected)


def test_uncovered_pixels_are_zero(object_levels):
    levels, obj, _ = object_levels
    painted = persistent_structures(levels, (10, 10), min_levels=3)
    assert np.array_equal(painted, np.where(obj, 0, 1))
    flat = persistent_structures([lv.ravel() for lv in levels[:1]], (10, 10))
    assert not flat.any()  # one level: nothing can persist over two


def test_persistent_structures_rejects_bad_input(object_levels):
    levels, _, _ = object_levels
    with pytest.raises(InputError, match="pixels"):
        persistent_structures(levels, (9, 10))
    with pytest.raises(InputError):
        persistent_structures([], (10, 10))
    with pytest.raises(InputError, match="integer"):
        persistent_structures([lv.astype(float) for lv in levels], (10, 10))


def shapes_image(seed: int = 0):
    """48x48 image of a disk and a bar on background, with 6 noisy features per pixel."""
    yy, xx = np.mgrid[:48, :48]
    truth = np.zeros((48, 48), dtype=int)
    truth[(yy - 16) ** 2 + (xx - 16) ** 2 < 100] = 1
    truth[30:40, 8:44] = 2
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 6)) * 5
    feats = centres[truth.ravel()] + rng.normal(scale=0.3, size=(truth.size, 6))
    return truth, feats.astype(np.float32)


def test_persistent_structures_of_a_condensed_image_match_its_regions():
    truth, feats = shapes_image()
    h = condense(feats, seed=0)
    painted = persistent_structures(h.levels, truth.shape)
    assert painted.min() >= 1  # every pixel lies in a persistent structure
    assert ari(painted, truth) == 1.0


def blobs(sizes, dim=10, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim)) * 10
    truth = np.repeat(np.arange(len(sizes)), sizes)
    points = centres[truth] + rng.normal(size=(truth.size, dim))
    order = rng.permutation(truth.size)
    return points[order], truth[order]


@pytest.mark.parametrize("sizes", [[60, 90, 40, 70, 50], [3000, 1500, 800, 400, 150]])
def test_spectral_kmeans_recovers_blobs(sizes):
    points, truth = blobs(sizes)
    labels = spectral_kmeans(points, k=len(sizes), seed=0)
    assert labels.dtype == np.int32 and labels.shape == truth.shape
    assert ari(labels, truth) == 1.0
    # Numbered by size, largest first.
    counts = np.bincount(labels)
    assert list(counts) == sorted(counts, reverse=True)


def test_spectral_kmeans_is_deterministic_and_handles_few_points():
    points, _ = blobs([400, 300, 300, 200], seed=3)
    points = points + np.random.default_rng(1).normal(scale=4.0, size=points.shape)
    assert np.array_equal(
        spectral_kmeans(points, k=6, seed=4), spectral_kmeans(points, k=6, seed=4)
    )
    few = spectral_kmeans(np.array([[0.0], [0.0], [5.0]]), k=10)
    assert few.tolist() == [0, 0, 1]
    with pytest.raises(InputError):
        spectral_kmeans(points, k=0)
    with pytest.raises(InputError, match="NaN"):
        spectral_kmeans(np.full((5, 2), np.nan))


def test_spectral_on_a_hierarchys_nodes_matches_spectral_on_points():
    points, truth = blobs([900, 700, 500, 300])
    h = condense(points, seed=2)
    per_node = spectral_node_labels(h.reduction, k=4, seed=2)
    assert per_node.shape == (h.reduction.nodes.shape[0],)
    assert ari(per_node[h.node_of], spectral_kmeans(points, k=4, seed=2)) == 1.0
    assert ari(per_node[h.reduction.nearest_node(points)], truth) == 1.0


def _halves(splits_at: int, n_levels: int = 5):
    """10x10 levels, coarsest first: left half A, right half B. B splits into 2**i pieces at
    level i, so the cluster count grows by octaves while A stays; A splits into top A1 and
    bottom A2 from level ``splits_at`` on."""
    a = np.zeros((10, 10), dtype=bool)
    a[:, :5] = True
    a1 = a.copy()
    a1[5:] = False
    order = np.cumsum(~a.ravel()).reshape(10, 10) - 1  # 0..49 over B
    levels = []
    for i in range(n_levels):
        b_piece = order * 2**i // 50
        a_label = np.where(a1 & (i >= splits_at), 1, 0)
        levels.append(np.where(a, a_label, 2 + b_piece).ravel())
    return levels, a, a1


def test_stable_structures_keep_a_split_that_outlives_its_parent():
    # A lives 1 octave (2 -> 4 clusters) x 50 px; A1, A2 from 4 clusters to past the finest
    # level (18 -> 36): 3.2 octaves x 25 px each.
    levels, a, a1 = _halves(splits_at=1)
    painted = stable_structures(levels).reshape(10, 10)
    assert np.unique(painted[a1]).size == 1 and np.unique(painted[a & ~a1]).size == 1
    assert painted[a1][0] != painted[a & ~a1][0] and painted[a1][0] > 0
    assert not set(np.unique(painted[a])) & set(np.unique(painted[~a]))


def test_stable_structures_keep_a_parent_that_outlives_its_split():
    # A lives 3.2 octaves (2 -> 18 clusters) x 50 px; its halves 1 octave x 25 px each.
    levels, a, _ = _halves(splits_at=4)
    painted = stable_structures(levels).reshape(10, 10)
    assert np.unique(painted[a]).size == 1 and painted[a][0] > 0
    assert not set(np.unique(painted[a])) & set(np.unique(painted[~a]))


def test_stable_structures_count_octaves_not_levels():
    """Repeating a level adds no lifetime: the choice follows the cluster counts."""
    levels, a, a1 = _halves(splits_at=1)
    repeated = [levels[0]] * 6 + levels[1:]
    np.testing.assert_array_equal(stable_structures(repeated), stable_structures(levels))


def test_stable_structures_cover_a_structure_that_breaks_into_crumbs():
    """An object seen whole in one level only, then in pieces under the minimum area: the
    reference rule paints nothing there (seen once, pieces too small); stable structures keep
    the object."""
    obj = np.zeros((10, 10), dtype=bool)
    obj[:5, :5] = True
    crumbs = np.arange(100).reshape(10, 10) % 7 + 2  # 7 pieces of 3-4 px inside the object
    levels = [np.where(obj, 1, 0).ravel()] + [np.where(obj, crumbs, 0).ravel()] * 2
    reference = persistent_structures(levels, (10, 10), min_area_fraction=0.05)
    assert np.all(reference[obj] == 0)
    stable = stable_structures(levels, min_area_fraction=0.05).reshape(10, 10)
    assert np.all(stable[~obj] == 1) and np.all(stable[obj] == 2)


def test_stable_structures_of_nodes_equal_those_of_their_pixels():
    """Weights stand for the items' areas: nodes with voxel counts give the pixels' answer."""
    rng = np.random.default_rng(0)
    fine = rng.integers(0, 32, size=400)  # 32 nodes
    node_levels = [np.arange(32) // 2**k for k in (4, 3, 3, 2, 1, 1, 0)]  # nested
    pixel_levels = [level[fine] for level in node_levels]
    by_pixel = stable_structures(pixel_levels, min_area_fraction=0.02)
    counts = np.bincount(fine, minlength=32)
    by_node = stable_structures(node_levels, weights=counts, min_area_fraction=0.02)[fine]
    assert ari(by_pixel, by_node) == 1.0 and by_pixel.max() == by_node.max()


def test_a_structure_shedding_crumbs_stays_one_segment():
    """A region losing a pixel at every level is still the same structure (HDBSCAN's rule).
    Over six levels the cluster count grows by 2**0.2 a level (B splits off pixels), so A
    lives about one octave in all, longer than the halves it finally splits into live; cut
    into one short-lived segment per level, it would lose to them."""
    a = np.zeros((10, 10), dtype=bool)
    a[:, :5] = True
    order = np.cumsum(~a.ravel()).reshape(10, 10) - 1  # 0..49 over B
    levels = []
    for i in range(7):
        b_pieces = round(20 * 1.15 ** min(i, 5)) - 1 - min(i, 5)
        labels = np.where(a, 0, 100 + np.minimum(order, b_pieces - 1))  # nested: one more each
        for k in range(min(i, 5)):  # pixel k of A's first row has fallen off as a crumb
            labels[0, k] = 10 + k
        if i == 6:
            labels[5:, :5] = 1  # the rest of A splits into halves at the finest level
        levels.append(labels.ravel())
    painted = stable_structures(levels, min_area_fraction=0.05).reshape(10, 10)
    assert np.unique(painted[a]).size == 1 and painted[a][0] > 0
    assert not set(np.unique(painted[a])) & set(np.unique(painted[~a]))


def test_one_segment_holding_everything_is_no_answer_when_it_splits():
    """A coarsest level of one segment (and crumbs) lives two octaves, 1 -> 4 clusters, and
    outweighs its halves; it is still not the answer (HDBSCAN without a single cluster)."""
    halves = np.repeat([0, 1], 50)
    halves[0], halves[99] = 2, 3  # two crumbs
    levels = [np.zeros(100, dtype=int), halves]
    painted = stable_structures(levels, min_area_fraction=0.05)
    assert painted[1] != painted[98] and painted[1] > 0 and painted[98] > 0
    single = [np.zeros(100, dtype=int), np.zeros(100, dtype=int)]  # never splits: kept
    assert np.all(stable_structures(single) == 1)
