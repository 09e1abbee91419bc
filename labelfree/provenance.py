"""``provenance.json``: what produced a result folder, so that it can be reproduced.

It lists each input with its size and SHA-256, the parameters and model card
of the run, and the versions of Python and of the packages that computed it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

PROVENANCE = "provenance.json"
PACKAGES = ("labelfree", "torch", "numpy", "scipy", "scikit-image", "SimpleITK")


def file_digest(path: str | os.PathLike) -> dict[str, Any]:
    """``{"path", "bytes", "sha256"}`` of a file; of every file below it for a folder (DICOM)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    size = 0
    for file in files:
        with file.open("rb") as stream:
            while block := stream.read(1 << 20):
                digest.update(block)
                size += len(block)
    return {"path": str(path), "bytes": size, "sha256": digest.hexdigest()}


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that compute results (None if absent)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance(inputs: list[str | os.PathLike], run: dict[str, Any]) -> dict[str, Any]:
    """The provenance record of a run over ``inputs`` with parameters and results ``run``."""
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "inputs": [file_digest(path) for path in inputs],
        "run": run,
        "versions": package_versions(),
        "platform": platform.platform(),
    }


def write_provenance(
    folder: str | os.PathLike, inputs: list, run: dict[str, Any], name: str = PROVENANCE
) -> Path:
    """Write :func:`provenance` as ``folder/name`` (atomically, read back)."""
    from labelfree.io import write_text

    record = provenance(inputs, run)
    return write_text(Path(folder) / name, json.dumps(record, indent=2, default=str))
