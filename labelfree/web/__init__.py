"""LabelFree in the browser: the Slicer modules' logic on trame-slicer's slice views.

``labelfree web [VOLUME]`` serves it (the ``web`` extra: ``pip install -e '.[web]'``).
:mod:`labelfree.web.session` holds what the page does (no trame); :mod:`labelfree.web.app`
lays out the page and binds its state. Nothing in the engine imports this package.
"""

import os
import sys

# Slice views render offscreen. Without a display, VTK on Linux would try X first and fail;
# Mesa's EGL renders without one (set before any render window exists).
if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
