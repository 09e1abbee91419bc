"""CUTS training objectives (paper section 3.1).

``loss = lam * contrastive + (1 - lam) * reconstruction`` with the paper's
``lam = 0.01`` (the reference code later used 0.001) and temperature 0.5 (the
paper's; the reference later used 0.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 -- the universal torch idiom

LAMBDA = 0.01
TEMPERATURE = 0.5


def nt_xent(
    anchors: torch.Tensor, positives: torch.Tensor, temperature: float = TEMPERATURE
) -> torch.Tensor:
    """SimCLR NT-Xent with intra-image negatives.

    For each image, the ``2S`` L2-normalised vectors (anchors then positives)
    are compared by cosine similarity; each anchor's positive is its pair and
    every other anchor and positive *of the same image* is a negative.

    Parameters
    ----------
    anchors, positives : Tensor
        ``(B, S, D)`` embeddings, ``S >= 2``.
    temperature : float
        Softmax temperature.

    Returns
    -------
    Tensor
        Scalar mean loss over the ``2 * B * S`` vectors.
    """
    batch, count, _ = anchors.shape
    z = F.normalize(torch.cat([anchors, positives], dim=1), dim=-1)
    logits = z @ z.transpose(1, 2) / temperature
    eye = torch.eye(2 * count, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float("-inf"))
    idx = torch.arange(2 * count, device=z.device)
    target = (idx + count) % (2 * count)
    return F.cross_entropy(logits.reshape(-1, 2 * count), target.repeat(batch))


def reconstruction(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between rebuilt and true ``(N, C, 5, 5)`` patches."""
    return F.mse_loss(predicted, target)


def combined(contrastive: torch.Tensor, recon: torch.Tensor, lam: float = LAMBDA) -> torch.Tensor:
    """``lam * contrastive + (1 - lam) * recon``."""
    return lam * contrastive + (1.0 - lam) * recon
