"""CUTS encoder throughput, fp32 against bf16 autocast, and how much the labels differ.

On central 128 x 128 crops of axial MNI152 T1 slices (the size CUTS works at; bf16 is
emulated on CPUs without native bf16 and about two orders of magnitude slower there, so whole
233 x 197 slices would take many minutes), with the bundled grayscale CUTS model (or one the
benchmark trains quickly when none is bundled; the output says which):

- throughput: ``embed_slices`` over the same slices in fp32 and under bf16 autocast,
  alternating fp32 / bf16 ``--repeats`` times in one process so that load on a shared machine
  hits both alike; the best (least disturbed) pass of each is compared;
- embeddings: relative L2 error and cosine similarity of bf16 against fp32 per pixel;
- labels: ``labelfree.cuts.condense`` of one slice's fp32 and bf16 embeddings (same seed):
  adjusted Rand index per fp32 level against the bf16 level of the nearest cluster count
  (ARI is free of label permutations, so no cluster matching is needed).

Usage: python bench/encoder_bf16.py [--slices 2] [--repeats 2] [--crop 128] [--model FILE]
(about 2-5 minutes on 2 CPU cores without native bf16, mostly the bf16 passes)
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from _common import adjusted_rand_index, cuts_model, fmt_table, load_mni, machine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--crop", type=int, default=128, help="central crop side, pixels")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", help="CUTS model file (default: bundled)")
    args = parser.parse_args()

    from labelfree.cuts import condense
    from labelfree.cuts.embed import bf16_supported, embed_slices, prepare_slices

    print("machine:", machine())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    native = bf16_supported(torch.device("cpu"))
    print("native bf16 on this CPU:", native)
    t1, _, _ = load_mni()
    model, config, where = cuts_model(1, args.model)
    print(where)
    all_slices = prepare_slices(t1, 0, config["normalisation"])
    middle = all_slices.shape[0] // 2
    lo = middle - args.slices // 2
    slices = all_slices[lo : lo + args.slices]
    h, w = slices.shape[-2:]
    top, left = max(0, (h - args.crop) // 2), max(0, (w - args.crop) // 2)
    slices = np.ascontiguousarray(slices[..., top : top + args.crop, left : left + args.crop])
    pixels = slices.shape[0] * slices.shape[2] * slices.shape[3]

    def embed(bf16: bool) -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        out = np.stack(list(embed_slices(model, slices, batch_size=args.batch_size, bf16=bf16)))
        return time.perf_counter() - start, out

    embed(False)  # warm-up: first-call allocations and oneDNN primitive creation
    times = {False: [], True: []}
    outs = {}
    for _ in range(args.repeats):
        for bf16 in (False, True):
            seconds, outs[bf16] = embed(bf16)
            times[bf16].append(seconds)
    fp32, bf16 = outs[False], outs[True]
    best32, best16 = min(times[False]), min(times[True])

    diff = np.linalg.norm(bf16 - fp32) / np.linalg.norm(fp32)
    cos = np.sum(fp32 * bf16, -1) / (
        np.linalg.norm(fp32, axis=-1) * np.linalg.norm(bf16, axis=-1) + 1e-12
    )

    k = slices.shape[0] // 2
    points32 = fp32[k].reshape(-1, fp32.shape[-1])
    points16 = bf16[k].reshape(-1, bf16.shape[-1])
    h32, h16 = condense(points32, seed=0), condense(points16, seed=0)
    aris = []
    for labels, n in zip(h32.levels, h32.n_clusters, strict=True):
        aris.append((n, adjusted_rand_index(labels, h16.labels_at(n))))

    rows = [
        ["fp32", f"{best32:.2f}", f"{pixels / best32 / 1e3:.3g}", "1.00"],
        [
            "bf16 autocast",
            f"{best16:.2f}",
            f"{pixels / best16 / 1e3:.3g}",
            f"{best32 / best16:.3g}",
        ],
    ]
    print()
    print(
        f"{slices.shape[0]} slices of {slices.shape[2]} x {slices.shape[3]} px, "
        f"batch {args.batch_size}, best of {args.repeats} alternating passes "
        f"(all passes fp32 {' '.join(f'{t:.2f}' for t in times[False])} s, "
        f"bf16 {' '.join(f'{t:.2f}' for t in times[True])} s)"
    )
    print(fmt_table(rows, ["precision", "seconds", "kpixel/s", "speed vs fp32"]))
    print()
    print(
        f"embeddings: relative L2 error {diff:.4f}; per-pixel cosine min {cos.min():.4f}, "
        f"median {np.median(cos):.5f}"
    )
    print(
        f"labels (condense of slice {lo + k}, fp32 vs bf16, same seed): "
        + ", ".join(f"{n} clusters ARI {a:.3f}" for n, a in aris)
    )
    print(
        f"bf16 / fp32 throughput ratio: {best32 / best16:.3g}x "
        f"({'native bf16' if native else 'no native bf16: emulated, expect < 1'}); "
        f"mean ARI {np.mean([a for _, a in aris]):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
