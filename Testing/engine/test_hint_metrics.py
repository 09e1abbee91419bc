"""Metrics on hand-checkable masks, and binarisation by hint."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import hausdorff_distance

from labelfree import metrics
from labelfree.cuts.hint import binarise_by_mask, binarise_by_point, central_point, hint_label
from labelfree.errors import InputError


def square(shape, rows, cols):
    m = np.zeros(shape, dtype=bool)
    m[rows, cols] = True
    return m


def test_dice_of_half_overlapping_squares():
    a = square((10, 10), slice(2, 6), slice(2, 6))  # 16 px
    b = square((10, 10), slice(4, 8), slice(2, 6))  # 16 px, 8 shared
    assert metrics.dice(a, b) == pytest.approx(0.5)
    assert metrics.dice(a, a) == 1.0
    assert metrics.dice(a, ~a) == 0.0
    assert metrics.dice(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0


def test_hausdorff_in_pixels_and_mm():
    a = square((10, 20), 0, 0)
    b = square((10, 20), 3, 4)
    assert metrics.hausdorff(a, b) == pytest.approx(5.0)
    # numpy-order spacing: 2 mm between rows, 1 mm between columns.
    assert metrics.hausdorff(a, b, spacing=(2.0, 1.0)) == pytest.approx(np.sqrt(6**2 + 4**2))
    shifted = metrics.hausdorff(
        square((10, 10), slice(2, 6), slice(2, 6)), square((10, 10), slice(4, 8), slice(2, 6))
    )
    assert shifted == pytest.approx(2.0)


def test_hausdorff_empty_mask_is_the_diagonal():
    empty = np.zeros((10, 20), bool)
    some = square((10, 20), 5, 5)
    assert metrics.hausdorff(empty, some) == pytest.approx(np.sqrt(10**2 + 20**2))
    assert metrics.hausdorff(some, empty, spacing=(0.5, 2.0)) == pytest.approx(
        np.sqrt(5**2 + 40**2)
    )
    assert metrics.hausdorff(empty, empty) == 0.0


def test_hausdorff_agrees_with_scikit_image_in_3d():
    rng = np.random.default_rng(1)
    a = rng.random((12, 15, 9)) > 0.97
    b = rng.random((12, 15, 9)) > 0.97
    assert metrics.hausdorff(a, b) == pytest.approx(hausdorff_distance(a, b))


def test_rmse_and_ssim_of_binary_masks():
    a = np.zeros((10, 10), bool)
    b = a.copy()
    b[:5, :5] = True  # 25 of 100 pixels differ
    assert metrics.rmse(a, b) == pytest.approx(0.5)
    ref = square((32, 32), slice(8, 24), slice(8, 24))
    near = square((32, 32), slice(9, 25), slice(8, 24))
    assert metrics.ssim(ref, ref) == pytest.approx(1.0)
    assert metrics.ssim(near, ref) < 1.0
    assert metrics.ssim(near, ref) > metrics.ssim(~ref, ref)


def test_ergas_identical_is_zero_and_constant_error_is_hand_checkable():
    ones = np.ones((16, 16))
    assert metrics.ergas(ones, ones) == 0.0
    # local RMSE 1 everywhere, local mean 1 / 8**2 (sewar scaling): 100 * 4 * 64.
    assert metrics.ergas(np.zeros((16, 16)), ones) == pytest.approx(25600.0)
    # where the reference's local mean is 0 the error counts as 0
    assert metrics.ergas(ones, np.zeros((16, 16))) == 0.0


def test_metrics_refuse_mismatched_shapes():
    with pytest.raises(InputError, match="shape"):
        metrics.dice(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(InputError, match="spacing"):
        metrics.hausdorff(np.ones((3, 3)), np.ones((3, 3)), spacing=(1.0, 1.0, 1.0))


def three_region_labels():
    labels = np.ones((20, 20), dtype=np.int32)
    labels[:, 8:14] = 2
    labels[:, 14:] = 3
    return labels


def test_binarise_by_mask_picks_the_most_frequent_label_under_the_mask():
    labels = three_region_labels()
    mask = np.zeros((20, 20), bool)
    mask[5:15, 6:13] = True  # 20 px of label 1, 50 px of label 2
    assert hint_label(labels, mask) == 2
    np.testing.assert_array_equal(binarise_by_mask(labels, mask), labels == 2)
    assert not binarise_by_mask(labels, np.zeros((20, 20), bool)).any()


def test_binarise_by_mask_ties_go_to_the_smallest_label():
    labels = three_region_labels()
    mask = np.zeros((20, 20), bool)
    mask[0, 7:9] = True  # one pixel of label 1, one of label 2
    assert hint_label(labels, mask) == 1


def test_binarise_by_mask_refuses_bad_hints():
    with pytest.raises(InputError, match="same shape"):
        binarise_by_mask(three_region_labels(), np.ones((5, 5)))
    with pytest.raises(InputError, match="integer"):
        binarise_by_mask(np.ones((5, 5)), np.ones((5, 5)))


def test_binarise_by_point_with_and_without_connectivity():
    labels = np.ones((10, 10, 10), dtype=np.int32)
    labels[:, :, 3] = 2  # a wall of label 2 splits label 1 into two parts
    everywhere = binarise_by_point(labels, (5, 5, 1))
    np.testing.assert_array_equal(everywhere, labels == 1)
    part = binarise_by_point(labels, (5, 5, 1), connected=True)
    assert part[5, 5, 1] and part[:, :, :3].all() and not part[:, :, 4:].any()
    with pytest.raises(InputError, match="outside"):
        binarise_by_point(labels, (5, 5, 10))
    with pytest.raises(InputError, match="indices"):
        binarise_by_point(labels, (5, 5))


def test_central_point_is_deep_inside_the_largest_component():
    mask = np.zeros((30, 30), bool)
    mask[2:5, 2:5] = True  # small component
    mask[10:21, 5:26] = True  # large rectangle, centre (15, 15)
    assert central_point(mask) == (15, 15)
    with pytest.raises(InputError, match="empty"):
        central_point(np.zeros((4, 4)))
