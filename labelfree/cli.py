"""The ``labelfree`` command (also ``python -m labelfree``).

Each method registers its own sub-commands: a module listed in ``COMMANDS``
provides ``register(subparsers)``, which adds a parser whose ``func`` default
takes the parsed arguments and returns an exit code. The command lines are a
contract (see DESIGN.md); add options, never change existing ones.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from labelfree import __version__
from labelfree.errors import Cancelled, LabelFreeError

COMMANDS = ("labelfree.cuts.cli", "labelfree.landmarks.cli", "labelfree.demo", "labelfree.web.cli")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="labelfree",
        description="Label-free anatomy: CUTS segmentation and self-supervised landmarks.",
    )
    parser.add_argument("--version", action="version", version=f"labelfree {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input, 130 cancelled)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LabelFreeError as err:
        print(f"labelfree: error: {err}", file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt):
        print("labelfree: cancelled; nothing was written.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
