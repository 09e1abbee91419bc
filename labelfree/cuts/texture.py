"""Texture features: local histograms of CUTS embedding "words", for structures told by texture.

The CUTS encoder describes the 17 x 17 patch around each pixel, and its loss pushes apart the
embeddings of different anchors of the same image, even where both lie in one texture. So the
embeddings tell local appearance (an edge, a bright spot), not which texture a region has:
on the texture benchmark (``bench/texture_cuts.py``) condensing them scores about as well as
taking the whole image as one label. A texture is the *distribution* of local appearances over
an area larger than any one patch. This module builds that distribution, the classical
texton way:

1. fit ``K`` words to a sample of the image's own embeddings (k-means, seeded);
2. give every pixel its nearest word;
3. pool the one-hot words with a Gaussian of ``scale`` pixels (normalised at the borders);
4. take the square root, so that Euclidean distances between pixels are Hellinger distances
   between their local histograms (what condensation needs).

Each output pixel sees the embeddings within ``radius(scale)`` pixels of it, so the features of a
tile grown by :func:`halo` pixels equal those of the whole slice: tiling still changes memory,
never results.

Shapes: embeddings ``(B, D, H, W)`` in, features ``(B, K, H, W)`` out, float32.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 -- the universal torch idiom
from scipy.cluster.vq import kmeans2

from labelfree.errors import InputError

TRUNCATE = 2.0
"""The pooling Gaussian is cut at this many standard deviations."""


@dataclass(frozen=True)
class TextureWords:
    """The words and pooling scale of one image's texture features.

    Attributes
    ----------
    words : ndarray
        ``(K, D)`` float32 word centres in embedding space.
    scale : float
        Standard deviation of the pooling Gaussian, pixels.
    """

    words: np.ndarray
    scale: float

    @property
    def n_words(self) -> int:
        """``K``, the length of each pixel's feature vector."""
        return int(self.words.shape[0])


def radius(scale: float) -> int:
    """Pixels the pooling reaches on each side of a pixel, for a Gaussian of ``scale`` pixels."""
    return int(math.ceil(TRUNCATE * float(scale)))


def fit_words(embeddings: np.ndarray, n_words: int, scale: float, seed: int = 0) -> TextureWords:
    """Fit ``n_words`` word centres to sampled pixel embeddings by k-means++.

    Parameters
    ----------
    embeddings : (N, D) array_like
        Pixel embeddings, e.g. a seeded sample of the image's.
    n_words : int
        ``K``, at least 2 and at most N.
    scale : float
        Pooling scale in pixels (> 0), stored with the words.
    seed : int
        Seeds k-means; same seed and input give the same words.

    Returns
    -------
    TextureWords
    """
    points = np.asarray(embeddings, dtype=np.float64)
    if not 2 <= int(n_words) <= points.shape[0]:
        raise InputError(f"Texture features need from 2 to {points.shape[0]} words, not {n_words}.")
    if not float(scale) > 0:
        raise InputError(f"The texture scale must be a positive number of pixels, not {scale}.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an empty cluster is re-seeded silently; that is fine
        centres, _ = kmeans2(points, int(n_words), minit="++", seed=int(seed))
    return TextureWords(centres.astype(np.float32), float(scale))


def texture_features(embeddings: torch.Tensor, texture: TextureWords) -> torch.Tensor:
    """Square-rooted local word histograms of a batch of embedded slices.

    Parameters
    ----------
    embeddings : Tensor
        ``(B, D, H, W)`` float32 embeddings.
    texture : TextureWords
        Words with ``D`` columns and the pooling scale.

    Returns
    -------
    Tensor
        ``(B, K, H, W)`` float32; each pixel's values are the square roots of a histogram
        that sums to 1.
    """
    return features_of_words(nearest_words(embeddings, texture), texture)


def features_of_words(words: torch.Tensor, texture: TextureWords) -> torch.Tensor:
    """:func:`texture_features` from the ``(B, H, W)`` word ids of :func:`nearest_words`."""
    return local_histograms(words, texture.n_words, texture.scale).clamp_min_(0).sqrt_()


def nearest_words(embeddings: torch.Tensor, texture: TextureWords) -> torch.Tensor:
    """``(B, H, W)`` int64: the nearest word of each pixel of ``(B, D, H, W)`` embeddings."""
    words = torch.as_tensor(texture.words, device=embeddings.device)
    batch, dim, height, width = embeddings.shape
    flat = embeddings.permute(0, 2, 3, 1).reshape(-1, dim)
    # argmin |x - w|^2 = argmin (|w|^2 / 2 - x . w): |x|^2 is common to all words.
    score = torch.addmm(0.5 * (words * words).sum(dim=1), flat, words.T, alpha=-1.0)
    return score.argmin(dim=1).view(batch, height, width)


def local_histograms(words: torch.Tensor, n_words: int, scale: float) -> torch.Tensor:
    """Word histograms of each pixel's neighbourhood, weighted by a Gaussian of ``scale`` px.

    Parameters
    ----------
    words : Tensor
        ``(B, H, W)`` integer word ids in ``0..n_words - 1``; a negative id marks a pixel
        that holds no word (it is left out of its neighbours' histograms).
    n_words : int
        ``K``.
    scale : float
        Standard deviation of the Gaussian, pixels.

    Returns
    -------
    Tensor
        ``(B, K, H, W)`` float32 histograms, each summing to 1 (0 where no pixel within reach
        holds a word).
    """
    valid = (words >= 0).unsqueeze(1)
    onehot = torch.zeros(
        words.shape[0], int(n_words), *words.shape[1:], dtype=torch.float32, device=words.device
    ).scatter_(1, words.clamp_min(0).unsqueeze(1), 1.0)
    onehot.mul_(valid)
    weight = gaussian_pool(valid.float(), scale)
    return gaussian_pool(onehot, scale) / weight.clamp_min(torch.finfo(torch.float32).tiny)


def gaussian_pool(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Separable Gaussian blur of every channel of ``(B, C, H, W)``, zero outside the slice.

    The Gaussian has a standard deviation of ``scale`` pixels and reaches
    :func:`radius` pixels; its weights sum to 1.
    """
    r = radius(scale)
    taps = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (taps / float(scale)) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    rows = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    cols = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    x = F.conv2d(x, rows, padding=(r, 0), groups=channels)
    return F.conv2d(x, cols, padding=(0, r), groups=channels)
