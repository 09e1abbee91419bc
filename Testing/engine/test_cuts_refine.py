"""Boundary refinement of label maps to texture edges (labelfree.cuts.refine)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import random_model_file

from labelfree.cuts.refine import refine_boundaries
from labelfree.cuts.stages.labels import LabelMaps, refine_maps, size_ordered
from labelfree.cuts.texture import TextureWords
from labelfree.cuts.volume import segment_volume
from labelfree.errors import InputError
from labelfree.io import Image


def two_word_sets(size=64, seed=0):
    """Words 0-3 left of column ``size // 2``, words 4-7 right of it, drawn at random."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 4, (size, size))
    words[:, size // 2 :] += 4
    truth = np.zeros((size, size), dtype=np.int32)
    truth[:, size // 2 :] = 1
    return words, truth


def test_a_shifted_boundary_moves_back_to_the_texture_edge():
    words, truth = two_word_sets()
    shifted = np.zeros_like(truth)
    shifted[:, 32 + 8 :] = 1  # 8 px too far right: 512 pixels wrong
    refined = refine_boundaries(shifted, words, 8)
    assert (shifted != truth).sum() == 512
    # It stops 2 columns short: the side that still holds some of the other side's words
    # explains mixed neighbourhoods better (measured: 192 wrong after 1 round, 128 after 3-10).
    assert (refined != truth).sum() <= 128
    assert refined.dtype == shifted.dtype and set(np.unique(refined)) == {0, 1}


def test_labels_move_only_within_reach_and_words_of_minus_one_stay():
    words, truth = two_word_sets()
    labels = np.zeros_like(truth)
    labels[:, 62:] = 1  # a sliver at the right edge; the texture edge is 30 px away
    words[:, 56:60] = -1  # no words here: these keep label 0
    refined = refine_boundaries(labels, words, 8, reach=4, iterations=1)
    assert (refined[:, :58] == 0).all()  # beyond reach of the sliver
    assert (refined[:, 56:60] == 0).all()
    assert (refined[:, 60:] == 1).all()


def test_volumes_are_refined_slice_by_slice():
    words, truth = two_word_sets()
    labels = np.zeros((2, 64, 64), dtype=np.int16)
    labels[0, :, 40:] = 1
    labels[1, :, 24:] = 1  # the other side of the edge in the second slice
    refined = refine_boundaries(labels, np.stack([words, words]), 8)
    assert refined.shape == labels.shape and refined.dtype == np.int16
    for plane in refined:
        assert (plane != truth).sum() <= 128


@pytest.mark.parametrize(
    ("labels", "words", "options"),
    [
        (np.zeros((4, 4)), np.zeros((4, 5)), {}),
        (np.zeros(4), np.zeros(4), {}),
        (np.zeros((4, 4)), np.full((4, 4), 9), {}),
        (np.zeros((4, 4)), np.zeros((4, 4)), {"prior": 0.0}),
    ],
)
def test_refuses_bad_input(labels, words, options):
    with pytest.raises(InputError):
        refine_boundaries(labels.astype(int), words.astype(int), 8, **options)


def test_size_ordered_numbers_by_decreasing_count_and_can_keep_zero():
    labels = np.array([[5, 5, 5, 2], [0, 0, 9, 9]])
    assert size_ordered(labels, keep_zero=False).tolist() == [[1, 1, 1, 4], [2, 2, 3, 3]]
    assert size_ordered(labels, keep_zero=True).tolist() == [[1, 1, 1, 3], [0, 0, 2, 2]]


def test_refined_levels_are_reordered_by_cluster_count_and_only_repeats_dropped():
    rng = np.random.default_rng(0)
    band = np.arange(60)[None, :].repeat(60, axis=0) // 20  # three vertical bands
    words = band * 4 + rng.integers(0, 4, band.shape)  # each band has words of its own
    three, two = band + 1, np.minimum(band, 1) + 1
    maps = LabelMaps(
        levels=[three, two, three.copy()],  # a finer level ahead of a coarser one, a repeat
        n_clusters=[3, 2, 3],
        persistence=[5, 6, 7],
        persistent=three.copy(),
        kmeans=None,
    )
    texture = TextureWords(words=np.zeros((12, 2), dtype=np.float32), scale=4.0)
    out = refine_maps(maps, words[None], texture, axis=None)
    assert out.n_clusters == [2, 3] and out.persistence == [6, 5]
    assert (out.levels[0] == size_ordered(two, keep_zero=False)).all()
    assert (out.levels[1] == size_ordered(three, keep_zero=False)).all()


def test_the_runner_refines_texture_levels_and_keeps_them_size_ordered(tmp_path):
    model = random_model_file(tmp_path / "grey.pt")
    rng = np.random.default_rng(0)
    stripes = 0.1 + 0.8 * ((np.arange(64)[None, :] // 4) % 2) + 0.1 * rng.random((64, 64))
    image = np.where(np.arange(64)[None, :] >= 32, stripes, rng.random((64, 64)))
    geometry = Image(image.astype(np.float32), (1.0, 1.0), (0.0, 0.0), np.eye(2))
    options = {"pool_size": 3000, "max_levels": 6, "device": "cpu", "texture_scale": 4.0}
    plain = segment_volume(geometry, model, refine=False, **options)
    refined = segment_volume(geometry, model, **options)
    assert "refine" in refined.seconds and "refine" not in plain.seconds
    assert any(not np.array_equal(a, b) for a, b in zip(plain.levels, refined.levels, strict=True))
    assert len(refined.persistence) == len(refined.levels)
    assert all(np.diff(refined.n_clusters) >= 0)  # coarsest first, still
    for level, n in zip(refined.levels, refined.n_clusters, strict=True):
        counts = np.bincount(level.ravel())[1:]
        assert counts.size == n and (counts > 0).all() and (np.diff(counts) <= 0).all()
    assert refined.persistent.min() >= 0


def test_refinement_memory_is_what_the_estimate_counts():
    import tracemalloc

    rng = np.random.default_rng(0)
    words = rng.integers(0, 128, (24, 96, 96)).astype(np.int16)
    blocks = np.arange(96)[:, None] // 12 * 8 + np.arange(96)[None, :] // 12
    labels = np.repeat(blocks[None], 24, axis=0).astype(np.int32)
    tracemalloc.start()
    try:
        size_ordered(refine_boundaries(labels, words, 128, scale=6.0), keep_zero=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 18 * labels.size  # estimate_memory counts 20 bytes a voxel with the words
