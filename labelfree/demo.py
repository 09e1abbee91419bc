"""``labelfree demo --out DIR``: the main job on the bundled sample with the bundled models.

Runs CUTS on the sample brain volume (every granularity level and the
persistent structures), detects landmarks with the 3-D model on it and with
the 2-D model on a Shepp-Logan phantom, and writes label volumes, a
``.seg.nrrd``, ``.mrk.json`` files and figures:

- ``levels.png``: the granularity levels over three orthogonal slices;
- ``landmarks_3d.png`` and ``landmarks_2d.png``: landmarks over the images;
- ``training_curves.png``: the bundled models' training curves;
- ``demo.json``: what was written, the levels, timings.

Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from labelfree.cliargs import seed
from labelfree.io import Image, atomic_path, read_image, write_image
from labelfree.progress import Progress, run_steps

SAMPLE = Path(__file__).parent / "data" / "mni152_t1_2mm.nrrd"
BUNDLED = ("cuts_mr.pt", "cuts_rgb.pt", "landmarks_2d.pt", "landmarks_3d.pt")


def register(subparsers) -> None:
    """Add the ``demo`` sub-command."""
    parser = subparsers.add_parser(
        "demo", help="run CUTS and landmark detection on the bundled sample; write figures"
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--seed", type=seed, default=0)
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    run_demo(args.out, args.device, args.seed)
    return 0


def _report(stage: str):
    def callback(progress: Progress) -> None:
        print(f"[{stage}] {100 * progress.fraction:5.1f}% {progress.message}", file=sys.stderr)

    return callback


def _mid_slices(volume: np.ndarray) -> list[np.ndarray]:
    cz, cy, cx = (s // 2 for s in volume.shape[:3])
    return [volume[cz], volume[:, cy], volume[:, :, cx]]


def run_cuts(sample: Image, out: Path, device: str, seed: int) -> dict:
    """Segment the sample, write every level, persistent structures and a .seg.nrrd."""
    from labelfree.cuts.volume import segment_volume_steps
    from labelfree.figures import levels_montage
    from labelfree.segfile import write_seg_nrrd

    result = run_steps(
        segment_volume_steps(sample, None, device=device, seed=seed), _report("cuts")
    )
    files = []
    for i, labels in enumerate(result.levels):
        files.append(write_image(sample.with_array(labels), out / f"cuts_level_{i:02d}.nrrd").name)
    write_image(sample.with_array(result.persistent), out / "cuts_persistent.nrrd")
    write_seg_nrrd(
        sample.with_array(result.persistent),
        out / "cuts_persistent.seg.nrrd",
        names=[f"persistent structure {v}" for v in np.unique(result.persistent) if v],
        tags={"LabelFree.method": "CUTS persistent structures"},
    )
    maps = [*result.levels, result.persistent]
    titles = [f"{n} clusters" for n in result.n_clusters] + ["persistent"]
    per_map = [_mid_slices(m) for m in maps]
    levels_montage(
        _mid_slices(sample.array),
        [[views[row] for views in per_map] for row in range(3)],
        titles,
        out / "levels.png",
        row_names=["axial", "coronal", "sagittal"],
    )
    return {
        "levels": files,
        "clusters": list(map(int, result.n_clusters)),
        "seconds": result.seconds,
    }


def run_landmarks(sample: Image, out: Path, device: str, seed: int) -> dict:
    """Detect landmarks with the 3-D model on the sample and the 2-D model on a phantom."""
    from labelfree.figures import landmarks_on_slices
    from labelfree.landmarks.detect import detect_landmarks
    from labelfree.landmarks.synthetic import shepp_logan_population
    from labelfree.markups import write_mrk_json

    found = detect_landmarks(sample, None, device=device)
    write_mrk_json(
        out / "landmarks_3d.mrk.json",
        found.points_lps,
        found.names,
        [f"importance {v:.3f}" for v in found.importance],
    )
    landmarks_on_slices(
        sample.array,
        np.asarray(found.index_xyz)[:, ::-1],
        found.importance,
        found.names,
        out / "landmarks_3d.png",
        "Landmarks, 3-D model, sample MRI",
    )

    phantom = shepp_logan_population(1, size=128, seed=seed).images[0]
    image = Image(phantom.astype(np.float32), (1.0, 1.0), (0.0, 0.0), np.eye(2))
    found2 = detect_landmarks(image, None, device=device)
    write_image(image, out / "phantom.nrrd")
    points = np.column_stack([found2.points_lps, np.zeros(len(found2.names))])
    write_mrk_json(
        out / "landmarks_2d.mrk.json",
        points,
        found2.names,
        [f"importance {v:.3f}" for v in found2.importance],
    )
    landmarks_on_slices(
        phantom,
        np.asarray(found2.index_xyz)[:, ::-1],
        found2.importance,
        found2.names,
        out / "landmarks_2d.png",
        "Landmarks, 2-D model, phantom",
    )
    return {"landmarks_3d": len(found.names), "landmarks_2d": len(found2.names)}


def plot_training_curves(out: Path) -> None:
    """Gather the loss curves saved beside the bundled models into one figure."""
    from labelfree.figures import image_grid
    from labelfree.modelfile import WEIGHTS_DIR

    pictures = [WEIGHTS_DIR / name.replace(".pt", ".loss.png") for name in BUNDLED]
    found = [p for p in pictures if p.is_file()]
    image_grid(found, [p.name.replace(".loss.png", "") for p in found], out / "training_curves.png")


def run_demo(out: Path, device: str = "auto", seed: int = 0) -> dict:
    """Run the whole demo into ``out``; returns what ``demo.json`` records."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sample = read_image(SAMPLE)
    print(f"sample: {SAMPLE.name} {sample.spatial_shape} voxels", file=sys.stderr)
    record = {"sample": SAMPLE.name, "cuts": run_cuts(sample, out, device, seed)}
    print("[landmarks] detecting", file=sys.stderr)
    record["landmarks"] = run_landmarks(sample, out, device, seed)
    plot_training_curves(out)
    record["seconds_total"] = round(time.perf_counter() - started, 2)
    with atomic_path(out / "demo.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2, default=float))
    print(f"demo written to {out} in {record['seconds_total']:.1f} s", file=sys.stderr)
    return record
