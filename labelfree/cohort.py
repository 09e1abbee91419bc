"""Running one method over a cohort: many cases, one output each, nothing lost.

The runner that ``cuts segment`` and ``landmarks detect`` (and the modules'
batch modes) use on a folder of cases:

- a case that cannot be processed is reported by name with its reason, and
  the run goes on (a bad model file stops it: every case would fail alike);
- a case whose complete output exists from an earlier run with the same
  parameters is skipped, unless ``overwrite`` is set;
- progress says "case i of N";
- ``provenance.json`` beside the outputs lists every input with its hash,
  the parameters, the outcome of each case and the package versions.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelfree.errors import InputError, LabelFreeError, ModelFileError, OutputError
from labelfree.io import IMAGE_SUFFIXES, write_text
from labelfree.progress import Progress
from labelfree.provenance import PROVENANCE, write_provenance


@dataclass
class CohortResult:
    """What a cohort run produced.

    Attributes
    ----------
    outputs : dict of str to Path
        Case name -> its output, in input order, for every case that has one
        (computed now or kept from an earlier run).
    skipped : list of str
        Cases whose output was kept from an earlier run.
    failures : list of (Path, str)
        Cases that could not be processed, with the reason.
    table : Path or None
        A table over all cases, when the method writes one.
    warnings : list of str
        Cases whose results look implausible, one sentence each (also in the table).
    """

    outputs: dict[str, Path] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    table: Path | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        """The outputs, in input order."""
        return list(self.outputs.values())


def image_suffix(path: str | os.PathLike) -> str:
    """The image suffix of a file name (``.nii.gz`` counts as one), or ``""``."""
    name = Path(path).name.lower()
    return next((s for s in sorted(IMAGE_SUFFIXES, key=len, reverse=True) if name.endswith(s)), "")


def case_name(path: str | os.PathLike) -> str:
    """A file name without its image suffix: ``case01.nii.gz`` -> ``case01``."""
    path = Path(path)
    suffix = image_suffix(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def list_cases(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The cases of a cohort: the image files of a folder (sorted), or the given paths.

    A folder without image files (a DICOM series) is one case.

    Raises
    ------
    InputError
        Nothing given, a path that does not exist, or two cases with the same name.
    """
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    cases: list[Path] = []
    for item in map(Path, items):
        if not item.exists():
            raise InputError(f"Input not found: {item}. Check the path.")
        if item.is_dir():
            files = sorted(p for p in item.iterdir() if p.is_file() and image_suffix(p))
            cases.extend(files or [item])
        else:
            cases.append(item)
    if not cases:
        raise InputError("No input images given.")
    names = [case_name(p) for p in cases]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise InputError(
            f"Several inputs are named {', '.join(clashes)}; their outputs would collide. "
            "Rename them or put them in separate folders."
        )
    return cases


def shard_record(shard: tuple[int, int] | None) -> str:
    """The provenance file of one shard (``provenance.shard-2-of-8.json``), or of a whole run."""
    return PROVENANCE if shard is None else f"provenance.shard-{shard[0]}-of-{shard[1]}.json"


def _record(out_dir: Path, name: str) -> dict[str, Any] | None:
    try:
        return json.loads((out_dir / name).read_text())["run"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _done_so_far(out_dir: Path, shard, parameters, overwrite: bool) -> tuple[Path, dict]:
    """The hidden record of cases finished with these parameters (reset when they change).

    Written before any case and after each one, so a run killed half-way with other
    parameters is never taken for the earlier run, and a case that failed is never reused.
    """
    suffix = "" if shard is None else f".shard-{shard[0]}-of-{shard[1]}"
    path = out_dir / f".cohort-run{suffix}.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        state = None
    if overwrite or not isinstance(state, dict) or state.get("parameters") != parameters:
        state = {"parameters": parameters, "done": []}
        write_text(path, json.dumps(state))
    return path, state


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def run_cohort_steps(
    cases: list[Path],
    out_dir: str | os.PathLike,
    process: Callable[[Path, Path], None],
    output_for: Callable[[str], Path],
    parameters: dict[str, Any],
    *,
    overwrite: bool = False,
    complete: Callable[[Path], bool] = Path.exists,
    finish: Callable[[CohortResult], None] | None = None,
    what: str = "Processing",
    shard: tuple[int, int] | None = None,
) -> Generator[Progress, None, CohortResult]:
    """Process every case; yields :class:`Progress`, returns :class:`CohortResult`.

    Parameters
    ----------
    cases : list of Path
        From :func:`list_cases`.
    out_dir : path-like
        Receives the outputs and ``provenance.json``.
    process : callable
        ``process(case, output)`` writes the complete output of one case (atomically)
        or raises a :class:`LabelFreeError`.
    output_for : callable
        ``output_for(name)`` is the output path of the case called ``name``.
    parameters : dict
        Everything that changes the outputs (model, options, seed): an earlier
        output is kept only when its run had the same parameters.
    overwrite : bool
        Recompute every case even when its output exists.
    complete : callable
        ``complete(output)`` is True when an output is whole (default: it exists).
    finish : callable, optional
        ``finish(result)`` writes what covers all cases (e.g. a table), before
        the provenance record.
    what : str
        The verb of the progress messages ("Segmenting", "Finding landmarks in").
    shard : (int, int), optional
        ``(i, n)``: process only cases ``i, i + n, i + 2n...`` (``0 <= i < n``), as one of
        ``n`` jobs (a SLURM array, or torchrun's ranks: :func:`shard_from_environment`).
        Each job records itself in ``provenance.shard-i-of-n.json``; the job that finds
        all ``n`` records written calls ``finish`` over every case and writes
        ``provenance.json`` for the whole cohort.

    Raises
    ------
    ModelFileError
        The model cannot be used (every case would fail).
    InputError
        No case could be processed.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"Cannot create the output folder {out_dir} ({err.strerror}).") from err
    index, count = shard or (0, 1)
    mine = cases[index::count]
    record = shard_record(shard)
    marker, state = _done_so_far(out_dir, shard, _plain(parameters), overwrite)
    done = set(state["done"])
    result = CohortResult()
    for number, case in enumerate(mine):
        name = case_name(case)
        output = output_for(name)
        yield Progress(number / len(mine), f"{what} {name} (case {number + 1} of {len(mine)})")
        if name in done and complete(output):
            result.outputs[name] = output
            result.skipped.append(name)
            continue
        try:
            process(case, output)
        except ModelFileError:
            raise
        except LabelFreeError as error:
            result.failures.append((case, str(error)))
            continue
        result.outputs[name] = output
        done.add(name)
        write_text(marker, json.dumps({**state, "done": sorted(done)}))
    outcome = _outcome(parameters, result, shard)
    if shard is not None:  # recorded even when every case failed, so that the others can merge
        write_provenance(out_dir, mine, outcome, name=record)
    if mine and not result.outputs:
        reasons = "; ".join(f"{p.name}: {m}" for p, m in result.failures[:3])
        raise InputError(f"No case could be processed ({reasons}).")
    if shard is None:
        if finish is not None:
            finish(result)
        write_provenance(out_dir, cases, outcome)
    else:
        whole = _merged(out_dir, cases, parameters, count)
        if whole is not None:  # the last shard to finish covers the whole cohort
            if finish is not None:
                finish(whole)
            result.table = whole.table
            write_provenance(out_dir, cases, {**_outcome(parameters, whole, None), "shards": count})
    yield Progress(
        1.0,
        f"Done: {len(result.outputs) - len(result.skipped)} computed, {len(result.skipped)} "
        f"kept from an earlier run, {len(result.failures)} failed",
    )
    return result


def _outcome(parameters, result: CohortResult, shard) -> dict[str, Any]:
    return {
        "parameters": parameters,
        "shard": None if shard is None else list(shard),
        "outputs": {name: str(path) for name, path in result.outputs.items()},
        "skipped": result.skipped,
        "failures": [{"input": str(p), "reason": m} for p, m in result.failures],
    }


def _merged(out_dir, cases, parameters, count) -> CohortResult | None:
    """All shards' outcome (from their records) once every shard has recorded these parameters."""
    records = [_record(out_dir, shard_record((i, count))) for i in range(count)]
    if any(r is None or r.get("parameters") != _plain(parameters) for r in records):
        return None
    produced = {name: Path(path) for r in records for name, path in r["outputs"].items()}
    whole = CohortResult()
    for case in cases:  # input order
        if case_name(case) in produced:
            whole.outputs[case_name(case)] = produced[case_name(case)]
    whole.failures = [(Path(f["input"]), f["reason"]) for r in records for f in r["failures"]]
    return whole


def shard_from_environment() -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` under ``torchrun`` with several processes, else None."""
    from labelfree.distributed import world_from_environment

    world = world_from_environment()
    return (world.rank, world.size) if world.size > 1 else None


PARTIAL = 3
"""Exit status of a cohort command that finished with some cases failed."""


def report_cohort(result: CohortResult, out_dir: Path) -> int:
    """Print a cohort's outcome for the command line; the exit status (0, or 3 if cases failed)."""
    for case, reason in result.failures:
        print(f"labelfree: warning: {case.name} skipped: {reason}", file=sys.stderr)
    for warning in result.warnings:
        print(f"labelfree: warning: {warning}", file=sys.stderr)
    computed = len(result.outputs) - len(result.skipped)
    kept = f", {len(result.skipped)} kept from an earlier run" if result.skipped else ""
    table = f" (table: {result.table})" if result.table else ""
    print(f"{computed} cases -> {out_dir}{kept}, {len(result.failures)} failed{table}")
    return PARTIAL if result.failures else 0
