"""Installing LabelFree's Python dependencies inside Slicer, with the user's consent.

Called by the modules when the user presses Apply (never at import time or in
``setup()``): torch through the PyTorch extension (which picks the CPU or CUDA
build), the other packages from ``Resources/requirements.txt`` through
``slicer.packaging.pip_ensure`` (Slicer 5.12+) or ``slicer.util.pip_install``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from pathlib import Path

import slicer

from LabelFreeLib import resourcePath

TORCH_REQUIREMENT = ">=2.1"
_TORCH_MINIMUM = (2, 1)


def torchVersionSatisfies(version: str) -> bool:
    """``"2.13.0+cpu"`` -> True: at least :data:`TORCH_REQUIREMENT` (local tags ignored)."""
    parts = version.split("+")[0].split(".")
    try:
        return tuple(int(p) for p in parts[:2]) >= _TORCH_MINIMUM
    except ValueError:
        return False


def requirementsPath() -> Path:
    """``Resources/requirements.txt``, installed beside the modules or in the source tree."""
    return resourcePath("requirements.txt")


def ensureTorch() -> bool:
    """torch importable, installing it through PyTorchUtils after asking; False if declined."""
    if importlib.util.find_spec("torch") is not None:
        installed = importlib.metadata.version("torch")
        if torchVersionSatisfies(installed):
            return True
        slicer.util.errorDisplay(
            f"LabelFree needs torch {TORCH_REQUIREMENT}, but torch {installed} is installed. "
            "Update it in the PyTorch Utils module (or with pip_install), restart Slicer, "
            "and try again."
        )
        return False
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


# Built into Slicer (SimpleITK with Slicer's own IO): never pip-installed over it, as
# SlicerTotalSegmentator and SlicerNNUnet also skip them.
SLICER_BUNDLED = {"scipy", "simpleitk", "numpy"}


def requirementsToInstall(path: Path) -> list[str]:
    """The requirement lines of ``path`` that LabelFree may install (not Slicer's own packages)."""
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and _requirementName(line).lower() not in SLICER_BUNDLED]


def ensurePackages(requester: str) -> bool:
    """The packages of ``requirements.txt`` installed, after the user agreed; False if declined."""
    requirements = requirementsToInstall(requirementsPath())
    try:
        # Imported lazily since Slicer 5.12 (Base/Python/slicer/packaging.py), so
        # the attribute is usually missing on the slicer package: import it by name.
        import slicer.packaging as packaging
    except ImportError:  # Slicer 5.10
        packaging = None
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        try:
            packaging.pip_ensure(requirements, requester=requester)
        except RuntimeError as err:
            if "declined" in str(err):  # pip_ensure's way of saying the user said no
                return False
            raise
        return bool(packaging.pip_check(requirements))
    missing = _missingPackages(requirements)
    if not missing:
        return True
    if not slicer.util.confirmOkCancelDisplay(
        f"{requester} needs these Python packages: {', '.join(missing)}. Install them now?"
    ):
        return False
    slicer.util.pip_install(" ".join(missing))
    return not _missingPackages(requirements)


def ensureDependencies(requester: str) -> bool:
    """torch, then the other packages; True when everything is ready."""
    try:
        return ensureTorch() and ensurePackages(requester)
    except Exception as err:  # noqa: BLE001 -- an install failure must not crash the module
        logging.exception("Installing LabelFree's dependencies failed")
        slicer.util.errorDisplay(f"Installing Python packages failed: {err}")
        return False


_IMPORT_NAMES = {"scikit-image": "skimage"}  # distribution -> import name, where they differ


def _requirementName(line: str) -> str:
    return line.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip()


def _missingPackages(requirements: list[str]) -> list[str]:
    """Requirements whose package cannot be imported (Slicer without slicer.packaging)."""
    missing = []
    for line in requirements:
        name = _requirementName(line)
        if importlib.util.find_spec(_IMPORT_NAMES.get(name, name)) is None:
            missing.append(line)
    return missing
