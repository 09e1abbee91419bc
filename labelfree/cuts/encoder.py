"""The CUTS convolutional encoder and its patch-reconstruction head.

Architecture (paper, appendix A and Table S1; the authors' reference agrees):
four 5x5 convolutions ``C -> 16 -> 32 -> 64 -> embed_dim``, stride 1, each
followed by BatchNorm and LeakyReLU(0.01), with no pooling, so every pixel gets
its own ``embed_dim``-vector describing the 17x17 patch centred on it
(:data:`RECEPTIVE_FIELD`). Borders are padded by replicating edge pixels.

The padding is applied explicitly before each convolution, so the same weights
also run *unpadded* (``padded=False``): a ``17 x 17`` input then gives exactly
the one embedding of its centre pixel that the padded network computes on the
whole image (away from the image border). Training uses this to encode only the
anchors and positives the loss needs (see :mod:`labelfree.cuts.train`).

The head is an MLP ``embed_dim -> C*25 -> C*25`` (LeakyReLU between) that
rebuilds the ``C x 5 x 5`` input patch around a pixel from its embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 -- the universal torch idiom
from torch import nn

from labelfree.errors import InputError

KERNEL = 5
WIDTHS = (16, 32, 64)
RECEPTIVE_FIELD = 1 + len(WIDTHS + (0,)) * (KERNEL - 1)  # 17 pixels
PATCH = 5  # side of the reconstructed patch, pixels
NEGATIVE_SLOPE = 0.01


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, KERNEL, padding=0),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(NEGATIVE_SLOPE),
    )


class CutsEncoder(nn.Module):
    """Per-pixel patch encoder: ``(B, C, H, W) -> (B, embed_dim, H, W)``.

    Parameters
    ----------
    in_channels : int
        1 for scalar images (MR, CT), 3 for RGB.
    embed_dim : int
        Length of each pixel's embedding (128 in the paper).
    """

    def __init__(self, in_channels: int, embed_dim: int = 128):
        super().__init__()
        if in_channels not in (1, 3):
            raise InputError(f"CUTS takes 1 (scalar) or 3 (RGB) channels, not {in_channels}.")
        self.in_channels = int(in_channels)
        self.embed_dim = int(embed_dim)
        sizes = (self.in_channels, *WIDTHS, self.embed_dim)
        self.blocks = nn.ModuleList(
            _block(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )

    def forward(self, x: torch.Tensor, padded: bool = True) -> torch.Tensor:
        """Embed every pixel.

        Parameters
        ----------
        x : Tensor
            ``(B, C, H, W)`` normalised images (values about [-1, 1]).
        padded : bool
            True: replicate-pad so the output is ``(B, embed_dim, H, W)``.
            False: no padding, the output is ``(B, embed_dim, H - 16, W - 16)``
            and holds only embeddings whose whole receptive field is inside ``x``.

        Returns
        -------
        Tensor
            Embeddings, channels first.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise InputError(
                f"The encoder expects (batch, {self.in_channels}, height, width) input, "
                f"got shape {tuple(x.shape)}."
            )
        pad = KERNEL // 2
        for block in self.blocks:
            if padded:
                x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
            x = block(x)
        return x


class PatchHead(nn.Module):
    """Rebuild the ``C x 5 x 5`` input patch around a pixel from its embedding.

    Parameters
    ----------
    embed_dim : int
        Embedding length.
    out_channels : int
        Image channels ``C``.
    patch : int
        Side of the reconstructed patch (5).
    """

    def __init__(self, embed_dim: int, out_channels: int, patch: int = PATCH):
        super().__init__()
        self.out_channels = int(out_channels)
        self.patch = int(patch)
        size = self.out_channels * self.patch**2
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, size), nn.LeakyReLU(NEGATIVE_SLOPE), nn.Linear(size, size)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(N, embed_dim)`` embeddings -> ``(N, C, patch, patch)`` patches."""
        return self.mlp(z).view(-1, self.out_channels, self.patch, self.patch)
