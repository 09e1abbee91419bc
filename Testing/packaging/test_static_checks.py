"""Static checks of the extension's packaging and GUI wiring (no Slicer application needed).

- every ``.py`` of the modules, of LabelFreeLib and of the engine is installed by CMake;
- every widget the widget code names exists in the module's ``.ui`` with a fitting class;
- every ``SlicerParameterName`` in a ``.ui`` names a parameter of the module's
  ``@parameterNodeWrapper`` class, on a widget class that Slicer's GUI connectors accept;
- the boundaries of DESIGN.md hold (engine without slicer/vtk/qt; ``<Module>Lib`` and
  LabelFreeLib without qt/ctk/ScriptedLoadableModule; no torch at import time).

Module files are parsed with ``ast``, never imported: ``qt`` and the GUI are not available here.
"""

from __future__ import annotations

import ast
import fnmatch
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = ("CUTSSegment", "LandmarkDiscovery")
SHARED_PACKAGE = "LabelFreeLib"


# -- CMake parsing --------------------------------------------------------------------------


def _cmakeText(path: Path) -> str:
    # A comment starts at a '#' after whitespace (a URL's '#fragment' is not a comment).
    return re.sub(r"(?m)(^|\s)#[^\n]*$", r"\1", path.read_text())


def _cmakeSetLists(path: Path) -> dict[str, list[str]]:
    """``set(NAME a b c)`` blocks with ``${MODULE_NAME}`` substituted."""
    text = _cmakeText(path)
    variables: dict[str, list[str]] = {}
    for name, body in re.findall(r"\bset\(\s*(\w+)\s+([^)]*)\)", text, flags=re.IGNORECASE):
        variables[name] = body.split()
    moduleName = variables.get("MODULE_NAME", [""])[0]
    for name, values in variables.items():
        variables[name] = [v.replace("${MODULE_NAME}", moduleName).strip('"') for v in values]
    return variables


def _globRecurse(path: Path) -> dict[str, list[str]]:
    """``file(GLOB_RECURSE VAR RELATIVE ... patterns)``: variable -> patterns relative to the file's folder."""
    text = _cmakeText(path)
    globs = {}
    for var, body in re.findall(r"file\(\s*GLOB_RECURSE\s+(\w+)\s+([^)]*)\)", text):
        patterns = [
            p.replace("${CMAKE_CURRENT_SOURCE_DIR}/", "")
            for p in body.split()
            if p.startswith("${CMAKE_CURRENT_SOURCE_DIR}/")
        ]
        globs[var] = patterns
    return globs


def _globRecurseMatches(pattern: str, relative: str) -> bool:
    """CMake's GLOB_RECURSE: ``dir/*.py`` matches ``*.py`` files in ``dir`` and below."""
    directory, _, filePattern = pattern.rpartition("/")
    if not (relative == directory or relative.startswith(directory + "/")):
        return False
    return fnmatch.fnmatch(relative.rpartition("/")[2], filePattern)


def _sourceFiles(directory: Path, suffix: str = ".py") -> list[str]:
    """Source files under ``directory`` (relative to it), without caches and tests."""
    files = []
    for path in sorted(directory.rglob(f"*{suffix}")):
        relative = path.relative_to(directory).as_posix()
        if "__pycache__" in relative or relative.startswith("Testing/"):
            continue
        files.append(relative)
    return files


@pytest.mark.parametrize("module", MODULES)
def test_every_module_script_is_listed_in_cmake(module):
    moduleDir = ROOT / module
    if not moduleDir.is_dir():
        pytest.skip(f"{module} is not in this tree yet")
    variables = _cmakeSetLists(moduleDir / "CMakeLists.txt")
    listed = set(variables.get("MODULE_PYTHON_SCRIPTS", []))
    present = set(_sourceFiles(moduleDir))
    assert present - listed == set(), f"{module}: .py files missing from MODULE_PYTHON_SCRIPTS"
    assert listed - present == set(), f"{module}: listed scripts that do not exist"
    resources = variables.get("MODULE_PYTHON_RESOURCES", [])
    assert f"Resources/UI/{module}.ui" in resources
    for resource in resources:
        assert (moduleDir / resource).is_file(), f"{module}: missing resource {resource}"


def test_shared_package_is_listed_in_cmake():
    listed = set(_cmakeSetLists(ROOT / "CMakeLists.txt")["LABELFREE_LIB_SCRIPTS"])
    present = {f"{SHARED_PACKAGE}/{f}" for f in _sourceFiles(ROOT / SHARED_PACKAGE)}
    assert f"{SHARED_PACKAGE}/__init__.py" in present
    assert present == listed


def _flatInstalledScripts() -> list[Path]:
    """``.py`` files any CMakeLists.txt installs directly into the scripted-modules folder."""
    scripts = []
    for cmake in (
        [ROOT / "CMakeLists.txt"]
        + [ROOT / m / "CMakeLists.txt" for m in MODULES]
        + [p for p in ROOT.glob("*/CMakeLists.txt") if p.parent.name not in MODULES]
    ):
        for name, files in _cmakeSetLists(cmake).items():
            if name.endswith("SCRIPTS"):
                scripts += [cmake.parent / f for f in files if "/" not in f and f.endswith(".py")]
    return scripts


def test_every_flat_installed_script_is_a_module():
    """Slicer loads each .py directly in a module folder as a module and expects a class of
    its name there (Base/QTGUI/qSlicerScriptedLoadableModuleFactory.cxx): shared code must
    be a package in a subfolder."""
    scripts = _flatInstalledScripts()
    assert {p.stem for p in scripts} >= set(MODULES)
    for path in scripts:
        classes = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.ClassDef)}
        assert path.stem in classes, (
            f"{path.name} is installed as a module but has no class {path.stem}"
        )


def test_top_level_cmake_builds_every_module_and_installs_the_engine():
    cmake = ROOT / "CMakeLists.txt"
    text = _cmakeText(cmake)
    for key in (
        "EXTENSION_CATEGORY",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_HOMEPAGE",
    ):
        assert re.search(rf"set\({key}\s+\"[^\"]+\"\)", text), key
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"[^"]*\bPyTorch\b', text)
    subdirs = re.findall(r"add_subdirectory\((\w+)\)", text)
    for name in MODULES:
        assert name in subdirs, f"add_subdirectory({name}) missing"
        assert (ROOT / name / "CMakeLists.txt").is_file()
    for include in (
        "Slicer_USE_FILE",
        "Slicer_EXTENSION_GENERATE_CONFIG",
        "Slicer_EXTENSION_CPACK",
    ):
        assert f"include(${{{include}}})" in text

    globs = _globRecurse(cmake)
    scripts = globs["LABELFREE_ENGINE_SCRIPTS"]
    resources = globs["LABELFREE_ENGINE_RESOURCES"]
    assert "${LABELFREE_ENGINE_SCRIPTS}" in text and "${LABELFREE_ENGINE_RESOURCES}" in text
    enginePy = ["labelfree/" + f for f in _sourceFiles(ROOT / "labelfree")]
    assert "labelfree/__init__.py" in enginePy
    unmatched = [f for f in enginePy if not any(_globRecurseMatches(p, f) for p in scripts)]
    assert unmatched == [], "engine files the CMake glob does not install"
    packageData = [
        p.relative_to(ROOT).as_posix()
        for folder in ("weights", "data")
        for p in (ROOT / "labelfree" / folder).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    unmatched = [f for f in packageData if not any(_globRecurseMatches(p, f) for p in resources)]
    assert unmatched == [], "engine weights/data the CMake glob does not install"

    variables = _cmakeSetLists(cmake)
    shared = variables["LABELFREE_SHARED_SCRIPTS"] + variables["LABELFREE_SHARED_RESOURCES"]
    assert "Resources/Scripts/labelfree_train.py" in shared
    assert "Resources/requirements.txt" in shared
    for path in shared:
        assert (ROOT / path).is_file(), path


# -- .ui and widget code --------------------------------------------------------------------

# Widget classes Slicer's parameterNodeWrapper GUI connectors accept per parameter type
# (Base/Python/slicer/parameterNodeWrapper/guiConnectors.py; exact class match).
_CONNECTABLE = {
    "bool": {"QCheckBox", "QPushButton"},
    "int": {"QSlider", "QSpinBox", "QComboBox"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget", "QComboBox"},
    "str": {"QLineEdit", "QTextEdit", "QComboBox", "ctkPathLineEdit"},  # last: pathWidgets.py
    "enum": {"QComboBox"},
    "path": {"ctkPathLineEdit", "ctkDirectoryButton"},
    "node": {"qMRMLNodeComboBox", "qMRMLSubjectHierarchyTreeView"},
}
# Signals the widget code connects by name, and the classes that have them.
_SIGNALS = {
    "clicked": {
        "QPushButton",
        "QToolButton",
        "QCheckBox",
        "QRadioButton",
        "ctkCheckablePushButton",
    },
    "toggled": {"QPushButton", "QToolButton", "QCheckBox", "QRadioButton", "ctkCollapsibleButton"},
    "valueChanged": {"QSlider", "QSpinBox", "QDoubleSpinBox", "ctkSliderWidget", "ctkRangeWidget"},
    "currentNodeChanged": {"qMRMLNodeComboBox"},
    "currentIndexChanged": {"QComboBox", "ctkComboBox"},
    "currentPathChanged": {"ctkPathLineEdit"},
    "textChanged": {"QLineEdit", "QTextEdit", "QPlainTextEdit"},
}


def _uiWidgets(uiPath: Path) -> dict[str, tuple[str, str | None]]:
    """Widget name -> (class, SlicerParameterName or None)."""
    widgets = {}
    for element in ET.parse(uiPath).getroot().iter("widget"):
        parameter = None
        for prop in element.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                parameter = prop.findtext("string")
        widgets[element.get("name")] = (element.get("class"), parameter)
    return widgets


def _moduleTree(module: str) -> ast.Module:
    return ast.parse((ROOT / module / f"{module}.py").read_text())


def _enumClasses(tree: ast.Module) -> set[str]:
    enums = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                name = ast.unparse(base)
                if name.endswith("Enum") or name in enums:
                    enums.add(node.name)
    return enums


def _wrapperParameters(tree: ast.Module) -> dict[str, ast.expr]:
    """Parameters (name -> annotation) of the ``@parameterNodeWrapper`` class."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(
            ast.unparse(d).endswith("parameterNodeWrapper") for d in node.decorator_list
        ):
            return {
                stmt.target.id: stmt.annotation
                for stmt in node.body
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
            }
    raise AssertionError("no @parameterNodeWrapper class in the module file")


def _kindAndAnnotations(annotation: ast.expr, enums: set[str]) -> tuple[str, list[str]]:
    """('int', ['WithinRange(2, 64)']) from ``Annotated[int, WithinRange(2, 64)]``."""
    extras: list[str] = []
    if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value).endswith(
        "Annotated"
    ):
        elements = annotation.slice.elts
        annotation, extras = elements[0], [ast.unparse(e) for e in elements[1:]]
    name = ast.unparse(annotation).split(".")[-1]
    if name in ("bool", "int", "float", "str"):
        return name, extras
    if name in enums:
        return "enum", extras
    if name in ("Path", "PosixPath", "WindowsPath", "PurePath"):
        return "path", extras
    if name.startswith("vtkMRML") or "vtkMRML" in ast.unparse(annotation):
        return "node", extras
    return name, extras


def _uiNamesInCode(tree: ast.Module) -> dict[str, set[str]]:
    """``self.ui.<name>`` uses -> the signal names connected on them."""
    names: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"
        ):
            names.setdefault(node.attr, set())
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "connect"
            and isinstance(node.func.value, ast.Attribute)
            and isinstance(node.func.value.value, ast.Attribute)
            and node.func.value.value.attr == "ui"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            signal = str(node.args[0].value).split("(")[0]
            names.setdefault(node.func.value.attr, set()).add(signal)
    return names


def _modulesWithUi():
    return [m for m in MODULES if (ROOT / m / "Resources" / "UI" / f"{m}.ui").is_file()]


@pytest.mark.parametrize("module", MODULES)
def test_widgets_named_in_code_exist_in_ui_with_fitting_class(module):
    if module not in _modulesWithUi():
        pytest.skip(f"{module} is not in this tree yet")
    widgets = _uiWidgets(ROOT / module / "Resources" / "UI" / f"{module}.ui")
    used = _uiNamesInCode(_moduleTree(module))
    assert used, "the widget code names no self.ui widgets"
    missing = sorted(set(used) - set(widgets))
    assert missing == [], f"{module}.py uses widgets missing from {module}.ui"
    for name, signals in used.items():
        widgetClass = widgets[name][0]
        for signal in signals:
            assert signal in _SIGNALS, f"add the signal {signal!r} to this test's table"
            assert widgetClass in _SIGNALS[signal], f"{name} ({widgetClass}) has no {signal}"


@pytest.mark.parametrize("module", MODULES)
def test_slicer_parameter_names_match_the_wrapper(module):
    if module not in _modulesWithUi():
        pytest.skip(f"{module} is not in this tree yet")
    tree = _moduleTree(module)
    parameters = _wrapperParameters(tree)
    enums = _enumClasses(tree)
    widgets = _uiWidgets(ROOT / module / "Resources" / "UI" / f"{module}.ui")
    bound = {name: spec for name, spec in widgets.items() if spec[1]}
    assert bound, f"{module}.ui binds no widget to the parameter node"
    for name, (widgetClass, parameter) in bound.items():
        assert parameter in parameters, f"{name}: SlicerParameterName {parameter!r} is no parameter"
        kind, extras = _kindAndAnnotations(parameters[parameter], enums)
        assert kind in _CONNECTABLE, f"{parameter}: no GUI connector for type {kind!r}"
        assert widgetClass in _CONNECTABLE[kind], (
            f"{name} is a {widgetClass}, which cannot show a {kind} parameter ({parameter})"
        )
        if widgetClass == "QComboBox" and kind in ("int", "float", "str"):
            assert any(e.startswith("Choice") for e in extras), f"{parameter} needs Choice(...)"
        if widgetClass in ("QSlider", "ctkSliderWidget"):
            assert any(e.startswith(("WithinRange", "Minimum")) for e in extras), parameter


# -- boundaries -----------------------------------------------------------------------------


def _importedModules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


# The browser front end lives in the package (DESIGN.md) but is not engine: it drives the
# modules' MRML logic on trame-slicer, from the optional `web` extra.
FRONT_END = "web/"


def _engineFiles() -> list[str]:
    """The engine's source files (relative to labelfree/), without the web front end."""
    return [f for f in _sourceFiles(ROOT / "labelfree") if not f.startswith(FRONT_END)]


def test_engine_never_imports_slicer_vtk_or_qt():
    for relative in _engineFiles():
        imported = _importedModules(ROOT / "labelfree" / relative)
        bad = {
            n for n in imported if n.split(".")[0] in ("slicer", "vtk", "qt", "ctk", "vtkmodules")
        }
        assert bad == set(), f"labelfree/{relative} imports {bad}"


# The shared package's one Qt file: the path-widget connector, imported only by entry files.
QT_SIDE_SHARED = ("pathWidgets.py",)


def _qtFreeFiles():
    shared = [f for f in _sourceFiles(ROOT / SHARED_PACKAGE) if f not in QT_SIDE_SHARED]
    files = [ROOT / SHARED_PACKAGE / f for f in shared]
    for module in MODULES:
        lib = ROOT / module / f"{module}Lib"
        files += [lib / f for f in _sourceFiles(lib)] if lib.is_dir() else []
    return files


@pytest.mark.parametrize("path", _qtFreeFiles(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_logic_never_imports_qt(path):
    imported = _importedModules(path)
    bad = {n for n in imported if n.split(".")[0] in ("qt", "ctk") or "ScriptedLoadableModule" in n}
    assert bad == set()


def test_cuts_logic_imports_without_torch():
    """Slicer loads the module before torch is installed: the Lib must not import it eagerly."""
    pytest.importorskip("slicer")
    code = (
        f"import sys; sys.path[:0] = [r'{ROOT}', r'{ROOT}/CUTSSegment'];"
        "import CUTSSegmentLib, LabelFreeLib.mrml, LabelFreeLib.training;"
        "print(sorted(m for m in ('torch', 'scipy', 'skimage') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


_INSTALL_CALLS = {
    "pip_install",
    "pip_ensure",
    "installTorch",
    "ensureDependencies",
    "ensurePackages",
}


def _callNames(node: ast.AST) -> set[str]:
    names = set()
    for call in ast.walk(node):
        if isinstance(call, ast.Call):
            func = call.func
            names.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
    return names


@pytest.mark.parametrize("module", MODULES)
def test_dependencies_are_not_installed_at_import_or_setup(module):
    """Slicer's rule: install packages after consent on an action, never at import or in setup()."""
    path = ROOT / module / f"{module}.py"
    if not path.is_file():
        pytest.skip(f"{module} is not in this tree yet")
    tree = ast.parse(path.read_text())
    moduleLevel = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    for statement in moduleLevel:
        assert not _callNames(statement) & _INSTALL_CALLS, ast.unparse(statement)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in ("setup", "__init__", "enter"):
            assert not _callNames(node) & _INSTALL_CALLS, f"{module}: installs in {node.name}()"


# Provided inside Slicer without requirements.txt (torch via the PyTorch extension).
_PROVIDED = {"torch", "numpy", "labelfree"}
_OPTIONAL: set[str] = set()
_DISTRIBUTION = {"skimage": "scikit-image"}


def test_requirements_cover_the_engine_with_lower_bounds_only():
    lines = [
        line.split("#", 1)[0].strip()
        for line in (ROOT / "Resources" / "requirements.txt").read_text().splitlines()
    ]
    requirements = [line for line in lines if line]
    assert requirements
    for line in requirements:
        assert "==" not in line and "<" not in line, f"pin or upper bound in {line!r}"
    names = {re.split(r"[<>=!~ ;\[]", line, maxsplit=1)[0].lower() for line in requirements}
    imported = set()
    for relative in _engineFiles():
        imported |= {n.split(".")[0] for n in _importedModules(ROOT / "labelfree" / relative)}
    thirdParty = imported - set(sys.stdlib_module_names) - _PROVIDED - _OPTIONAL - {"__future__"}
    needed = {_DISTRIBUTION.get(n, n).lower() for n in thirdParty}
    assert needed - names == set(), "engine imports missing from Resources/requirements.txt"


def test_only_the_web_front_end_imports_trame_and_nothing_imports_it():
    for relative in _engineFiles():
        imported = _importedModules(ROOT / "labelfree" / relative)
        bad = {n for n in imported if n.split(".")[0].startswith("trame") or "labelfree.web" in n}
        if relative == "cli.py":  # names the web command as a string, imports it lazily
            continue
        assert bad == set(), f"labelfree/{relative} imports {bad}"
    webExtra = re.search(r"^web = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M)
    assert webExtra and '"trame-slicer' in webExtra.group(1)


MINIMUM_SLICER = "5.10"
MINIMUM_PYTHON = (3, 10)  # the Python of Slicer 5.10


def _slicerSideFiles() -> list[Path]:
    files = [ROOT / m / f for m in MODULES for f in _sourceFiles(ROOT / m)]
    files += [ROOT / SHARED_PACKAGE / f for f in _sourceFiles(ROOT / SHARED_PACKAGE)]
    return files + [ROOT / "Resources" / "Scripts" / "labelfree_train.py"]


@pytest.mark.parametrize("path", _slicerSideFiles(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_module_code_parses_for_the_minimum_slicer_python(path):
    ast.parse(path.read_text(), feature_version=MINIMUM_PYTHON)


def test_cmake_and_readme_state_the_minimum_slicer_version():
    text = _cmakeText(ROOT / "CMakeLists.txt")
    assert re.search(rf'Slicer_VERSION VERSION_LESS "{MINIMUM_SLICER}"', text)
    assert text.index("find_package(Slicer") < text.index("Slicer_VERSION VERSION_LESS")
    assert f"Slicer {MINIMUM_SLICER} or newer" in (ROOT / "README.md").read_text()


def _method(tree: ast.Module, name: str) -> ast.FunctionDef:
    return next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name)


def _sourceOf(node: ast.AST) -> str:
    return ast.unparse(node)


def test_picking_happens_in_the_segment_editor_effect():
    """The module's own click handler had no way to keep the click from an active effect or
    place mode; the Segment Editor effect has (its processInteractionEvents returns True)."""
    tree = _moduleTree("CUTSSegment")
    module = _sourceOf(tree)
    assert "AddObserver(vtk.vtkCommand.LeftButtonPressEvent" not in module
    assert "GetCursorPositionRAS" not in module
    pick = _sourceOf(_method(tree, "onPickButton"))
    assert "setActiveEffectByName('CUTS pick')" in pick and "pickSegmentation" in pick


@pytest.mark.parametrize("module", MODULES)
def test_long_work_runs_through_the_shared_job_runner(module):
    """Both widgets drive long work with LabelFreeLib.jobs, never a blocking logic call."""
    tree = _moduleTree(module)
    source = _sourceOf(tree)
    assert "JobRunner" in source
    blocking = {"segment", "detect", "batchDetect"}  # the logic's blocking entry points
    widget = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("Widget"))
    calls = {
        c.func.attr
        for c in ast.walk(widget)
        if isinstance(c, ast.Call)
        and isinstance(c.func, ast.Attribute)
        and isinstance(c.func.value, ast.Attribute)
        and c.func.value.attr == "logic"
    }
    assert not calls & blocking, f"{module} widget calls {sorted(calls & blocking)} on the logic"


def test_the_qt_side_shared_file_is_imported_only_by_entry_files():
    for path in _qtFreeFiles():
        imported = _importedModules(path)
        assert not any(name.endswith("pathWidgets") for name in imported), path


@pytest.mark.parametrize("module", _modulesWithUi())
def test_unset_paths_look_unset(module):
    """Path parameters are str ("" = unset) on ctkPathLineEdit: Slicer's Path connector shows
    "." for Path(), and a ctkDirectoryButton always shows some directory."""
    tree = _moduleTree(module)
    for name, annotation in _wrapperParameters(tree).items():
        assert "Path" not in ast.unparse(annotation), f"{module}.{name} is a Path parameter"
    ui = (ROOT / module / "Resources" / "UI" / f"{module}.ui").read_text()
    assert "ctkDirectoryButton" not in ui
    assert "import LabelFreeLib.pathWidgets" in ast.unparse(tree)


def _nodeComboBoxes(uiPath: Path) -> dict[str, dict[str, list[str]]]:
    """``{SlicerParameterName: {"nodeTypes": [...], "hideChildNodeTypes": [...]}}``."""
    import xml.etree.ElementTree as ET

    boxes = {}
    for widget in ET.parse(uiPath).iter("widget"):
        if widget.get("class") != "qMRMLNodeComboBox":
            continue
        props = {p.get("name"): p for p in widget.findall("property")}
        if "SlicerParameterName" not in props:
            continue
        lists = {
            key: [s.text for s in props[key].iter("string")] if key in props else []
            for key in ("nodeTypes", "hideChildNodeTypes")
        }
        boxes[props["SlicerParameterName"].find("string").text] = lists
    return boxes


@pytest.mark.parametrize("module", _modulesWithUi())
def test_node_selectors_offer_what_the_parameter_holds(module):
    """A selector offers the wrapper's node type, and an image input never a label map."""
    parameters = _wrapperParameters(_moduleTree(module))
    ui = ROOT / module / "Resources" / "UI" / f"{module}.ui"
    for name, box in _nodeComboBoxes(ui).items():
        nodeType = ast.unparse(parameters[name])
        assert nodeType in box["nodeTypes"], f"{name}: {nodeType} not in {box['nodeTypes']}"
        if nodeType == "vtkMRMLScalarVolumeNode":
            assert "vtkMRMLLabelMapVolumeNode" in box["hideChildNodeTypes"], name


@pytest.mark.parametrize("module", MODULES)
def test_self_tests_skip_cleanly_without_torch(module):
    runTest = _sourceOf(_method(_moduleTree(module), "runTest"))
    assert 'find_spec("torch") is None' in runTest.replace("'", '"') and "return" in runTest


EFFECT = ROOT / "CUTSSegment" / "SegmentEditorEffect" / "SegmentEditorCUTSPickEffect.py"


def test_the_cuts_pick_effect_is_a_segment_editor_effect_slicer_can_load():
    """qSlicerSegmentEditorScriptedEffect::setPythonSource instantiates the class named after the
    file; the click uses the editor's undo and modification modes and is not passed on."""
    tree = ast.parse(EFFECT.read_text(), feature_version=(3, 10))
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    assert EFFECT.stem in classes
    effect = classes[EFFECT.stem]
    assert [ast.unparse(b) for b in effect.bases] == ["AbstractScriptedSegmentEditorEffect"]
    methods = {n.name for n in effect.body if isinstance(n, ast.FunctionDef)}
    assert {"clone", "icon", "helpText", "processInteractionEvents"} <= methods
    events = _sourceOf(_method(tree, "processInteractionEvents"))
    assert events.index("saveStateForUndo") < events.index("modifySelectedSegmentByLabelmap")
    assert "ModificationModeAdd" in events and "ModificationModeRemove" in events
    assert "xyToRas" in events and "GetEventPosition" in events
    assert "return True" in events  # a handled click reaches no other effect or place mode
    module = _sourceOf(_moduleTree("CUTSSegment"))
    assert EFFECT.name in module and "registerSegmentEditorEffect" in module
    assert f"SegmentEditorEffect/{EFFECT.name}" in _cmakeText(
        ROOT / "CUTSSegment" / "CMakeLists.txt"
    )
