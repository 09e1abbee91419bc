"""The landmark regressor: a small CNN from an image to K landmarks.

One network is applied with shared weights to both images of a pair
(Siamese). It outputs ``K`` learned landmarks in normalised coordinates
``[-1, 1]`` ordered ``(x, y[, z])`` (see :mod:`labelfree.landmarks.tps`),
optionally followed by the fixed image corners. The last layer starts with
zero weights and a random bias, so every image first predicts the same
landmarks and training moves them apart from a common layout.

Size: the reference network costs about 2.25 GMAC per 256x256 image; the
default here (128x128 input, 16-32-64-128 channels with strided
convolutions) costs about 50 MMAC and holds under 0.5 M weights, so that
training on a CPU takes minutes and detection well under a second.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from labelfree.errors import InputError

DEFAULT_CHANNELS = {2: (16, 32, 64, 128), 3: (8, 16, 32, 64)}


def corner_landmarks(ndim: int) -> torch.Tensor:
    """The ``2**ndim`` image corners in normalised ``(x, y[, z])`` coordinates."""
    return torch.tensor(list(itertools.product((-1.0, 1.0), repeat=ndim)))


class LandmarkRegressor(nn.Module):
    """CNN regressing ``n_landmarks`` points from a whitened image.

    Parameters
    ----------
    ndim : int
        2 or 3.
    n_landmarks : int
        Number of learned landmarks ``K``.
    input_size : int
        Side of the (square or cubic) input the network expects, in pixels;
        a multiple of ``2 ** len(channels)``.
    fixed_corners : bool
        Append the image corners as fixed landmarks to :meth:`control_points`
        (4 in 2-D, 8 in 3-D), which anchors the warp at the image border.
    channels : sequence of int, optional
        Channels of each stride-2 stage; :data:`DEFAULT_CHANNELS` by default.
    hidden : int
        Width of the hidden fully connected layer.
    reduce : int, optional
        Channels after the 1x1 reduction before flattening (24 in 2-D, 16 in 3-D).
    pooled : int, optional
        Side of the spatial map that is flattened, keeping *where* features
        are (4 in 2-D, 3 in 3-D).
    bias_range : float
        The last layer's bias is drawn uniformly in ``[-bias_range, bias_range]``
        (before ``tanh``).
    head : str
        ``"fc"``: flatten, fully connected, ``tanh`` (the reference design).
        ``"heatmap"``: one spatial softmax per landmark on stride-4 features
        (fused with the deepest stage for context) and its expected position
        (soft-argmax); landmarks then move with the image content by
        construction. Its last layer starts at zero on top of a fixed
        Gaussian prior around a random position per landmark, so every image
        again starts with the same landmarks.
    """

    def __init__(
        self,
        ndim: int = 2,
        n_landmarks: int = 26,
        input_size: int = 128,
        fixed_corners: bool = True,
        channels: tuple[int, ...] | None = None,
        hidden: int = 256,
        reduce: int | None = None,
        pooled: int | None = None,
        bias_range: float = 1.0,
        head: str = "fc",
    ) -> None:
        super().__init__()
        if ndim not in (2, 3):
            raise InputError(f"The landmark regressor works on 2-D or 3-D images, not {ndim}-D.")
        channels = tuple(channels or DEFAULT_CHANNELS[ndim])
        pooled = pooled or (4 if ndim == 2 else 3)
        reduce = reduce or (24 if ndim == 2 else 16)
        if input_size % (2 ** len(channels)) or input_size // (2 ** len(channels)) < pooled:
            raise InputError(
                f"input_size {input_size} must be a multiple of {2 ** len(channels)} and at "
                f"least {pooled * 2 ** len(channels)} for {len(channels)} stride-2 stages."
            )
        if n_landmarks < 1:
            raise InputError(f"n_landmarks must be at least 1, got {n_landmarks}.")
        if head not in ("fc", "heatmap"):
            raise InputError(f"Unknown regressor head {head!r}; use 'fc' or 'heatmap'.")
        self.ndim = ndim
        self.n_landmarks = n_landmarks
        self.input_size = input_size
        self.hyper = {
            "ndim": ndim,
            "n_landmarks": n_landmarks,
            "input_size": input_size,
            "fixed_corners": fixed_corners,
            "channels": list(channels),
            "hidden": hidden,
            "reduce": reduce,
            "pooled": pooled,
            "head": head,
        }
        self.head_kind = head
        fixed = corner_landmarks(ndim) if fixed_corners else torch.zeros(0, ndim)
        self.register_buffer("fixed", fixed)
        if head == "heatmap":
            self._build_heatmap(channels, reduce, bias_range)
            return
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        pool = nn.AdaptiveAvgPool2d if ndim == 2 else nn.AdaptiveAvgPool3d
        layers: list[nn.Module] = []
        c_in = 1
        for c_out in channels:
            layers += [conv(c_in, c_out, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
            layers += [conv(c_out, c_out, 3, padding=1), nn.ReLU(inplace=True)]
            c_in = c_out
        layers += [conv(c_in, reduce, 1), nn.ReLU(inplace=True), pool(pooled), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(reduce * pooled**ndim, hidden), nn.ReLU(inplace=True))
        self.head = nn.Linear(hidden, n_landmarks * ndim)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.head.weight)
        nn.init.uniform_(self.head.bias, -bias_range, bias_range)

    def _build_heatmap(self, channels: tuple[int, ...], reduce: int, bias_range: float) -> None:
        conv = nn.Conv2d if self.ndim == 2 else nn.Conv3d
        stages = []
        c_in = 1
        for c_out in channels:
            stages.append(
                nn.Sequential(
                    conv(c_in, c_out, 3, stride=2, padding=1),
                    nn.ReLU(inplace=True),
                    conv(c_out, c_out, 3, padding=1),
                    nn.ReLU(inplace=True),
                )
            )
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.lateral = nn.Sequential(conv(c_in, reduce, 1), nn.ReLU(inplace=True))
        self.fuse = nn.Sequential(
            conv(channels[1] + reduce, 32, 3, padding=1), nn.ReLU(inplace=True)
        )
        self.heatmap = conv(32, self.n_landmarks, 1)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.heatmap.weight)
        res = self.input_size // 4
        # Feature pixel j of a stride-4 map sits on input pixel 4 j.
        axes = [4 * torch.arange(res, dtype=torch.float32) * 2 / (self.input_size - 1) - 1]
        grid = torch.stack(torch.meshgrid(*(axes * self.ndim), indexing="ij")[::-1], dim=-1)
        self.register_buffer("positions", grid.reshape(-1, self.ndim))
        centres = torch.tanh(
            torch.empty(self.n_landmarks, self.ndim).uniform_(-bias_range, bias_range)
        )
        dist2 = (self.positions[None] - centres[:, None]).pow(2).sum(-1)
        self.register_buffer("prior", -dist2 / (2 * 0.1**2))

    @property
    def n_fixed(self) -> int:
        """Number of fixed corner landmarks."""
        return int(self.fixed.shape[0])

    def config(self) -> dict[str, Any]:
        """The constructor arguments, enough to rebuild the network."""
        return dict(self.hyper)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Learned landmarks of a batch of whitened images.

        Parameters
        ----------
        image : Tensor
            ``(B, 1, S, S)`` or ``(B, 1, S, S, S)`` with ``S = input_size``.

        Returns
        -------
        Tensor
            ``(B, K, ndim)`` in ``[-1, 1]``, order ``(x, y[, z])``.
        """
        expected = (1,) + (self.input_size,) * self.ndim
        if image.dim() != self.ndim + 2 or tuple(image.shape[1:]) != expected:
            raise InputError(
                f"The regressor expects (batch, {', '.join(map(str, expected))}) inputs, "
                f"got {tuple(image.shape)}; resample with labelfree.landmarks.model.prepare_image."
            )
        if self.head_kind == "heatmap":
            return self._soft_argmax(image)
        out = self.head(self.fc(self.features(image)))
        return torch.tanh(out).view(image.shape[0], self.n_landmarks, self.ndim)

    def _soft_argmax(self, image: torch.Tensor) -> torch.Tensor:
        x = image
        taps = []
        for stage in self.stages:
            x = stage(x)
            taps.append(x)
        fine = taps[1]
        mode = "bilinear" if self.ndim == 2 else "trilinear"
        context = F.interpolate(
            self.lateral(x), size=fine.shape[2:], mode=mode, align_corners=False
        )
        logits = self.heatmap(self.fuse(torch.cat([fine, context], dim=1)))
        logits = logits.flatten(2) + self.prior
        weights = torch.softmax(logits, dim=-1)
        return weights @ self.positions

    def control_points(self, image: torch.Tensor) -> torch.Tensor:
        """Learned landmarks followed by the fixed corners, ``(B, K + n_fixed, ndim)``."""
        learned = self(image)
        fixed = self.fixed.to(learned.dtype).expand(learned.shape[0], -1, -1)
        return torch.cat([learned, fixed], dim=1)
