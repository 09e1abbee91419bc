"""Qt-free logic of the LandmarkDiscovery module (MRML, vtk and the ``labelfree`` engine).

Example, in Slicer's Python console::

    from LandmarkDiscoveryLib import LandmarkDiscoveryLogic
    logic = LandmarkDiscoveryLogic()               # slicer.mrmlScene; or pass any vtkMRMLScene
    landmarks = logic.detect(slicer.util.getNode("MRHead"), keep=20)
    logic.exportLandmarks(landmarks, "MRHead_landmarks.mrk.json")
"""

from .logic import LandmarkDiscoveryLogic

__all__ = ["LandmarkDiscoveryLogic"]
