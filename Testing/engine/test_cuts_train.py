"""CUTS training: mining, losses, training runs, model files written by training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from skimage import data, transform

from labelfree.cuts import losses
from labelfree.cuts.embed import embed_slices
from labelfree.cuts.mining import mine_pairs, patch_ssim
from labelfree.cuts.model import CutsModel, load_cuts_model, model_config, save_cuts_model
from labelfree.cuts.train import train_cuts, train_cuts_steps, train_from_files
from labelfree.errors import InputError, LabelFreeError
from labelfree.progress import run_steps

QUICK = {"batch_size": 8, "samples_per_epoch": 16}


@pytest.fixture(scope="module")
def camera() -> np.ndarray:
    """skimage's camera man, 96 x 96, raw 0..1 intensities."""
    return transform.resize(data.camera(), (96, 96), anti_aliasing=True)


def test_mining_never_pairs_an_anchor_with_itself():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 1, 17, 19)).astype(np.float32)
    images[0] = 0.3  # flat image: every candidate ties
    for threshold in (0.5, 2.0):  # 2.0: nothing passes, the best-SSIM fallback is used
        pairs = mine_pairs(images, rng, n_anchors=64, threshold=threshold)
        offset = np.abs(pairs.positives - pairs.anchors)
        assert (offset.max(-1) > 0).all()
        assert offset.max() <= 5
        assert (pairs.positives >= 0).all() and (pairs.positives < [17, 19]).all()
    assert pairs.fallback.all()
    strict = mine_pairs(images, np.random.default_rng(1), n_anchors=64, threshold=0.5)
    assert (strict.ssim[~strict.fallback] > 0.5).all()


def test_mining_draws_new_anchors_every_call():
    rng = np.random.default_rng(0)
    images = np.random.default_rng(1).normal(size=(2, 3, 30, 30))
    first = mine_pairs(images, rng).anchors
    second = mine_pairs(images, rng).anchors
    assert first.shape == (2, 8, 2)
    assert not np.array_equal(first, second)


def test_patch_ssim():
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, size=25)
    others = np.stack([a, 0.5 * a + 0.2, -a, rng.uniform(-1, 1, size=25)])
    s = patch_ssim(a, others)
    assert s[0] == pytest.approx(1.0)
    assert s[2] < 0 < s[1] < 1
    assert abs(s[3]) < 0.5
    flat = np.full(25, 0.2)
    assert patch_ssim(flat, flat[None])[0] == pytest.approx(1.0)


def test_nt_xent_matches_its_definition_and_rewards_alignment():
    torch.manual_seed(0)
    a, p = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    z = torch.nn.functional.normalize(torch.cat([a, p], 1), dim=-1)
    sim = torch.exp(z @ z.transpose(1, 2) / 0.5)
    pos = torch.cat([torch.arange(4, 8), torch.arange(0, 4)])
    num = sim[:, torch.arange(8), pos]
    den = sim.sum(-1) - torch.diagonal(sim, dim1=1, dim2=2)
    expected = (-torch.log(num / den)).mean()
    torch.testing.assert_close(losses.nt_xent(a, p, 0.5), expected)
    assert losses.nt_xent(a, a + 0.01 * p, 0.5) < losses.nt_xent(a, p, 0.5)


def test_training_lowers_both_losses(camera):
    result = train_cuts(
        [camera], in_channels=1, epochs=4, seed=0, batch_size=4, samples_per_epoch=32, lr=3e-3
    )
    last = result.history[-1]
    assert last["val_contrastive"] < result.initial["val_contrastive"] - 0.2
    assert last["val_reconstruction"] < 0.5 * result.initial["val_reconstruction"]
    assert result.history[-1]["train_reconstruction"] < result.history[0]["train_reconstruction"]
    assert result.best_epoch >= 1 and not result.model.training
    assert result.slices["validation"] == 0  # one image: held-out anchors


def test_same_seed_same_model_other_seed_other_model(camera):
    runs = [train_cuts([camera], in_channels=1, epochs=1, seed=s, **QUICK) for s in (3, 3, 4)]
    weights = [r.model.state_dict()["encoder.blocks.1.0.weight"] for r in runs]
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])
    slices = (camera[None, None] * 2 - 1).astype(np.float32)
    emb = [next(embed_slices(r.model, slices)) for r in runs[:2]]
    np.testing.assert_array_equal(emb[0], emb[1])


def test_volume_training_splits_slices_and_skips_empty_ones():
    vol = np.zeros((12, 24, 26), np.float32)
    rng = np.random.default_rng(0)
    vol[2:10] = rng.random((8, 24, 26))
    steps = train_cuts_steps([vol], in_channels=1, epochs=1, val_fraction=0.25, **QUICK)
    reports = []
    result = run_steps(steps, reports.append)
    assert result.slices == {"train": 6, "validation": 2, "skipped_constant": 4}
    fractions = [r.fraction for r in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


@pytest.mark.parametrize(
    "images, channels, words",
    [
        ([np.full((30, 30), 3.0)], 1, "constant"),
        ([np.where(np.eye(30) > 0, np.nan, 1.0)], 1, "NaN"),
        ([np.random.default_rng(0).random((12, 40))], 1, "17 x 17"),
        ([np.zeros((0, 40))], 1, "empty"),
        ([np.random.default_rng(0).integers(0, 255, (30, 30, 3))], 1, "RGB"),
        ([np.random.default_rng(0).random((30, 30))], 3, "RGB model"),
        ([np.random.default_rng(0).random((30, 30))], 2, "channels"),
    ],
)
def test_bad_training_input_is_refused(images, channels, words):
    with pytest.raises(InputError, match=words):
        train_cuts(images, in_channels=channels, epochs=1, **QUICK)


def test_train_from_files_writes_model_card_and_plot(tmp_path, camera):
    png = tmp_path / "camera.png"
    sitk.WriteImage(sitk.GetImageFromArray((camera * 255).astype(np.uint8)), str(png))
    seen = []
    out = train_from_files(
        [png], tmp_path / "m.pt", epochs=2, seed=1, device="cpu", progress=seen.append, **QUICK
    )
    model, config, card = load_cuts_model(out, channels=1)
    assert config["normalisation"]["method"] == "percentile"
    assert card["training_data"][0]["file"] == "camera.png"
    assert card["best_losses"]["val_reconstruction"] > 0 and card["seconds"] > 0
    assert json.loads((tmp_path / "m.card.json").read_text())["kind"] == "cuts"
    assert (tmp_path / "m.loss.png").read_bytes()[:4] == b"\x89PNG"
    assert seen and seen[-1].fraction == 1.0

    rgb = save_cuts_model(tmp_path / "rgb.pt", CutsModel(3), model_config(CutsModel(3)), {})
    with pytest.raises(InputError, match="RGB model .* grayscale"):
        train_from_files([png], tmp_path / "x.pt", epochs=1, init_model=rgb)
    with pytest.raises(LabelFreeError, match="not found"):
        train_from_files([tmp_path / "missing.nrrd"], tmp_path / "x.pt", epochs=1)
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("crop", [24, None])
def test_dense_crop_modes_train_on_images_of_different_sizes(crop):
    rng = np.random.default_rng(0)
    images = [rng.random((30, 30)), rng.random((34, 40))]
    result = train_cuts(
        images, in_channels=1, epochs=1, crop=crop, batch_size=2, samples_per_epoch=4
    )
    assert result.slices == {"train": 1, "validation": 1, "skipped_constant": 0}
    assert np.isfinite(list(result.history[0].values())).all()
    assert result.config["training"]["crop"] == crop


def test_slice_axis_is_the_coarsest_spaced_one():
    from labelfree.cuts.train import _slice_axis

    assert _slice_axis((0.8, 0.8, 5.0)) == 0  # ITK (x, y, z): thick axial slices -> numpy z
    assert _slice_axis((4.0, 1.0, 1.0)) == 2  # coarse x -> numpy axis 2
    assert _slice_axis((1.0, 1.0, 1.0)) == 0
