"""A MRML scene outside the Slicer application (PyPI ``slicer-core``): for scripts, benchmarks,
tests and a web front end that drive the modules' logic without Qt."""

import slicer


def _register(scene, appLogic, name, logic):
    logic.SetMRMLApplicationLogic(appLogic)
    logic.SetMRMLScene(scene)
    appLogic.SetModuleLogic(name, logic)
    return logic


def newScene():
    """A ``vtkMRMLScene`` with the core logics of the Slicer application attached.

    Bootstrapped as the application does it (and as trame-slicer's ``SlicerApp``):
    application logic, default colour nodes, then the volumes, segmentations, markups
    and subject hierarchy logics registered with the scene.

    Returns
    -------
    scene : vtkMRMLScene
    logics : list
        Keep them referenced while the scene is used.
    """
    scene = slicer.vtkMRMLScene()
    appLogic = slicer.vtkSlicerApplicationLogic()
    appLogic.SetMRMLScene(scene)
    colorLogic = appLogic.GetColorLogic()
    colorLogic.SetMRMLApplicationLogic(appLogic)
    colorLogic.SetMRMLScene(scene)
    # The default colour *files* live in the Slicer install; without one, the
    # built-in tables (Labels, GenericAnatomyColors, ...) are still created.
    colorLogic.AddDefaultColorNodes()
    logics = [
        appLogic,
        _register(scene, appLogic, "Volumes", slicer.vtkSlicerVolumesLogic()),
        _register(scene, appLogic, "Segmentations", slicer.vtkSlicerSegmentationsModuleLogic()),
        _register(scene, appLogic, "Markups", slicer.vtkSlicerMarkupsLogic()),
        _register(
            scene, appLogic, "SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic()
        ),
    ]
    return scene, logics


def addVolumeNode(scene, image, name="volume"):
    """A scalar volume node holding an engine :class:`~labelfree.io.Image` (its geometry too)."""
    from LabelFreeLib.mrml import ijkToRasFromImage, updateVolumeFromArray

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(ijkToRasFromImage(image))
    updateVolumeFromArray(node, image.array)
    node.CreateDefaultDisplayNodes()
    return node
