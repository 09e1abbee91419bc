"""``labelfree web [VOLUME]``: serve the browser front end (needs the ``web`` extra)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from labelfree.errors import InputError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def register(subparsers) -> None:
    """Add the ``web`` sub-command."""
    parser = subparsers.add_parser(
        "web",
        help="serve CUTSSegment and LandmarkDiscovery in a web page (pip install -e '.[web]')",
        description=(
            "Serve the LabelFree web page: a volume in three slice views, CUTS with the "
            "granularity slider and click-to-segment, landmarks, and downloads. It listens on "
            "127.0.0.1 unless --host says otherwise; there is no authentication."
        ),
    )
    parser.add_argument(
        "volume", nargs="?", type=Path, help="volume to open first (default: bundled sample)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port (0 picks a free one)")
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for exports (default: a temporary one)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the arguments, then serve until interrupted."""
    if args.volume is not None and not args.volume.is_file():
        raise InputError(f"No volume at {args.volume}; give an image file or leave it out.")
    try:
        from labelfree.web.app import main
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith(("trame", "slicer", "vtk")):
            raise
        raise InputError(
            f"The web front end needs its extra ({err.name} is missing): pip install -e '.[web]'"
        ) from err
    if args.host not in LOCAL_HOSTS:
        print(
            f"labelfree web: serving on {args.host}: anyone who can reach it can open and "
            "write files as you; there is no authentication.",
            file=sys.stderr,
        )
    main(args.volume, host=args.host, port=args.port, outputDir=args.out)
    return 0
