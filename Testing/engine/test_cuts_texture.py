"""Texture features for CUTS: local histograms of embedding words, and the runner's texture mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_same_segmentation, random_model_file

from labelfree.cuts.embed import embed_slices
from labelfree.cuts.stages.tiles import HALO, halo
from labelfree.cuts.texture import fit_words, radius, texture_features
from labelfree.cuts.volume import segment_volume
from labelfree.errors import InputError
from labelfree.io import Image

FAST = {"pool_size": 3000, "pool_slices": 4, "max_levels": 6, "device": "cpu"}


@pytest.fixture(scope="module")
def grey_model(tmp_path_factory):
    return random_model_file(tmp_path_factory.mktemp("models") / "grey.pt")


def two_textures(size=64, seed=0):
    """Left: uniform noise; right: vertical stripes 4 px wide, noisy. Both of mean 0.5.

    No value fills the border, so nothing is taken for background.
    """
    rng = np.random.default_rng(seed)
    dots = rng.random((size, size))
    stripes = 0.1 + 0.8 * ((np.arange(size)[None, :] // 4) % 2) + 0.1 * rng.random((size, size))
    truth = np.zeros((size, size), dtype=bool)
    truth[:, size // 2 :] = True
    return np.where(truth, stripes, dots).astype(np.float32), truth


def test_features_are_square_roots_of_local_histograms():
    rng = np.random.default_rng(0)
    emb = torch.from_numpy(rng.normal(size=(2, 5, 20, 24)).astype(np.float32))
    words = fit_words(emb.permute(0, 2, 3, 1).reshape(-1, 5).numpy(), 6, scale=2.0, seed=0)
    out = texture_features(emb, words)
    assert out.shape == (2, 6, 20, 24)
    np.testing.assert_allclose((out**2).sum(dim=1).numpy(), 1.0, atol=1e-5)
    # A pixel far from the others' words: with a tiny scale its histogram is its own word.
    sharp = texture_features(emb, type(words)(words.words, 0.1))
    nearest = ((emb[:, None] - torch.from_numpy(words.words)[None, :, :, None, None]) ** 2).sum(2)
    np.testing.assert_array_equal(sharp.argmax(1).numpy(), nearest.argmin(1).numpy())


def test_words_are_seeded_and_checked():
    points = np.random.default_rng(1).normal(size=(200, 4))
    a, b = fit_words(points, 8, 3.0, seed=5), fit_words(points, 8, 3.0, seed=5)
    np.testing.assert_array_equal(a.words, b.words)
    assert a.words.dtype == np.float32 and a.n_words == 8 and a.scale == 3.0
    with pytest.raises(InputError, match="words"):
        fit_words(points, 1, 3.0)
    with pytest.raises(InputError, match="scale"):
        fit_words(points, 8, 0.0)


def test_halo_grows_by_the_pooling_radius():
    assert halo(0.0) == HALO
    assert radius(4.0) == 8 and halo(4.0) == HALO + 8


def test_texture_features_separate_what_one_patch_cannot(grey_model):
    image, truth = two_textures()
    geometry = Image(image, (1.0, 1.0), (0.0, 0.0), np.eye(2))

    def best_dice(result):
        return max(
            2 * ((level == v) & truth).sum() / ((level == v).sum() + truth.sum())
            for level in result.levels
            for v in np.unique(level)
        )

    plain = best_dice(segment_volume(geometry, grey_model, seed=0, **FAST))
    textured = best_dice(segment_volume(geometry, grey_model, seed=0, texture_scale=4.0, **FAST))
    assert textured > 0.9 and plain < textured - 0.2


@pytest.mark.parametrize("scale", [3.0, 12.0])  # 12: the halo is wider than a budget's core
def test_texture_mode_is_seeded_and_tiling_changes_memory_not_labels(grey_model, scale):
    image, _ = two_textures(size=96)
    geometry = Image(image, (1.0, 1.0), (0.0, 0.0), np.eye(2))
    options = {**FAST, "seed": 3, "texture_scale": scale, "texture_words": 8}
    whole = segment_volume(geometry, grey_model, **options)
    again = segment_volume(geometry, grey_model, **options)
    tiled = segment_volume(geometry, grey_model, tile_pixels=4096, **options)
    assert_same_segmentation(again, whole)
    assert_same_segmentation(tiled, whole)


def test_embed_slices_returns_features_of_the_words_length(grey_model):
    from labelfree.cuts.model import load_cuts_model

    model, _, _ = load_cuts_model(grey_model, 1)
    image, _ = two_textures(size=40)
    emb = next(embed_slices(model, image[None, None]))
    words = fit_words(emb.reshape(-1, emb.shape[-1]), 5, 2.0)
    feats, ids = next(embed_slices(model, image[None, None], texture=words))
    assert emb.shape == (40, 40, model.embed_dim) and feats.shape == (40, 40, 5)
    assert ids.shape == (40, 40) and ids.dtype == np.int16 and 0 <= ids.min() <= ids.max() < 5
    nearest = ((emb[..., None, :] - words.words) ** 2).sum(-1).argmin(-1)
    assert np.array_equal(ids, nearest)


@pytest.mark.parametrize("options", [{"texture_scale": -1.0}, {"texture_words": 1}])
def test_refuses_bad_texture_options(grey_model, options):
    image, _ = two_textures()
    with pytest.raises(InputError, match="texture"):
        segment_volume(Image(image, (1.0, 1.0), (0.0, 0.0), np.eye(2)), grey_model, **options)


def test_texture_features_are_float32_under_bf16(grey_model):
    """bf16 autocast runs the encoder only; the words are chosen from float32 features."""
    image, _ = two_textures(size=32)
    geometry = Image(image, (1.0, 1.0), (0.0, 0.0), np.eye(2))
    result = segment_volume(geometry, grey_model, seed=0, texture_scale=2.0, bf16=True, **FAST)
    assert result.levels[0].shape == (32, 32)


def test_refuses_an_infinite_texture_scale(grey_model):
    image, _ = two_textures()
    with pytest.raises(InputError, match="texture"):
        segment_volume(
            Image(image, (1.0, 1.0), (0.0, 0.0), np.eye(2)), grey_model, texture_scale=np.inf
        )
