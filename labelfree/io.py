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

from labelfree import filechecks
from labelfree.errors import InputError, OutputError
from labelfree.system import available_memory, free_disk

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

    A single-slice 3-D file (``z == 1``) is returned as a 2-D image. Before
    ITK allocates anything, the header is checked against the payload and
    the free memory, and a NIfTI file against its declared length (see
    :mod:`labelfree.filechecks`).

    Raises
    ------
    InputError
        If the path does not exist, is not a regular file or folder, is
        truncated, would not fit in memory, or cannot be read as an image.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"Input not found: {path}. Check the path.")
    filechecks.check_readable_file(path)
    try:
        if path.is_dir():
            img = _read_dicom_folder(path)
        else:
            filechecks.check_nifti_complete(path)
            filechecks.check_declared_size(path, available_memory())
            img = sitk.ReadImage(str(path))
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1]
        if path.name.lower().endswith(IMAGE_SUFFIXES):
            advice = "the file is damaged or not what its name says; export it again"
        else:
            advice = "use NRRD, NIfTI, MHA, PNG/JPG or a DICOM folder"
        raise InputError(f"Could not read {path} as an image ({reason}); {advice}.") from err
    if img.GetDimension() == 3 and img.GetSize()[2] == 1:
        img = img[:, :, 0]
    return _checked_components(from_sitk(img), path)


def _read_dicom_folder(path: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(path))
    if not series:
        raise InputError(f"{path} is a folder without a DICOM series; give a file instead.")
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
    return reader.Execute()


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


def _process_umask() -> int:
    umask = os.umask(0)  # reading it means setting it: done once, before any thread writes
    os.umask(umask)
    return umask


_UMASK = _process_umask()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The temporary name keeps the file's suffixes (``.nii.gz``, ``.seg.nrrd``) so
    that writers choosing a format by extension still work. On error the
    temporary file is removed and ``path`` is untouched. An ``OSError`` (no
    permission, full disk, a parent that is a file) becomes an
    :class:`~labelfree.errors.OutputError` that names ``path``.
    """
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = "".join(path.suffixes)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        if tmp_path.exists():
            tmp_path.chmod(0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    except OSError as err:
        raise OutputError(
            f"Could not write {path} ({err.strerror or err}); choose a folder you can write "
            "to, with free space."
        ) from err
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically and read it back before the rename.

    Raises
    ------
    OutputError
        The file could not be written in full.
    """
    path = Path(path)
    data = text.encode("utf-8")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        if tmp.read_bytes() != data:
            raise OutputError(f"{path} was not written in full; is the disk full?")
    return path


def check_format_keeps_geometry(image: Image, path: str | os.PathLike) -> None:
    """Refuse a NIfTI file name for an image whose direction NIfTI cannot store.

    NIfTI stores a rotation (an orthonormal direction); ITK writes a sheared
    or non-orthogonal direction with a warning only, and the file then no
    longer overlays its input.

    Raises
    ------
    InputError
        ``path`` ends in ``.nii`` or ``.nii.gz`` and the direction is not orthonormal.
    """
    if not Path(path).name.lower().endswith((".nii", ".nii.gz")):
        return
    direction = np.asarray(image.direction, dtype=float)
    error = np.abs(direction.T @ direction - np.eye(len(direction))).max()
    if error > 1e-4:
        raise InputError(
            f"This image's axes are not orthogonal (off by {error:.3f}), which NIfTI cannot "
            f"store: {Path(path).name} would not overlay the image. Write NRRD or MHA instead."
        )


def write_image(image: Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write an :class:`Image` atomically, and read it back before the rename.

    ITK's writers can report success on a full disk with a truncated file, so
    the written file is read back and compared (voxels and geometry) before
    it takes ``path``'s name.

    Returns
    -------
    Path
        The written path.

    Raises
    ------
    InputError
        The format cannot keep the image's geometry (see :func:`check_format_keeps_geometry`).
    OutputError
        Not enough free disk space, no permission, or the file read back differs.
    """
    path = Path(path)
    check_format_keeps_geometry(image, path)
    free = free_disk(path.parent)
    # A floor for compressed files (label maps shrink about 20-fold); exact otherwise.
    compressed = compress and not path.name.lower().endswith(".nii")
    needed = image.array.nbytes // (20 if compressed else 1)
    if free is not None and free < needed:
        raise OutputError(
            f"Not enough free disk space for {path}: about {needed // 1024**2 + 1} MiB needed, "
            f"{free // 1024**2} MiB free. Free some space or choose another folder."
        )
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(to_sitk(image), str(tmp), useCompression=compress)
        except RuntimeError as err:
            reason = str(err).strip().splitlines()[-1]
            raise OutputError(
                f"Could not write {path} ({reason}); is the disk full or the folder read-only? "
                "Nothing was replaced."
            ) from err
        _verify_written(image, tmp, path)
    return path


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-for-bit equality (NaN included), at memcmp speed rather than elementwise."""
    if a.dtype != b.dtype:
        return np.array_equal(a, b, equal_nan=np.issubdtype(a.dtype, np.floating))
    return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def _verify_written(image: Image, tmp: Path, path: Path) -> None:
    try:
        filechecks.check_nifti_complete(tmp)
        back = from_sitk(sitk.ReadImage(str(tmp)))
    except (RuntimeError, InputError) as err:
        raise OutputError(
            f"{path} was not written in full (it reads back truncated or damaged); is the "
            "disk full? Nothing was replaced."
        ) from err
    lossy = path.name.lower().endswith((".jpg", ".jpeg"))
    if back.array.shape != image.array.shape or not (lossy or _same_bits(back.array, image.array)):
        raise OutputError(
            f"{path} reads back different from what was written; is the disk full? "
            "Nothing was replaced."
        )
    if not (
        np.allclose(back.spacing, image.spacing, rtol=1e-5, atol=1e-6)
        and np.allclose(back.origin, image.origin, rtol=1e-5, atol=1e-4)
        and np.allclose(back.direction, image.direction, atol=1e-5)
    ):
        raise OutputError(
            f"{path.name} cannot store this image's geometry (spacing, origin or direction "
            "would change); write NRRD instead. Nothing was replaced."
        )
