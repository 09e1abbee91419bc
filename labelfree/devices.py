"""Choosing the torch device."""

from __future__ import annotations

import torch

from labelfree.errors import InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"`` or ``"cuda"`` into a :class:`torch.device`.

    ``"auto"`` picks CUDA when it is available, else the CPU.

    Raises
    ------
    InputError
        For an unknown name, or ``"cuda"`` on a machine without CUDA.
    """
    if name not in DEVICE_CHOICES:
        raise InputError(f"Unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError(
            "CUDA was requested but this torch build sees no CUDA GPU; use --device cpu or auto."
        )
    return torch.device(name)
