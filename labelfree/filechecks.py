"""Checks on image files before ITK reads them, and after a writer says it is done.

ITK trusts headers. A 186-byte NRRD whose header declares 1024^3 floats makes
it allocate 4 GiB before it notices the payload is missing, a NIfTI file cut
in half is read with zeros where the slices are missing, and a writer on a
full disk reports success with a truncated file. These functions refuse such
files with a message, from the header alone (and, for NIfTI, the payload's
length), before anything large is allocated.
"""

from __future__ import annotations

import gzip
import math
import stat
import struct
import zlib
from pathlib import Path

import SimpleITK as sitk

from labelfree.errors import InputError

MAX_DEFLATE_RATIO = 1032
"""The most a deflate stream can expand (zlib's limit, about 1032:1)."""

READ_MEMORY_FACTOR = 2
"""Reading needs the ITK buffer and the numpy copy: twice the voxel bytes."""


def check_readable_file(path: Path) -> None:
    """Refuse what is neither a regular file nor a folder (a FIFO would block forever)."""
    mode = path.stat().st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise InputError(
            f"{path} is not a regular file (a pipe, socket or device); save the image to a "
            "file and give that file."
        )


def check_declared_size(path: Path, available: int | None) -> None:
    """Refuse a file whose header declares more voxels than its payload or memory can hold.

    Parameters
    ----------
    path : Path
        An image file ITK can read the header of.
    available : int or None
        Bytes of memory available now (None: not checked).

    Raises
    ------
    InputError
        The payload is too short to hold the declared voxels, or reading would
        not fit in memory.
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return  # sitk.ReadImage gives the reason, with the same error handling
    size = [int(s) for s in reader.GetSize()]
    voxel_bytes = _voxel_bytes(reader, len(size))
    declared = voxel_bytes
    for side in size:
        declared *= side
    shape = " x ".join(map(str, size))
    payload = _single_file_payload(path)
    if payload is not None and declared > MAX_DEFLATE_RATIO * max(payload, 1):
        raise InputError(
            f"{path} declares {shape} voxels ({_size(declared)}) but the file is only "
            f"{_size(payload)}: it is truncated or damaged. Export it again."
        )
    if available is not None and READ_MEMORY_FACTOR * declared > available:
        raise InputError(
            f"{path} is a {shape} image of {_size(declared)}; reading it needs about "
            f"{_size(READ_MEMORY_FACTOR * declared)} of memory and {_size(available)} is "
            "available. Crop or downsample it first (e.g. Slicer's Crop Volume module)."
        )


def _voxel_bytes(reader: sitk.ImageFileReader, dimension: int) -> int:
    """Bytes per voxel of the pixel type the header declares (complex and vector types too)."""
    components = max(1, reader.GetNumberOfComponents())
    try:
        probe = sitk.Image([1] * dimension, reader.GetPixelID(), components)
    except RuntimeError:  # scalar and complex types take no component count
        try:
            probe = sitk.Image([1] * dimension, reader.GetPixelID())
        except RuntimeError:
            return 1  # a pixel type SimpleITK cannot make: let the reader say what is wrong
    return probe.GetSizeOfPixelComponent() * probe.GetNumberOfComponentsPerPixel()


def _single_file_payload(path: Path) -> int | None:
    """Bytes on disk holding the voxels, if they are in ``path`` itself; None if elsewhere."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return path.stat().st_size
    if name.endswith((".nrrd", ".mha")):
        head = path.open("rb").read(4096).lower()
        if b"data file" in head or b"datafile" in head:
            return None  # detached data: ITK checks the data file itself
        if name.endswith(".mha") and b"elementdatafile = local" not in head:
            return None
        return path.stat().st_size
    return None


def check_nifti_complete(path: Path) -> None:
    """Refuse a NIfTI-1/2 file (``.nii`` or ``.nii.gz``) whose voxel data is cut short.

    ITK reads the missing voxels of a truncated NIfTI file as zeros, so the
    length is checked here against the header: ``vox_offset`` plus the voxel
    bytes that ``dim`` and ``bitpix`` declare.

    Raises
    ------
    InputError
        The file is truncated, or its gzip stream is damaged.
    """
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return
    compressed = name.endswith(".gz")
    try:
        with gzip.open(path, "rb") if compressed else path.open("rb") as stream:
            header = stream.read(540)
            required = _nifti_required_bytes(header)
            if required is None:
                return  # not a NIfTI header ITK would take either: ITK says why
            length = len(header) + _stream_length(stream) if compressed else path.stat().st_size
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise InputError(
            f"{path} is a damaged or truncated gzip file ({err}); export it again."
        ) from err
    if length < required:
        raise InputError(
            f"{path} is truncated: its header declares {_size(required)} but it holds "
            f"{_size(length)}; the missing slices would be read as zeros. Export it again."
        )


def _stream_length(stream, chunk: int = 1 << 20) -> int:
    total = 0
    while block := stream.read(chunk):
        total += len(block)
    return total


def _nifti_required_bytes(header: bytes) -> int | None:
    """File length a NIfTI-1 or NIfTI-2 header declares, or None if it is not one."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            dims = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            offset = struct.unpack(order + "f", header[108:112])[0]
            if not math.isfinite(offset):
                raise InputError(
                    "The NIfTI header's voxel offset is not a number: the file is damaged."
                )
            return _declared(dims, bitpix, max(int(offset), 352))
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            bitpix = struct.unpack(order + "h", header[14:16])[0]
            dims = struct.unpack(order + "8q", header[16:80])
            offset = struct.unpack(order + "q", header[168:176])[0]
            return _declared(dims, bitpix, max(offset, 544))
    return None


def _declared(dims: tuple[int, ...], bitpix: int, offset: int) -> int | None:
    rank = dims[0]
    if not 1 <= rank <= 7 or bitpix <= 0:
        return None
    count = 1
    for side in dims[1 : rank + 1]:
        count *= max(int(side), 1)
    return offset + count * bitpix // 8


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"
