"""``labelfree web`` in a child process, for scripts, tests and benchmarks that drive the page.

Example
-------
>>> with WebServer(outputDir="exports") as server:  # doctest: +SKIP
...     print(server.url)                            # http://127.0.0.1:PORT/
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# Headless Chromium as root in a container, on a machine whose network is closed:
# no sandbox, no GPU, and none of its background calls home.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def freePort() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebServer:
    """Start ``labelfree web`` on a free local port; stop it on exit.

    Parameters
    ----------
    volume : path-like, optional
        Opened at start (the bundled sample by default).
    outputDir : path-like, optional
        The exports folder.
    log : path-like, optional
        Where the server's output goes (discarded by default).
    startTimeout : float
        Seconds to wait for the page to answer.
    """

    def __init__(self, volume=None, outputDir=None, log=None, startTimeout: float = 90.0):
        self.port = freePort()
        self.url = f"http://127.0.0.1:{self.port}/"
        self._command = [sys.executable, "-m", "labelfree", "web", "--port", str(self.port)]
        if volume is not None:
            self._command.append(str(volume))
        if outputDir is not None:
            self._command += ["--out", str(outputDir)]
        self._log = Path(log) if log else None
        self._startTimeout = startTimeout
        self._process = None
        self.startSeconds = float("nan")

    def __enter__(self) -> WebServer:
        output = self._log.open("w") if self._log else subprocess.DEVNULL
        start = time.monotonic()
        self._process = subprocess.Popen(self._command, stdout=output, stderr=subprocess.STDOUT)
        try:
            self._waitForPage(start)
        except BaseException:
            self.__exit__()
            raise
        self.startSeconds = time.monotonic() - start
        return self

    def _waitForPage(self, start: float) -> None:
        while time.monotonic() - start < self._startTimeout:
            if self._process.poll() is not None:
                raise RuntimeError(f"labelfree web exited with {self._process.returncode}")
            try:
                with urllib.request.urlopen(self.url, timeout=2):
                    return
            except OSError:
                time.sleep(0.25)
        raise TimeoutError(f"labelfree web did not answer at {self.url} in {self._startTimeout} s")

    def __exit__(self, *_) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None
