"""Model files: weights, configuration and a model card, loaded without executing code.

A model file is a ``torch.save`` of a plain dictionary::

    {"format": "labelfree-model", "format_version": 1, "kind": "cuts" | "landmarks",
     "config": {...}, "card": {...}, "state_dict": {name: tensor}}

holding only tensors, strings, numbers, lists and dicts, so that it is read
with ``torch.load(weights_only=True)``: a file carrying pickled code is refused.
``config`` holds what is needed to rebuild the network (channels, sizes,
normalisation); ``card`` is for people (training data, parameters, metrics,
engine version).
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from labelfree import __version__
from labelfree.errors import InputError, ModelFileError
from labelfree.io import atomic_path

FORMAT = "labelfree-model"
FORMAT_VERSION = 1
WEIGHTS_DIR = Path(__file__).parent / "weights"
MODEL_SUFFIX = ".pt"
KINDS = ("cuts", "landmarks")


@dataclass
class ModelFile:
    """The parts of a model file.

    Attributes
    ----------
    kind : str
        ``"cuts"`` or ``"landmarks"``.
    config : dict
        What rebuilds the network.
    card : dict
        The model card.
    state_dict : dict of str to Tensor
        The weights.
    """

    kind: str
    config: dict[str, Any]
    card: dict[str, Any]
    state_dict: dict[str, torch.Tensor]


def save_model(path: str | os.PathLike, model: ModelFile) -> Path:
    """Write a model file atomically, with a ``<name>.card.json`` sidecar for people.

    The card gains ``engine_version`` and ``kind`` if missing.
    """
    path = Path(path)
    card = _plain({"kind": model.kind, "engine_version": __version__, **model.card})
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": model.kind,
        "config": _plain(model.config),
        "card": card,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict.items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    card_path = path.with_name(path.stem + ".card.json")
    with atomic_path(card_path) as tmp:
        tmp.write_text(json.dumps(card, indent=2, default=str))
    return path


def _plain(mapping: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe copy: numpy scalars, versions and paths become numbers or strings, so that
    ``torch.load(weights_only=True)`` can read the file back."""
    return json.loads(json.dumps(mapping, default=_to_plain))


def _to_plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def load_model(path: str | os.PathLike, kind: str | None = None) -> ModelFile:
    """Read a model file safely.

    Parameters
    ----------
    path : path-like
        The file.
    kind : str, optional
        Expected kind; a file of another kind is refused.

    Raises
    ------
    ModelFileError
        Missing, unreadable, foreign (not a LabelFree model), code-carrying, or
        of the wrong kind.
    """
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder; give a model file (.pt) inside it.")
    if not path.is_file():
        raise ModelFileError(f"Model file not found: {path}.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise ModelFileError(
            f"{path} is not a readable LabelFree model (corrupted, truncated, or it carries "
            f"code, which is never executed). Retrain it or use a bundled model. [{type(err).__name__}]"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(
            f"{path} is not a LabelFree model file; train one with `labelfree cuts train` "
            "or `labelfree landmarks train`."
        )
    version = payload.get("format_version")
    if _whole(version) and version > FORMAT_VERSION:
        raise ModelFileError(f"{path} was written by a newer LabelFree; update the engine.")
    check_fields(
        path,
        payload,
        {
            "format_version": (lambda v: _whole(v) and 1 <= v, "a format version (1)"),
            "kind": (lambda v: v in KINDS, f"one of {', '.join(KINDS)}"),
        },
    )
    if kind is not None and payload["kind"] != kind:
        raise ModelFileError(
            f"{path} is a {payload['kind']!r} model but a {kind!r} model is needed here."
        )
    check_fields(
        path,
        payload,
        {
            "config": (lambda v: isinstance(v, dict), "a dictionary"),
            "card": (lambda v: isinstance(v, dict), "a dictionary"),
            "state_dict": (_is_state_dict, "a non-empty dictionary of named tensors"),
        },
    )
    return ModelFile(
        kind=payload["kind"],
        config=dict(payload["config"]),
        card=dict(payload["card"]),
        state_dict=dict(payload["state_dict"]),
    )


def check_fields(
    path: str | os.PathLike, mapping: dict[str, Any], schema: dict, section: str = ""
) -> None:
    """Refuse a model file whose fields do not match ``schema``.

    Parameters
    ----------
    path : path-like
        The file, for the message.
    mapping : dict
        The payload or its ``config``.
    schema : dict
        ``{field: (predicate, description)}``; ``predicate(value)`` is True for valid values.
    section : str
        Where ``mapping`` sits in the file (``"config"``), for the message.

    Raises
    ------
    ModelFileError
        Naming the first field that is missing or invalid.
    """
    for field_name, (valid, description) in schema.items():
        value = mapping.get(field_name, _MISSING)
        try:
            ok = value is not _MISSING and bool(valid(value))
        except (TypeError, ValueError, KeyError, AttributeError):
            ok = False
        if not ok:
            shown = "missing" if value is _MISSING else f"{_short(value)}"
            where = f"{section}.{field_name}" if section else field_name
            raise ModelFileError(
                f"{path} is damaged or was edited: {where!r} must be {description}, not "
                f"{shown}. Retrain it or use a bundled model."
            )


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def whole_in(low: int, high: int):
    """A predicate for :func:`check_fields`: an integer (not a bool) in ``[low, high]``."""
    return lambda value: _whole(value) and low <= value <= high


def _is_state_dict(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in value.items())
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_MISSING = object()


def bundled_model_path(name: str) -> Path:
    """Path of a model shipped in ``labelfree/weights`` (e.g. ``"cuts_mr.pt"``)."""
    path = WEIGHTS_DIR / name
    if not path.is_file():
        available = sorted(p.name for p in WEIGHTS_DIR.glob("*.pt"))
        raise ModelFileError(f"No bundled model {name!r}; available: {available or 'none'}.")
    return path


def check_training_output(out: str | os.PathLike, inputs) -> Path:
    """Refuse, before any work, a model path that would overwrite an input or cannot be written.

    Training writes ``out`` and, beside it, ``<stem>.card.json`` and ``<stem>.loss.png``.

    Parameters
    ----------
    out : path-like
        The model file to write; it must end in ``.pt``.
    inputs : sequence of path-like
        The training images (files or DICOM folders).

    Returns
    -------
    Path
        ``out`` as a ``Path``.

    Raises
    ------
    InputError
        When ``out`` has another suffix, is a folder, names or would replace an input,
        lies below a file, or its folder exists but is not writable.
    """
    out = Path(out)
    if out.suffix.lower() != MODEL_SUFFIX:
        raise InputError(
            f"--out {out} must be a model file ending in {MODEL_SUFFIX}, e.g. model.pt."
        )
    if out.is_dir():
        raise InputError(f"--out {out} is a folder; give a file name such as {out / 'model.pt'}.")
    folder = next((p for p in out.resolve().parents if p.exists()), None)
    if folder is not None and not folder.is_dir():
        raise InputError(f"--out {out} lies below the file {folder}; choose a folder.")
    written = {out.resolve()} | {
        out.with_name(out.stem + extra).resolve() for extra in (".card.json", ".loss.png")
    }
    for source in inputs:
        resolved = Path(source).resolve()
        if resolved in written or any(resolved in w.parents for w in written):
            raise InputError(
                f"--out {out} would overwrite the training input {source}; choose another name."
            )
    if folder is not None and not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"Cannot write into {folder}; choose a writable folder for --out.")
    return out
