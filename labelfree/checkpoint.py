"""Training checkpoints: everything a killed run needs to continue to the same result.

A trainer writes one after every epoch, atomically (a kill leaves the previous
one whole): the weights, the optimiser and scheduler, the random states, the
epoch, the best weights so far and the loss history. ``--resume`` loads it and
goes on from the next epoch; with the same seed and settings on the CPU the
final weights equal those of a run that was never interrupted.

A checkpoint is read with ``torch.load(weights_only=True)``, like a model file:
it holds tensors, numbers, strings, lists and dicts only, never code.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelfree.errors import InputError
from labelfree.io import atomic_path

FORMAT = "labelfree-checkpoint"
SUFFIX = ".ckpt"


def checkpoint_path(model_path: str | os.PathLike) -> Path:
    """Where training into ``model.pt`` keeps its checkpoint: ``model.ckpt`` beside it."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + SUFFIX)


def refuse_overwriting_a_checkpoint(
    model_path: str | os.PathLike, resume: str | os.PathLike | None
) -> None:
    """A fresh run into ``model.pt`` would overwrite the checkpoint a killed run left there.

    Raises
    ------
    InputError
        ``model.ckpt`` exists and the run does not resume from it.
    """
    left = checkpoint_path(model_path)
    if left.exists() and (resume is None or Path(resume).resolve() != left.resolve()):
        raise InputError(
            f"{left} is the checkpoint of an interrupted run into {Path(model_path).name}; "
            f"continue it with --resume {left}, or delete it to start afresh."
        )


def save_checkpoint(
    path: str | os.PathLike, kind: str, fingerprint: dict[str, Any], state: dict[str, Any]
) -> Path:
    """Write a checkpoint atomically.

    Parameters
    ----------
    path : path-like
        The checkpoint file.
    kind : str
        ``"cuts"`` or ``"landmarks"``.
    fingerprint : dict
        The settings a resumed run must share (data, seed, epochs, batch size...).
    state : dict
        The trainer's state: tensors, numbers, strings, lists and dicts.
    """
    payload = {
        "format": FORMAT,
        "kind": kind,
        "fingerprint": _plain(fingerprint),
        "state": _plain(state),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, kind: str, fingerprint: dict[str, Any]) -> dict:
    """The state saved by :func:`save_checkpoint`, if it belongs to this run.

    Raises
    ------
    InputError
        Missing, unreadable, of another kind, or from a run with other settings (it would
        not continue this one).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Checkpoint not found: {path}. Give the .ckpt file a run left.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise InputError(f"{path} is not a readable checkpoint ({type(err).__name__}).") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{path} is not a LabelFree training checkpoint.")
    if payload.get("kind") != kind:
        raise InputError(f"{path} is a {payload.get('kind')!r} checkpoint, not {kind!r}.")
    saved, fingerprint = payload.get("fingerprint", {}), _plain(fingerprint)
    differing = sorted(
        k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k)
    )
    if differing:
        raise InputError(
            f"{path} is from a run with other settings ({', '.join(differing)}); resume with the "
            "same inputs and options, or start afresh."
        )
    return payload["state"]


def _plain(value: Any) -> Any:
    """Numpy scalars as Python numbers and tuples as lists, recursively (tensors stay):
    what ``torch.load(weights_only=True)`` reads back."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def random_states(rng: np.random.Generator) -> dict[str, Any]:
    """The numpy generator's and torch's CPU random states."""
    return {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}


def restore_random_states(rng: np.random.Generator, states: dict[str, Any]) -> None:
    """Put back what :func:`random_states` saved."""
    rng.bit_generator.state = states["numpy"]
    torch.set_rng_state(states["torch"])
