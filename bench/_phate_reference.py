"""Run the CUTS reference condensation (multiscale_phate 0.0) on saved latents.

Runs inside bench/.refenv (built by bench/reference_env.sh), never in the engine's
environment, and is meant to be started as a fresh subprocess so that its peak resident
memory is its own. It calls multiscale_phate the way the CUTS reference does: rows
L2-normalised, ``Multiscale_PHATE(knn=100, random_state=seed)`` with the package defaults
(PCA to min(D, 100) components, alpha-decay 40, 2000 landmarks, scale 1.025), ``fit``,
then keeps ``levels[1:]`` (level 0, all points distinct, is dropped).

Usage: .refenv/bin/python _phate_reference.py LATENTS.npy OUT.npz [--knn 100] [--seed 0]
Writes OUT.npz with ``labels`` (L, N) int32 coarsest first, ``clusters`` (L,), ``steps``,
``seconds`` (wall), ``cpu_seconds`` (user + system of this process), ``peak_rss_mb`` (whole process) and ``delta_rss_mb`` (peak minus the resident
memory just before the call, i.e. what the algorithm itself added).
"""

import argparse
import resource
import sys
import time
import warnings

import numpy as np


def _rss_mb() -> float:
    # VmHWM, not ru_maxrss: ru_maxrss survives fork + exec and would report the parent's size.
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("latents")
    parser.add_argument("out")
    parser.add_argument("--knn", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-jobs", type=int, default=1)
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    import multiscale_phate
    import tasklogger

    tasklogger.set_level(0)
    latents = np.load(args.latents).astype(np.float64)
    norms = np.linalg.norm(latents, axis=1, keepdims=True)
    points = latents / np.maximum(norms, 1e-12)

    base = _current_rss_mb()
    cpu = time.process_time()
    start = time.perf_counter()
    operator = multiscale_phate.Multiscale_PHATE(
        knn=args.knn, random_state=args.seed, n_jobs=args.n_jobs
    )
    operator.fit(points)
    levels = list(operator.levels)
    if levels and levels[0] == 0:
        levels = levels[1:]
    labels = np.array([operator.NxTs[level] for level in levels], dtype=np.int64)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu
    peak = _rss_mb()

    # NxTs keep the original point ids as labels; renumber to 0..k-1 per level.
    labels = np.stack([np.unique(row, return_inverse=True)[1] for row in labels]).astype(np.int32)
    clusters = np.array([row.max() + 1 for row in labels], dtype=np.int32)
    order = np.argsort(clusters, kind="stable")  # coarsest first, as labelfree.cuts.condense
    np.savez(
        args.out,
        labels=labels[order],
        clusters=clusters[order],
        steps=len(operator.NxTs),
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        peak_rss_mb=peak,
        delta_rss_mb=peak - base,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
