"""Quality on the MNI152 template: CUTS against SLIC, Felzenszwalb, watershed and k-means.

Protocol (the same for every method, in one run):

- Data: nilearn's MNI152 2009 T1 template at 1 mm, (z, y, x) = 189 x 233 x 197, intensities as
  shipped (0..1). Ground truth: nilearn's grey- and white-matter probability maps > 0.5.
- Slices: axial (z). A slice is evaluated when both its grey- and its white-matter masks hold at
  least 200 voxels. Every 8th evaluated slice (offset 4) forms the tuning set; the others form
  the report set. (Neighbouring slices are correlated: this split keeps tuning honest about
  parameters, not about independence.)
- Hint protocol: per slice and per structure, the label most frequent under the ground-truth
  mask becomes the predicted mask. "Dice" is pooled over the report slices: 2 sum|P & T| /
  (sum|P| + sum|T|), each slice binarised by its own hint; the mean (and standard deviation) of
  the per-slice Dice is shown beside it. Tuning maximises the pooled Dice of the tuning slices.
- Fair search: each baseline gets a grid over its main parameters; the best setting is chosen
  per structure by mean Dice on the tuning slices and then applied to the report slices. CUTS
  levels are treated the same way (the level is chosen on the tuning slices); the oracle "best
  level per slice" of the paper is shown separately and marked as such.
- k-means on intensities: k = 4 per axial slice (scipy.cluster.vq.kmeans2, k-means++, seed 0),
  no tuning.

Usage: python bench/quality_mni.py [--quick]      (about 3-8 minutes on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
import warnings

import numpy as np
from _common import OUT, cuts_model, fmt_table, hint_mask, load_mni, machine
from scipy.cluster.vq import kmeans2
from skimage.filters import sobel
from skimage.segmentation import felzenszwalb, slic, watershed

MIN_VOXELS = 200


def evaluated_slices(gm: np.ndarray, wm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tuning, report) axial slice indices."""
    enough = ((gm > 0.5).sum(axis=(1, 2)) >= MIN_VOXELS) & (
        (wm > 0.5).sum(axis=(1, 2)) >= MIN_VOXELS
    )
    z = np.flatnonzero(enough)
    tune = z[4::8]
    return tune, np.setdiff1d(z, tune)


def run_slic(img, n_segments, compactness):
    return slic(
        img,
        n_segments=n_segments,
        compactness=compactness,
        channel_axis=None,
        start_label=0,
        enforce_connectivity=True,
    )


def run_felzenszwalb(img, scale, sigma, min_size):
    return felzenszwalb(img, scale=scale, sigma=sigma, min_size=min_size)


def run_watershed(img, markers, compactness):
    return watershed(sobel(img), markers=markers, compactness=compactness)


def run_kmeans(img, k=4, seed=0):
    values = img.reshape(-1, 1).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an empty cluster is a legitimate outcome here
        _, labels = kmeans2(values, k, minit="++", seed=seed)
    return labels.reshape(img.shape)


GRIDS = {
    "SLIC": (
        run_slic,
        {"n_segments": [4, 8, 16, 32, 64, 128, 256], "compactness": [0.01, 0.03, 0.1, 0.3, 1.0]},
    ),
    "Felzenszwalb": (
        run_felzenszwalb,
        {"scale": [1, 10, 100, 1000, 10000], "sigma": [0.0, 0.5, 1.0], "min_size": [20, 100]},
    ),
    "watershed": (
        run_watershed,
        {"markers": [4, 8, 16, 32, 64, 128, 256], "compactness": [0.0, 0.001, 0.01, 0.1]},
    ),
}
QUICK_GRIDS = {
    "SLIC": {"n_segments": [8, 32, 128], "compactness": [0.03, 0.3]},
    "Felzenszwalb": {"scale": [10, 100, 1000], "sigma": [0.5], "min_size": [20, 100]},
    "watershed": {"markers": [8, 32, 128], "compactness": [0.0, 0.01]},
}


class Scores:
    """Hint-protocol overlaps of one method on a set of slices for one structure."""

    def __init__(self, n: int):
        self.inter = np.zeros(n)
        self.total = np.zeros(n)

    def per_slice(self) -> np.ndarray:
        return 2 * self.inter / np.maximum(self.total, 1)

    def pooled(self) -> float:
        """Dice over all voxels of the slices together (each slice binarised by its own hint)."""
        return float(2 * self.inter.sum() / max(self.total.sum(), 1))


def slice_dices(labels_of, zs, truths) -> dict[str, Scores]:
    """Hint-protocol overlaps per slice; labels_of(z) gives the 2D label map of slice z."""
    out = {name: Scores(len(zs)) for name in truths}
    for i, z in enumerate(zs):
        labels = labels_of(z)
        for name, truth in truths.items():
            mask = hint_mask(labels, truth[z])
            out[name].inter[i] = np.logical_and(mask, truth[z]).sum()
            out[name].total[i] = mask.sum() + truth[z].sum()
    return out


def tune_baseline(fn, grid, volume, tune, truths):
    """Best parameters per structure on the tuning slices: {structure: (params, mean Dice)}."""
    best = {name: (None, -1.0) for name in truths}
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        params = dict(zip(keys, values, strict=True))
        scores = slice_dices(lambda z, p=params: fn(volume[z], **p), tune, truths)
        for name in truths:
            mean = scores[name].pooled()
            if mean > best[name][1]:
                best[name] = (params, mean)
    return best


def cuts_label_volumes(t1, seed: int, model_path: str | None):
    """CUTS on the whole volume: every level, persistent structures, spectral k-means."""
    from labelfree.cuts.volume import segment_volume

    model, _, where = cuts_model(1, model_path)
    print(where)
    result = segment_volume(t1, model=model, axis=0, method="kmeans", device="cpu", seed=seed)
    maps = {}
    for i, (level, n) in enumerate(zip(result.levels, result.n_clusters, strict=True)):
        maps[f"CUTS level {i} ({n} clusters)"] = np.asarray(level)
    if getattr(result, "persistent", None) is not None:
        maps["CUTS persistent"] = np.asarray(result.persistent)
    if getattr(result, "kmeans", None) is not None:
        maps["CUTS k-means"] = np.asarray(result.kmeans)
    return maps, dict(getattr(result, "seconds", {}) or {})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small grids (a smoke run)")
    parser.add_argument("--no-cuts", action="store_true", help="baselines only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help="CUTS model file (default: bundled)")
    args = parser.parse_args()

    print("machine:", machine())
    t1, gm, wm = load_mni()
    volume = np.asarray(t1.array, dtype=np.float32)
    volume = volume / max(float(volume.max()), 1e-6)
    truths = {"WM": wm > 0.5, "GM": gm > 0.5}
    tune, report = evaluated_slices(gm, wm)
    print(f"slices: {len(tune)} tuning, {len(report)} report (axial, of {volume.shape[0]})")

    results = {}  # method -> {structure: (params, tune mean, report dices)}, seconds per slice

    def record(method, label_fn, chosen, seconds_per_slice):
        entry = {"seconds_per_slice": seconds_per_slice}
        for name in truths:
            params, tune_mean = chosen[name]
            fn = label_fn(params)
            scores = slice_dices(fn, report, {name: truths[name]})[name]
            entry[name] = {
                "params": params,
                "tune_dice": tune_mean,
                "dice": scores.pooled(),
                "slice_mean": float(scores.per_slice().mean()),
                "slice_sd": float(scores.per_slice().std()),
            }
        results[method] = entry

    # k-means on intensities: fixed k = 4, no search.
    start = time.perf_counter()
    km = {int(z): run_kmeans(volume[z], 4, args.seed) for z in np.concatenate([tune, report])}
    km_seconds = (time.perf_counter() - start) / len(km)
    km_tune = slice_dices(lambda z: km[int(z)], tune, truths)
    record(
        "k-means on intensities (k=4)",
        lambda params: lambda z: km[int(z)],
        {n: ({"k": 4}, km_tune[n].pooled()) for n in truths},
        km_seconds,
    )

    for method, (fn, grid) in GRIDS.items():
        if args.quick:
            grid = QUICK_GRIDS[method]
        start = time.perf_counter()
        chosen = tune_baseline(fn, grid, volume, tune, truths)
        n_settings = int(np.prod([len(v) for v in grid.values()]))
        search_seconds = time.perf_counter() - start
        start = time.perf_counter()
        for z_timed in report[:10]:
            fn(volume[z_timed], **chosen["WM"][0])
        per_slice = (time.perf_counter() - start) / min(10, len(report))
        record(method, lambda p, f=fn: lambda z: f(volume[z], **p), chosen, per_slice)
        results[method]["search"] = f"{n_settings} settings, {search_seconds:.0f} s"
        print(f"  {method}: searched {n_settings} settings in {search_seconds:.0f} s")

    cuts_note = ""
    if not args.no_cuts:
        try:
            start = time.perf_counter()
            maps, seconds = cuts_label_volumes(t1, args.seed, args.model)
            cuts_total = time.perf_counter() - start
            per_slice = cuts_total / volume.shape[0]
            level_names = [m for m in maps if m.startswith("CUTS level")]
            level_scores = {}
            for m, vol in maps.items():
                tune_scores = slice_dices(lambda z, v=vol: v[z], tune, truths)
                chosen = {n: ({}, tune_scores[n].pooled()) for n in truths}
                record(m, lambda p, v=vol: lambda z: v[z], chosen, per_slice)
                if m in level_names:
                    level_scores[m] = tune_scores
            if level_names:
                # The level is a parameter like any other: chosen on the tuning slices.
                entry = {"seconds_per_slice": per_slice}
                oracle = {"seconds_per_slice": per_slice}
                for n in truths:
                    best = max(level_names, key=lambda m, n=n: results[m][n]["tune_dice"])
                    entry[n] = dict(results[best][n], params={"level": best})
                    per_level = [
                        slice_dices(lambda z, v=maps[m]: v[z], report, {n: truths[n]})[n]
                        for m in level_names
                    ]
                    pick = np.argmax(np.stack([s.per_slice() for s in per_level]), axis=0)
                    best_each = Scores(len(report))
                    for i, j in enumerate(pick):
                        best_each.inter[i] = per_level[j].inter[i]
                        best_each.total[i] = per_level[j].total[i]
                    oracle[n] = {
                        "params": {"level": "best per slice (oracle)"},
                        "tune_dice": float("nan"),
                        "dice": best_each.pooled(),
                        "slice_mean": float(best_each.per_slice().mean()),
                        "slice_sd": float(best_each.per_slice().std()),
                    }
                results["CUTS (level chosen on tuning slices)"] = entry
                results["CUTS best level per slice (oracle, paper's 'best one')"] = oracle
            cuts_note = f"CUTS end to end: {cuts_total:.1f} s ({seconds})"
        except ImportError as error:
            cuts_note = f"CUTS not run: {error}"
    print(cuts_note)

    rows = []
    for method, entry in results.items():
        rows.append(
            [
                method,
                f"{entry['WM']['dice']:.3f}",
                f"{entry['GM']['dice']:.3f}",
                f"{entry['WM']['slice_mean']:.3f} ± {entry['WM']['slice_sd']:.3f}",
                f"{entry['GM']['slice_mean']:.3f} ± {entry['GM']['slice_sd']:.3f}",
                json.dumps(entry["WM"]["params"]),
                json.dumps(entry["GM"]["params"]),
                f"{entry['seconds_per_slice'] * 1000:.0f}",
            ]
        )
    header = [
        "method",
        "WM Dice",
        "GM Dice",
        "WM per-slice mean ± sd",
        "GM per-slice mean ± sd",
        "WM setting",
        "GM setting",
        "ms/slice",
    ]
    print()
    print(fmt_table(rows, header))

    baselines = ["SLIC", "Felzenszwalb", "watershed"]
    headline = "CUTS (level chosen on tuning slices)"
    print()
    for n in truths:
        best_base = max(baselines, key=lambda m, n=n: results[m][n]["dice"])
        base_d = results[best_base][n]["dice"]
        km_d = results["k-means on intensities (k=4)"][n]["dice"]
        line = f"{n}: best tuned superpixel baseline {best_base} {base_d:.3f}; k-means {km_d:.3f}"
        for m in (headline, "CUTS persistent"):
            if m in results:
                d = results[m][n]["dice"]
                line += (
                    f"; {m} {d:.3f} = {d / base_d:.2f}x the best baseline, "
                    f"{d / km_d:.3f}x k-means ({d - km_d:+.3f})"
                )
        print(line)

    OUT.mkdir(exist_ok=True)
    with open(OUT / "quality_mni.json", "w") as handle:
        json.dump({"machine": machine(), "results": results, "note": cuts_note}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
