"""labelfree.cuts.condense against multiscale_phate 0.0 (the CUTS reference) on the same latents.

For each image (by default an axial MNI152 T1 slice resized to 64 x 64 and 128 x 128; add
skimage's retina photograph with ``--skip`` given no pairs) the CUTS encoder embeds every pixel
(128-d). The same latents then go to

- ours: ``labelfree.cuts.condense(latents, seed=0)`` (the public contract), and
- the reference: multiscale_phate as CUTS calls it (bench/_phate_reference.py, in the
  isolated environment bench/.refenv with phate 1.0.9, graphtools 1.5.2, scikit-learn 1.1.3,
  numpy 1.26; built by bench/reference_env.sh on first use),

each in a fresh subprocess, one after the other, so that wall time and peak resident memory
are each process's own (wall and CPU seconds: CPU time is the steadier measure on a loaded
machine), both with one BLAS thread (``--blas-threads``; on this shared machine
the reference ran 2.5x faster with one than with its default). A reference run is stopped past
``--ref-max-gb`` resident or ``--ref-max-s`` seconds; its ratios are then lower bounds ("> "). Printed per image: wall time and speed-up, peak RSS (whole process)
and the RSS the call added (peak minus the resident memory just before it) with their ratios,
number of levels and cluster counts, and agreement: for every reference level, the adjusted
Rand index with our level of the nearest cluster count (log scale). As a yardstick, ARI between
two of our runs with different seeds. For the MNI slice also quality: hint-protocol Dice of the
best level for white and grey matter (nilearn's maps > 0.5) for both methods.

Usage: python bench/condense_vs_phate.py [--sizes 64 128] [--skip] [--model FILE]
(about 2-10 minutes on 2 CPU cores, nearly all of it the reference)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from _common import (
    OUT,
    adjusted_rand_index,
    current_rss_mb,
    cuts_model,
    dice,
    embed_image,
    ensure_refenv,
    fmt_table,
    hint_mask,
    load_mni,
    machine,
    peak_rss_mb,
)

MNI_SLICE = 95  # axial slice through the basal ganglia and lateral ventricles


def worker(latents_path: str, out_path: str, seed: int) -> int:
    """Run our condense in this (fresh) process and save labels, time and memory."""
    from labelfree.cuts import condense

    latents = np.load(latents_path)
    base = current_rss_mb()
    cpu = time.process_time()
    start = time.perf_counter()
    hierarchy = condense(latents, seed=seed)
    levels = np.stack(hierarchy.levels).astype(np.int32)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu
    peak = peak_rss_mb()
    np.savez(
        out_path,
        labels=levels,
        clusters=np.array(hierarchy.n_clusters, dtype=np.int32),
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        peak_rss_mb=peak,
        delta_rss_mb=peak - base,
    )
    return 0


def images(names: list[str], sizes: list[int]):
    """Yield (name, size, image, truths) with truths {"WM": mask, "GM": mask} or None."""
    from skimage import data
    from skimage.transform import resize

    for name in names:
        if name == "mni":
            t1, gm, wm = load_mni()
            base = np.asarray(t1.array[MNI_SLICE], dtype=np.float32)
            maps = {"WM": wm[MNI_SLICE], "GM": gm[MNI_SLICE]}
        elif name == "retina":
            base = data.retina().astype(np.float32)
            maps = None
        else:
            raise SystemExit(f"unknown image {name!r}: use mni or retina")
        for size in sizes:
            shape = (size, size) + base.shape[2:]
            image = resize(base, shape, order=1, anti_aliasing=True, preserve_range=True)
            truths = None
            if maps is not None:
                truths = {
                    k: resize(v, (size, size), order=1, anti_aliasing=True) > 0.5
                    for k, v in maps.items()
                }
            yield name, size, image.astype(np.float32), truths


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def run(
    cmd: list[str], max_mb: float = float("inf"), max_s: float = float("inf"), env=None
) -> dict:
    """Run a worker command; return its npz as a dict.

    The worker is stopped when its resident memory passes ``max_mb`` or its wall time
    ``max_s`` (the machine is shared; the reference's dense N x N matrices can take it all).
    Then the dict holds ``stopped`` (why) with the time and memory reached.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _rss_mb(proc.pid))
        elapsed = time.perf_counter() - start
        if peak > max_mb or elapsed > max_s:
            cpu = _cpu_seconds(proc.pid)
            proc.kill()
            proc.wait()
            why = f"memory > {max_mb:.0f} MiB" if peak > max_mb else f"time > {max_s:.0f} s"
            return {
                "stopped": why,
                "seconds": elapsed,
                "cpu_seconds": cpu,
                "peak_rss_mb": peak,
                "delta_rss_mb": float("nan"),  # no baseline seen from outside
            }
        time.sleep(0.1)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    out = next(c for c in cmd if c.endswith(".npz"))
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


def matched_ari(ref: dict, ours: dict) -> list[tuple[int, int, float]]:
    """For every reference level: (its clusters, our nearest level's clusters, ARI)."""
    counts = np.asarray(ours["clusters"], dtype=np.float64)
    rows = []
    for labels, k in zip(ref["labels"], ref["clusters"], strict=True):
        gap = np.abs(np.log(counts) - np.log(max(int(k), 1)))
        j = int(np.flatnonzero(gap == gap.min())[-1])
        rows.append((int(k), int(counts[j]), adjusted_rand_index(labels, ours["labels"][j])))
    return rows


def best_dice(result: dict, truths: dict, size: int) -> dict[str, float]:
    """Hint-protocol Dice of the best level (oracle) per structure."""
    out = {}
    for name, truth in truths.items():
        out[name] = max(
            dice(hint_mask(lab.reshape(size, size), truth), truth) for lab in result["labels"]
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--images", nargs="+", default=["mni", "retina"])
    parser.add_argument(
        "--skip", nargs="*", default=["retina64", "retina128"], help="image+size pairs to leave out"
    )
    parser.add_argument("--model", help="CUTS model file (default: bundled)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-reference", action="store_true", help="ours only (smoke run)")
    parser.add_argument(
        "--blas-threads", type=int, default=1, help="BLAS threads of both workers (0: default)"
    )
    parser.add_argument(
        "--ref-max-gb", type=float, default=8.0, help="stop the reference above this RSS"
    )
    parser.add_argument(
        "--ref-max-s", type=float, default=480.0, help="stop the reference after this long"
    )
    parser.add_argument("--worker", nargs=2, metavar=("LATENTS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker, seed=args.seed)

    print("machine:", machine())
    OUT.mkdir(exist_ok=True)
    ref_python = None if args.no_reference else str(ensure_refenv())
    me = [sys.executable, __file__]
    # One BLAS thread for both sides: ours pins it itself; the reference ran 2.5x faster so
    # (40 s against 102 s at 64 x 64) on this shared 2-core machine than with its default.
    env = None
    if args.blas_threads:
        env = dict(os.environ)
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(args.blas_threads)
    models = {}
    rows, summary = [], []
    for name, size, image, truths in images(args.images, args.sizes):
        if f"{name}{size}" in args.skip:
            continue
        channels = 3 if image.ndim == 3 else 1
        if channels not in models:
            models[channels] = cuts_model(channels, args.model if channels == 1 else None)
            print(models[channels][2])
        model, config, _ = models[channels]
        latents = embed_image(model, config, image).reshape(size * size, -1)
        stem = OUT / f"latents_{name}_{size}"
        np.save(f"{stem}.npy", latents)

        ours = run(
            me + ["--seed", str(args.seed), "--worker", f"{stem}.npy", f"{stem}_ours.npz"],
            env=env,
        )
        again = run(
            me + ["--seed", str(args.seed + 1), "--worker", f"{stem}.npy", f"{stem}_ours1.npz"],
            env=env,
        )
        self_ari = matched_ari(again, ours)
        entry = {
            "image": f"{name} {size}x{size}",
            "ours_s": float(ours["seconds"]),
            "ours_cpu_s": float(ours["cpu_seconds"]),
            "ours_peak": float(ours["peak_rss_mb"]),
            "ours_delta": float(ours["delta_rss_mb"]),
            "ours_clusters": [int(c) for c in ours["clusters"]],
            "self_ari": float(np.mean([r[2] for r in self_ari])),
        }
        if ref_python:
            ref_out = f"{stem}_ref.npz"
            ref = run(
                [
                    ref_python,
                    str(OUT.parent / "_phate_reference.py"),
                    f"{stem}.npy",
                    "--seed",
                    str(args.seed),
                    ref_out,
                ],
                max_mb=args.ref_max_gb * 1024,
                max_s=args.ref_max_s,
                env=env,
            )
            entry.update(
                ref_s=float(ref["seconds"]),
                ref_cpu_s=float(ref["cpu_seconds"]),
                ref_peak=float(ref["peak_rss_mb"]),
                ref_delta=float(ref["delta_rss_mb"]),
            )
            if "stopped" in ref:
                entry["ref_stopped"] = ref["stopped"]
            else:
                pairs = matched_ari(ref, ours)
                entry.update(
                    ref_clusters=[int(c) for c in ref["clusters"]],
                    ref_steps=int(ref["steps"]),
                    ari=[list(p) for p in pairs],
                    mean_ari=float(np.mean([p[2] for p in pairs])),
                )
            if truths is not None and "stopped" not in ref:
                entry["dice_ours"] = best_dice(ours, truths, size)
                entry["dice_ref"] = best_dice(ref, truths, size)
        summary.append(entry)
        print(json.dumps(entry))

        at_least = "> " if "ref_stopped" in entry else ""  # the reference was stopped early
        speed = (
            f"{at_least}{entry['ref_s'] / entry['ours_s']:.0f}x / "
            f"{at_least}{entry['ref_cpu_s'] / entry['ours_cpu_s']:.0f}x"
            if ref_python
            else "-"
        )
        mem = (
            f"{at_least}{entry['ref_peak'] / entry['ours_peak']:.1f}x / "
            f"{at_least}{entry['ref_delta'] / max(entry['ours_delta'], 1.0):.0f}x"
            if ref_python
            else "-"
        )
        rows.append(
            [
                entry["image"],
                f"{entry.get('ref_s', float('nan')):.1f} / {entry.get('ref_cpu_s', float('nan')):.1f}",
                f"{entry['ours_s']:.2f} / {entry['ours_cpu_s']:.2f}",
                speed,
                f"{entry.get('ref_peak', float('nan')):.0f} / {entry.get('ref_delta', float('nan')):.0f}",
                f"{entry['ours_peak']:.0f} / {entry['ours_delta']:.0f}",
                mem,
                (
                    f"stopped: {entry['ref_stopped']}"
                    if "ref_stopped" in entry
                    else f"{len(entry.get('ref_clusters', []))}: {entry.get('ref_clusters', '-')}"
                ),
                f"{len(entry['ours_clusters'])}: {entry['ours_clusters']}",
                f"{entry.get('mean_ari', float('nan')):.2f}",
                f"{entry['self_ari']:.2f}",
                (
                    "WM {:.2f}/{:.2f}, GM {:.2f}/{:.2f}".format(
                        entry["dice_ref"]["WM"],
                        entry["dice_ours"]["WM"],
                        entry["dice_ref"]["GM"],
                        entry["dice_ours"]["GM"],
                    )
                    if "dice_ref" in entry
                    else "-"
                ),
            ]
        )

    header = [
        "latents",
        "reference s wall / CPU",
        "ours s wall / CPU",
        "speed-up wall / CPU",
        "reference MiB peak / added",
        "ours MiB peak / added",
        "memory ratio peak / added",
        "reference levels: clusters",
        "ours levels: clusters",
        "ARI (matched counts)",
        "ARI ours seed 0 vs 1",
        "best-level Dice ref/ours",
    ]
    print()
    print(models and "\n".join(m[2] for m in models.values()))
    print(fmt_table(rows, header))
    with open(OUT / "condense_vs_phate.json", "w") as handle:
        json.dump({"machine": machine(), "results": summary}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
