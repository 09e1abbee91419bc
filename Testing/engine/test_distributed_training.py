"""CUTS training under torchrun with 2 gloo processes on the CPU (issue 13, items 1 and 6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from skimage import data, transform

from labelfree.io import Image, write_image

# Run as the training script under torchrun and in one process; records the per-step
# losses (rank 0) and which ranks wrote a model file.
SCRIPT = """
import json, os, sys
from labelfree.cuts import train
out, log = sys.argv[1], sys.argv[2]
real_save = train.save_cuts_model
def save(*args, **kwargs):
    open(log + ".rank" + os.environ.get("RANK", "0"), "w").write("wrote")
    return real_save(*args, **kwargs)
train.save_cuts_model = save
losses = []
def progress(report):
    if report.message.startswith("epoch"):
        losses.append([float(v.split()[-1]) for v in report.message.split(":")[1].split(",")])
train.train_from_files(sys.argv[3:], out, epochs=1, seed=0, device="cpu", batch_size=8,
                       samples_per_epoch=32, progress=progress)
if os.environ.get("RANK", "0") == "0":
    json.dump(losses, open(log, "w"))
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    camera = transform.resize(data.camera(), (64, 64), anti_aliasing=True).astype(np.float32)
    paths = []
    for index, array in enumerate([camera, np.ascontiguousarray(np.flipud(camera))]):
        image = Image(array, (1.0, 1.0), (0.0, 0.0), np.eye(2))
        paths.append(str(write_image(image, folder / f"{index}.nrrd")))
    (folder / "train.py").write_text(SCRIPT)
    return folder, paths


def _run(command, folder):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def test_two_gloo_processes_train_as_one_process_does(images):
    folder, paths = images
    _run([sys.executable, "train.py", "one.pt", "one.json", *paths], folder)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    _run([*torchrun, "2", "train.py", "two.pt", "two.json", *paths], folder)
    one = np.array(json.loads((folder / "one.json").read_text()))
    two = np.array(json.loads((folder / "two.json").read_text()))
    assert one.shape == two.shape == (4, 2)  # 32 samples, batches of 8: 4 steps
    # The same batches, each rank half of each, BatchNorm over the whole batch: the losses
    # agree to the 3-4 digits the progress shows, step after step.
    np.testing.assert_allclose(two, one, rtol=2e-3)
    assert sorted(p.name for p in folder.glob("two.json.rank*")) == ["two.json.rank0"]
    card = json.loads((folder / "two.card.json").read_text())
    assert card["world_size"] == 2 and not (folder / "two.ckpt").exists()


FAILING_RANK = """
import os, sys
from labelfree import trainingdata
from labelfree.errors import InputError
from labelfree.cuts.train import train_from_files
if os.environ.get("RANK") == "1":  # a file this machine cannot read
    def unreadable(path):
        raise InputError(f"{path} cannot be read on this machine")
    trainingdata.read_image = unreadable
try:
    train_from_files(sys.argv[2:], sys.argv[1], epochs=1, device="cpu", batch_size=8)
except InputError as err:
    print(f"rank {os.environ.get('RANK')}: {err}", file=sys.stderr)
    raise SystemExit(2)
"""


def test_a_rank_that_fails_alone_stops_every_rank_instead_of_hanging(images):
    folder, paths = images
    (folder / "failing.py").write_text(FAILING_RANK)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(  # a hang would end in the timeout, as a failure
        [*torchrun, "2", "failing.py", "stopped.pt", *paths],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode != 0
    assert "rank 0: Another process of this run stopped" in done.stderr
    assert "cannot be read on this machine" in done.stderr
    assert not (folder / "stopped.pt").exists()


LANDMARK_SCRIPT = """
import os, sys
from labelfree.landmarks import train
real_save = train.save_landmark_model
def save(*args, **kwargs):
    open(sys.argv[1] + ".rank" + os.environ.get("RANK", "0"), "w").write("wrote")
    return real_save(*args, **kwargs)
train.save_landmark_model = save
train.train_from_files(sys.argv[2:], sys.argv[1], n_landmarks=6, epochs=2, seed=0,
                       input_size=64, device="cpu", batch_size=4, equivariance=1.0,
                       appearance=0.5)
"""


@pytest.fixture(scope="module")
def landmark_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp_landmarks")
    camera = transform.resize(data.camera(), (48, 48), anti_aliasing=True).astype(np.float32)
    variants = [camera, camera[::-1], camera[:, ::-1], camera.T, np.rot90(camera), camera[::-1].T]
    paths = []
    for index, array in enumerate(variants):
        image = Image(np.ascontiguousarray(array), (1.0, 1.0), (0.0, 0.0), np.eye(2))
        paths.append(str(write_image(image, folder / f"{index}.nrrd")))
    (folder / "train.py").write_text(LANDMARK_SCRIPT)
    return folder, paths


def test_landmark_training_on_two_gloo_processes_equals_one_process(landmark_images):
    from labelfree.landmarks.model import load_landmark_model

    folder, paths = landmark_images
    _run([sys.executable, "train.py", "one.pt", *paths], folder)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    _run([*torchrun, "2", "train.py", "two.pt", *paths], folder)
    one, two = (load_landmark_model(folder / name) for name in ("one.pt", "two.pt"))
    # Each rank runs the network on its half of every batch's pairs (and equivariance
    # images) with the whole batch's random draws: the gradients add up to one process's.
    # The heatmap's bias has no true gradient (a softmax ignores a constant), so Adam turns
    # float noise into steps of the learning rate: compare what the models do instead.
    from labelfree.io import read_image
    from labelfree.landmarks.model import predict_landmarks

    for path in paths:
        array = read_image(path).array
        found = [predict_landmarks(model, config, array) for model, config, _ in (one, two)]
        np.testing.assert_allclose(found[1], found[0], atol=1e-5)  # normalised units
    weights = [model.state_dict()["heatmap.weight"].numpy() for model, _, _ in (one, two)]
    np.testing.assert_allclose(weights[1], weights[0], rtol=1e-3, atol=1e-6)
    assert not np.allclose(weights[0], 0)  # training moved the zero-initialised head
    cards = [json.loads((folder / f"{name}.card.json").read_text()) for name in ("one", "two")]
    assert [card["training"]["world_size"] for card in cards] == [1, 2]
    assert cards[1]["final_loss"] == pytest.approx(cards[0]["final_loss"], rel=1e-4)
    assert sorted(p.name for p in folder.glob("two.pt.rank*")) == ["two.pt.rank0"]
    assert not (folder / "two.ckpt").exists()
