"""The bundled sample volume as a Sample Data source (Qt-free: the arguments only).

The MNI152 T1 template at 2 mm ships with the engine (``labelfree/data``), so the
"download" is a ``file:`` URI, as Slicer's own SampleData tests use
(``SampleDataTest.path2uri`` in ``Modules/Scripted/SampleData/SampleData.py``);
``urllib.request.urlretrieve`` copies it into Slicer's cache and the checksum is
checked as for any download.
"""

import hashlib
import urllib.parse
import urllib.request
from pathlib import Path

from LabelFreeLib import resourcePath

CATEGORY = "LabelFree"


def sampleDataSources() -> list[dict]:
    """Keyword arguments of ``SampleDataLogic.registerCustomSampleDataSource``, one per sample."""
    from labelfree.demo import SAMPLE

    return [
        {
            "category": CATEGORY,
            "sampleName": "MNI152 T1 (2 mm)",
            "thumbnailFileName": str(resourcePath("Icons", "LabelFree.png")),
            "uris": _fileUri(SAMPLE),
            "fileNames": SAMPLE.name,
            "checksums": "SHA256:" + hashlib.sha256(SAMPLE.read_bytes()).hexdigest(),
            "nodeNames": "MNI152_T1_2mm",
        }
    ]


def _fileUri(path: Path) -> str:
    return urllib.parse.urljoin("file:", urllib.request.pathname2url(str(path.resolve())))
