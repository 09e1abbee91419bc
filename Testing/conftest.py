"""Fixtures shared by the whole suite."""

from __future__ import annotations

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
    import SimpleITK as sitk

    from labelfree.io import from_sitk

    def convert(nifti):
        arr = np.asarray(nifti.get_fdata(), dtype=np.float32).transpose(2, 1, 0)
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
        aff = nifti.affine
        spacing = np.linalg.norm(aff[:3, :3], axis=0)
        img.SetSpacing(spacing.tolist())
        # NIfTI affines are RAS; ITK wants LPS.
        flip = np.diag([-1.0, -1.0, 1.0])
        img.SetDirection((flip @ (aff[:3, :3] / spacing)).ravel().tolist())
        img.SetOrigin((flip @ aff[:3, 3]).tolist())
        return from_sitk(img)

    t1 = convert(nilearn_datasets.load_mni152_template(resolution=1))
    gm = convert(nilearn_datasets.load_mni152_gm_template(resolution=1))
    wm = convert(nilearn_datasets.load_mni152_wm_template(resolution=1))
    return t1, gm.array, wm.array
