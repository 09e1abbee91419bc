"""Fixtures shared by the whole suite."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic():
    """Every test starts from the same seeds with two CPU threads, as CI has."""
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def mni_t1():
    """The MNI152 2009 T1 template nilearn ships, 1 mm, as a (z, y, x) float32 labelfree Image,
    with grey and white matter probability maps in the same geometry: ``(image, gm, wm)``."""
    nilearn_datasets = pytest.importorskip("nilearn.datasets")
    from labelfree.io import image_from_ras_affine

    def convert(nifti):
        return image_from_ras_affine(np.asarray(nifti.get_fdata(), np.float32), nifti.affine)

    t1 = convert(nilearn_datasets.load_mni152_template(resolution=1))
    gm = convert(nilearn_datasets.load_mni152_gm_template(resolution=1))
    wm = convert(nilearn_datasets.load_mni152_wm_template(resolution=1))
    return t1, gm.array, wm.array


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (needs root and mount permission; skipped otherwise)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)
