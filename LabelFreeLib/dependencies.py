"""Installing LabelFree's Python dependencies inside Slicer, with the user's consent.

Called by the modules when the user presses Apply (never at import time or in
``setup()``): torch through the PyTorch extension (which picks the CPU or CUDA
build), the other packages from ``Resources/requirements.txt`` through
``slicer.packaging.pip_ensure`` (Slicer 5.12+) or ``slicer.util.pip_install``.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import slicer

from LabelFreeLib import resourcePath

TORCH_REQUIREMENT = ">=2.1"


def requirementsPath() -> Path:
    """``Resources/requirements.txt``, installed beside the modules or in the source tree."""
    return resourcePath("requirements.txt")


def ensureTorch() -> bool:
    """torch importable, installing it through PyTorchUtils after asking; False if declined."""
    if importlib.util.find_spec("torch") is not None:
        return True
    try:
        import PyTorchUtils
    except ImportError:
        slicer.util.errorDisplay(
            "LabelFree needs the PyTorch extension: install 'PyTorch' from the Extensions "
            "Manager, restart Slicer, and try again."
        )
        return False
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if not torchLogic.torchInstalled():
        torch = torchLogic.installTorch(
            askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT
        )
        if torch is None:
            return False
    return True


def ensurePackages(requester: str) -> bool:
    """The packages of ``requirements.txt`` installed, after the user agreed; False if declined."""
    path = requirementsPath()
    packaging = getattr(slicer, "packaging", None)
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        requirements = packaging.load_requirements(str(path))
        packaging.pip_ensure(requirements, requester=requester)
        return bool(packaging.pip_check(requirements))
    missing = _missingPackages(path)
    if not missing:
        return True
    if not slicer.util.confirmOkCancelDisplay(
        f"{requester} needs these Python packages: {', '.join(missing)}. Install them now?"
    ):
        return False
    slicer.util.pip_install(" ".join(missing))
    return not _missingPackages(path)


def ensureDependencies(requester: str) -> bool:
    """torch, then the other packages; True when everything is ready."""
    try:
        return ensureTorch() and ensurePackages(requester)
    except Exception as err:  # noqa: BLE001 -- an install failure must not crash the module
        logging.exception("Installing LabelFree's dependencies failed")
        slicer.util.errorDisplay(f"Installing Python packages failed: {err}")
        return False


_IMPORT_NAMES = {"scikit-image": "skimage", "SimpleITK": "SimpleITK", "scipy": "scipy"}


def _missingPackages(path: Path) -> list[str]:
    """Requirement lines whose package cannot be imported (older Slicer, no slicer.packaging)."""
    missing = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = line.split(">")[0].split("=")[0].split("<")[0].strip()
        if importlib.util.find_spec(_IMPORT_NAMES.get(name, name)) is None:
            missing.append(line)
    return missing
