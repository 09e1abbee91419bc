"""Path widgets bound to ``str`` parameters, so that an unset path looks unset (Qt side).

Slicer's connectors bind ``ctkPathLineEdit`` and ``ctkDirectoryButton`` to
``pathlib.Path`` parameters, whose default ``Path()`` is written to the widget
as ``"."`` (``Base/Python/slicer/parameterNodeWrapper/guiConnectors.py``);
``ctkDirectoryButton`` cannot be empty at all (``QDir("")`` is the working
directory, ``Libs/Widgets/ctkDirectoryButton.cpp`` in CTK). The modules
therefore keep paths as ``str`` parameters (``""`` = unset) and use a
``ctkPathLineEdit`` for files and folders alike; this connector binds the two.
It is the only Qt code of the shared package: importing it registers the
connector with the parameter node wrapper.
"""

import ctk
from slicer.parameterNodeWrapper import GuiConnector, parameterNodeGuiConnector, unannotatedType


@parameterNodeGuiConnector
class PathLineEditToStrConnector(GuiConnector):
    """A ``ctkPathLineEdit`` shows a ``str`` parameter as is: ``""`` stays empty."""

    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        return type(widget) is ctk.ctkPathLineEdit and unannotatedType(datatype) is str

    @staticmethod
    def create(widget, datatype):
        if PathLineEditToStrConnector.canRepresent(widget, datatype):
            return PathLineEditToStrConnector(widget)
        return None

    def __init__(self, widget):
        super().__init__()
        self._widget = widget

    def _connect(self):
        self._widget.currentPathChanged.connect(self.changed)

    def _disconnect(self):
        self._widget.currentPathChanged.disconnect(self.changed)

    def widget(self):
        return self._widget

    def read(self) -> str:
        return self._widget.currentPath

    def write(self, value: str) -> None:
        self._widget.currentPath = value
