"""Texture, not intensity: CUTS against classical methods on mosaics of scikit-image textures.

Each image is one texture (brick, grass or gravel, from scikit-image) with a smooth random
blob of another texture inside it; the blob is the structure to find. Every texture is first
mapped to the same uniform histogram (rank transform over the whole texture), so intensity
alone carries no information: only texture separates blob from background.

Protocols, applied to every method alike (as in the CUTS paper and the module):
- *hint*: the cluster most common under the true mask;
- *click*: the cluster under one click at the mask's most central pixel, its connected part.
CUTS reports its best level (what scrubbing the slider gives) and its persistent-structures
map (the one answer a batch user gets), on its embeddings and on its texture features
(``texture_scale``, :mod:`labelfree.cuts.texture`; the scale is tuned like the baselines'
parameters). SLIC, Felzenszwalb, watershed on Sobel and k-means on intensities are tuned on a
separate tuning split (best mean hint Dice over a small grid) and reported on the report split,
in the same run. A regular grid of cells, which looks at no pixel, shows how much position
alone scores.

Usage: python bench/texture_cuts.py [--images 8] [--sizes 128 256] [--train-epochs 20]
(about 14 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import warnings

import numpy as np
from _common import OUT, dice, fmt_table, hint_mask, machine
from scipy import ndimage
from scipy.cluster.vq import kmeans2
from skimage import data
from skimage.filters import sobel
from skimage.segmentation import felzenszwalb, slic, watershed

from labelfree.cuts.hint import binarise_by_point, central_point
from labelfree.cuts.volume import segment_volume
from labelfree.io import Image

TEXTURES = ("brick", "grass", "gravel")


def uniform_textures() -> list[np.ndarray]:
    """The textures, each mapped to a uniform [0, 1] histogram (ranks): equal intensities."""
    out = []
    for name in TEXTURES:
        texture = getattr(data, name)().astype(np.float64)
        ranks = np.argsort(np.argsort(texture, axis=None, kind="stable"), kind="stable").reshape(
            texture.shape
        )
        out.append(ranks / (texture.size - 1))
    return out


def blob(
    rng: np.random.Generator,
    size: int,
    cover=(0.15, 0.35),
    accept=(0.1, 0.4),
    smoothing: float = 8,
) -> np.ndarray:
    """A smooth random blob, one connected piece of a fraction of the image in ``accept``.

    The field above a random quantile in ``cover`` is thresholded; the Gaussian smoothing of
    the noise is ``size / smoothing`` pixels.
    """
    while True:
        # Anywhere in the image: a centred blob would reward methods that split by position.
        field = ndimage.gaussian_filter(rng.normal(size=(size, size)), size / smoothing)
        mask = field > np.quantile(field, 1 - rng.uniform(*cover))
        labels, count = ndimage.label(mask)
        if count:
            largest = labels == 1 + np.argmax(np.bincount(labels.ravel())[1:])
            if accept[0] < largest.mean() < accept[1]:
                return largest


def mosaic(rng, textures, size, shape=blob) -> tuple[np.ndarray, np.ndarray]:
    """An image and its structure mask: blob texture inside a background texture.

    ``shape(rng, size)`` draws the structure's mask (default :func:`blob`).
    """
    background, inside = rng.choice(len(textures), 2, replace=False)

    def crop(texture):
        r, c = rng.integers(0, texture.shape[0] - size), rng.integers(0, texture.shape[1] - size)
        return texture[r : r + size, c : c + size]

    truth = shape(rng, size)
    image = np.where(truth, crop(textures[inside]), crop(textures[background]))
    return image.astype(np.float32), truth


def run_slic(img, n_segments, compactness):
    return slic(img, n_segments=n_segments, compactness=compactness, channel_axis=None)


def run_felzenszwalb(img, scale, sigma):
    return felzenszwalb(img, scale=scale, sigma=sigma, min_size=20)


def run_watershed(img, markers):
    return watershed(sobel(img), markers=markers)


def run_kmeans(img, k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, labels = kmeans2(img.reshape(-1, 1).astype(np.float64), k, minit="++", seed=0)
    return labels.reshape(img.shape)


def run_local_kmeans(img, k, window):
    """k-means on local mean and standard deviation (a classical texture feature)."""
    mean = ndimage.uniform_filter(img.astype(np.float64), window)
    std = np.sqrt(
        np.maximum(ndimage.uniform_filter(img.astype(np.float64) ** 2, window) - mean**2, 0)
    )
    features = np.stack([mean, std], axis=-1).reshape(-1, 2)
    features = (features - features.mean(0)) / (features.std(0) + 1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, labels = kmeans2(features, k, minit="++", seed=0)
    return labels.reshape(img.shape)


def run_whole(img):
    return np.zeros(img.shape, dtype=np.int32)


def run_grid(img, cells):
    """``cells`` x ``cells`` equal rectangles: position only, no pixel is looked at."""
    rows = np.arange(img.shape[0]) * cells // img.shape[0]
    cols = np.arange(img.shape[1]) * cells // img.shape[1]
    return (rows[:, None] * cells + cols[None, :]).astype(np.int32)


BASELINES = {
    "whole image (one label, for scale)": (run_whole, {}),
    "regular grid (position only)": (run_grid, {"cells": [2, 3, 4]}),
    "SLIC": (run_slic, {"n_segments": [4, 10, 30], "compactness": [0.01, 0.1, 1.0]}),
    "Felzenszwalb": (run_felzenszwalb, {"scale": [100, 400, 1600], "sigma": [0.5, 2.0, 4.0]}),
    "watershed on Sobel": (run_watershed, {"markers": [4, 10, 30]}),
    "k-means on intensities": (run_kmeans, {"k": [2, 4, 10]}),
    "k-means on local mean and std": (run_local_kmeans, {"k": [2, 4], "window": [9, 17, 33]}),
}


def scores(labels: np.ndarray, truth: np.ndarray, none: int | None = None) -> tuple[float, float]:
    """(hint Dice, click Dice) of one label map; label ``none`` (if given) is no structure."""
    click = binarise_by_point(labels, central_point(truth), connected=True)
    hint = hint_mask(np.where(labels == none, -1, labels) if none is not None else labels, truth)
    if none is not None:
        hint &= labels != none
        click &= labels != none
    return dice(hint, truth), dice(click, truth)


TEXTURE_SCALES = (4.0, 8.0, 16.0, 32.0)
"""Texture pooling scales (pixels) tried on the tuning split."""


def cuts_scores(
    image, truth, seed: int, model=None, tag="", texture_scale=0.0, refine=True
) -> dict[str, tuple[float, float]]:
    geometry = Image(image, (1.0, 1.0), (0.0, 0.0), np.eye(2))
    result = segment_volume(
        geometry,
        model,
        method="levels",
        device="cpu",
        seed=seed,
        texture_scale=texture_scale,
        refine=refine,
    )
    per_level = [scores(level, truth) for level in result.levels]
    return {
        f"LabelFree{tag} best level": (max(s[0] for s in per_level), max(s[1] for s in per_level)),
        f"LabelFree{tag} persistent structures": scores(result.persistent, truth, none=0),
    }


def trained_on(images: list[np.ndarray], epochs: int):
    """A CUTS encoder trained without labels on ``images`` (the tuning split), in memory."""
    from labelfree.cuts.train import train_cuts

    result = train_cuts(images, in_channels=1, epochs=epochs, seed=0, device="cpu")
    model = result.model
    model.normalisation = result.config["normalisation"]
    return model


def tuned_texture_scale(cases) -> float:
    """The texture scale whose best level has the best mean hint Dice on ``cases``."""
    means = {
        scale: np.mean(
            [
                cuts_scores(img, truth, seed=n, texture_scale=scale)["LabelFree best level"][0]
                for n, (img, truth) in enumerate(cases)
            ]
        )
        for scale in TEXTURE_SCALES
    }
    return max(means, key=means.get)


def tuned(fn, grid, cases) -> dict:
    """The grid point with the best mean hint Dice on ``cases``."""
    keys = list(grid)
    best, best_score = None, -1.0
    for values in itertools.product(*(grid[k] for k in keys)):
        params = dict(zip(keys, values, strict=True))
        mean = np.mean([scores(fn(img, **params), truth)[0] for img, truth in cases])
        if mean > best_score:
            best, best_score = params, mean
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="per split and size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument(
        "--train-epochs",
        type=int,
        default=20,
        help="also train CUTS on the tuning images (no labels) for this many epochs (0: skip)",
    )
    args = parser.parse_args()
    textures = uniform_textures()
    rows, record = [], {"machine": machine(), "sizes": {}}
    start = time.perf_counter()
    for size in args.sizes:
        rng = np.random.default_rng(size)  # fixed splits
        tune = [mosaic(rng, textures, size) for _ in range(args.images)]
        report = [mosaic(rng, textures, size) for _ in range(args.images)]
        results: dict[str, list[tuple[float, float]]] = {}
        scale = tuned_texture_scale(tune)
        adapted = (
            trained_on([img for img, _ in tune], args.train_epochs) if args.train_epochs else None
        )
        for number, (image, truth) in enumerate(report):
            found = cuts_scores(image, truth, seed=number)
            found |= cuts_scores(
                image, truth, seed=number, tag=" texture features", texture_scale=scale
            )
            found |= cuts_scores(
                image,
                truth,
                seed=number,
                tag=" texture features, unrefined",
                texture_scale=scale,
                refine=False,
            )
            if adapted is not None:
                tag = f" trained on the tuning split ({args.train_epochs} epochs),"
                found |= cuts_scores(image, truth, seed=number, model=adapted, tag=tag)
                found |= cuts_scores(
                    image,
                    truth,
                    seed=number,
                    model=adapted,
                    tag=tag + " texture features",
                    texture_scale=scale,
                )
            for name, value in found.items():
                results.setdefault(name, []).append(value)
        chosen = {"LabelFree texture features": {"texture_scale": scale}}
        for name, (fn, grid) in BASELINES.items():
            chosen[name] = tuned(fn, grid, tune)
            results[name] = [scores(fn(img, **chosen[name]), truth) for img, truth in report]
        for name, values in results.items():
            hint, click = np.mean(values, axis=0)
            rows.append([f"{size}x{size}", name, f"{hint:.3f}", f"{click:.3f}"])
        record["sizes"][size] = {
            "results": {k: np.mean(v, axis=0).tolist() for k, v in results.items()},
            "tuned": chosen,
        }
    print(machine())
    print(
        f"{args.images} report images per size (and as many for tuning), "
        f"{time.perf_counter() - start:.0f} s"
    )
    print(fmt_table(rows, ["size", "method", "hint Dice", "click Dice"]))
    OUT.mkdir(exist_ok=True)
    (OUT / "texture_cuts.json").write_text(json.dumps(record, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
