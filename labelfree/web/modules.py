"""The Slicer modules' Qt-free packages on ``sys.path``, as Slicer puts them there.

``CUTSSegmentLib``, ``LandmarkDiscoveryLib`` and ``LabelFreeLib`` live in the module
folders of the checkout, next to the ``labelfree`` package; the web front end imports
them from there, so that it runs the same logic as the Slicer modules.
"""

from __future__ import annotations

import sys
from pathlib import Path

from labelfree.errors import LabelFreeError

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {
    "": "LabelFreeLib",
    "CUTSSegment": "CUTSSegmentLib",
    "LandmarkDiscovery": "LandmarkDiscoveryLib",
}


def addModuleFolders(root: Path = ROOT) -> None:
    """Put the module folders of ``root`` (the checkout) on ``sys.path``.

    Raises
    ------
    LabelFreeError
        When a module package is missing (``labelfree`` installed without its checkout).
    """
    for folder, package in FOLDERS.items():
        path = root / folder if folder else root
        if not (path / package / "__init__.py").is_file():
            raise LabelFreeError(
                f"The web front end needs the Slicer module folders next to the labelfree "
                f"package ({path / package} is missing); install from a checkout: "
                "pip install -e '.[web]'."
            )
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
