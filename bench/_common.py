"""Shared helpers for the benchmarks: machine description, data, memory, metrics."""

from __future__ import annotations

import datetime
import os
import platform
import resource
import subprocess
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out"
REFENV_PYTHON = BENCH / ".refenv" / "bin" / "python"


def machine() -> str:
    """One line describing this machine and the moment of the run."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        total_kb = int(Path("/proc/meminfo").read_text().split()[1])
        ram = f"{total_kb / 2**20:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        ram = "RAM unknown"
    load = ", load {:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg())
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{stamp}; {os.cpu_count()} CPUs ({model}), {ram}{load}; Python {platform.python_version()}"
    )


def peak_rss_mb() -> float:
    """Peak resident memory of this process image so far, MiB.

    VmHWM, not ru_maxrss: on Linux ru_maxrss survives fork + exec, so a worker started from
    a big parent would report the parent's size.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """Resident memory of this process now, MiB."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def ensure_refenv() -> Path:
    """Build bench/.refenv if missing (bench/reference_env.sh) and return its python."""
    subprocess.run(["bash", str(BENCH / "reference_env.sh")], check=True)
    return REFENV_PYTHON


def load_mni() -> tuple[object, np.ndarray, np.ndarray]:
    """The MNI152 2009 T1 template nilearn ships, 1 mm, as a (z, y, x) labelfree Image,
    with grey- and white-matter probability maps as (z, y, x) float32 arrays."""
    from nilearn import datasets

    from labelfree.io import image_from_ras_affine

    def convert(nifti):
        return image_from_ras_affine(np.asarray(nifti.get_fdata(), np.float32), nifti.affine)

    t1 = convert(datasets.load_mni152_template(resolution=1))
    gm = convert(datasets.load_mni152_gm_template(resolution=1)).array
    wm = convert(datasets.load_mni152_wm_template(resolution=1)).array
    return t1, gm, wm


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two flat labelings (Hubert and Arabie 1985)."""
    a = np.unique(np.ravel(a), return_inverse=True)[1]
    b = np.unique(np.ravel(b), return_inverse=True)[1]
    n = a.size
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.int64)
    np.add.at(table, (a, b), 1)

    def pairs(x):
        x = x.astype(np.float64)
        return float(np.sum(x * (x - 1) / 2))

    index = pairs(table)
    rows, cols = pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
    expected = rows * cols / (n * (n - 1) / 2)
    maximum = (rows + cols) / 2
    if maximum == expected:
        return 1.0
    return (index - expected) / (maximum - expected)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    total = int(pred.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, truth).sum()) / total


def hint_mask(labels: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Hint protocol: the label most frequent under the ground-truth foreground is the mask."""
    under = labels[truth]
    if under.size == 0:
        return np.zeros_like(truth)
    values, counts = np.unique(under, return_counts=True)
    return labels == values[np.argmax(counts)]


def fmt_table(rows: list[list[object]], header: list[str]) -> str:
    """A Markdown table."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def cuts_model(channels: int, path: str | None = None, epochs: int = 4):
    """A CUTS model for ``channels``-channel images and a line saying where it came from.

    Order: the file given; else the bundled default; else a model trained quickly by
    ``labelfree.cuts.train`` (``epochs`` epochs, seed 0) on the MNI152 T1 (grayscale) or
    skimage's retina (RGB), cached in bench/out/ so later benchmarks reuse it.
    """
    from labelfree.cuts.model import load_cuts_model, save_cuts_model
    from labelfree.errors import ModelFileError

    try:
        model, config, card = load_cuts_model(path, channels)
        where = path or "bundled default"
        data = card.get("training_data") or card.get("trained_on") or "see its card"
        if isinstance(data, list):
            data = ", ".join(str(d.get("file", d)) if isinstance(d, dict) else str(d) for d in data)
        epochs = (card.get("parameters") or {}).get("epochs", "?")
        return model, config, f"CUTS model: {where} (trained on {data}, {epochs} epochs)"
    except ModelFileError as error:
        if path is not None:
            raise
        reason = str(error)
    cache = OUT / f"cuts_quick_{channels}ch_{epochs}ep.pt"
    if not cache.exists():
        import time

        from labelfree.cuts.train import train_cuts

        if channels == 1:
            data, what = [np.asarray(load_mni()[0].array)], "MNI152 T1 1 mm, axial slices"
        else:
            from skimage import data as skdata
            from skimage.transform import resize

            retina = resize(skdata.retina(), (512, 512, 3), preserve_range=True)
            data, what = [retina.astype(np.float32)], "skimage retina, 512 x 512"
        start = time.perf_counter()
        result = train_cuts(data, in_channels=channels, epochs=epochs, seed=0)
        OUT.mkdir(exist_ok=True)
        card = {
            "trained_on": f"{what}; {epochs} epochs, seed 0, by bench/ "
            f"({time.perf_counter() - start:.0f} s)"
        }
        save_cuts_model(cache, result.model, result.config, card)
    model, config, card = load_cuts_model(cache, channels)
    return (
        model,
        config,
        (
            f"CUTS model: QUICK-TRAINED by the benchmark, {cache.name} ({card['trained_on']}); "
            f"no bundled model: {reason}"
        ),
    )


def embed_image(model, config, image: np.ndarray) -> np.ndarray:
    """(H, W, D) float32 embedding of one 2-D image, (H, W) scalar or (H, W, 3) RGB."""
    from labelfree.cuts.embed import embed_slices
    from labelfree.cuts.normalise import normalise

    values = normalise(image, config["normalisation"])
    slices = values.transpose(2, 0, 1)[None] if values.ndim == 3 else values[None, None]
    return next(embed_slices(model, np.ascontiguousarray(slices, dtype=np.float32)))
