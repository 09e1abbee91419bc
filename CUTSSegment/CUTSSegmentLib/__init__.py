"""Qt-free logic of the CUTSSegment module: MRML nodes in and out around the LabelFree engine.

Import it in Slicer's Python console or a script::

    from CUTSSegmentLib import CUTSSegmentLogic
    result = CUTSSegmentLogic().segment(getNode("MRHead"))
"""

from CUTSSegmentLib.logic import CUTSSegmentLogic, CUTSSegmentResult

__all__ = ["CUTSSegmentLogic", "CUTSSegmentResult"]
