"""A whole brain volume end to end: the 197 x 233 x 189 MNI152 T1 through CUTS.

Runs ``labelfree.cuts.volume.segment_volume`` on nilearn's 1 mm MNI152 2009 T1 template
(axial slices, CPU, bundled grayscale model) in a fresh subprocess, and prints

- seconds per stage as the engine reports them (prepare, embed, condense, assign, labels; there
  is no separate harmonisation stage: the engine condenses one pool of pixels drawn from the
  whole volume, so labels agree across slices by construction) and the wall time of the whole
  call, against the 60 s target (ratio = target / measured; > 1 meets);
- peak resident memory of that process (VmHWM) and what the call added on top of the
  loaded image and imported libraries, against the 2 GB target;
- the time to switch granularity levels: fetching each level's label volume and writing it
  into an existing uint16 labelmap buffer (what the slider does before Slicer redraws),
  median and worst over all levels and ``--switch-repeats`` passes, against the 50 ms target;
- for scale, the reference's projected time for the same volume: its measured seconds for
  one 128 x 128 image (from bench/out/condense_vs_phate.json of the same run of run_all.sh,
  if present) times the number of slices, each 233 x 197 slice having ~2.8x as many pixels.

Usage: python bench/volume_mni.py [--model FILE] [--switch-repeats 5]
(about 1-3 minutes on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
from _common import OUT, current_rss_mb, cuts_model, fmt_table, load_mni, machine, peak_rss_mb

TARGET_SECONDS = 60.0
TARGET_MB = 2048.0
TARGET_SWITCH_MS = 50.0


def level_arrays(result) -> list:
    """The label volumes of every level, however the result exposes them."""
    if hasattr(result, "level"):
        return [result.level(i) for i in range(len(result.levels))]
    return list(result.levels)


def worker(out_path: str, model_path: str | None, seed: int, repeats: int) -> int:
    """Segment the volume in this fresh process; write timings and memory as JSON."""
    from labelfree.cuts.volume import segment_volume

    t1, _, _ = load_mni()
    model, _, where = cuts_model(1, model_path)
    print(where)

    base = current_rss_mb()
    cpu = time.process_time()
    start = time.perf_counter()
    result = segment_volume(t1, model=model, axis=0, device="cpu", seed=seed)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu
    peak = peak_rss_mb()

    # Level switching: fetch a level and write it into the labelmap buffer the GUI shows.
    n_levels = len(result.levels)
    shape = np.asarray(level_arrays(result)[0]).shape
    buffer = np.zeros(shape, dtype=np.uint16)
    switches = []
    for _ in range(repeats):
        for i in list(range(n_levels)) + list(range(n_levels - 1, -1, -1)):
            tic = time.perf_counter()
            level = result.level(i) if hasattr(result, "level") else result.levels[i]
            np.copyto(buffer, level, casting="unsafe")
            switches.append(time.perf_counter() - tic)
    with open(out_path, "w") as handle:
        json.dump(
            {
                "wall_s": wall,
                "cpu_s": cpu,
                "stages_s": {k: float(v) for k, v in dict(result.seconds).items()},
                "peak_mb": peak,
                "added_mb": peak - base,
                "n_clusters": [int(n) for n in result.n_clusters],
                "switch_ms": [s * 1000 for s in switches],
                "shape": list(shape),
            },
            handle,
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="CUTS model file (default: bundled)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--switch-repeats", type=int, default=5)
    parser.add_argument("--worker", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.model, args.seed, args.switch_repeats)

    print("machine:", machine())
    OUT.mkdir(exist_ok=True)
    out = OUT / "volume_mni.json"
    cmd = [sys.executable, __file__, "--worker", str(out), "--seed", str(args.seed)]
    cmd += ["--switch-repeats", str(args.switch_repeats)]
    if args.model:
        cmd += ["--model", args.model]
    subprocess.run(cmd, check=True)
    res = json.loads(out.read_text())

    switch = np.asarray(res["switch_ms"])
    rows = [[f"stage: {k}", f"{v:.1f} s", "", ""] for k, v in res["stages_s"].items()]
    rows += [
        [
            "end to end (wall)",
            f"{res['wall_s']:.1f} s",
            f"{TARGET_SECONDS:.0f} s",
            f"{TARGET_SECONDS / res['wall_s']:.2f}x",
        ],
        [
            "peak memory (process)",
            f"{res['peak_mb']:.0f} MiB",
            f"{TARGET_MB:.0f} MiB",
            f"{TARGET_MB / res['peak_mb']:.2f}x",
        ],
        ["memory added by the call", f"{res['added_mb']:.0f} MiB", "", ""],
        [
            "CPU time of the call, all threads (bounds the wall time on an idle machine)",
            f"{res['cpu_s']:.1f} s",
            f"{TARGET_SECONDS:.0f} s",
            f"{TARGET_SECONDS / res['cpu_s']:.2f}x",
        ],
        [
            "level switch, median",
            f"{np.median(switch):.1f} ms",
            f"{TARGET_SWITCH_MS:.0f} ms",
            f"{TARGET_SWITCH_MS / np.median(switch):.1f}x",
        ],
        [
            "level switch, worst",
            f"{switch.max():.1f} ms",
            f"{TARGET_SWITCH_MS:.0f} ms",
            f"{TARGET_SWITCH_MS / switch.max():.1f}x",
        ],
    ]
    ref_json = OUT / "condense_vs_phate.json"
    if ref_json.exists():
        ref = json.loads(ref_json.read_text())["results"]
        one = [r for r in ref if r["image"] == "mni 128x128" and "ref_s" in r]
        if one:
            slices = res["shape"][0]
            at_least = "> " if "ref_stopped" in one[0] else ""
            projected = one[0]["ref_s"] * slices
            rows.append(
                [
                    f"reference condensation alone, projected ({slices} x {at_least}"
                    f"{one[0]['ref_s']:.0f} s for 128 x 128 slices; wall)",
                    f"{at_least}{projected:.0f} s",
                    "",
                    f"{at_least}{projected / res['wall_s']:.0f}x our end-to-end wall time",
                ]
            )
    print(f"volume {res['shape']} (z, y, x), levels with {res['n_clusters']} clusters")
    print(fmt_table(rows, ["measure", "value", "target", "target / value (>1 meets)"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
