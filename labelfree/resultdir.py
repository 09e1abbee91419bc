"""A result folder that holds one complete run, or the previous one: never a mix.

A run writes into a hidden staging folder beside ``out`` and swaps it in only
when every file is written and verified. A lock file beside ``out`` keeps a
second run from writing into the same folder at the same time. Staging
folders left by a killed run are removed by the next one (a staging folder
that was complete but not yet swapped in is put in place first).
"""

from __future__ import annotations

import glob
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from labelfree.errors import InputError, OutputError

try:  # POSIX
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt


@contextmanager
def result_folder(out: str | os.PathLike, complete: str, owned: Callable[[str], bool]):
    """Yield an empty staging folder; on success it replaces ``out`` in one rename.

    Parameters
    ----------
    out : path-like
        The result folder. It may be absent, empty, or a previous result
        (it holds ``complete``, or only names ``owned`` accepts).
    complete : str
        The file name that a finished result always holds (e.g. ``summary.json``).
    owned : callable
        ``owned(name)`` is True for file names a run writes into the folder.

    Raises
    ------
    InputError
        ``out`` is a file, holds someone else's files, or another run holds its lock.
    OutputError
        The staging folder cannot be created (read-only folder, full disk).
    """
    out = Path(out)
    _check_replaceable(out, complete, owned)
    with _locked(out):
        _clean_stale(out, complete)
        staging = out.parent / f".{out.name}.new-{uuid.uuid4().hex[:8]}"
        try:
            staging.mkdir()
        except OSError as err:
            raise OutputError(
                f"Cannot write into {out.parent} ({err.strerror}); choose a folder you can "
                "write to."
            ) from err
        try:
            yield staging
            try:
                _swap_in(staging, out)
            except OSError as err:  # Windows: the folder is open elsewhere
                raise OutputError(
                    f"Could not put the new result in place of {out} ({err.strerror}); close "
                    "programs that use that folder and run again."
                ) from err
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _check_replaceable(out: Path, complete: str, owned: Callable[[str], bool]) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder.")
    if out.is_dir():  # a finished result may hold the user's own files too: never delete them
        foreign = sorted(p.name for p in out.iterdir() if not owned(p.name))
        if foreign:
            raise InputError(
                f"--out {out} holds files that are not a LabelFree result (e.g. {foreign[0]!r}); "
                "a run replaces the whole folder, so give a new or empty folder."
            )
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"--out {out} lies below the file {parent}; give a folder path.")
            break


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    lock_path = out.parent / f".{out.name}.lock"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle = lock_path.open("a+b")
    except OSError as err:
        raise OutputError(
            f"Cannot write into {out.parent} ({err.strerror}); choose a folder you can write to."
        ) from err
    try:
        try:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError as err:
            raise InputError(
                f"Another run is writing into {out}; wait for it to finish or choose another "
                "folder."
            ) from err
        yield  # the lock file stays: deleting it while locked fails on Windows and races on POSIX
    finally:
        handle.close()


def _clean_stale(out: Path, complete: str) -> None:
    """Remove what killed runs left beside ``out``; finish a swap that was cut short."""
    name = glob.escape(out.name)  # a case called "case[1]" must not match "case1"
    stale = sorted(out.parent.glob(f".{name}.new-*")) + sorted(out.parent.glob(f".{name}.old-*"))
    if not out.exists():
        for folder in stale:  # a complete result whose swap was cut short, or the previous one
            if (folder / complete).exists():
                try:
                    folder.rename(out)
                except OSError:
                    continue  # in use: the new run's result replaces it anyway
                break
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)


def _swap_in(staging: Path, out: Path) -> None:
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    if out.exists():
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        if old.exists() and not out.exists():
            os.replace(old, out)  # keep the previous result
        raise
    shutil.rmtree(old, ignore_errors=True)
