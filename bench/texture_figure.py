"""Figure: CUTS levels on embeddings and on texture features, on a fundus photograph and a mosaic.

Rows: scikit-image's retina (the bundled RGB model) and one report image of the texture
benchmark (the bundled MR model), each condensed on the embeddings and on texture features.
Columns: four levels spread from coarse to fine, then the persistent structures.

Usage: python bench/texture_figure.py [--out Resources/Screenshots/cuts_texture.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from skimage import data
from skimage.transform import resize
from texture_cuts import mosaic, uniform_textures

from labelfree.cuts.volume import segment_volume
from labelfree.figures import levels_montage
from labelfree.io import Image


def maps(image: np.ndarray, texture_scale: float) -> list[np.ndarray]:
    """Four levels from coarse to fine and the persistent structures."""
    channels = 3 if image.ndim == 3 else 1
    geometry = Image(image, (1.0, 1.0), (0.0, 0.0), np.eye(2), channels)
    result = segment_volume(geometry, None, device="cpu", seed=0, texture_scale=texture_scale)
    picks = np.linspace(0, max(len(result.levels) - 3, 0), 4).round().astype(int)
    return [result.levels[i] for i in picks] + [result.persistent]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("Resources/Screenshots/cuts_texture.png"))
    parser.add_argument("--scale", type=float, default=8.0, help="texture scale, pixels")
    args = parser.parse_args()
    retina = resize(data.retina(), (256, 256, 3), preserve_range=True).astype(np.float32)
    rng, textures = np.random.default_rng(256), uniform_textures()
    for _ in range(8):  # skip the tuning split: the first report image
        mosaic(rng, textures, 256)
    texture, _ = mosaic(rng, textures, 256)
    rows, images, names = [], [], []
    for name, image in (("fundus", retina), ("texture mosaic", texture)):
        for scale in (0.0, args.scale):
            rows.append(maps(image, scale))
            images.append(image)
            names.append(f"{name}, " + (f"texture {scale:g} px" if scale else "embeddings"))
    titles = ["coarse", "", "", "fine", "persistent"]
    levels_montage(images, rows, titles, args.out, row_names=names)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
