"""Training the CUTS encoder on unlabeled images and volumes.

Objective (paper section 3.1): in each image, anchors with SSIM-mined nearby
positives (:mod:`labelfree.cuts.mining`), NT-Xent with the other anchors and
positives of the same image as negatives, plus reconstruction of the 5 x 5
patch around each anchor and positive from its embedding, weighted
``lam * contrastive + (1 - lam) * reconstruction``
(:mod:`labelfree.cuts.losses`). AdamW (lr 1e-3, weight decay 1e-4), linear
warm-up over the first 5 % of steps then cosine decay to 0, a 7:3 split of the
slices into training and validation, and the weights of the best validation
epoch are kept. Everything random comes from ``seed`` (bit-identical on CPU).

Where the encoder runs (``crop``)
---------------------------------
The loss only looks at the embeddings of the anchors and positives, and each
embedding depends only on the 17 x 17 input patch around its pixel. So:

- ``crop=17`` (default): cut the 17 x 17 window around every anchor and
  positive and run the encoder *unpadded* on it, giving exactly the embedding
  the full image would give there (replicate padding only differs at the image
  border). Anchors are drawn over the whole slice, so negatives are as varied
  as in the reference.
- ``crop=N > 17``: run the padded encoder on a random N x N crop per image
  and draw the anchors inside it.
- ``crop=None``: the whole slice, as the reference does (all pixels encoded,
  8 used).

Measured on the MNI152 T1 template (1 mm, axial slices of 233 x 197; 155
non-empty, 109 train / 46 validation), batch 16, 8 anchors per image, one
torch thread on a 2-core AMD EPYC (AVX2) shared with other jobs, torch 2.13:

=========  ============  ============  =========================================
crop       s / step      vs crop=17    after 80 steps (10 epochs, lr 1e-3)
=========  ============  ============  =========================================
17         0.22          1x            val recon 0.152; k-means WM/GM Dice 0.79/0.64
48         1.79          8x            val recon 0.139; k-means WM/GM Dice 0.73/0.50
96         10.1          46x           (timed only)
None       50.1          228x          (timed only; the reference's way)
=========  ============  ============  =========================================

(s / step: best of 3 steps per mode, interleaved in one process. Dice: 4-means
on the L2-normalised embeddings inside the brain of 7 axial slices, hint
protocol against the template's GM/WM maps > 0.5; untrained encoder 0.77/0.51,
4-means on raw intensity 0.96/0.85.) So crop=17 is both the fastest and, since
its anchors span whole slices, the better one: 80 steps take under 30 s.
Adapting to one volume as the GUI does (``labelfree cuts train`` on the MNI
NIfTI, ``--epochs 5 --init-model default``) took 15.6 s wall in all (9.6 s of
training; 0.62 GB peak memory), against the 3-minute target. A larger learning rate (3e-3) cut the
validation reconstruction loss tenfold (0.016) but lowered that Dice
(0.71/0.51): reconstruction alone is not the goal, so the reference's 1e-3 stays.

Slices that are constant after normalisation (empty slices at a volume's
edges) are skipped. A single 2-D image is validated on held-out anchors of the
same image, since there is nothing to split.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelfree import __version__
from labelfree.checkpoint import (
    checkpoint_path,
    load_checkpoint,
    random_states,
    restore_random_states,
    save_checkpoint,
)
from labelfree.cuts import losses
from labelfree.cuts.encoder import PATCH, RECEPTIVE_FIELD
from labelfree.cuts.mining import Pairs, mine_pairs
from labelfree.cuts.model import CutsModel, load_cuts_model, save_cuts_model
from labelfree.cuts.normalise import default_normalisation, normalise
from labelfree.cuts.slicestore import SliceStore
from labelfree.devices import resolve_device
from labelfree.distributed import (
    SINGLE,
    World,
    agree,
    average_gradients,
    device_for,
    join,
    sum_over_ranks,
    synchronise_batch_norm,
)
from labelfree.errors import InputError, LabelFreeError
from labelfree.io import atomic_path
from labelfree.progress import Progress, ProgressCallback, run_steps
from labelfree.trainingdata import begin_training

HALF = RECEPTIVE_FIELD // 2
_MIN_SAMPLES_PER_EPOCH = 128


@dataclass
class TrainResult:
    """What training produced.

    Attributes
    ----------
    model : CutsModel
        The best-validation weights, on the CPU, in eval mode.
    config : dict
        Model config for :func:`labelfree.cuts.model.save_cuts_model`
        (``in_channels``, ``embed_dim``, ``normalisation``, ``training``).
    history : list of dict
        Per epoch: ``epoch`` (1-based), ``lr``, ``train_contrastive``,
        ``train_reconstruction``, ``val_contrastive``, ``val_reconstruction``.
    best_epoch : int
        1-based epoch whose weights were kept (lowest validation loss).
    seconds : float
        Wall time of the whole training.
    slices : dict
        ``{"train": n, "validation": n, "skipped_constant": n}``.
    fallback_fraction : float
        Share of training anchors with no candidate above the SSIM threshold
        (their best-SSIM neighbour was used).
    initial : dict
        ``val_contrastive`` and ``val_reconstruction`` of the starting weights
        (``best_epoch`` is 0 when no epoch beat them, e.g. a fine-tune that
        did not help: the starting weights are returned).
    """

    model: CutsModel
    config: dict[str, Any]
    history: list[dict[str, float]]
    best_epoch: int
    seconds: float
    slices: dict[str, int] = field(default_factory=dict)
    fallback_fraction: float = 0.0
    initial: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- data


def _as_slices(
    images: Sequence[np.ndarray], in_channels: int, normalisation: dict[str, Any], axis: int
) -> tuple[list[np.ndarray], int]:
    """Normalise every image / volume and return ``(C, H, W)`` slices and the skip count."""
    slices: list[np.ndarray] = []
    skipped = 0
    for i, array in enumerate(images):
        stack, constant = image_slices(array, in_channels, normalisation, axis, name=f"Image {i}")
        slices.extend(stack)
        skipped += constant
    if not slices:
        raise InputError("Every slice is constant; there is nothing to learn from these images.")
    return slices, skipped


def image_slices(
    array: np.ndarray,
    in_channels: int,
    normalisation: dict[str, Any],
    axis: int = 0,
    *,
    name: str = "The image",
) -> tuple[np.ndarray, int]:
    """One image's normalised, non-constant training slices.

    Parameters
    ----------
    array : ndarray
        ``(y, x)``, RGB ``(y, x, 3)`` (with ``in_channels=3``) or a volume ``(z, y, x)``
        sliced along numpy ``axis``; normalised as a whole.
    in_channels : int
        1 or 3.
    normalisation : dict
        See :mod:`labelfree.cuts.normalise`.
    axis : int
        Slicing axis of a volume.
    name : str
        How error messages name the image.

    Returns
    -------
    stack : ndarray
        ``(S, C, H, W)`` float32 slices whose std is at least 1e-3.
    skipped : int
        Constant slices left out.
    """
    array = np.asarray(array)
    if in_channels == 3:
        if array.ndim != 3 or array.shape[-1] != 3:
            raise InputError(
                f"{name} has shape {array.shape}; an RGB model trains on (y, x, 3) "
                "images. Use a grayscale model for scalar images and volumes."
            )
        stack = normalise(array, normalisation).transpose(2, 0, 1)[None]
    elif array.ndim == 2:
        stack = normalise(array, normalisation)[None, None]
    elif array.ndim == 3:
        if array.shape[-1] in (3, 4):
            raise InputError(
                f"{name} of shape {array.shape} looks like an RGB image but the model "
                "is grayscale; train an RGB model (in_channels=3)."
            )
        stack = np.moveaxis(normalise(array, normalisation), axis, 0)[:, None]
    else:
        raise InputError(
            f"{name} has shape {array.shape}; give 2-D images (y, x), RGB (y, x, 3) "
            "or volumes (z, y, x)."
        )
    if min(stack.shape[-2:]) < RECEPTIVE_FIELD:
        raise InputError(
            f"{name} gives {stack.shape[-2]} x {stack.shape[-1]} slices; CUTS needs at "
            f"least {RECEPTIVE_FIELD} x {RECEPTIVE_FIELD} (its receptive field)."
        )
    varied = [float(s.std()) >= 1e-3 for s in stack]
    return np.ascontiguousarray(stack[varied], dtype=np.float32), len(varied) - sum(varied)


def _split(n: int, val_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(n)
    n_val = int(round(val_fraction * n))
    if n < 2 or n_val == 0:
        return order, order  # validate on held-out anchors of the same slices
    n_val = min(n_val, n - 1)
    return order[n_val:], order[:n_val]


def _windows(image: np.ndarray, centres: np.ndarray, size: int = RECEPTIVE_FIELD) -> np.ndarray:
    """``size`` x ``size`` windows ``(N, C, size, size)`` of a ``(C, H, W)`` image around
    ``(N, 2)`` centres; clipped indices replicate the edge pixels (no padded copy needed)."""
    grid = np.arange(size) - size // 2
    rows = np.clip(centres[:, 0, None, None] + grid[:, None], 0, image.shape[1] - 1)
    cols = np.clip(centres[:, 1, None, None] + grid[None, :], 0, image.shape[2] - 1)
    return image[:, rows, cols].transpose(1, 0, 2, 3)


# --------------------------------------------------------------------------- steps


@dataclass
class _Setup:
    model: CutsModel
    device: torch.device
    crop: int | None
    n_anchors: int
    lam: float
    temperature: float
    world: World = SINGLE


def _patch_losses(
    setup: _Setup, images: list[np.ndarray], pairs: list[Pairs]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Losses from 17 x 17 windows encoded without padding (``crop=17``)."""
    wins = []
    for img, pair in zip(images, pairs, strict=True):
        centres = np.concatenate([pair.anchors[0], pair.positives[0]])
        wins.append(_windows(img, centres))
    x = torch.from_numpy(np.stack(wins)).to(setup.device)  # (B, 2S, C, 17, 17)
    b, n = x.shape[:2]
    flat = x.reshape(b * n, *x.shape[2:])
    z = setup.model.encoder(flat, padded=False).reshape(b, n, -1)
    s = setup.n_anchors
    contrastive = losses.nt_xent(z[:, :s], z[:, s:], setup.temperature)
    lo, hi = HALF - PATCH // 2, HALF + PATCH // 2 + 1
    recon = losses.reconstruction(setup.model.head(z.reshape(b * n, -1)), flat[:, :, lo:hi, lo:hi])
    return contrastive, recon


def _dense_losses(
    setup: _Setup, images: list[np.ndarray], pairs: list[Pairs]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Losses from the padded encoder run on whole images or crops."""
    s = setup.n_anchors
    same = len({im.shape for im in images}) == 1
    groups = [list(range(len(images)))] if same else [[i] for i in range(len(images))]
    zs, targets = [], []
    for group in groups:
        x = torch.from_numpy(np.stack([images[i] for i in group])).to(setup.device)
        emb = setup.model.encoder(x, padded=True)
        for k, i in enumerate(group):
            centres = np.concatenate([pairs[i].anchors[0], pairs[i].positives[0]])
            rows = torch.as_tensor(centres[:, 0], device=setup.device)
            cols = torch.as_tensor(centres[:, 1], device=setup.device)
            zs.append(emb[k][:, rows, cols].T)
            targets.append(_windows(images[i], centres, PATCH))
    z = torch.stack(zs)
    target = torch.from_numpy(np.concatenate(targets)).to(setup.device)
    contrastive = losses.nt_xent(z[:, :s], z[:, s:], setup.temperature)
    recon = losses.reconstruction(setup.model.head(z.reshape(-1, z.shape[-1])), target)
    return contrastive, recon


def _random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[-2:]
    ch, cw = min(size, h), min(size, w)
    r, c = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return image[:, r : r + ch, c : c + cw]


def _batch_losses(
    setup: _Setup, slices: list[np.ndarray], idx: np.ndarray, rng
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The batch's losses, on this rank's share of it (all of it in one process).

    Every rank draws the whole batch's crops and pairs, so the generators stay in step;
    a share's mean losses are weighted by ``share * ranks / batch`` so that the averaged
    gradients are those of the whole batch's mean.
    """
    if setup.crop == RECEPTIVE_FIELD:
        images = [slices[i] for i in idx]
        pairs = [mine_pairs(im[None], rng, n_anchors=setup.n_anchors) for im in images]
    else:
        images = [slices[i] for i in idx]
        if setup.crop is not None:
            images = [_random_crop(im, setup.crop, rng) for im in images]
        pairs = [mine_pairs(im[None], rng, n_anchors=setup.n_anchors) for im in images]
    fallback = float(np.mean([p.fallback.mean() for p in pairs]))
    mine = setup.world.share(len(images))
    # A batch smaller than the world leaves a rank without images: it still runs one forward
    # pass (weight 0), because the synced BatchNorm is a collective every rank must join.
    weight = len(mine) * setup.world.size / len(images)
    mine = mine or [0]
    losses_of = _patch_losses if setup.crop == RECEPTIVE_FIELD else _dense_losses
    contrastive, recon = losses_of(setup, [images[k] for k in mine], [pairs[k] for k in mine])
    return contrastive * weight, recon * weight, fallback


def _slices_digest(slices: list[np.ndarray]) -> str:
    """SHA-256 of the normalised training slices: a checkpoint resumes only on the same data."""
    digest = hashlib.sha256()
    for image in slices:
        digest.update(str(image.shape).encode())
        digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _validate(
    setup: _Setup, slices: list[np.ndarray], val_idx, val_pairs, batch_size
) -> tuple[float, float]:
    setup.model.eval()
    totals = np.zeros(2)
    count = 0
    with torch.no_grad():
        starts = range(0, len(val_idx), batch_size)
        for start in [starts[k] for k in setup.world.share(len(starts))]:  # this rank's batches
            chunk = range(start, min(start + batch_size, len(val_idx)))
            c, r = _patch_losses(
                setup, [slices[val_idx[k]] for k in chunk], [val_pairs[k] for k in chunk]
            )
            totals += np.array([c.item(), r.item()]) * len(chunk)
            count += len(chunk)
    setup.model.train()
    totals = sum_over_ranks([*totals, count], setup.world, setup.device)
    return float(totals[0] / totals[2]), float(totals[1] / totals[2])


def train_cuts_steps(
    images: Sequence[np.ndarray] | SliceStore,
    *,
    in_channels: int,
    normalisation: dict[str, Any] | None = None,
    epochs: int = 40,
    seed: int = 0,
    crop: int | None = RECEPTIVE_FIELD,
    batch_size: int = 16,
    val_fraction: float = 0.3,
    device: str | torch.device = "cpu",
    init: CutsModel | None = None,
    axis: int = 0,
    n_anchors: int = 8,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    lam: float = losses.LAMBDA,
    temperature: float = losses.TEMPERATURE,
    embed_dim: int = 128,
    samples_per_epoch: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    world: World = SINGLE,
) -> Generator[Progress, None, TrainResult]:
    """Train a CUTS encoder, yielding progress after every batch.

    Parameters
    ----------
    images : sequence of ndarray, or SliceStore
        Raw intensities: 2-D images ``(y, x)``, RGB ``(y, x, 3)`` (with
        ``in_channels=3``) or volumes ``(z, y, x)`` sliced along ``axis``.
        Each is normalised as a whole with ``normalisation``. Or slices already
        normalised that way, on disk (what :func:`train_from_files` streams).
    in_channels : int
        1 or 3.
    normalisation : dict, optional
        See :mod:`labelfree.cuts.normalise`; default for the channel count,
        or ``init``'s if that has one.
    epochs : int
        Passes over the training slices (at least 128 slices are drawn per
        epoch, so a single image still gets 8 steps of 16 per epoch).
    seed : int
        Seeds weight initialisation, the split and all sampling.
    crop : int or None
        17 (default): encode only the 17 x 17 windows the loss needs; N > 17:
        random N x N crops; None: whole slices. See the module docstring.
    batch_size : int
        Images (slices or crops) per step.
    val_fraction : float
        Share of slices held out for validation.
    device : str or torch.device
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    init : CutsModel, optional
        Start from these weights (not modified) instead of a random init.
    axis : int
        Numpy axis along which volumes are sliced.
    n_anchors, lr, weight_decay, lam, temperature, embed_dim
        Method parameters (defaults: paper and reference values).
    samples_per_epoch : int, optional
        Images drawn per epoch; default ``max(training slices, 128)``.
    checkpoint : path-like, optional
        Write a checkpoint here after every epoch (:mod:`labelfree.checkpoint`).
    resume : path-like, optional
        Continue the run that left this checkpoint (same images and settings): the
        result equals that of a run that was never interrupted.
    world : World
        This process's place among torchrun's ranks (:mod:`labelfree.distributed`); each
        rank trains on its share of every batch, and only rank 0 writes checkpoints.

    Returns
    -------
    TrainResult
        As the generator's return value; see :func:`labelfree.progress.run_steps`.

    Raises
    ------
    InputError
        Bad images (empty, constant, NaN/Inf, too small, wrong channels).
    LabelFreeError
        If the losses become NaN (lower ``lr``).
    """
    if in_channels not in (1, 3):
        raise InputError(f"CUTS takes 1 (scalar) or 3 (RGB) channels, not {in_channels}.")
    if crop is not None and crop < RECEPTIVE_FIELD:
        raise InputError(f"crop must be None or at least {RECEPTIVE_FIELD} pixels, not {crop}.")
    if epochs < 1 or batch_size < 1 or n_anchors < 2:
        raise InputError("epochs and batch_size must be >= 1 and n_anchors >= 2.")
    if world.size > 1 and crop != RECEPTIVE_FIELD:
        raise InputError(
            f"Training on several processes uses the default {RECEPTIVE_FIELD} x "
            f"{RECEPTIVE_FIELD} windows (crop={RECEPTIVE_FIELD}): other crops make ranks run "
            "different numbers of forward passes."
        )
    if init is not None and init.in_channels != in_channels:
        raise InputError(
            f"The starting model has {init.in_channels} channel(s) but the images have {in_channels}."
        )
    if normalisation is None:
        normalisation = default_normalisation(in_channels)
    started = time.perf_counter()
    device = resolve_device(device) if isinstance(device, str) else device

    yield Progress(0.0, "preparing slices")
    if isinstance(images, SliceStore):
        if (images.in_channels, images.normalisation) != (in_channels, dict(normalisation)):
            raise InputError("The stored slices were prepared for another model; prepare again.")
        slices, skipped = images.slices, images.skipped
        if not slices:
            raise InputError(
                "Every slice is constant; there is nothing to learn from these images."
            )
    else:
        slices, skipped = _as_slices(images, in_channels, normalisation, axis)
    train_idx, val_idx = _split(len(slices), val_fraction, np.random.default_rng([seed, 1]))
    val_rng = np.random.default_rng([seed, 2])
    val_pairs = [mine_pairs(slices[i][None], val_rng, n_anchors=n_anchors) for i in val_idx]
    rng = np.random.default_rng([seed, 3])

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CutsModel(in_channels, embed_dim)
    if init is not None:
        model.load_state_dict(init.state_dict())
    model = synchronise_batch_norm(model.to(device), world).train()
    setup = _Setup(model, device, crop, n_anchors, lam, temperature, world)

    per_epoch = samples_per_epoch or max(len(train_idx), _MIN_SAMPLES_PER_EPOCH)
    steps_per_epoch = math.ceil(per_epoch / batch_size)
    total = epochs * steps_per_epoch
    warmup = max(1, round(0.05 * total))
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: _lr_factor(s, total, warmup))

    fingerprint = {
        "in_channels": in_channels,
        "epochs": epochs,
        "seed": seed,
        "crop": crop,
        "batch_size": batch_size,
        "samples_per_epoch": per_epoch,
        "val_fraction": val_fraction,
        "method": [n_anchors, lr, weight_decay, lam, temperature, embed_dim],
        "data": _slices_digest(slices),
    }
    history: list[dict[str, float]] = []
    fallbacks: list[float] = []
    step, first_epoch = 0, 1
    if resume is None:
        init_c, init_r = _validate(setup, slices, val_idx, val_pairs, batch_size)
        init_total = float(losses.combined(torch.tensor(init_c), torch.tensor(init_r), lam))
        best = (init_total, 0, copy.deepcopy(model.state_dict()))
    else:
        state = load_checkpoint(resume, "cuts", fingerprint)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        restore_random_states(rng, state["random"])
        init_c, init_r = state["initial"]
        best = (state["best"][0], state["best"][1], state["best"][2])
        history, fallbacks, step = state["history"], state["fallbacks"], state["step"]
        first_epoch = state["epoch"] + 1
        yield Progress(step / (total + 1), f"resumed after epoch {state['epoch']}")
    for epoch in range(first_epoch, epochs + 1):
        order = np.concatenate(
            [rng.permutation(train_idx) for _ in range(math.ceil(per_epoch / len(train_idx)))]
        )[:per_epoch]
        sums = np.zeros(2)
        lr_now = optimiser.param_groups[0]["lr"]
        for start in range(0, per_epoch, batch_size):
            idx = order[start : start + batch_size]
            contrastive, recon, fallback = _batch_losses(setup, slices, idx, rng)
            loss = losses.combined(contrastive, recon, lam)
            if not torch.isfinite(loss):
                raise LabelFreeError(
                    f"Training diverged at epoch {epoch} (loss {loss.item()}); lower the learning rate."
                )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(model, world)
            optimiser.step()
            schedule.step()
            step += 1
            parts = sum_over_ranks([contrastive.item(), recon.item()], world, device) / world.size
            contrastive, recon = (torch.tensor(v) for v in parts)
            sums += parts * len(idx)
            fallbacks.append(fallback)
            yield Progress(
                step / (total + 1),
                f"epoch {epoch}/{epochs}: contrastive {contrastive.item():.3f}, "
                f"reconstruction {recon.item():.4f}",
            )
        val_c, val_r = _validate(setup, slices, val_idx, val_pairs, batch_size)
        history.append(
            {
                "epoch": epoch,
                "lr": lr_now,
                "train_contrastive": float(sums[0] / per_epoch),
                "train_reconstruction": float(sums[1] / per_epoch),
                "val_contrastive": val_c,
                "val_reconstruction": val_r,
            }
        )
        val_total = float(losses.combined(torch.tensor(val_c), torch.tensor(val_r), lam))
        if val_total < best[0]:
            best = (val_total, epoch, copy.deepcopy(model.state_dict()))
        if checkpoint is not None and world.main:
            state = {
                "epoch": epoch,
                "step": step,
                "model": model.state_dict(),
                "optimiser": optimiser.state_dict(),
                "schedule": schedule.state_dict(),
                "random": random_states(rng),
                "initial": [init_c, init_r],
                "best": list(best),
                "history": history,
                "fallbacks": fallbacks,
            }
            save_checkpoint(checkpoint, "cuts", fingerprint, state)

    model.load_state_dict(best[2])
    model = model.cpu().eval()
    shared = val_idx is train_idx or np.array_equal(val_idx, train_idx)
    config = {
        "in_channels": in_channels,
        "embed_dim": embed_dim,
        "normalisation": dict(normalisation),
        "training": {
            "epochs": epochs,
            "seed": seed,
            "crop": crop,
            "batch_size": batch_size,
            "anchors_per_image": n_anchors,
            "lr": lr,
            "weight_decay": weight_decay,
            "lambda": lam,
            "temperature": temperature,
            "val_fraction": val_fraction,
            "validation": "held-out anchors of the training slices"
            if shared
            else "held-out slices",
            "positive_fallback": "best-SSIM neighbour",
            "steps": total,
        },
    }
    result = TrainResult(
        model=model,
        config=config,
        history=history,
        best_epoch=best[1],
        seconds=time.perf_counter() - started,
        slices={
            "train": len(train_idx),
            "validation": 0 if shared else len(val_idx),
            "skipped_constant": skipped,
        },
        fallback_fraction=float(np.mean(fallbacks)) if fallbacks else 0.0,
        initial={"val_contrastive": init_c, "val_reconstruction": init_r},
    )
    yield Progress(1.0, f"done: best epoch {result.best_epoch}")
    return result


def train_cuts(
    images: Sequence[np.ndarray] | SliceStore,
    *,
    progress: ProgressCallback | None = None,
    **kwargs: Any,
) -> TrainResult:
    """Run :func:`train_cuts_steps` to completion; same arguments, plus ``progress``."""
    return run_steps(train_cuts_steps(images, **kwargs), progress)


# --------------------------------------------------------------------------- files


def _slice_axis(spacing: Sequence[float]) -> int:
    """Numpy axis with the coarsest spacing (through-plane); 0 (z) on ties."""
    numpy_spacing = list(spacing)[::-1]  # ITK (x, y, z) -> numpy (z, y, x)
    coarsest = max(numpy_spacing)
    return next(i for i, s in enumerate(numpy_spacing) if s >= coarsest * 0.999)


def _initial_model(init_model: Any, channels: int) -> tuple[CutsModel | None, dict | None]:
    if init_model is None:
        return None, None
    if isinstance(init_model, CutsModel):
        return init_model, None
    path = None if str(init_model) == "default" else init_model
    model, config, _ = load_cuts_model(path, channels=channels)
    return model, config["normalisation"]


def train_from_files(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    epochs: int = 40,
    seed: int = 0,
    axis: int | None = None,
    device: str = "auto",
    init_model: str | os.PathLike | CutsModel | None = None,
    progress: ProgressCallback | Callable[[Progress], None] | None = None,
    crop: int | None = RECEPTIVE_FIELD,
    batch_size: int = 16,
    samples_per_epoch: int | None = None,
    card: dict[str, Any] | None = None,
    resume: str | os.PathLike | None = None,
    skip_bad: bool = False,
) -> Path:
    """Train on image / volume files and write a model file, its card and a loss plot.

    Parameters
    ----------
    inputs : sequence of path-like
        Anything :func:`labelfree.io.read_image` reads; all grayscale or all RGB.
    out : path-like
        The model file to write (``.pt``); ``<stem>.card.json`` and
        ``<stem>.loss.png`` are written beside it.
    epochs, seed, crop, batch_size, samples_per_epoch
        See :func:`train_cuts_steps`.
    axis : int, optional
        Numpy axis to slice volumes along; None: each volume's coarsest-spaced
        axis (0 = z for isotropic volumes).
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    init_model : path-like, CutsModel or "default", optional
        Fine-tune from this model (and keep its normalisation); ``"default"``
        is the bundled model for the images' channel count.
    progress : callable, optional
        Called with each :class:`labelfree.progress.Progress`.
    card : dict, optional
        Extra model-card entries (e.g. a description of the data).
    resume : path-like, optional
        Continue from this checkpoint (see below) with the same inputs and options.
    skip_bad : bool
        Leave out inputs that cannot be read (listed in the card) instead of stopping;
        either way every file is read before training starts.

    Returns
    -------
    Path
        ``out``, written atomically only once training has finished.

    Notes
    -----
    After every epoch the run's state goes to ``<stem>.ckpt`` beside ``out``
    (:mod:`labelfree.checkpoint`), so a killed or cancelled run can continue with
    ``resume``; it is removed once the model is written.
    """
    world = join(resolve_device(device))  # torchrun: this rank's place; else one process
    torch_device = device_for(world, resolve_device(device))
    out, inputs, data_record, prepared = agree(
        world,
        lambda: _prepare_files(inputs, out, resume, skip_bad, progress, init_model, axis, world),
        torch_device,
    )
    with prepared.store as store:  # the slices on disk go once the model is trained
        result = train_cuts(
            store,
            in_channels=store.in_channels,
            normalisation=store.normalisation,
            epochs=epochs,
            seed=seed,
            crop=crop,
            batch_size=batch_size,
            samples_per_epoch=samples_per_epoch,
            device=torch_device,
            init=prepared.init,
            progress=progress if world.main else None,
            checkpoint=checkpoint_path(out),
            resume=resume,
            world=world,
        )
    normalisation, data = prepared.store.normalisation, prepared.data
    if not world.main:
        return out  # rank 0 writes the model, its card and plot
    last = result.history[-1]
    best = result.history[result.best_epoch - 1] if result.best_epoch else result.initial
    plot = out.with_name(out.stem + ".loss.png")
    model_card = {
        "description": "CUTS encoder (contrastive + patch reconstruction), trained with LabelFree",
        "training_data": data,
        "slices": result.slices,
        "parameters": result.config["training"],
        "normalisation": normalisation,
        "init_model": None if init_model is None else str(getattr(init_model, "name", init_model)),
        "initial_losses": result.initial,
        "final_losses": {k: v for k, v in last.items() if k != "epoch"},
        "best_epoch": result.best_epoch,
        "best_losses": {k: v for k, v in best.items() if k != "epoch"},
        "positive_fallback_fraction": round(result.fallback_fraction, 4),
        "seconds": round(result.seconds, 1),
        "device": str(torch_device),
        "world_size": world.size,
        "torch_version": torch.__version__,
        "engine_version": __version__,
        "loss_curve": plot.name,
        "resumed_from": None if resume is None else Path(resume).name,
        **data_record,
        **(card or {}),
    }
    save_loss_plot(result.history, result.best_epoch, plot)
    written = save_cuts_model(out, result.model, result.config, model_card)
    checkpoint_path(out).unlink(missing_ok=True)  # the model is the result now
    return written


class _SlicePreparer:
    """Each training file's normalised slices into a :class:`SliceStore`, one file at a time.

    The first image decides the channel count and with it the normalisation (the starting
    model's, if there is one); an image of the other kind is refused by name.
    """

    def __init__(self, folder: Path, init_model: Any, axis: int | None):
        self.folder, self.init_model, self.axis = folder, init_model, axis
        self.store: SliceStore | None = None
        self.init: CutsModel | None = None
        self.data: list[dict[str, Any]] = []

    def __call__(self, path: Path, image) -> None:
        if self.store is None:
            self.init, normalisation = _initial_model(self.init_model, image.channels)
            normalisation = normalisation or default_normalisation(image.channels)
            self.store = SliceStore(self.folder, image.channels, normalisation)
        elif image.channels != self.store.in_channels:
            kinds = {1: "grayscale", 3: "RGB"}
            raise InputError(
                f"Mixed grayscale and RGB inputs: this one is {kinds[image.channels]} and the "
                f"first is {kinds[self.store.in_channels]}; train one model per kind of image."
            )
        ax, array = None, image.array
        if image.ndim == 3:
            ax = _slice_axis(image.spacing) if self.axis is None else int(self.axis)
            if ax not in (0, 1, 2):
                raise InputError(f"Slice axis must be 0, 1 or 2 (numpy z, y, x), not {ax}.")
            array = np.moveaxis(array, ax, 0)
        stack, skipped = image_slices(
            array, self.store.in_channels, self.store.normalisation, name=path.name
        )
        self.store.add(stack, skipped)
        self.data.append({"file": path.name, "shape": list(image.array.shape), "slice_axis": ax})


def _prepare_files(inputs, out, resume, skip_bad, progress, init_model, axis, world):
    """Everything train_from_files checks and reads before training (on every rank)."""
    if not inputs:
        raise InputError("Give at least one image or volume to train on.")
    scratch = Path(out).absolute().with_name(f".{Path(out).name}.slices-rank{world.rank}")
    prepared = _SlicePreparer(scratch, init_model, axis)
    try:
        out, inputs, _, data_record = begin_training(
            out,
            inputs,
            prepared,
            scratch=scratch,
            resume=resume,
            skip_bad=skip_bad,
            progress=progress if world.main else None,
        )
        if not prepared.store.slices:
            raise InputError(
                "Every slice is constant; there is nothing to learn from these images."
            )
    except BaseException:
        if prepared.store is not None:
            prepared.store.remove()
        raise
    return out, inputs, data_record, prepared


def save_loss_plot(
    history: list[dict[str, float]], best_epoch: int, path: str | os.PathLike
) -> Path:
    """Plot train/validation contrastive and reconstruction losses per epoch to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(8, 3.2), dpi=100)
    for k, name in enumerate(("contrastive", "reconstruction")):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.plot(epochs, [h[f"train_{name}"] for h in history], label="train")
        ax.plot(epochs, [h[f"val_{name}"] for h in history], label="validation")
        ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best (epoch {best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_title(f"{name} loss")
        if name == "reconstruction":
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
