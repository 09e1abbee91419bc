"""Long work as steps a caller drives.

Long engine functions come in two flavours: ``*_steps(...)`` is a generator
that yields :class:`Progress` after each unit of work and *returns* its result
(``StopIteration.value``); the plain function runs those steps to completion.
A GUI advances the generator from a timer and cancels by closing it, so nothing
is half-written: results only exist once the generator has returned.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One progress report.

    Attributes
    ----------
    fraction : float
        Work done so far, in [0, 1].
    message : str
        What is being done, for a status line.
    """

    fraction: float
    message: str


ProgressCallback = Callable[[Progress], None]
Steps = Generator[Progress, None, T]


def run_steps(steps: Steps[T], callback: ProgressCallback | None = None) -> T:
    """Drive a step generator to completion and return its result.

    Parameters
    ----------
    steps : generator
        A generator yielding :class:`Progress` and returning the result.
    callback : callable, optional
        Called with every :class:`Progress`.

    Returns
    -------
    result
        The generator's return value.
    """
    while True:
        try:
            report = next(steps)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(report)


def scaled(steps: Steps[T], start: float, stop: float) -> Steps[T]:
    """Re-map a sub-task's progress fractions into ``[start, stop]``."""
    result = None
    while True:
        try:
            report = next(steps)
        except StopIteration as done:
            result = done.value
            break
        yield Progress(start + (stop - start) * report.fraction, report.message)
    return result
