"""Rebuild labelfree/data/mni152_t1_2mm.nrrd from the MNI152 2009 template in nilearn's wheel.

Usage: python Resources/Scripts/make_sample.py [OUT]
"""

from __future__ import annotations

import sys

import numpy as np
import SimpleITK as sitk
from nilearn import datasets

from labelfree.io import image_from_ras_affine, to_sitk


def nifti_to_sitk(nifti) -> sitk.Image:
    """nibabel image (RAS affine, x-y-z array) to SimpleITK (LPS)."""
    array = np.asarray(nifti.get_fdata(), np.float32)
    return to_sitk(image_from_ras_affine(array, nifti.affine))


def main(out: str = "labelfree/data/mni152_t1_2mm.nrrd") -> None:
    image = nifti_to_sitk(datasets.load_mni152_template(resolution=1))
    image = sitk.SmoothingRecursiveGaussian(image[22:174, 22:212, 0:160], 0.8)
    size = [round(s / 2) for s in image.GetSize()]
    resampled = sitk.Resample(
        image,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        [2.0] * 3,
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )
    array = sitk.GetArrayFromImage(resampled)
    array = np.clip(array / array.max() * 255, 0, 255).round().astype(np.uint8)
    sample = sitk.GetImageFromArray(array)
    sample.CopyInformation(resampled)
    sitk.WriteImage(sample, out, useCompression=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
