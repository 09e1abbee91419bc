"""Argument types shared by the command lines, so that bad values exit 2 with a message."""

from __future__ import annotations

import argparse

MAX_SEED = 2**32 - 1  # numpy's SeedSequence and torch.manual_seed both accept this range


def seed(value: str) -> int:
    """``--seed``: an integer from 0 to 2**32 - 1 (argparse type)."""
    try:
        number = int(value)
    except ValueError:
        number = -1
    if not 0 <= number <= MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a seed; give a whole number from 0 to {MAX_SEED}."
        )
    return number


def shard(value: str) -> tuple[int, int]:
    """``--shard i/N``: job ``i`` (0 to N - 1) of ``N`` (argparse type)."""
    try:
        index, count = (int(part) for part in value.split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a shard; give i/N with 0 <= i < N, e.g. 0/8 ... 7/8 "
            "(a SLURM array: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)."
        )
    return index, count
