"""CUTS training throughput: one process against two under torchrun, on this machine.

Trains the CUTS encoder for ``--epochs`` epochs on axial slices of nilearn's MNI152 T1
(1 mm), once in one process and once with ``torchrun --nproc-per-node 2`` (gloo), with
the same global batch and samples per epoch, and prints the wall time per epoch of
each and the speed-up. Each process gets ``OMP_NUM_THREADS = cores / processes``, so
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

from _common import OUT, fmt_table, load_mni, machine

SCRIPT = """
import sys
from labelfree.cuts.train import train_from_files
train_from_files([sys.argv[2]], sys.argv[1], epochs=int(sys.argv[3]), seed=0, device="cpu",
                 batch_size=16, samples_per_epoch=256)
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
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        volume = write_image(t1, work / "mni.nrrd")
        (work / "train.py").write_text(SCRIPT)
        common = ["train.py", "model.pt", str(volume), str(args.epochs)]
        one = _timed([sys.executable, *common], cores, work)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        two = _timed([*torchrun, "--nproc-per-node", "2", *common], max(1, cores // 2), work)
    rows = [
        ["1 process", f"{one / args.epochs:.1f}", "1.00"],
        ["2 processes (torchrun, gloo)", f"{two / args.epochs:.1f}", f"{one / two:.2f}"],
    ]
    print(machine())
    print(f"{args.epochs} epochs of 256 slices (batch 16) on the 1 mm MNI152 T1, whole command")
    print(fmt_table(rows, ["run", "s per epoch", "speed-up"]))
    OUT.mkdir(exist_ok=True)
    record = {"machine": machine(), "epochs": args.epochs, "one_s": one, "two_s": two}
    (OUT / "train_processes.json").write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
