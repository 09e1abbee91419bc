"""Long work driven from the GUI's main thread, without Qt: step generators and child processes.

A widget owns one :class:`JobRunner` and one timer whose timeout calls
:meth:`JobRunner.tick` (and stops the timer when it returns False). Each job
reports progress and its end through callbacks, so both modules (and any
other front end with a periodic callback) share one way of running, showing
and cancelling long work:

- :class:`StepJob` advances a generator of :class:`~labelfree.progress.Progress`
  for at most ``budget`` seconds per tick; cancelling closes the generator;
- :class:`ProcessJob` polls a :class:`~LabelFreeLib.training.TrainingProcess`
  (a child process in its own process group); cancelling signals the group and
  the job keeps polling until every process of it has ended.

Example
-------
>>> runner = JobRunner()
>>> runner.start("run", StepJob(steps, onProgress=print, onDone=show))  # doctest: +SKIP
>>> while runner.tick():  # a QTimer's timeout in the widgets
...     pass
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator


class StepJob:
    """A step generator, advanced in time slices.

    Parameters
    ----------
    steps : generator
        Yields :class:`~labelfree.progress.Progress`; its return value is the result.
    onProgress : callable, optional
        ``onProgress(report)`` after each tick that produced reports (the last one).
    onDone : callable, optional
        ``onDone(result)`` when the generator returns.
    onError : callable, optional
        ``onError(exception)`` when it raises; without it the exception propagates.
    onCancel : callable, optional
        ``onCancel()`` after :meth:`cancel` has closed the generator.
    budget : float
        Seconds one tick may spend before handing control back (at least one step runs).
    clock : callable
        Monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        steps: Generator,
        onProgress: Callable | None = None,
        onDone: Callable | None = None,
        onError: Callable | None = None,
        onCancel: Callable | None = None,
        budget: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._steps = steps
        self._onProgress = onProgress
        self._onDone = onDone
        self._onError = onError
        self._onCancel = onCancel
        self._budget = budget
        self._clock = clock
        self.running = True

    def tick(self) -> bool:
        """Advance for up to ``budget`` seconds; returns whether the job still runs."""
        if not self.running:
            return False
        start = self._clock()
        report = None
        try:
            while True:
                report = next(self._steps)
                if self._clock() - start >= self._budget:
                    break
        except StopIteration as done:
            self.running = False
            if report is not None and self._onProgress is not None:
                self._onProgress(report)
            if self._onDone is not None:
                self._onDone(done.value)
            return False
        except Exception as error:
            self.running = False
            if self._onError is None:
                raise
            self._onError(error)
            return False
        if self._onProgress is not None:
            self._onProgress(report)
        return True

    def cancel(self) -> None:
        """Stop now: closing the generator runs its cleanup; then ``onCancel``, nothing else."""
        if self.running:
            self.running = False
            self._steps.close()
            if self._onCancel is not None:
                self._onCancel()


class ProcessJob:
    """A child process (:class:`~LabelFreeLib.training.TrainingProcess`), polled each tick.

    Parameters
    ----------
    process : TrainingProcess
        Started already.
    onProgress : callable, optional
        ``onProgress(report)`` for the last progress line of each poll.
    onDone : callable, optional
        ``onDone(process)`` once the whole process group has ended (succeeded,
        failed or cancelled: see the process's attributes).
    """

    def __init__(self, process, onProgress: Callable | None = None, onDone: Callable | None = None):
        self.process = process
        self._onProgress = onProgress
        self._onDone = onDone
        self.running = True

    def tick(self) -> bool:
        """Drain the output read so far; returns whether the process still runs."""
        if not self.running:
            return False
        reports = self.process.poll()
        if reports and self._onProgress is not None:
            self._onProgress(reports[-1])
        if self.process.running:
            return True
        self.running = False
        if self._onDone is not None:
            self._onDone(self.process)
        return False

    def cancel(self) -> None:
        """Signal the process group and keep polling: ``onDone`` follows once it has ended."""
        self.process.cancel()


class JobRunner:
    """Jobs by name (``"run"``, ``"training"``...), all advanced by one periodic :meth:`tick`."""

    def __init__(self):
        self._jobs: dict[str, StepJob | ProcessJob] = {}

    def start(self, name: str, job: StepJob | ProcessJob) -> None:
        """Add a job; a job of that name must not be running (one may start in an ``onDone``)."""
        if self.busy(name):
            raise RuntimeError(f"A {name} job is running already.")
        self._jobs[name] = job

    def busy(self, name: str | None = None) -> bool:
        """Whether the named job (any job, for None) runs; False already inside its ``onDone``."""
        jobs = self._jobs.values() if name is None else [self._jobs.get(name)]
        return any(job is not None and job.running for job in jobs)

    def tick(self) -> bool:
        """Advance every job once; returns whether any job still runs (keep the timer going)."""
        for name, job in list(self._jobs.items()):
            if not job.tick() and self._jobs.get(name) is job:  # onDone may start a new one
                del self._jobs[name]
        return self.busy()

    def cancel(self, name: str) -> None:
        """Cancel a job: a step job ends now, a process job once its processes have ended."""
        job = self._jobs.get(name)
        if job is None:
            return
        job.cancel()
        if isinstance(job, StepJob):
            del self._jobs[name]

    def cancelAll(self) -> None:
        """Cancel every job (when the widget is destroyed or the scene closes)."""
        for name in list(self._jobs):
            self.cancel(name)
