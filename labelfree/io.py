"""Images with their geometry, read and written through SimpleITK.

Conventions
-----------
- ``Image.array`` is indexed like numpy sees ITK images: ``(z, y, x)`` for a
  volume, ``(y, x)`` for a 2-D image, with a trailing channel axis for
  multi-component pixels (``(y, x, 3)`` for RGB).
- ``spacing`` and ``origin`` are in ITK order ``(x, y[, z])``, millimetres,
  and ``origin`` and :meth:`Image.index_to_physical` are in ITK's physical
  space, which is LPS. Slicer's RAS is ``(-L, -P, S)``: see :func:`lps_to_ras`.
- ``direction`` is the ITK direction matrix: column ``i`` is the physical
  direction of index axis ``i`` (x first).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from labelfree.errors import InputError

IMAGE_SUFFIXES = (
    ".nrrd",
    ".nhdr",
    ".nii",
    ".nii.gz",
    ".mha",
    ".mhd",
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".bmp",
)
"""File name endings taken as images when a folder is scanned (lower case)."""


@dataclass
class Image:
    """An image array with its physical geometry.

    Attributes
    ----------
    array : ndarray
        ``(z, y, x)``, ``(y, x)``, or either with a trailing channel axis.
    spacing : tuple of float
        Voxel size ``(x, y[, z])`` in mm.
    origin : tuple of float
        Physical (LPS) position of the first voxel's centre, in mm.
    direction : ndarray
        ``(D, D)`` direction cosines, column ``i`` for index axis ``i``.
    channels : int
        Number of components per pixel (1 for scalar images, 3 for RGB).
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: np.ndarray = field(repr=False)
    channels: int = 1

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return len(self.spacing)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Array shape without the channel axis, numpy order."""
        return self.array.shape[: self.ndim]

    def index_to_physical(self, index_xyz: np.ndarray) -> np.ndarray:
        """Map continuous indices ``(N, D)`` in ``(x, y[, z])`` order to LPS mm ``(N, D)``."""
        index_xyz = np.asarray(index_xyz, dtype=float)
        scaled = index_xyz * np.asarray(self.spacing)
        return scaled @ self.direction.T + np.asarray(self.origin)

    def physical_to_index(self, points_lps: np.ndarray) -> np.ndarray:
        """Map LPS points ``(N, D)`` in mm to continuous ``(x, y[, z])`` indices ``(N, D)``."""
        points_lps = np.asarray(points_lps, dtype=float)
        local = (points_lps - np.asarray(self.origin)) @ self.direction
        return local / np.asarray(self.spacing)

    def with_array(self, array: np.ndarray, channels: int = 1) -> Image:
        """A new image with the same geometry and another array (e.g. a label map)."""
        return Image(array, self.spacing, self.origin, self.direction.copy(), channels)


def lps_to_ras(points: np.ndarray) -> np.ndarray:
    """Flip the first two axes: LPS <-> RAS (the map is its own inverse). ``(N, 3)``."""
    points = np.array(points, dtype=float, copy=True)
    points[..., :2] *= -1
    return points


ras_to_lps = lps_to_ras


def image_from_ras_affine(array_xyz: np.ndarray, affine: np.ndarray) -> Image:
    """An :class:`Image` from an ``(x, y, z)`` array and a NIfTI-style RAS affine.

    This is how nibabel (and so nilearn) hands out volumes; the result is in
    this module's conventions (``(z, y, x)`` array, LPS geometry).

    Parameters
    ----------
    array_xyz : ndarray
        ``(x, y, z)`` voxel array.
    affine : ndarray
        ``(4, 4)`` voxel-index to RAS (mm) matrix.
    """
    affine = np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    flip = np.diag([-1.0, -1.0, 1.0])
    return Image(
        array=np.ascontiguousarray(np.asarray(array_xyz).transpose(2, 1, 0)),
        spacing=tuple(float(s) for s in spacing),
        origin=tuple(float(o) for o in flip @ affine[:3, 3]),
        direction=flip @ (affine[:3, :3] / spacing),
    )


def from_sitk(img: sitk.Image) -> Image:
    """Convert a SimpleITK image (any dimension 2 or 3) to :class:`Image`."""
    dim = img.GetDimension()
    if dim not in (2, 3):
        raise InputError(
            f"Expected a 2-D image or 3-D volume, got {dim} dimensions; "
            "extract one time point or channel first (e.g. with Slicer's Sequences module)."
        )
    array = sitk.GetArrayFromImage(img)
    direction = np.asarray(img.GetDirection(), dtype=float).reshape(dim, dim)
    return Image(
        array=array,
        spacing=tuple(float(s) for s in img.GetSpacing()),
        origin=tuple(float(o) for o in img.GetOrigin()),
        direction=direction,
        channels=int(img.GetNumberOfComponentsPerPixel()),
    )


def to_sitk(image: Image) -> sitk.Image:
    """Convert an :class:`Image` to SimpleITK, keeping its geometry."""
    img = sitk.GetImageFromArray(image.array, isVector=image.channels > 1)
    img.SetSpacing([float(s) for s in image.spacing])
    img.SetOrigin([float(o) for o in image.origin])
    img.SetDirection([float(d) for d in np.asarray(image.direction).ravel()])
    return img


def read_image(path: str | os.PathLike) -> Image:
    """Read anything SimpleITK reads: NRRD, NIfTI, MHA, PNG/JPG (RGB too), a DICOM folder.

    A single-slice 3-D file (``z == 1``) is returned as a 2-D image.

    Raises
    ------
    InputError
        If the path does not exist or cannot be read as an image.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"Input not found: {path}. Check the path.")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise InputError(f"{path} is a folder without a DICOM series; give a file instead.")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            img = reader.Execute()
        else:
            img = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise InputError(
            f"Could not read {path} as an image ({str(err).strip().splitlines()[-1]}); "
            "use NRRD, NIfTI, MHA, PNG/JPG or a DICOM folder."
        ) from err
    if img.GetDimension() == 3 and img.GetSize()[2] == 1:
        img = img[:, :, 0]
    return _checked_components(from_sitk(img), path)


def _checked_components(image: Image, path: Path) -> Image:
    """Accept scalar images and 2-D RGB(A); refuse 4-D and multi-component volumes."""
    if image.channels == 1:
        return image
    if image.ndim == 2 and image.channels in (3, 4):
        image.array = image.array[..., :3]
        image.channels = 3
        return image
    raise InputError(
        f"{path} has {image.channels} components per voxel (a 4-D or multi-component volume); "
        "extract one scalar volume first (e.g. one time point with Slicer's Sequences module)."
    )


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The temporary name keeps the file's suffixes (``.nii.gz``, ``.seg.nrrd``) so
    that writers choosing a format by extension still work. On error the
    temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        if tmp_path.exists():
            tmp_path.chmod(0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_image(image: Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write an :class:`Image` atomically (temporary file, then rename).

    Returns
    -------
    Path
        The written path.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        sitk.WriteImage(to_sitk(image), str(tmp), useCompression=compress)
    return path
