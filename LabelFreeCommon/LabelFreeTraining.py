"""Training in a child process, polled from the main thread (no Qt, no MRML).

The LabelFree modules adapt models without freezing Slicer: the headless
helper ``Resources/Scripts/labelfree_train.py`` runs in a ``PythonSlicer``
process; a reader thread collects its output and the widget's timer calls
:meth:`TrainingProcess.poll` to turn ``PROGRESS`` lines into progress reports.
Cancel ends the whole process group; the helper writes its model atomically,
so a cancelled run leaves no file behind.

Example
-------
>>> command = trainingCommand("cuts", ["volume.nrrd"], "adapted.pt", epochs=3)  # doctest: +SKIP
>>> process = TrainingProcess(command)
>>> while process.running:
...     for report in process.poll():
...         print(report.fraction, report.message)
>>> process.modelPath
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

from labelfree.progress import Progress

SCRIPT_NAME = "labelfree_train.py"
_RESOURCES_NAME = "Resources"


def trainingScriptPath() -> Path:
    """Where the headless training helper is, installed or in the source tree."""
    here = Path(__file__).resolve().parent
    # Installed: <qt-scripted-modules>/Resources/Scripts; source: <repo>/Resources/Scripts.
    for base in (here, here.parent):
        candidate = base / _RESOURCES_NAME / "Scripts" / SCRIPT_NAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{SCRIPT_NAME} is missing next to {here}; reinstall the LabelFree extension."
    )


def trainingCommand(method: str, inputs, out, python: str | None = None, **options) -> list[str]:
    """The command line that trains ``method`` (``"cuts"`` or ``"landmarks"``) on ``inputs``.

    Parameters
    ----------
    method : str
        ``"cuts"`` or ``"landmarks"``.
    inputs : sequence of path-like
        Images or volumes to learn from.
    out : path-like
        The model file to write.
    python : str, optional
        The interpreter: ``PythonSlicer`` inside Slicer; this interpreter by default.
    **options
        Command-line options of the helper, in Python spelling: ``epochs=3``,
        ``init_model="m.pt"``, ``landmarks=12`` ... None values are left out.
    """
    if method not in ("cuts", "landmarks"):
        raise ValueError(f"Unknown training method {method!r}; use 'cuts' or 'landmarks'.")
    command = [python or sys.executable, "-u", str(trainingScriptPath()), method]
    command += [str(Path(p)) for p in inputs]
    command += ["--out", str(Path(out))]
    for key, value in options.items():
        if value is not None:
            command += ["--" + key.replace("_", "-"), str(value)]
    return command


def parseProgressLine(line: str) -> Progress | None:
    """``"PROGRESS 0.25 epoch 1/4"`` -> ``Progress(0.25, "epoch 1/4")``; None for other lines."""
    parts = line.strip().split(" ", 2)
    if len(parts) < 2 or parts[0] != "PROGRESS":
        return None
    try:
        fraction = min(max(float(parts[1]), 0.0), 1.0)
    except ValueError:
        return None
    return Progress(fraction, parts[2] if len(parts) > 2 else "")


class TrainingProcess:
    """A running training helper whose output is read on a thread and polled.

    Parameters
    ----------
    command : list of str
        From :func:`trainingCommand`.
    popen : callable, optional
        Starts the process from the command and returns a ``subprocess.Popen``
        with text ``stdout`` (stderr merged). Inside Slicer pass
        ``slicer.util.launchConsoleProcess`` to get Slicer's environment.
    """

    def __init__(self, command: list[str], popen=None):
        self.command = list(command)
        self.log: list[str] = []
        self.modelPath: Path | None = None
        self.errorMessage = ""
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._process = (popen or _startInNewSession)(self.command)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in iter(self._process.stdout.readline, ""):
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    @property
    def running(self) -> bool:
        """True until the process has ended and all of its output was polled."""
        return self._process.poll() is None or self._reader.is_alive() or not self._lines.empty()

    @property
    def returnCode(self) -> int | None:
        """The exit status once the process has ended (0 done, 2 bad input, 130 cancelled)."""
        return self._process.poll()

    @property
    def succeeded(self) -> bool:
        """Ended with status 0 and reported its model file."""
        return self.returnCode == 0 and self.modelPath is not None

    def poll(self) -> list[Progress]:
        """Drain the output read so far; returns the progress reports in it (never blocks)."""
        reports = []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                continue
            self.log.append(line)
            report = parseProgressLine(line)
            if report is not None:
                reports.append(report)
            elif line.startswith("RESULT "):
                self.modelPath = Path(line[len("RESULT ") :].strip())
            elif line.startswith("ERROR "):
                self.errorMessage = line[len("ERROR ") :].strip()
        return reports

    def wait(self, timeout: float | None = None) -> int:
        """Block until the process ends (scripts and tests), drain its output, return its status."""
        code = self._process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        self.poll()
        return code

    def cancel(self, grace: float = 5.0) -> None:
        """Stop the process and its children: terminate, then kill after ``grace`` seconds."""
        if self._process.poll() is not None:
            return
        _signalTree(self._process, signal.SIGTERM)
        try:
            self._process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signalTree(self._process, getattr(signal, "SIGKILL", signal.SIGTERM))
            self._process.wait()
        self._reader.join(timeout=5)
        self.poll()


def _startInNewSession(command: list[str]) -> subprocess.Popen:
    """Start with stdout+stderr piped as text, in its own process group (so cancel reaches children)."""
    kwargs = {}
    if os.name == "posix":
        kwargs["start_new_session"] = True
    else:
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        bufsize=1,
        **kwargs,
    )


def _signalTree(process: subprocess.Popen, sig) -> None:
    """Signal the process group when it has its own, else the process alone."""
    if os.name == "posix":
        try:
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, sig)
                return
        except ProcessLookupError:
            return
    if sig == signal.SIGTERM:
        process.terminate()
    else:
        process.kill()
