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
