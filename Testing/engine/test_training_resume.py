"""A killed training run continues from its checkpoint to the weights of an uninterrupted run
(issue 13, item 2): CUTS, on the CPU with one process."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data, transform

from labelfree import cli
from labelfree.checkpoint import checkpoint_path
from labelfree.cuts.model import load_cuts_model
from labelfree.cuts.train import train_cuts, train_cuts_steps
from labelfree.errors import InputError
from labelfree.io import Image, write_image
from labelfree.progress import run_steps

QUICK = {"in_channels": 1, "batch_size": 8, "samples_per_epoch": 16, "epochs": 3, "seed": 2}


@pytest.fixture(scope="module")
def images():
    camera = transform.resize(data.camera(), (64, 64), anti_aliasing=True)
    return [camera, np.flipud(camera)]


def _equal_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _stop_after_epoch(steps, epoch: int) -> None:
    """Advance until the next epoch starts (its checkpoint is written), then kill the run."""
    for report in steps:
        if report.message.startswith(f"epoch {epoch + 1}/"):
            break
    steps.close()


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(images, tmp_path):
    whole = train_cuts(images, **QUICK)
    checkpoint = tmp_path / "run.ckpt"
    _stop_after_epoch(train_cuts_steps(images, checkpoint=checkpoint, **QUICK), epoch=2)
    assert checkpoint.is_file()
    resumed = run_steps(train_cuts_steps(images, resume=checkpoint, **QUICK))
    assert _equal_weights(resumed.model.state_dict(), whole.model.state_dict())
    assert resumed.history == whole.history and resumed.best_epoch == whole.best_epoch


def test_a_checkpoint_of_another_run_is_refused(images, tmp_path):
    checkpoint = tmp_path / "run.ckpt"
    _stop_after_epoch(train_cuts_steps(images, checkpoint=checkpoint, **QUICK), epoch=1)
    for change in ({"seed": 3}, {"epochs": 4}):
        with pytest.raises(InputError, match="other settings"):
            run_steps(train_cuts_steps(images, resume=checkpoint, **{**QUICK, **change}))
    with pytest.raises(InputError, match="other settings"):
        run_steps(train_cuts_steps(images[:1], resume=checkpoint, **QUICK))
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable checkpoint"):
        run_steps(train_cuts_steps(images, resume=tmp_path / "junk.ckpt", **QUICK))


def test_the_command_line_resumes_and_removes_the_checkpoint_when_done(
    images, tmp_path, monkeypatch
):
    paths = [
        write_image(
            Image(im.astype(np.float32), (1.0, 1.0), (0, 0), np.eye(2)), tmp_path / f"{i}.nrrd"
        )
        for i, im in enumerate(images)
    ]
    args = ["cuts", "train", *map(str, paths), "--epochs", "3", "--seed", "2", "--device", "cpu"]
    args += ["--quiet"]
    assert cli.main([*args, "--out", str(tmp_path / "whole.pt")]) == 0
    assert not checkpoint_path(tmp_path / "whole.pt").exists()

    from labelfree.cuts import train as cuts_train

    real_steps = cuts_train.train_cuts_steps

    def killed_in_epoch_3(*a, **k):
        for report in real_steps(*a, **k):
            if report.message.startswith("epoch 3/"):
                raise KeyboardInterrupt  # Ctrl-C
            yield report

    monkeypatch.setattr(cuts_train, "train_cuts_steps", killed_in_epoch_3)
    out = tmp_path / "killed.pt"
    assert cli.main([*args, "--out", str(out)]) == 130
    assert not out.exists() and checkpoint_path(out).is_file()  # no model, a checkpoint
    monkeypatch.setattr(cuts_train, "train_cuts_steps", real_steps)
    assert cli.main([*args, "--out", str(out), "--resume", str(checkpoint_path(out))]) == 0
    assert not checkpoint_path(out).exists()
    resumed, _, card = load_cuts_model(out)
    whole, _, _ = load_cuts_model(tmp_path / "whole.pt")
    assert _equal_weights(resumed.state_dict(), whole.state_dict())
    assert card["resumed_from"] == "killed.ckpt"


def test_a_killed_landmark_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    from labelfree.landmarks.synthetic import shepp_logan_population
    from labelfree.landmarks.train import train_landmarks, train_landmarks_steps

    phantoms = list(shepp_logan_population(6, size=64, seed=1).images)
    options = {"ndim": 2, "n_landmarks": 4, "input_size": 64, "epochs": 3, "seed": 5}
    options |= {"batch_size": 4, "equivariance": 10.0}
    whole = train_landmarks(phantoms, **options)
    checkpoint = tmp_path / "lm.ckpt"
    _stop_after_epoch(train_landmarks_steps(phantoms, checkpoint=checkpoint, **options), epoch=2)
    resumed = run_steps(train_landmarks_steps(phantoms, resume=checkpoint, **options))
    assert _equal_weights(resumed.regressor.state_dict(), whole.regressor.state_dict())
    assert resumed.history == whole.history and resumed.best_epoch == whole.best_epoch
    with pytest.raises(InputError, match="other settings"):
        run_steps(train_landmarks_steps(phantoms, resume=checkpoint, **{**options, "seed": 6}))


def test_a_fresh_run_refuses_to_overwrite_the_checkpoint_of_a_killed_one(images, tmp_path):
    from labelfree.cuts.train import train_from_files

    path = write_image(
        Image(images[0].astype(np.float32), (1.0, 1.0), (0, 0), np.eye(2)), tmp_path / "a.nrrd"
    )
    left = checkpoint_path(tmp_path / "m.pt")
    left.write_bytes(b"what a killed run left")
    with pytest.raises(InputError, match="--resume"):
        train_from_files([path], tmp_path / "m.pt", epochs=1, device="cpu")
    assert left.read_bytes() == b"what a killed run left"
