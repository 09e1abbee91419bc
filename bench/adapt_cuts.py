"""Adapting the CUTS encoder to one volume, as the GUI's "Adapt model" does.

Fine-tunes the bundled ``cuts_mr.pt`` on the 197 x 233 x 189 MNI152 T1 through
``labelfree.cuts.train.train_from_files`` (the path the headless helper takes), with the
module's defaults (5 epochs, encoder run on the 17 x 17 windows around the anchors), and
times it end to end against the 3-minute target. In the same run it times one epoch of the
same fine-tuning the way the reference trains (the encoder run over whole slices,
``crop=None``) and projects it to the same number of epochs, so the ratio says what encoding
only the windows buys.

Usage: python bench/adapt_cuts.py [--epochs 5] [--reference-epochs 1]
(about 2-5 minutes on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from _common import OUT, fmt_table, load_mni, machine, peak_rss_mb

from labelfree.cuts.train import train_from_files
from labelfree.io import write_image

TARGET_SECONDS = 180.0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_training(volume: Path, out: Path, epochs: int, crop: int | None) -> dict:
    """Fine-tune from the bundled model; wall and CPU seconds and the card's losses."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    kwargs = {} if crop == 17 else {"crop": crop}
    train_from_files(
        [volume], out, epochs=epochs, seed=0, init_model="default", device="cpu", **kwargs
    )
    card = json.loads(out.with_name(out.stem + ".card.json").read_text())
    return {
        "wall_s": time.perf_counter() - wall,
        "cpu_s": cpu_seconds() - cpu,
        "epochs": epochs,
        "best_losses": card.get("best_losses"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs (GUI default 5)")
    parser.add_argument(
        "--reference-epochs",
        type=int,
        default=1,
        help="epochs of whole-slice training to time and project",
    )
    args = parser.parse_args()
    print(machine())
    t1, _, _ = load_mni()
    with tempfile.TemporaryDirectory() as tmp:
        volume = write_image(t1, Path(tmp) / "mni152_t1.nrrd")
        ours = timed_training(volume, Path(tmp) / "ours.pt", args.epochs, 17)
        whole = timed_training(volume, Path(tmp) / "whole.pt", args.reference_epochs, None)
    scale = args.epochs / args.reference_epochs
    projected = {"wall_s": whole["wall_s"] * scale, "cpu_s": whole["cpu_s"] * scale}
    rows = [
        [
            "ours: 17 x 17 windows (default)",
            f"{ours['wall_s']:.1f}",
            f"{ours['cpu_s']:.1f}",
            f"{TARGET_SECONDS / ours['wall_s']:.1f}x",
        ],
        [
            f"whole slices (reference way), {args.reference_epochs} epoch(s) measured",
            f"{whole['wall_s']:.1f}",
            f"{whole['cpu_s']:.1f}",
            "",
        ],
        [
            f"whole slices, projected to {args.epochs} epochs",
            f"{projected['wall_s']:.1f}",
            f"{projected['cpu_s']:.1f}",
            f"{TARGET_SECONDS / projected['wall_s']:.2f}x",
        ],
    ]
    print(
        fmt_table(
            rows,
            [
                "adaptation of cuts_mr.pt to the MNI152 T1",
                "wall s",
                "CPU s",
                "target 180 s / wall (> 1 meets)",
            ],
        )
    )
    print(
        f"speed-up of window training over whole slices: "
        f"{projected['wall_s'] / ours['wall_s']:.1f}x wall, "
        f"{projected['cpu_s'] / ours['cpu_s']:.1f}x CPU; peak RSS {peak_rss_mb():.0f} MiB"
    )
    OUT.mkdir(exist_ok=True)
    record = {
        "machine": machine(),
        "ours": ours,
        "whole_slices": whole,
        "whole_projected": projected,
        "target_s": TARGET_SECONDS,
    }
    (OUT / "adapt_cuts.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
