"""Peak memory of training against the size of the cohort (issue 13: cohorts larger than memory).

Writes ``N`` volumes (nilearn's MNI152 T1 at 1 mm, each shifted and scaled differently), then
trains on them in a fresh process, for N = 2, 8 and 24, and prints each process's peak resident
memory (``VmHWM``) and its peak anonymous memory (``RssAnon``, sampled every 20 ms) beside
the cohort's size as float32. Resident memory includes the pages of the memory-mapped slices
that the kernel has cached, which it drops again when memory runs short; anonymous memory is
what the process cannot give back. Training reads one file at a time and
keeps CUTS's normalised slices in memory-mapped files beside the model, and landmark training
keeps only the 48^3 network inputs, so the peak should not grow with N.

Usage: python bench/train_memory.py   (about 4 minutes on 2 CPU cores; 1.4 GB of disk)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import OUT, fmt_table, load_mni, machine

SCRIPT = """
import sys, threading, time
sys.path.insert(0, sys.argv[1])
from _common import peak_rss_mb
peak_anon = [0.0]
def sample():  # RssAnon has no kernel peak; sample it every 20 ms
    while True:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                peak_anon[0] = max(peak_anon[0], int(line.split()[1]) / 1024)
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
trainer, out, files = sys.argv[2], sys.argv[3], sys.argv[4:]
if trainer == "cuts":
    from labelfree.cuts.train import train_from_files
    train_from_files(files, out, epochs=1, seed=0, device="cpu", samples_per_epoch=64)
else:
    from labelfree.landmarks.train import train_from_files
    train_from_files(files, out, n_landmarks=20, epochs=1, seed=0, device="cpu")
print(peak_rss_mb(), peak_anon[0])
"""

COUNTS = (2, 8, 24)


def main() -> int:
    from labelfree.io import Image, write_image

    t1, _, _ = load_mni()
    rows, record = [], {"machine": machine()}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        (work / "train.py").write_text(SCRIPT)
        paths = []
        for k in range(max(COUNTS)):
            array = np.roll(t1.array, 2 * k, axis=2) * np.float32(1 + k / 50)
            image = Image(array, t1.spacing, t1.origin, t1.direction)
            paths.append(write_image(image, work / f"case{k:02d}.nrrd", compress=False))
        for trainer in ("cuts", "landmarks"):
            for count in COUNTS:
                command = [sys.executable, "train.py", str(Path(__file__).parent), trainer]
                command += [str(work / f"{trainer}{count}.pt"), *map(str, paths[:count])]
                done = subprocess.run(command, cwd=work, capture_output=True, text=True)
                if done.returncode:
                    sys.stderr.write(done.stderr)
                    return 1
                peak, anon = map(float, done.stdout.split()[-2:])
                cohort = 4 * t1.array.size * count / 2**20
                rows.append([trainer, str(count), f"{cohort:.0f}", f"{peak:.0f}", f"{anon:.0f}"])
                record[f"{trainer}_{count}"] = {
                    "cohort_mib": cohort,
                    "peak_rss_mib": peak,
                    "peak_anonymous_mib": anon,
                }
    print(machine())
    print("1 epoch on N shifted copies of the 1 mm MNI152 T1 (182 x 218 x 182), fresh process each")
    header = ["trainer", "files", "cohort, float32 (MiB)", "peak RSS (MiB)", "peak anonymous (MiB)"]
    print(fmt_table(rows, header))
    OUT.mkdir(exist_ok=True)
    (OUT / "train_memory.json").write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
