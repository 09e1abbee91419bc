"""Figures a person would rather look at than read: levels, landmarks, training curves.

Every function takes arrays, draws with matplotlib's Agg backend and writes a
PNG atomically; none keeps global state (figures are closed after saving).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from labelfree.io import atomic_path  # noqa: E402
from labelfree.segfile import label_colours  # noqa: E402


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def _overlay(labels: np.ndarray) -> np.ndarray:
    """RGBA overlay of a label slice ``(H, W)``; label 0 stays transparent."""
    n = int(labels.max()) + 1
    colours = np.concatenate([[[0, 0, 0]], label_colours(max(n - 1, 1))])[:n]
    rgba = np.zeros(labels.shape + (4,))
    rgba[..., :3] = colours[labels]
    rgba[..., 3] = np.where(labels > 0, 0.55, 0.0)
    return rgba


def levels_montage(
    image_slices: Sequence[np.ndarray],
    level_slices: Sequence[Sequence[np.ndarray]],
    titles: Sequence[str],
    path: str | os.PathLike,
    row_names: Sequence[str] | None = None,
) -> Path:
    """A grid: one row per image slice, the image then one panel per label map over it.

    Parameters
    ----------
    image_slices : sequence of (H, W) or (H, W, 3) arrays
        Grayscale or RGB slices, any range (each is min-max scaled for display).
    level_slices : sequence of sequences of (H, W) int arrays
        ``level_slices[r][c]``: the c-th label map for image slice r.
    titles : sequence of str
        One title per label-map column (e.g. ``"level 1: 3 clusters"``).
    path : path-like
        PNG to write.
    row_names : sequence of str, optional
        One label per row (e.g. ``"axial"``).
    """
    rows, cols = len(image_slices), len(titles) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.2 * rows), squeeze=False)
    for r, image in enumerate(image_slices):
        image = np.asarray(image, float)
        image = (image - image.min()) / max(np.ptp(image), 1e-12)
        cmap = "gray" if image.ndim == 2 else None
        axes[r, 0].imshow(image, cmap=cmap, origin="lower" if image.ndim == 2 else "upper")
        axes[r, 0].set_title(row_names[r] if row_names else "image", fontsize=8)
        for c, labels in enumerate(level_slices[r]):
            ax = axes[r, c + 1]
            ax.imshow(image, cmap=cmap, origin="lower" if image.ndim == 2 else "upper")
            ax.imshow(_overlay(np.asarray(labels)), origin="lower" if image.ndim == 2 else "upper")
            ax.set_title(titles[c], fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("CUTS granularity levels, coarse (left) to fine (right)", fontsize=10)
    return _save(fig, path)


def landmarks_on_slices(
    volume: np.ndarray,
    index_zyx: np.ndarray,
    importance: np.ndarray,
    names: Sequence[str],
    path: str | os.PathLike,
    title: str = "Discovered landmarks",
) -> Path:
    """Landmarks over three orthogonal slices of a volume, or over a 2-D image.

    Each point is drawn on the slice through the volume centre of each view,
    sized and coloured by importance; the three views show the in-plane
    coordinates of every landmark.

    Parameters
    ----------
    volume : ndarray
        ``(z, y, x)`` volume or ``(y, x)`` image.
    index_zyx : ndarray
        ``(K, volume.ndim)`` continuous voxel indices in array order.
    importance : ndarray
        ``(K,)`` values in [0, 1].
    names : sequence of str
        ``K`` landmark names.
    path : path-like
        PNG to write.
    """
    volume = np.asarray(volume, float)
    index_zyx = np.asarray(index_zyx, float)
    if volume.ndim == 2:
        views = [("image", volume, index_zyx[:, 1], index_zyx[:, 0])]
    else:
        cz, cy, cx = (s // 2 for s in volume.shape)
        views = [
            ("axial", volume[cz], index_zyx[:, 2], index_zyx[:, 1]),
            ("coronal", volume[:, cy], index_zyx[:, 2], index_zyx[:, 0]),
            ("sagittal", volume[:, :, cx], index_zyx[:, 1], index_zyx[:, 0]),
        ]
    fig, axes = plt.subplots(1, len(views), figsize=(4 * len(views), 4.2), squeeze=False)
    importance = np.asarray(importance, float)
    for ax, (name, image, u, v) in zip(axes[0], views, strict=True):
        ax.imshow(image, cmap="gray", origin="lower")
        points = ax.scatter(
            u,
            v,
            c=importance,
            s=20 + 60 * importance,
            cmap="autumn_r",
            vmin=0,
            vmax=1,
            edgecolors="k",
            linewidths=0.5,
        )
        for k in np.argsort(-importance)[:10]:
            ax.annotate(
                names[k],
                (u[k], v[k]),
                fontsize=6,
                color="cyan",
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.colorbar(points, ax=axes[0].tolist(), shrink=0.7, label="importance")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def image_grid(
    pictures: Sequence[str | os.PathLike],
    titles: Sequence[str],
    path: str | os.PathLike,
    title: str = "Training curves of the bundled models",
) -> Path:
    """Put existing PNG pictures side by side (e.g. the loss curves saved with each model).

    Parameters
    ----------
    pictures : sequence of path-like
        PNG files to show, one panel each.
    titles : sequence of str
        One title per panel.
    path : path-like
        PNG to write.
    """
    cols = min(max(len(pictures), 1), 2)
    rows = max(-(-len(pictures) // cols), 1)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.6 * rows), squeeze=False)
    for ax, picture, name in zip(axes.ravel(), pictures, titles, strict=False):
        ax.imshow(plt.imread(picture))
        ax.set_title(name, fontsize=9)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
