"""Cohorts larger than memory (issue 13, item 3): both trainers read one file at a time and keep
only what they train on (CUTS: normalised slices in files on disk; landmarks: a resampled copy),
with the same result as training on the images in memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from skimage import data, transform

from labelfree import trainingdata
from labelfree.cuts.model import load_cuts_model
from labelfree.cuts.train import train_cuts
from labelfree.cuts.train import train_from_files as train_cuts_from_files
from labelfree.errors import InputError
from labelfree.io import Image, read_image, write_image
from labelfree.landmarks.model import load_landmark_model
from labelfree.landmarks.train import train_from_files as train_landmarks_from_files
from labelfree.landmarks.train import train_landmarks

CUTS_QUICK = {"epochs": 1, "seed": 3, "batch_size": 8, "samples_per_epoch": 16, "device": "cpu"}


def _volumes(count: int, shape=(40, 64, 64)) -> list[np.ndarray]:
    """Distinct smooth textured volumes (a brick texture shifted and scaled per case)."""
    brick = transform.resize(data.brick().astype(np.float32), shape[1:], anti_aliasing=True)
    rng = np.random.default_rng(4)
    ramp = np.linspace(0.5, 1.5, shape[0], dtype=np.float32)[:, None, None]
    return [
        (np.roll(brick, rng.integers(0, 30, 2), axis=(0, 1))[None] * ramp * (1 + k / 10)).astype(
            np.float32
        )
        for k in range(count)
    ]


def _write(tmp_path, volumes) -> list:
    paths = []
    for k, volume in enumerate(volumes):
        image = Image(volume, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3))
        paths.append(write_image(image, tmp_path / f"case{k:02d}.nrrd", compress=False))
    return paths


def _scratch_folders(folder) -> list:
    return sorted(p.name for p in folder.iterdir() if ".slices-" in p.name)


def _peak_numpy_bytes(work, warm_up) -> int:
    """Peak bytes that Python and numpy allocate while ``work()`` runs (ITK and torch are
    not traced, so this measures what the trainer itself keeps). ``warm_up()`` runs first,
    untraced, so that modules imported on first use (tens of MB) are not counted."""
    warm_up()
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_cuts_holds_one_volume_at_a_time_and_keeps_its_slices_on_disk(tmp_path):
    volumes = _volumes(16)
    paths = _write(tmp_path, volumes)
    cohort = sum(v.nbytes for v in volumes)  # 16 x 640 KiB of float32
    peak = _peak_numpy_bytes(
        lambda: train_cuts_from_files(paths, tmp_path / "m.pt", **CUTS_QUICK),
        lambda: train_cuts_from_files(paths[:1], tmp_path / "warm.pt", **CUTS_QUICK),
    )
    # In memory the cohort took its raw copy and its slices (2 x cohort); one volume at a
    # time it takes a few copies of one volume.
    assert peak < cohort / 2, (peak, cohort)
    assert (tmp_path / "m.pt").is_file()
    assert _scratch_folders(tmp_path) == []  # the slices on disk go with the run


def test_cuts_streamed_from_files_equals_training_on_the_arrays(tmp_path):
    paths = _write(tmp_path, _volumes(3, shape=(12, 48, 48)))
    out = train_cuts_from_files(paths, tmp_path / "files.pt", **CUTS_QUICK)
    streamed, _, card = load_cuts_model(out)
    arrays = [read_image(p).array for p in paths]
    in_memory = train_cuts(arrays, in_channels=1, **CUTS_QUICK).model
    a, b = streamed.state_dict(), in_memory.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert card["scratch_estimate_bytes"] == 4 * sum(a.size for a in arrays)


def test_a_bad_file_late_in_the_cohort_stops_before_training_and_leaves_no_slices(tmp_path):
    paths = _write(tmp_path, _volumes(4, shape=(12, 48, 48)))
    paths[2].write_bytes(paths[2].read_bytes()[:400])  # a truncated file
    with pytest.raises(InputError, match="case02.nrrd"):
        train_cuts_from_files(paths, tmp_path / "m.pt", **CUTS_QUICK)
    assert _scratch_folders(tmp_path) == [] and not (tmp_path / "m.pt").exists()


def test_a_cohort_beyond_the_scratch_disk_is_refused_before_reading(tmp_path, monkeypatch):
    paths = _write(tmp_path, _volumes(3, shape=(12, 48, 48)))
    monkeypatch.setattr(trainingdata, "free_disk", lambda folder: 1000)  # a nearly full disk
    with pytest.raises(InputError, match="prepared slices beside the model"):
        train_cuts_from_files(paths, tmp_path / "m.pt", **CUTS_QUICK)
    assert _scratch_folders(tmp_path) == []


def test_a_cohort_beyond_memory_is_refused_with_the_estimate(tmp_path, monkeypatch):
    paths = _write(tmp_path, _volumes(3, shape=(12, 48, 48)))
    monkeypatch.setattr(trainingdata, "available_memory", lambda: 10_000)
    with pytest.raises(InputError, match="needs about .* of memory"):
        train_cuts_from_files(paths, tmp_path / "m.pt", **CUTS_QUICK)


def test_the_estimate_is_reported_before_reading(tmp_path):
    paths = _write(tmp_path, _volumes(2, shape=(12, 48, 48)))
    messages = []
    train_cuts_from_files(
        paths, tmp_path / "m.pt", progress=lambda p: messages.append(p.message), **CUTS_QUICK
    )
    assert messages[0].startswith("2 training files: about ")
    assert "of scratch disk" in messages[0]
    assert messages[1:3] == ["read case00.nrrd (1 of 2)", "read case01.nrrd (2 of 2)"]


LANDMARK_QUICK = {"n_landmarks": 4, "epochs": 1, "input_size": 24, "device": "cpu", "seed": 1}
LANDMARK_QUICK |= {"channels": (4, 8), "batch_size": 4}


def test_landmarks_keep_only_the_resampled_images(tmp_path):
    volumes = _volumes(12)
    paths = _write(tmp_path, volumes)
    cohort = sum(v.nbytes for v in volumes)
    peak = _peak_numpy_bytes(
        lambda: train_landmarks_from_files(paths, tmp_path / "lm.pt", **LANDMARK_QUICK),
        lambda: train_landmarks_from_files(paths[:2], tmp_path / "warm.pt", **LANDMARK_QUICK),
    )
    assert peak < cohort / 2, (peak, cohort)


def test_landmarks_streamed_from_files_equal_training_on_the_arrays(tmp_path):
    volumes = _volumes(4, shape=(12, 48, 48))
    paths = _write(tmp_path, volumes)
    out = train_landmarks_from_files(paths, tmp_path / "lm.pt", **LANDMARK_QUICK)
    streamed, _, card = load_landmark_model(out)
    options = {k: v for k, v in LANDMARK_QUICK.items()}
    in_memory = train_landmarks([read_image(p).array for p in paths], ndim=3, **options).regressor
    a, b = streamed.state_dict(), in_memory.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert card["trained_on"]["sizes_zyx"] == [[12, 48, 48]]
