"""The CUTS volume runner: consistent, nested, seeded label volumes, and bad input.

These tests use a randomly initialised encoder (saved as a real model file):
they check the runner's plumbing and guarantees, not segmentation quality
(see test_mni_acceptance.py for that).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_same_segmentation

from labelfree.cuts.embed import embed_slices
from labelfree.cuts.model import CutsModel, model_config, save_cuts_model
from labelfree.cuts.stages.tiles import HALO, content_box
from labelfree.cuts.volume import (
    choose_axis,
    estimate_memory,
    segment_volume,
    segment_volume_steps,
)
from labelfree.errors import InputError, ModelFileError
from labelfree.io import Image
from labelfree.progress import Progress, run_steps

FAST = {"pool_size": 3000, "pool_slices": 6, "max_levels": 6, "device": "cpu"}


def random_model_file(path, channels=1, seed=0):
    torch.manual_seed(seed)
    model = CutsModel(channels).eval()
    card = {"trained_on": "nothing: random initialisation for tests"}
    return save_cuts_model(path, model, model_config(model), card)


@pytest.fixture(scope="module")
def grey_model(tmp_path_factory):
    return random_model_file(tmp_path_factory.mktemp("models") / "grey.pt")


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory):
    return random_model_file(tmp_path_factory.mktemp("models") / "rgb.pt", channels=3)


def oblique(array, spacing=(0.8, 0.9, 2.5), origin=(12.0, -30.0, 7.5)):
    angle = np.deg2rad(20)
    direction = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    return Image(array.astype(np.float32), spacing, origin, direction)


def smooth_volume(depth=12, size=48, z_scale=1.0):
    """A ball with a core and a texture band on a zero background, smooth along z."""
    z, y, x = np.mgrid[:depth, :size, :size].astype(np.float32)
    r = np.sqrt((y - size / 2) ** 2 + (x - size / 2) ** 2 + (z_scale * (z - depth / 2)) ** 2)
    body = r < 0.42 * size
    return 100.0 * body + 80.0 * (r < 0.2 * size) + 30.0 * np.sin(x / 3.0) * body


@pytest.fixture(scope="module")
def smooth_result(grey_model):
    image = oblique(smooth_volume(z_scale=2.0))
    return image, segment_volume(image, grey_model, seed=0, **FAST)


def test_levels_are_int32_in_the_volume_shape_coarsest_first(smooth_result):
    image, result = smooth_result
    assert 2 <= len(result.levels) <= FAST["max_levels"]
    assert result.n_clusters == sorted(result.n_clusters)
    assert len(set(result.n_clusters)) == len(result.n_clusters)
    for labels, count in zip(result.levels, result.n_clusters, strict=True):
        assert labels.dtype == np.int32 and labels.shape == image.spatial_shape
        # labels 1..n, all present, numbered by decreasing size
        np.testing.assert_array_equal(np.unique(labels), np.arange(1, count + 1))
        sizes = np.bincount(labels.ravel())[1:]
        assert np.all(np.diff(sizes) <= 0)
    assert result.axis == 0
    assert {"embed", "condense", "assign", "labels", "total"} <= set(result.seconds)


def test_levels_are_nested(smooth_result):
    _, result = smooth_result
    for coarse, fine in zip(result.levels[:-1], result.levels[1:], strict=True):
        pairs = np.unique(np.stack([fine.ravel(), coarse.ravel()]), axis=1)
        # every fine cluster lies in exactly one coarse cluster
        assert np.unique(pairs[0]).size == pairs.shape[1]


def test_persistent_map_follows_the_finest_level(smooth_result):
    _, result = smooth_result
    assert result.persistent.shape == result.levels[0].shape
    assert result.persistent.max() >= 1
    finest = result.levels[-1]
    for label in np.unique(finest):
        assert np.unique(result.persistent[finest == label]).size == 1


def test_labels_agree_between_neighbouring_slices(smooth_result):
    _, result = smooth_result
    for labels in result.levels[:3]:
        agree = [np.mean(labels[i] == labels[i + 1]) for i in range(labels.shape[0] - 1)]
        assert np.mean(agree) > 0.9, agree


def test_identical_slices_get_identical_labels(grey_model):
    """Labels are one volume-wide vocabulary: the same tissue keeps its id on every slice."""
    column = smooth_volume(depth=1, size=40)[0]
    image = oblique(np.repeat(column[None], 8, axis=0))
    result = segment_volume(image, grey_model, seed=3, **FAST)
    for labels in [*result.levels, result.persistent]:
        for z in range(1, 8):
            np.testing.assert_array_equal(labels[z], labels[0])


def test_same_seed_gives_identical_labels(grey_model, smooth_result):
    image, first = smooth_result
    again = segment_volume(image, grey_model, seed=0, **FAST)
    assert_same_segmentation(again, first)


def test_cropping_to_content_is_exact(grey_model):
    """Embedding only the content box (grown by the 8-px halo) equals embedding the full slice."""
    from labelfree.cuts.model import load_cuts_model

    model, _, _ = load_cuts_model(grey_model, 1)
    plane = np.full((40, 44), -1.0, dtype=np.float32)
    plane[15:22, 20:30] = np.linspace(-0.5, 0.9, 10, dtype=np.float32)
    rows, cols = content_box(plane != -1.0, plane.shape)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (
        15 - HALO,
        22 + HALO,
        20 - HALO,
        30 + HALO,
    )
    full = next(embed_slices(model, plane[None, None]))
    crop = next(embed_slices(model, np.ascontiguousarray(plane[None, None, rows, cols])))
    np.testing.assert_allclose(crop, full[rows, cols], atol=1e-5)


def test_content_box_is_at_least_the_receptive_field():
    content = np.zeros((30, 30), bool)
    content[0, 0] = True
    rows, cols = content_box(content, content.shape)
    assert rows.stop - rows.start == 17 and cols.stop - cols.start == 17
    assert content_box(np.zeros((30, 30), bool), (30, 30)) is None


def test_choose_axis_reads_the_direction_matrix():
    # index axis x (numpy axis 2) points superior, y points left, z points posterior
    direction = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    image = Image(np.zeros((20, 21, 22), np.float32), (1.0, 1.0, 1.0), (0, 0, 0), direction)
    assert choose_axis(image, "auto") == 2
    assert choose_axis(image, "axial") == 2
    assert choose_axis(image, "sagittal") == 1
    assert choose_axis(image, "coronal") == 0
    assert choose_axis(image, 1) == 1
    with pytest.raises(InputError, match="axis"):
        choose_axis(image, 3)
    with pytest.raises(InputError, match="axis"):
        choose_axis(image, "oblique")


def test_slicing_along_another_axis_gives_the_same_shape(grey_model):
    image = oblique(smooth_volume(depth=20, size=24))
    result = segment_volume(image, grey_model, axis=2, seed=0, **FAST)
    assert result.axis == 2
    assert all(labels.shape == image.spatial_shape for labels in result.levels)


def test_2d_grey_and_rgb_images_are_one_slice(grey_model, rgb_model):
    grey = smooth_volume(depth=1, size=40)[0]
    image = Image(grey, (0.5, 0.5), (0.0, 0.0), np.eye(2))
    result = segment_volume(image, grey_model, seed=0, **FAST)
    assert all(labels.shape == (40, 40) for labels in result.levels)
    rgb = np.stack([grey, grey[::-1], grey.T], axis=-1)
    rgb = (255 * (rgb - rgb.min()) / np.ptp(rgb)).astype(np.uint8)
    colour = Image(rgb, (1.0, 1.0), (0.0, 0.0), np.eye(2), channels=3)
    result = segment_volume(colour, rgb_model, method="kmeans", k=4, seed=0, **FAST)
    assert all(labels.shape == (40, 40) for labels in result.levels)
    # k = 4 clusters of the content, plus the black surround as one more
    assert result.kmeans.shape == (40, 40) and 2 <= result.kmeans.max() <= 5
    assert result.kmeans.min() == 1


def test_steps_report_progress_and_can_be_cancelled(grey_model):
    image = oblique(smooth_volume(depth=6, size=32))
    steps = segment_volume_steps(image, grey_model, seed=0, **FAST)
    reports = []
    result = run_steps(steps, reports.append)
    assert all(isinstance(r, Progress) for r in reports)
    fractions = [r.fraction for r in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert result.levels
    cancelled = segment_volume_steps(image, grey_model, seed=0, **FAST)
    next(cancelled)
    next(cancelled)
    cancelled.close()  # a GUI's cancel: no exception, no result


def test_memory_estimate_grows_with_the_volume():
    small = estimate_memory((50, 60, 70), cache_bytes=0)
    large = estimate_memory((100, 120, 140), cache_bytes=0)
    assert large > 4 * small  # 8x the voxels, 4x the slice area
    assert estimate_memory((50, 60, 70), batch_size=1) < estimate_memory((50, 60, 70))
    # texture features hold several (pixels, words) arrays at once: counted, and by word count
    plain = estimate_memory((50, 60, 70))
    assert plain < estimate_memory((50, 60, 70), texture_words=64)
    assert estimate_memory((50, 60, 70), texture_words=64) < estimate_memory(
        (50, 60, 70), texture_words=128
    )
    # the MNI volume: well under 2 GB as designed
    assert estimate_memory((189, 233, 197)) < 2 * 1024**3


# -- bad input --------------------------------------------------------------------------------


def test_refuses_constant_and_non_finite_images(grey_model):
    with pytest.raises(InputError, match="constant"):
        segment_volume(oblique(np.full((4, 30, 30), 7.0)), grey_model, **FAST)
    bad = smooth_volume(depth=4, size=30)
    bad[1, 2, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        segment_volume(oblique(bad), grey_model, **FAST)
    bad[1, 2, 3] = np.inf
    with pytest.raises(InputError, match="NaN or infinite"):
        segment_volume(oblique(bad), grey_model, **FAST)
    with pytest.raises(InputError, match="empty"):
        segment_volume(oblique(np.zeros((0, 30, 30))), grey_model, **FAST)


def test_refuses_4d_and_multicomponent_volumes(grey_model):
    four_d = Image(np.zeros((3, 20, 20, 20), np.float32), (1, 1, 1), (0, 0, 0), np.eye(3))
    with pytest.raises(InputError, match="4-D"):
        segment_volume(four_d, grey_model, **FAST)
    vector = Image(np.zeros((3, 20, 20, 2), np.float32), (1, 1, 1), (0, 0, 0), np.eye(3), 2)
    with pytest.raises(InputError, match="components"):
        segment_volume(vector, grey_model, **FAST)


def test_refuses_rgb_model_for_grey_image_and_reverse(grey_model, rgb_model):
    grey = Image(smooth_volume(depth=1, size=30)[0], (1.0, 1.0), (0, 0), np.eye(2))
    with pytest.raises(InputError, match="RGB"):
        segment_volume(grey, rgb_model, **FAST)
    rgb = Image(
        np.random.default_rng(0).integers(0, 255, (30, 30, 3), dtype=np.uint8),
        (1.0, 1.0),
        (0, 0),
        np.eye(2),
        channels=3,
    )
    with pytest.raises(InputError, match="grayscale"):
        segment_volume(rgb, grey_model, **FAST)


def test_refuses_images_smaller_than_the_receptive_field(grey_model):
    with pytest.raises(InputError, match="17 x 17"):
        segment_volume(oblique(np.random.default_rng(0).random((5, 16, 40))), grey_model, **FAST)
    with pytest.raises(InputError, match="17 x 17"):
        segment_volume(
            Image(np.random.default_rng(0).random((10, 30)), (1.0, 1.0), (0, 0), np.eye(2)),
            grey_model,
            **FAST,
        )


def test_refuses_volumes_too_large_for_memory_before_allocating(grey_model):
    # a 16 GB virtual volume (broadcast: no memory behind it); refused from its shape alone
    huge = np.broadcast_to(np.float32(1.0), (1000, 2000, 2000))
    image = Image(huge, (1.0, 1.0, 1.0), (0, 0, 0), np.eye(3))
    with pytest.raises(InputError, match="GiB"):
        segment_volume(image, grey_model, **FAST)
    small = oblique(smooth_volume(depth=4, size=30))
    with pytest.raises(InputError, match="memory"):
        segment_volume(small, grey_model, max_memory=1024**2, **FAST)


def test_texture_features_count_in_the_memory_check(grey_model):
    # a memory limit that fits the plain run at batch 1 but not the texture step's arrays
    image = oblique(smooth_volume(depth=4, size=30))
    shape, same = image.array.shape, {"batch_size": 1, "pool_slices": 6, "max_levels": 6}
    plain = estimate_memory(shape, **same)  # slices across axis 0, as the run picks here
    assert plain < estimate_memory(shape, texture_words=128, **same)
    options = dict(FAST, batch_size=1, max_memory=plain)
    assert segment_volume(image, grey_model, **options).levels
    with pytest.raises(InputError, match="memory"):
        segment_volume(image, grey_model, texture_scale=4.0, **options)


def test_refuses_corrupted_and_foreign_model_files(tmp_path):
    image = oblique(smooth_volume(depth=4, size=30))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a model" * 100)
    with pytest.raises(ModelFileError):
        segment_volume(image, garbage, **FAST)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ModelFileError, match="not a LabelFree model"):
        segment_volume(image, foreign, **FAST)
    with pytest.raises(ModelFileError, match="not found"):
        segment_volume(image, tmp_path / "missing.pt", **FAST)


def test_refuses_unknown_options(grey_model):
    image = oblique(smooth_volume(depth=4, size=30))
    with pytest.raises(InputError, match="method"):
        segment_volume(image, grey_model, method="watershed", **FAST)
    with pytest.raises(InputError, match="k-means"):
        segment_volume(image, grey_model, method="kmeans", k=1, **FAST)


def test_constant_background_is_one_cluster_at_every_level(smooth_result):
    image, result = smooth_result
    background = image.array == 0
    assert result.n_clusters[0] == 2  # coarsest: object versus background
    for labels in result.levels:
        values = np.unique(labels[background])
        assert values.size == 1
        np.testing.assert_array_equal(labels == values[0], background)


def test_fill_value_is_found_only_when_it_covers_the_border():
    from labelfree.cuts.stages.prepare import background_value

    masked = smooth_volume(depth=6, size=32)[:, None]  # (S, C, H, W), zero outside the ball
    np.testing.assert_array_equal(background_value(masked), [0.0])
    noisy = masked + np.random.default_rng(0).normal(0.0, 5.0, masked.shape)
    assert background_value(noisy) is None
    photo = np.zeros((1, 3, 30, 30), np.float32)
    photo[0, :, 5:25, 5:25] = np.arange(3)[:, None, None] + 1
    np.testing.assert_array_equal(background_value(photo), [0.0, 0.0, 0.0])


def test_gpu_node_assigner_matches_the_numpy_rule():
    """The torch assigner used on CUDA gives the nodes Reduction.nearest_node gives (run on CPU)."""
    from labelfree.cuts.condense import condense
    from labelfree.cuts.stages.assign import NodeAssigner

    rng = np.random.default_rng(0)
    points = rng.normal(size=(3000, 128)).astype(np.float32)
    for normalize in (False, True):
        hierarchy = condense(points, seed=0, normalize=normalize, n_nodes=128)
        fresh = rng.normal(size=(2000, 128)).astype(np.float32)
        expected = hierarchy.reduction.nearest_node(fresh)
        got = NodeAssigner(hierarchy, torch.device("cpu"))(fresh)
        assert got.shape == expected.shape
        assert np.mean(got == expected) > 0.995  # float32 rounding may flip near-ties


def test_tiling_large_slices_changes_memory_not_labels(grey_model):
    plane = smooth_volume(depth=1, size=90)[0]
    image = Image(plane, (1.0, 1.0), (0.0, 0.0), np.eye(2))
    whole = segment_volume(image, grey_model, seed=1, **FAST)
    tiled = segment_volume(image, grey_model, seed=1, tile_pixels=4096, **FAST)
    volume = oblique(smooth_volume(depth=5, size=70))
    whole_3d = segment_volume(volume, grey_model, seed=1, **FAST)
    tiled_3d = segment_volume(volume, grey_model, seed=1, tile_pixels=4096, **FAST)
    for a, b in [(whole, tiled), (whole_3d, tiled_3d)]:
        assert a.n_clusters == b.n_clusters
        for x, y in zip(a.levels, b.levels, strict=True):
            np.testing.assert_array_equal(x, y)


def test_large_uncached_slices_pool_a_sample_of_tiles(grey_model):
    """Slices too large to keep between the passes are pooled from some of their tiles only."""
    plane = smooth_volume(depth=1, size=96)[0]
    image = Image(plane, (1.0, 1.0), (0.0, 0.0), np.eye(2))
    options = {**FAST, "cache_bytes": 0, "tile_pixels": 4096, "seed": 2}
    first = segment_volume(image, grey_model, **options)
    again = segment_volume(image, grey_model, **options)
    assert first.n_clusters == again.n_clusters and first.n_clusters == sorted(first.n_clusters)
    for a, b in zip(first.levels, again.levels, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.shape == (96, 96) and a.min() == 1


def test_persistent_map_is_the_stable_structures_of_the_levels(smooth_result):
    """The node-level shortcut gives what the rule gives on the voxels of the levels."""
    from labelfree.cuts.persistent import stable_structures

    _, result = smooth_result
    by_voxel = stable_structures([level.ravel() for level in result.levels])
    pairs = np.unique(np.stack([by_voxel, result.persistent.ravel()]), axis=1)
    # one-to-one: the same partition (numbering may break ties in area differently)
    assert np.unique(pairs[0]).size == np.unique(pairs[1]).size == pairs.shape[1]
