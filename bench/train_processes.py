"""Training throughput: one process against two under torchrun, on this machine.

Trains, once in one process and once with ``torchrun --nproc-per-node 2`` (gloo), with the
same global batch and samples per epoch:
- the CUTS encoder, ``--epochs`` epochs of 256 axial slices of nilearn's MNI152 T1 (1 mm);
- the 2-D landmark regressor (26 landmarks, the default heatmap head), ``--epochs``
  epochs of 32 warped 128 x 128 Shepp-Logan phantoms read from files;
and prints the wall time per epoch of each (the whole command, start-up and reading
included) and the speed-up. Each process gets ``OMP_NUM_THREADS = cores / processes``, so
both runs use the whole CPU.

Usage: python bench/train_processes.py [--epochs 2]   (about 3 minutes on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import OUT, fmt_table, load_mni, machine

CUTS_SCRIPT = """
import sys
from labelfree.cuts.train import train_from_files
train_from_files(sys.argv[3:], sys.argv[1], epochs=int(sys.argv[2]), seed=0, device="cpu",
                 batch_size=16, samples_per_epoch=256)
"""

LANDMARK_SCRIPT = """
import sys
from labelfree.landmarks.train import train_from_files
train_from_files(sys.argv[3:], sys.argv[1], n_landmarks=26, epochs=int(sys.argv[2]), seed=0,
                 device="cpu", batch_size=16)
"""


def _timed(command: list[str], threads: int, cwd: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    from labelfree.io import write_image

    cores = os.cpu_count() or 2
    t1, _, _ = load_mni()
    rows, record = [], {"machine": machine(), "epochs": args.epochs}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        (work / "cuts.py").write_text(CUTS_SCRIPT)
        (work / "landmarks.py").write_text(LANDMARK_SCRIPT)
        cohorts = {"cuts": [write_image(t1, work / "mni.nrrd")], "landmarks": _phantoms(work)}
        for trainer, label in (("cuts", "CUTS, MNI152 T1"), ("landmarks", "landmarks, 2-D")):
            common = [f"{trainer}.py", "model.pt", str(args.epochs), *map(str, cohorts[trainer])]
            one = _timed([sys.executable, *common], cores, work)
            torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
            two = _timed([*torchrun, "--nproc-per-node", "2", *common], max(1, cores // 2), work)
            rows.append([label, "1 process", f"{one / args.epochs:.1f}", "1.00"])
            rows.append(
                [
                    label,
                    "2 processes (torchrun, gloo)",
                    f"{two / args.epochs:.1f}",
                    f"{one / two:.2f}",
                ]
            )
            record[trainer] = {"one_s": one, "two_s": two}
    print(machine())
    print(f"{args.epochs} epochs each, whole command (start-up and reading included)")
    print(fmt_table(rows, ["trainer", "run", "s per epoch", "speed-up"]))
    OUT.mkdir(exist_ok=True)
    (OUT / "train_processes.json").write_text(json.dumps(record, indent=2))
    return 0


def _phantoms(work: Path) -> list[Path]:
    """32 warped Shepp-Logan phantoms (the project's 2-D population), one file each."""
    from labelfree.io import Image, write_image
    from labelfree.landmarks.synthetic import shepp_logan_population

    population = shepp_logan_population(32, size=128, seed=0)
    return [
        write_image(Image(image, (1.0, 1.0), (0.0, 0.0), np.eye(2)), work / f"p{k:02d}.nrrd")
        for k, image in enumerate(population.images)
    ]


if __name__ == "__main__":
    raise SystemExit(main())
