"""Segment Editor effect "CUTS pick": click a structure to add it to the selected segment.

The structure is the cluster under the click at the granularity level shown in the
CUTSSegment module (its connected part), so the slider there sets how fine a click
picks. Ctrl- or Shift-click removes the structure instead. The editor's own undo,
masking and overwrite settings apply, as for any effect.

Registered by the CUTSSegment module at application start-up; Slicer loads this file
with ``qSlicerSegmentEditorScriptedEffect.setPythonSource``, which instantiates the
class named after the file (``qSlicerSegmentEditorScriptedEffect.cxx``).
"""

import os

import qt
import slicer
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect
from slicer.i18n import tr as _


class SegmentEditorCUTSPickEffect(AbstractScriptedSegmentEditorEffect):
    """Adds (or, with Ctrl/Shift, removes) the clicked CUTS structure to the selected segment."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "CUTS pick"  # no tr: modules find effects by name
        scriptedEffect.title = _("CUTS pick")
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(
            os.path.dirname(__file__), "..", "Resources", "Icons", "CUTSSegment.png"
        )
        return qt.QIcon(iconPath) if os.path.exists(iconPath) else qt.QIcon()

    def helpText(self):
        return "<html>" + _(
            "Add the structure under the click, at the granularity level chosen in the CUTS "
            "Segment module, to the selected segment.<p><ul style='margin: 0'>"
            "<li><b>Left-click:</b> add the structure (its part connected to the click)."
            "<li><b>Ctrl- or Shift-click:</b> remove it from the segment."
            "</ul><p>Run CUTS Segment's Apply on the volume first."
        )

    def setupOptionsFrame(self):
        self.statusLabel = qt.QLabel()
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.statusLabel)

    def activate(self):
        self.statusLabel.text = (
            ""
            if _cutsLogic() and _cutsLogic().result
            else _("No CUTS result yet: run Apply in the CUTS Segment module first.")
        )

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if eventId != vtk.vtkCommand.LeftButtonPressEvent:
            return False
        if viewWidget.className() != "qMRMLSliceWidget" or callerInteractor.GetAltKey():
            return False
        logic = _cutsLogic()
        if logic is None or logic.result is None:
            self.statusLabel.text = _("No CUTS result yet: run Apply in the CUTS Segment module.")
            return True  # the click was meant for this effect: it must not paint elsewhere
        remove = bool(callerInteractor.GetControlKey() or callerInteractor.GetShiftKey())
        ras = self.xyToRas(callerInteractor.GetEventPosition(), viewWidget)
        try:
            structure = logic.structureAt(ras, connected=_connectedPick())
        except ValueError as error:  # LabelFreeError: outside the volume, empty structure
            self.statusLabel.text = str(error)
            return True
        self.scriptedEffect.saveStateForUndo()
        mode = (
            slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeRemove
            if remove
            else slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeAdd
        )
        self.scriptedEffect.modifySelectedSegmentByLabelmap(structure, mode)
        self.statusLabel.text = _("Removed the structure.") if remove else _("Added the structure.")
        return True  # handled: the click goes to no other effect or place mode


def _cutsWidget():
    """The CUTSSegment module's widget (None before it was created)."""
    module = getattr(slicer.modules, "cutssegment", None)
    widget = module.widgetRepresentation() if module is not None else None
    return widget.self() if widget is not None else None


def _cutsLogic():
    """The CUTSSegment module's logic, which holds the result and the level shown."""
    return getattr(_cutsWidget(), "logic", None)


def _connectedPick() -> bool:
    """The module's "connected part only" setting (on by default)."""
    parameterNode = getattr(_cutsWidget(), "_parameterNode", None)
    return True if parameterNode is None else bool(parameterNode.connectedPick)
