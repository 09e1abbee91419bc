"""What this machine has now: free memory and free disk space."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def available_memory() -> int | None:
    """Bytes of memory available to this process now (Linux, macOS), or None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def free_disk(folder: str | os.PathLike) -> int | None:
    """Free bytes on the disk that holds ``folder`` (or its nearest existing parent), or None."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None
