"""Refused before any work: a training output that would destroy an input or cannot be
written, a bad seed, and a folder given as a model file."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from labelfree import cli
from labelfree.io import Image, write_image


def _scan(path):
    rng = np.random.default_rng(0)
    image = Image(rng.normal(100, 10, (40, 40)).astype(np.float32), (1.0, 1.0), (0, 0), np.eye(2))
    return write_image(image, path)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def scans(tmp_path):
    return [_scan(tmp_path / "a.nrrd"), _scan(tmp_path / "b.nrrd")]


def _train(method, scans, out):
    extra = ["--landmarks", "4"] if method == "landmarks" else []
    argv = [method, "train", *map(str, scans), "--out", str(out), "--epochs", "1", *extra]
    return cli.main(argv)


@pytest.mark.parametrize("method", ["cuts", "landmarks"])
def test_an_output_that_names_an_input_is_refused_and_the_input_kept(method, scans, capsys):
    before = _digest(scans[1])
    assert _train(method, scans, scans[1]) == 2
    assert _digest(scans[1]) == before
    assert ".pt" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["cuts", "landmarks"])
def test_a_model_whose_loss_plot_would_replace_an_input_is_refused(method, scans, tmp_path, capsys):
    photo = np.tile(np.arange(40, dtype=np.uint8) * 6, (40, 1))
    sidecar = write_image(Image(photo, (1.0, 1.0), (0, 0), np.eye(2)), tmp_path / "m.loss.png")
    before = _digest(sidecar)
    assert _train(method, [*scans, sidecar], tmp_path / "m.pt") == 2
    assert "overwrite the training input" in capsys.readouterr().err
    assert _digest(sidecar) == before and not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("method", ["cuts", "landmarks"])
def test_outputs_that_cannot_be_written_are_refused_before_training(
    method, scans, tmp_path, capsys
):
    (tmp_path / "folder.pt").mkdir()
    cases = {
        tmp_path / "model": "must be a model file",
        tmp_path / "folder.pt": "is a folder",
        scans[0] / "model.pt": "below the file",
    }
    for out, message in cases.items():
        assert _train(method, scans, out) == 2, out
        assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("*.loss.png")) and not list(tmp_path.glob("*.card.json"))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_folder_is_refused_before_training(scans, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert _train("cuts", scans, locked / "m.pt") == 2
    assert "writable" in capsys.readouterr().err


@pytest.mark.parametrize("seed", ["-1", "abc", str(2**32), "1.5"])
def test_a_bad_seed_exits_2_with_a_message(seed, scans, tmp_path, capsys):
    argv = ["cuts", "train", str(scans[0]), "--out", str(tmp_path / "m.pt"), "--seed", seed]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert "is not a seed" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_a_folder_given_as_model_is_named_a_folder(scans, tmp_path, capsys):
    argv = [
        "cuts",
        "segment",
        str(scans[0]),
        "--out",
        str(tmp_path / "seg"),
        "--model",
        str(tmp_path),
    ]
    assert cli.main(argv) == 2
    assert "is a folder" in capsys.readouterr().err
    assert not (tmp_path / "seg").exists()
