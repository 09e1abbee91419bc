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
import time
from pathlib import Path

from labelfree.progress import Progress
from LabelFreeLib import resourcePath

SCRIPT_NAME = "labelfree_train.py"


def trainingScriptPath() -> Path:
    """Where the headless training helper is, installed or in the source tree."""
    return resourcePath("Scripts", SCRIPT_NAME)


def trainingCommand(task: str, inputs, out, python: str | None = None, **options) -> list[str]:
    """The command line that trains a model on ``inputs``, or segments one (``"segment"``).

    Parameters
    ----------
    task : str
        ``"cuts"`` or ``"landmarks"`` (training), ``"segment"`` (a CUTS result folder) or
        ``"detect"`` (landmarks on a cohort).
    inputs : sequence of path-like
        Images or volumes to learn from (one image to segment).
    out : path-like
        The model file or result folder to write.
    python : str, optional
        The interpreter: ``PythonSlicer`` inside Slicer; this interpreter by default.
    **options
        Command-line options of the helper, in Python spelling: ``epochs=3``,
        ``init_model="m.pt"``, ``landmarks=12`` ... None values are left out.
    """
    if task not in ("cuts", "landmarks", "segment", "detect"):
        raise ValueError(f"Unknown task {task!r}; use 'cuts', 'landmarks', 'segment' or 'detect'.")
    command = [python or sys.executable, "-u", str(trainingScriptPath()), task]
    command += [str(Path(p)) for p in inputs]
    command += ["--out", str(Path(out))]
    for key, value in options.items():
        if value is True:
            command.append("--" + key.replace("_", "-"))
        elif value is not None and value is not False:
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

    The helper runs in a process group (POSIX: a new session) of its own, so
    cancel reaches every process under it. Inside Slicer the command starts
    with ``PythonSlicer``, a CTK launcher that does not forward SIGTERM to the
    ``python-real`` it runs (CTKAppLauncher), and
    ``slicer.util.launchConsoleProcess`` (``Base/Python/slicer/util.py``)
    starts no new session: signalling the launcher alone would leave the
    trainer running. Nothing here blocks: :meth:`cancel` sends SIGTERM to the
    group and :meth:`poll` sends SIGKILL once ``grace`` seconds have passed.

    Parameters
    ----------
    command : list of str
        From :func:`trainingCommand`.
    env : dict, optional
        The environment; inside Slicer pass ``slicer.util.startupEnvironment()``
        (what ``launchConsoleProcess`` uses). This process's environment by default.
    grace : float
        Seconds between SIGTERM and SIGKILL after a cancel.
    """

    def __init__(self, command: list[str], env: dict | None = None, grace: float = 5.0):
        self.command = list(command)
        self.log: list[str] = []
        self.modelPath: Path | None = None
        self.errorMessage = ""
        self.cancelled = False
        self._grace = grace
        self._killAt: float | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._process = _startInOwnGroup(self.command, env)
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
        """Ended with status 0 and reported its model file (possibly just before a cancel)."""
        return self.returnCode == 0 and self.modelPath is not None

    def poll(self) -> list[Progress]:
        """Drain the output read so far; returns the progress reports in it (never blocks)."""
        if self._killAt is not None and time.monotonic() >= self._killAt:
            self._killAt = None
            _signalGroup(self._process, getattr(signal, "SIGKILL", signal.SIGTERM))
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
        """Block until the process and its output end (scripts and tests only, never the GUI)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.command, timeout)
            self.poll()
            time.sleep(0.02)
        return self._process.wait()

    def cancel(self) -> None:
        """Ask the whole process group to stop (SIGTERM now, SIGKILL after the grace time).

        Returns at once; keep polling until :attr:`running` is False. A model is
        written only if the helper finished before the signal arrived, and then
        :attr:`succeeded` says so.
        """
        if self._process.poll() is not None and not self._reader.is_alive():
            return
        self.cancelled = True
        _signalGroup(self._process, signal.SIGTERM)
        self._killAt = time.monotonic() + self._grace


def _startInOwnGroup(command: list[str], env: dict | None) -> subprocess.Popen:
    """Start with stdout+stderr piped as text, in a process group of its own."""
    kwargs = {}
    if os.name == "posix":
        kwargs["start_new_session"] = True
    else:
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
    return subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        encoding="utf-8",
        errors="replace",  # a stray byte in a log line must not kill the reader
        bufsize=1,
        **kwargs,
    )


def _signalGroup(process: subprocess.Popen, sig) -> None:
    """Signal every process of the helper's group (Windows: end the whole tree)."""
    if os.name == "posix":
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass  # the group is gone already
        return
    # Windows: CTRL_BREAK reaches the group only with a console; taskkill /T ends the tree.
    subprocess.run(
        ["taskkill", "/F", "/T", "/PID", str(process.pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        creationflags=subprocess.CREATE_NO_WINDOW,
    )
