"""CUTS encoder, normalisation, model files and embedding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labelfree.cuts.embed import embed_slices, prepare_slices
from labelfree.cuts.encoder import RECEPTIVE_FIELD, CutsEncoder, PatchHead
from labelfree.cuts.model import CutsModel, load_cuts_model, model_config, save_cuts_model
from labelfree.cuts.normalise import default_normalisation, normalise
from labelfree.errors import InputError, LabelFreeError, ModelFileError
from labelfree.intensities import check_intensities
from labelfree.io import Image
from labelfree.modelfile import ModelFile, bundled_model_path, save_model


def image_2d(array: np.ndarray, channels: int = 1) -> Image:
    return Image(array, (1.0, 1.0), (0.0, 0.0), np.eye(2), channels)


@pytest.mark.parametrize("channels", [1, 3])
def test_encoder_embeds_every_pixel(channels):
    enc = CutsEncoder(channels).eval()
    x = torch.randn(2, channels, 40, 33)
    with torch.no_grad():
        z = enc(x)
    assert z.shape == (2, 128, 40, 33)
    head = PatchHead(128, channels)
    assert head(z[:, :, 0, 0]).shape == (2, channels, 5, 5)
    assert sum(p.numel() for p in enc.parameters() if p.ndim == 4) == 25 * (
        channels * 16 + 16 * 32 + 32 * 64 + 64 * 128
    )


def test_embedding_is_local_not_pooled():
    enc = CutsEncoder(1).eval()
    x = torch.randn(1, 1, 44, 44)
    y = x.clone()
    y[0, 0, 36:, 36:] += 5.0  # far from (10, 10): beyond the 17 x 17 receptive field
    with torch.no_grad():
        zx, zy = enc(x), enc(y)
    torch.testing.assert_close(zx[..., :20, :20], zy[..., :20, :20])
    assert not torch.allclose(zx[..., 38, 38], zy[..., 38, 38])


def test_unpadded_patch_gives_the_centre_embedding():
    enc = CutsEncoder(3).eval()
    x = torch.randn(1, 3, 50, 50)
    r = RECEPTIVE_FIELD // 2
    with torch.no_grad():
        full = enc(x)[0, :, 25, 30]
        patch = enc(x[:, :, 25 - r : 25 + r + 1, 30 - r : 30 + r + 1], padded=False)
    assert patch.shape == (1, 128, 1, 1)
    torch.testing.assert_close(patch[0, :, 0, 0], full, rtol=1e-4, atol=1e-5)


def test_normalise_percentile_and_rgb():
    rng = np.random.default_rng(0)
    ct = rng.normal(-500, 300, (4, 30, 30))
    out = normalise(ct, default_normalisation(1))
    assert out.dtype == np.float32 and out.shape == ct.shape
    assert out.min() == -1.0 and out.max() == 1.0
    assert np.median(out) == pytest.approx(0.0, abs=0.05)
    rgb = rng.integers(0, 256, (20, 20, 3)).astype(np.uint8)
    np.testing.assert_allclose(normalise(rgb, default_normalisation(3)), rgb / 127.5 - 1, atol=1e-6)
    rgb16 = rgb.astype(np.uint16) * 257  # the same photograph saved with 16 bits
    np.testing.assert_allclose(
        normalise(rgb16, default_normalisation(3)), rgb / 127.5 - 1, atol=1e-5
    )
    win = normalise(
        np.array([-2000.0, 0.0, 3000.0]), {"method": "window", "low": -1000, "high": 1000}
    )
    np.testing.assert_allclose(win, [-1, 0, 1])


@pytest.mark.parametrize(
    "array, words",
    [
        (np.zeros((0, 5)), "empty"),
        (np.full((20, 20), 7.0), "constant"),
        (np.where(np.eye(20) > 0, np.nan, 1.0), "NaN"),
        (np.where(np.eye(20) > 0, np.inf, np.arange(400.0).reshape(20, 20)), "infinite"),
        (np.ones((20, 20), complex), "complex"),
    ],
)
def test_bad_arrays_are_refused(array, words):
    with pytest.raises(InputError, match=words):
        check_intensities(array)
    with pytest.raises(InputError, match=words):
        normalise(array, default_normalisation(1))


def test_rgb_and_grayscale_mismatch_are_refused():
    gray = image_2d(np.random.default_rng(0).random((30, 30)))
    rgb = image_2d(np.random.default_rng(0).integers(0, 255, (30, 30, 3)).astype(np.uint8), 3)
    with pytest.raises(InputError, match="RGB model but the image is grayscale"):
        prepare_slices(gray, None, default_normalisation(3))
    with pytest.raises(InputError, match="grayscale model but the image is RGB"):
        prepare_slices(rgb, None, default_normalisation(1))
    with pytest.raises(InputError, match="grayscale"):
        normalise(gray.array, default_normalisation(3))


def test_prepare_slices_axes_and_small_images():
    vol = np.random.default_rng(0).random((20, 24, 28)).astype(np.float32)
    image = Image(vol, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    norm = default_normalisation(1)
    assert prepare_slices(image, 0, norm).shape == (20, 1, 24, 28)
    assert prepare_slices(image, 1, norm).shape == (24, 1, 20, 28)
    s2 = prepare_slices(image, 2, norm)
    assert s2.shape == (28, 1, 20, 24)
    np.testing.assert_allclose(s2[5, 0], normalise(vol, norm)[:, :, 5])
    with pytest.raises(InputError, match="axis"):
        prepare_slices(image, 3, norm)
    with pytest.raises(InputError, match="17 x 17"):
        prepare_slices(image_2d(np.random.default_rng(0).random((12, 40))), None, norm)
    rgb = image_2d(np.random.default_rng(0).integers(0, 255, (30, 31, 3)).astype(np.uint8), 3)
    assert prepare_slices(rgb, None, default_normalisation(3)).shape == (1, 3, 30, 31)


def test_embed_slices_yields_one_embedding_per_slice():
    model = CutsModel(1).eval()
    slices = np.random.default_rng(0).uniform(-1, 1, (5, 1, 20, 23)).astype(np.float32)
    out = list(embed_slices(model, slices, batch_size=2))
    assert len(out) == 5
    assert all(o.shape == (20, 23, 128) and o.dtype == np.float32 for o in out)
    with torch.no_grad():
        expected = model(torch.from_numpy(slices[3:4]))[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(out[3], expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="17 x 17"):
        next(embed_slices(model, slices[:, :, :10]))
    with pytest.raises(InputError, match=r"\(S, 1, H, W\)"):
        next(embed_slices(model, np.zeros((2, 3, 20, 20), np.float32)))
    bad = slices.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        next(embed_slices(model, bad))


def test_model_file_round_trip_and_refusals(tmp_path):
    torch.manual_seed(1)
    model = CutsModel(3)
    path = save_cuts_model(tmp_path / "m.pt", model, model_config(model), {"note": "test"})
    loaded, config, card = load_cuts_model(path, channels=3)
    assert not loaded.training
    assert config["normalisation"] == default_normalisation(3)
    assert card["note"] == "test" and card["kind"] == "cuts"
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value)

    with pytest.raises(InputError, match="RGB model .* but the image is grayscale"):
        load_cuts_model(path, channels=1)
    gray = save_cuts_model(tmp_path / "g.pt", CutsModel(1), model_config(CutsModel(1)), {})
    with pytest.raises(InputError, match="grayscale model .* but the image is RGB"):
        load_cuts_model(gray, channels=3)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a model" * 10)
    with pytest.raises(ModelFileError):
        load_cuts_model(garbage)
    other = save_model(tmp_path / "lm.pt", ModelFile("landmarks", {}, {}, {}))
    with pytest.raises(ModelFileError, match="'landmarks' model"):
        load_cuts_model(other)
    wrong = save_model(
        tmp_path / "wrong.pt",
        ModelFile("cuts", model_config(model), {}, {"encoder.blocks.0.0.weight": torch.zeros(2)}),
    )
    with pytest.raises(ModelFileError, match="do not fit"):
        load_cuts_model(wrong)
    broken = save_model(
        tmp_path / "broken.pt", ModelFile("cuts", {"embed_dim": 128}, {}, {"w": torch.zeros(1)})
    )
    with pytest.raises(ModelFileError, match="config"):
        load_cuts_model(broken)
    with pytest.raises(LabelFreeError, match="channels"):
        load_cuts_model(None, channels=2)


@pytest.mark.parametrize("channels, name", [(1, "cuts_mr.pt"), (3, "cuts_rgb.pt")])
def test_bundled_default_models(channels, name):
    model, config, card = load_cuts_model(None, channels=channels)
    assert model.in_channels == channels == config["in_channels"] == card["input_channels"]
    assert card["kind"] == "cuts" and card["training_data"]
    assert card["best_losses"]["val_reconstruction"] < card["initial_losses"]["val_reconstruction"]
    path = bundled_model_path(name)
    assert path.stat().st_size < 2_000_000
    slices = np.random.default_rng(0).uniform(-1, 1, (1, channels, 24, 24)).astype(np.float32)
    emb = next(embed_slices(model, slices))
    assert emb.shape == (24, 24, 128) and np.isfinite(emb).all()
    with pytest.raises(InputError, match="grayscale" if channels == 3 else "RGB"):
        load_cuts_model(path, channels=4 - channels)
