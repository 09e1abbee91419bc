"""Code shared by the CUTSSegment and LandmarkDiscovery modules (Qt-free).

- :mod:`LabelFreeLib.mrml`: volume nodes <-> engine images, label maps, colours.
- :mod:`LabelFreeLib.dependencies`: installing the Python packages, with consent.
- :mod:`LabelFreeLib.training`: the training helper in a child process, polled.

A package, not loose files: Slicer treats every ``.py`` directly in a module
folder as a module of its own (``Base/QTGUI/qSlicerScriptedLoadableModuleFactory.cxx``).
Importing it loads neither torch nor Qt.
"""

import importlib
import sys
from pathlib import Path


def resourcePath(*parts: str) -> Path:
    """A file under the extension's ``Resources/`` folder, which sits beside this package.

    Installed, the package, ``labelfree/`` and ``Resources/`` all lie in Slicer's
    ``qt-scripted-modules`` folder; in the source tree they lie in the repository root.
    """
    path = Path(__file__).resolve().parent.parent.joinpath("Resources", *parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall the LabelFree extension.")
    return path


def modelPathOrNone(model) -> str | None:
    """None for "the bundled model" (None, an empty or "." path), else the path as a string."""
    if model is None or str(model).strip() in ("", "."):
        return None
    return str(model)


def reloadPackages(*packageNames: str) -> list[str]:
    """Reload every loaded module of these packages, submodules first, then the packages.

    Slicer's Reload (``ScriptedLoadableModuleWidget.onReload``) reloads the module's
    own file only; the widgets call this first so that edits to their ``*Lib``
    package and to this one take effect too. Returns the reloaded module names.
    """
    names = [n for n in sys.modules if n.split(".")[0] in packageNames]
    names.sort(key=lambda n: (-n.count("."), n))  # deepest first, a package after its modules
    for name in names:
        importlib.reload(sys.modules[name])
    return names
