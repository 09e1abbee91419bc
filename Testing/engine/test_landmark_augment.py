"""Scanner-like appearance changes that landmark training draws (labelfree.landmarks.augment)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labelfree.landmarks.augment import _curve, random_appearance
from labelfree.landmarks.model import whiten
from labelfree.landmarks.synthetic import shepp_logan_population
from labelfree.landmarks.train import train_landmarks


def _phantoms(n=4, size=64):
    images = shepp_logan_population(n, size=size, seed=3).images
    return torch.from_numpy(np.stack([whiten(im) for im in images]))[:, None]


def test_strength_zero_changes_nothing_and_draws_nothing():
    images = _phantoms()
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert random_appearance(images, 0.0, generator) is images
    assert torch.equal(generator.get_state(), state)


@pytest.mark.parametrize("ndim", [2, 3])
def test_changed_images_stay_whitened_seeded_and_like_the_original(ndim):
    images = (
        _phantoms(3) if ndim == 2 else _phantoms(3, size=24)[..., None].expand(-1, -1, -1, -1, 20)
    )
    first = random_appearance(images, 1.0, torch.Generator().manual_seed(4))
    again = random_appearance(images, 1.0, torch.Generator().manual_seed(4))
    other = random_appearance(images, 1.0, torch.Generator().manual_seed(5))
    assert first.shape == images.shape and first.dtype == images.dtype
    assert torch.equal(first, again) and not torch.equal(first, other)
    flat = first.flatten(1)
    np.testing.assert_allclose(flat.mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(flat.std(1), 1, atol=1e-4)
    # Appearance changes, not geometry: every image stays well correlated with its original.
    for a, b in zip(first.flatten(1), images.flatten(1), strict=True):
        r = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
        assert 0.8 < r < 0.9999


def test_a_share_of_the_batch_draws_what_the_whole_batch_draws():
    images = _phantoms(5)
    whole = random_appearance(images, 1.0, torch.Generator().manual_seed(2))
    share = random_appearance(images[[1, 4]], 1.0, torch.Generator().manual_seed(2), [1, 4], 5)
    torch.testing.assert_close(share, whole[[1, 4]])


def test_the_intensity_curve_is_increasing_and_keeps_the_ends():
    unit = torch.linspace(0, 1, 101)[None]
    slopes = torch.tensor([[2.0, -1.0, 0.5, -2.0, 1.0]])
    curved = _curve(unit, slopes)[0]
    assert (torch.diff(curved) > 0).all()
    assert float(curved[0]) == 0.0 and float(curved[-1]) == pytest.approx(1.0)
    assert float((curved - unit[0]).abs().max()) > 0.1
    flat = _curve(unit, torch.zeros(1, 5))[0]
    torch.testing.assert_close(flat, unit[0])


def test_training_with_appearance_is_reproducible_recorded_and_differs():
    images = list(shepp_logan_population(6, size=32, seed=2).images)
    kwargs = dict(
        ndim=2, n_landmarks=4, input_size=32, epochs=2, seed=1, channels=(4, 8), batch_size=3
    )
    first = train_landmarks(images, equivariance=50.0, appearance=1.0, **kwargs)
    second = train_landmarks(images, equivariance=50.0, appearance=1.0, **kwargs)
    plain = train_landmarks(images, equivariance=50.0, **kwargs)
    assert np.isfinite(first.history["train"]).all()
    assert first.history == second.history
    assert first.history["train"] != plain.history["train"]
    assert first.settings["appearance"] == 1.0 and plain.settings["appearance"] == 0.0
    with pytest.raises(Exception, match="appearance"):
        train_landmarks(images, appearance=-1.0, **kwargs)
