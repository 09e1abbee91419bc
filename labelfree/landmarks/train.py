"""Self-supervised training of the landmark regressor on image pairs.

Each epoch presents every training image once as the source of a pair; the
targets are the same batch shifted by a random offset, so every image is a
target once as well and the network runs once per image. The network sees whitened images with
small Gaussian noise; the loss (:mod:`labelfree.landmarks.loss`) compares
the clean whitened images. Images of any size are resampled to the model's
``input_size`` per axis (corners to corners), so a training list may mix
sizes and spacings: landmarks are then learned in the normalised frame of
each image's field of view, which is what detection uses too. A small ridge
on the spline's kernel keeps the solve finite when predicted landmarks
coincide; the checkpoint with the lowest validation loss is kept.
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelfree.checkpoint import (
    checkpoint_path,
    load_checkpoint,
    random_states,
    restore_random_states,
    save_checkpoint,
)
from labelfree.devices import resolve_device
from labelfree.distributed import (
    SINGLE,
    World,
    agree,
    average_gradients,
    device_for,
    join,
    sum_over_ranks,
)
from labelfree.errors import InputError
from labelfree.landmarks.augment import random_appearance, random_warp_points
from labelfree.landmarks.loss import DEFAULT_LAMBDA, registration_loss
from labelfree.landmarks.model import (
    NORMALISATION,
    as_scalar_array,
    build_config,
    resample,
    save_landmark_model,
    whiten,
)
from labelfree.landmarks.regressor import LandmarkRegressor
from labelfree.landmarks.tps import tps_map, warp_image
from labelfree.progress import Progress, ProgressCallback, run_steps
from labelfree.trainingdata import begin_training

DEFAULT_INPUT_SIZE = {2: 128, 3: 48}
# Std of the equivariance warps in input pixels: about the displacement between two images of
# the bundled models' populations (input pixels are ~3.5 mm in 3-D).
DEFAULT_EQUIVARIANCE_PX = {2: 4.0, 3: 2.0}
MAX_LANDMARKS = 512
# The heatmap prior fades to this share of its logits: its width grows tenfold, to about
# the image's, so it no longer pulls landmarks off the content (gain > 0.99 for peaks of
# 4 px), yet a landmark whose heatmap is still flat stays apart from the others.
PRIOR_FLOOR = 0.01


@dataclass
class TrainResult:
    """What training returns.

    Attributes
    ----------
    regressor : LandmarkRegressor
        The best network (lowest validation loss), in eval mode on the CPU.
    config : dict
        Model-file configuration (see :mod:`labelfree.landmarks.model`).
    history : dict of str to list of float
        ``train`` and ``val`` loss per epoch, ``val_match`` (image term only).
    best_epoch : int
        1-based epoch of the kept checkpoint.
    seconds : float
        Wall-clock training time.
    cpu_seconds : float
        Process CPU time spent training.
    settings : dict
        The training parameters, for the model card.
    """

    regressor: LandmarkRegressor
    config: dict[str, Any]
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)


def _check_sizes(n_landmarks: int, ndim: int, input_size: int, fixed_corners: bool) -> None:
    total = n_landmarks + (2**ndim if fixed_corners else 0)
    limit = min(MAX_LANDMARKS, input_size**ndim // 16)
    if n_landmarks < 1 or total < ndim + 1:
        raise InputError(
            f"A {ndim}-D spline needs at least {ndim + 1} landmarks in all; got {total}. "
            "Ask for more landmarks or keep the fixed corners."
        )
    if total > limit:
        raise InputError(
            f"{n_landmarks} landmarks is too many for a {input_size}^{ndim} input (at most "
            f"{limit - total + n_landmarks}); ask for fewer or a larger input size."
        )


@dataclass(frozen=True)
class PreparedImage:
    """What landmark training keeps of a training file: the network's input, and for the
    card the file's shape and spacing."""

    array: np.ndarray
    shape: tuple[int, ...]
    spacing: tuple[float, ...]


def prepare_training_image(image, ndim: int | None, input_size: int | None) -> PreparedImage:
    """An image as the network sees it in training (grey, resampled to ``input_size`` per
    axis, or the default for its dimension, and whitened), with its shape and spacing.

    Parameters
    ----------
    image : labelfree.io.Image
        A training image.
    ndim : int, optional
        The dimension the other images have (None: the image's own).
    input_size : int, optional
        The model's input size.

    Raises
    ------
    InputError
        The image's dimension is not ``ndim``, or its intensities cannot be used.
    """
    if ndim is not None and image.ndim != ndim:
        raise InputError(
            f"Training images mix 2-D and 3-D inputs (this one is {image.ndim}-D, the first "
            f"{ndim}-D); train one model per dimension."
        )
    size = input_size or DEFAULT_INPUT_SIZE[image.ndim]
    array = whiten(resample(as_scalar_array(image.array, image.ndim), size))
    return PreparedImage(
        array,
        tuple(int(s) for s in image.spatial_shape),
        tuple(float(s) for s in image.spacing),
    )


def prepare_stack(
    images: Sequence[np.ndarray | PreparedImage], ndim: int, input_size: int
) -> torch.Tensor:
    """Resample and whiten images into a ``(N, 1, *input)`` float32 tensor."""
    if len(images) == 0:
        raise InputError("No training images were given; pass at least two.")
    prepared = []
    for i, image in enumerate(images):
        if isinstance(image, PreparedImage):
            if image.array.shape != (input_size,) * ndim:
                raise InputError(f"Training image {i} was prepared for another input size.")
            prepared.append(image.array)
            continue
        try:
            array = as_scalar_array(image, ndim)
        except InputError as err:
            raise InputError(f"Training image {i}: {err}") from err
        prepared.append(whiten(resample(array, input_size)))
    return torch.from_numpy(np.stack(prepared))[:, None]


def _split(n: int, val_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation indices; with fewer than 5 images both are all images."""
    order = rng.permutation(n)
    n_val = int(round(n * val_fraction))
    if n < 5 or n_val == 0:
        return order, order
    return order[n_val:], order[:n_val]


def _batch_targets(sources: np.ndarray, pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A target for each source: the batch shifted by a random offset, so every image of
    the batch is both a source and a target and the network runs once per image."""
    if len(sources) > 1:
        return np.roll(sources, int(rng.integers(1, len(sources))))
    others = pool[pool != sources[0]]
    return rng.choice(others, 1) if len(others) else sources.copy()


def equivariance_error(
    model: LandmarkRegressor,
    clean: torch.Tensor,
    points: torch.Tensor,
    sigma_px: float,
    noise_std: float,
    generator: torch.Generator | None,
    shift_px: float = 0.0,
    positions: Sequence[int] | None = None,
    draws: int | None = None,
    pose: tuple[float, float] = (0.0, 0.0),
    appearance: float = 0.0,
) -> torch.Tensor:
    """Mean squared landmark disagreement under a random smooth warp (normalised units).

    Each image ``I`` is warped by a fresh random warp ``W`` (backward:
    ``(I o W)(q) = I(W(q))``, :func:`random_warp_points`); the landmarks
    found on ``I o W``, mapped through ``W``, should land on the landmarks
    ``points`` found on ``I``. The warp is drawn here, so its map is exact.

    Parameters
    ----------
    model : LandmarkRegressor
    clean : Tensor
        ``(B, C, *shape)`` images without input noise.
    points : Tensor
        ``(B, K, D)`` landmarks the model found on (noisy) ``clean``.
    sigma_px, noise_std, generator, shift_px
        Warp std in pixels, input noise std, source of randomness, std of the
        warp's global shift in pixels (:func:`random_warp_points`).
    positions, draws : optional
        Warps and noise are drawn for a batch of ``draws`` images (``B`` by default) of
        which ``clean`` holds those at ``positions`` (all by default): a rank scoring its
        share of a batch draws what one process draws for the whole batch.
    pose : (float, float)
        Rotation (degrees) and log-scale std of the warp's pose (:func:`random_warp_points`).
    appearance : float
        Strength of a scanner-like change of the warped image
        (:func:`~labelfree.landmarks.augment.random_appearance`), so that landmarks stay
        put when only the appearance changes; 0 (off) draws nothing.

    Returns
    -------
    Tensor
        Scalar: mean over images and landmarks of the squared distance.
    """
    draws = clean.shape[0] if draws is None else draws
    positions = list(range(draws)) if positions is None else list(positions)
    target, source = random_warp_points(
        draws, clean.shape[2:], sigma_px, generator, clean.dtype, shift_px, pose
    )
    target, source = target[positions].to(clean.device), source[positions].to(clean.device)
    inputs = warp_image(clean, target, source, field_stride=4)
    inputs = random_appearance(inputs, appearance, generator, positions, draws)
    if noise_std > 0:
        noise = torch.randn((draws, *clean.shape[1:]), generator=generator, dtype=inputs.dtype)
        inputs = inputs + noise_std * noise[positions].to(inputs.device)
    mapped = tps_map(model.control_points(inputs), target, source)
    return (mapped - points).pow(2).sum(-1).mean()


def _share(world: World, count: int) -> tuple[list[int], float]:
    """This rank's positions among ``count`` items and the weight that makes the ranks'
    shares of a mean add up to the whole mean once gradients are averaged. A rank left
    without items scores item 0 with weight 0, so every rank runs the same steps."""
    mine = world.share(count)
    return (mine or [0]), len(mine) * world.size / count


def _pair_loss(
    model: LandmarkRegressor,
    stack: torch.Tensor,
    src: np.ndarray,
    tgt: np.ndarray,
    noise_std: float,
    generator: torch.Generator | None,
    lam: float,
    ridge: float,
    match: str,
    field_stride: int,
    augment_px: float = 0.0,
    bending: float = 0.0,
    equivariance: float = 0.0,
    equivariance_px: float = 4.0,
    equivariance_shift_px: float = 0.0,
    world: World = SINGLE,
    equivariance_pose: tuple[float, float] = (0.0, 0.0),
    appearance: float = 0.0,
):
    """The training loss of the pairs ``src[i] -> tgt[i]``, or this rank's weighted share.

    Every rank draws the whole batch's warps and noise from ``generator`` and runs the
    network on the images of its share of the pairs (and of the equivariance images)
    only; the network has no batch statistics, so the shares' gradients add up to the
    whole batch's.
    """
    unique, inverse = np.unique(np.concatenate([src, tgt]), return_inverse=True)
    pairs, pair_weight = _share(world, len(src))
    scored, scored_weight = _share(world, len(unique)) if equivariance > 0 else ([], 0.0)
    sources, targets = inverse[pairs], inverse[len(src) + np.array(pairs)]
    needed = sorted({*sources, *targets, *scored})
    clean = stack[unique]
    if augment_px > 0:
        target, source = random_warp_points(
            len(unique), clean.shape[2:], augment_px, generator, clean.dtype
        )
        target, source = target[needed].to(clean.device), source[needed].to(clean.device)
        clean = warp_image(clean[needed], target, source, field_stride=4)
    else:
        clean = clean[needed]
    inputs = random_appearance(clean, appearance, generator, needed, len(unique))
    if noise_std > 0:
        noise = torch.randn((len(unique), *clean.shape[1:]), generator=generator)[needed]
        inputs = inputs + noise_std * noise.to(inputs.dtype).to(inputs.device)
    points = model.control_points(inputs)
    at = {image: row for row, image in enumerate(needed)}  # unique position -> row
    rows_s = torch.as_tensor([at[i] for i in sources], device=points.device)
    rows_t = torch.as_tensor([at[i] for i in targets], device=points.device)
    terms = registration_loss(
        clean[rows_s],
        clean[rows_t],
        points[rows_s],
        points[rows_t],
        lam=lam,
        ridge=ridge,
        match=match,
        field_stride=field_stride,
        bending=bending,
    )
    terms.total, terms.match = terms.total * pair_weight, terms.match * pair_weight
    if equivariance > 0:
        rows = torch.as_tensor([at[i] for i in scored], device=points.device)
        error = equivariance_error(
            model,
            clean[rows],
            points[rows],
            equivariance_px,
            noise_std,
            generator,
            equivariance_shift_px,
            positions=scored,
            draws=len(unique),
            pose=equivariance_pose,
            appearance=appearance,
        )
        terms.equivariance = error
        terms.total = terms.total + equivariance * scored_weight * error
    return terms


def train_landmarks_steps(
    images: Sequence[np.ndarray],
    *,
    ndim: int,
    n_landmarks: int,
    input_size: int | None = None,
    epochs: int = 100,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    lam: float = DEFAULT_LAMBDA,
    ridge: float = 1e-6,
    warmup_ridge: float = 1e-5,
    noise_std: float = 0.05,
    val_fraction: float = 0.2,
    match: str = "mse",
    fixed_corners: bool = True,
    channels: Sequence[int] | None = None,
    field_stride: int | None = None,
    augment_px: float = 2.0,
    head: str = "heatmap",
    bending: float = 0.0,
    equivariance: float = 0.0,
    equivariance_px: float | None = None,
    equivariance_shift_px: float = 0.0,
    equivariance_pose: tuple[float, float] = (0.0, 0.0),
    appearance: float = 0.0,
    prior_fade: float | None = 0.25,
    checkpoint: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    world: World = SINGLE,
) -> Generator[Progress, None, TrainResult]:
    """Train a landmark regressor, step by step.

    Parameters
    ----------
    images : sequence of ndarray or PreparedImage
        Training images, ``(y, x)`` (RGB is made grey) or ``(z, y, x)``, any
        sizes (each is resampled to ``input_size`` per axis), or already prepared
        (:func:`prepare_training_image`, as :func:`train_from_files` streams them).
    ndim : int
        2 or 3.
    n_landmarks : int
        Learned landmarks ``K`` (corners come on top when ``fixed_corners``).
    input_size : int, optional
        Network input side: 128 in 2-D, 48 in 3-D by default.
    epochs : int
        Passes over the training images (each image is a source once per epoch).
    seed : int
        Seeds the initialisation, the split, the pairs and the noise.
    device : str or torch.device
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    batch_size : int
        Pairs per step.
    learning_rate : float
        Adam's initial rate; it decays along a cosine to 5 % of it.
    lam : float
        Condition-number weight, for whitened images (see :mod:`.loss`).
    ridge : float
        Kernel ridge kept throughout (keeps coincident landmarks finite).
    warmup_ridge : float
        Larger ridge during the first epoch, as the reference does.
    noise_std : float
        Std of the Gaussian noise added to the network inputs (whitened units).
    val_fraction : float
        Share of images held out for validation (none below 5 images: the
        training images are then scored).
    match : str
        ``"mse"`` or ``"ncc"``.
    fixed_corners : bool
        Add the image corners as fixed landmarks.
    channels : sequence of int, optional
        Network stage widths.
    field_stride : int, optional
        The spline is evaluated every ``field_stride`` pixels and its
        displacement interpolated in between (see :func:`.loss.registration_loss`);
        2 in 2-D and 4 in 3-D by default.
    augment_px : float
        Each step warps the training images by random smooth warps of this
        std in input pixels (:func:`random_warps`), which keeps a small training
        set from being memorised; 0 disables it.
    head : str
        Landmark head of :class:`LandmarkRegressor`.
    bending : float
        Weight of the spline's bending energy (:func:`.loss.registration_loss`).
    equivariance : float
        Weight of the equivariance term (:func:`equivariance_error`, squared
        normalised units): landmarks must follow a random smooth warp that
        training draws itself, which pins landmarks that the image match
        lets slide along smooth edges; 0 (default) disables it and costs
        nothing, > 0 runs the network a second time per image.
    equivariance_px : float, optional
        Displacement std in input pixels of the equivariance warps
        (:data:`DEFAULT_EQUIVARIANCE_PX` by default).
    equivariance_shift_px : float
        Std in input pixels of a global shift added to each equivariance warp,
        so that landmarks gain nothing by moving to the image border, which
        the warps would otherwise leave in place.
    equivariance_pose : (float, float)
        Std of a rotation (degrees) and of a log-scale per axis added to each
        equivariance warp, corners included, so that landmarks follow a subject's
        pose, not only local shape (:func:`random_warp_points`); off by default.
    appearance : float
        Strength of scanner-like changes (bias, contrast, blur:
        :func:`~labelfree.landmarks.augment.random_appearance`) of the images the network
        sees, in the image pairs and the equivariance term; the loss still compares the
        unchanged images. 0 (default) is off.
    prior_fade : float or None
        Heatmap head only: its Gaussian start prior (which puts every
        image's landmarks at the same place at first) fades linearly to
        :data:`PRIOR_FLOOR` of its strength over this fraction of the steps;
        checkpoints are kept only after that. None keeps it whole. A full
        prior pulls every landmark towards a fixed point, so landmarks follow
        the content by less than it moves (about 0.9 px per px in 2-D).
    checkpoint : path-like, optional
        Where rank 0 writes the run's state after every epoch (:mod:`labelfree.checkpoint`).
    resume : path-like, optional
        A checkpoint of this run to continue from.
    world : World
        This process's place among torchrun's ranks (:mod:`labelfree.distributed`):
        every rank draws the same batches and scores its share of each.

    Yields
    ------
    Progress
        After every optimisation step.

    Returns
    -------
    TrainResult
    """
    if ndim not in (2, 3):
        raise InputError(f"ndim must be 2 or 3, got {ndim}.")
    input_size = input_size or DEFAULT_INPUT_SIZE[ndim]
    field_stride = field_stride or (2 if ndim == 2 else 4)
    if epochs < 1 or batch_size < 1:
        raise InputError("epochs and batch_size must be at least 1.")
    if equivariance < 0 or bending < 0:
        raise InputError("The equivariance and bending weights must be 0 (off) or positive.")
    if appearance < 0:
        raise InputError(f"appearance must be 0 (off) or positive, got {appearance}.")
    equivariance_px = equivariance_px or DEFAULT_EQUIVARIANCE_PX[ndim]
    _check_sizes(n_landmarks, ndim, input_size, fixed_corners)
    images = list(images)
    if len(images) < 2:
        raise InputError(f"Landmark training needs at least two images (pairs); got {len(images)}.")
    arguments = dict(locals())  # every parameter, before any other name is bound
    fingerprint = {  # what a resumed run must share; the data is added once prepared
        key: list(value) if isinstance(value, tuple) else value
        for key, value in arguments.items()
        if key not in ("images", "device", "checkpoint", "resume", "world")
    }
    torch_device = resolve_device(device) if isinstance(device, str) else device
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    yield Progress(0.0, "preparing images")
    stack = prepare_stack(images, ndim, input_size).to(torch_device)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = _split(len(images), val_fraction, rng)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LandmarkRegressor(
            ndim,
            n_landmarks,
            input_size,
            fixed_corners,
            channels=tuple(channels or ()) or None,
            head=head,
        ).to(torch_device)
    noise_gen = torch.Generator().manual_seed(seed + 1)
    val_gen = np.random.default_rng(seed + 2)
    val_pairs = []
    for _ in range(2):
        for b in range(0, len(val_idx), batch_size):
            chunk = val_idx[b : b + batch_size]
            val_pairs.append((chunk, _batch_targets(chunk, val_idx, val_gen)))
    steps_per_epoch = int(np.ceil(len(train_idx) / batch_size))
    total_steps = epochs * steps_per_epoch
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(s / total_steps, 1.0)))
    )
    history: dict[str, list[float]] = {"train": [], "val": [], "val_match": []}
    best = (float("inf"), 0, copy.deepcopy(model.state_dict()))
    fade = _prior_fader(model, prior_fade, total_steps)
    skipped = 0
    step, first_epoch = 0, 1
    fingerprint["data"] = _stack_digest(stack)
    if resume is not None:
        state = load_checkpoint(resume, "landmarks", fingerprint)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        restore_random_states(rng, state["random"])
        noise_gen.set_state(state["noise"])
        best = tuple(state["best"])
        history, skipped, step = state["history"], state["skipped"], state["step"]
        first_epoch = state["epoch"] + 1
        yield Progress(step / total_steps, f"resumed after epoch {state['epoch']}")
    for epoch in range(first_epoch, epochs + 1):
        model.train()
        order = rng.permutation(train_idx)
        epoch_ridge = warmup_ridge if epoch == 1 else ridge
        losses = []
        for b in range(steps_per_epoch):
            prior_final = fade(step)
            src = order[b * batch_size : (b + 1) * batch_size]
            tgt = _batch_targets(src, train_idx, rng)
            terms = _pair_loss(
                model,
                stack,
                src,
                tgt,
                noise_std,
                noise_gen,
                lam,
                epoch_ridge,
                match,
                field_stride,
                augment_px,
                bending,
                equivariance,
                equivariance_px,
                equivariance_shift_px,
                world,
                tuple(equivariance_pose),
                appearance,
            )
            optimiser.zero_grad(set_to_none=True)
            # Every rank skips a step that is not finite on any rank, so the models stay equal.
            value, bad = sum_over_ranks(
                [float(terms.total.detach()), not torch.isfinite(terms.total)],
                world,
                torch_device,
            )
            if not bad:
                terms.total.backward()
                average_gradients(model, world)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                optimiser.step()
                losses.append(value / world.size)
            else:
                skipped += 1
            schedule.step()
            step += 1
            yield Progress(
                step / total_steps,
                f"epoch {epoch}/{epochs}, loss {np.mean(losses) if losses else float('nan'):.4g}",
            )
        val_total, val_match = _validate(
            model,
            stack,
            val_pairs,
            seed + 3,
            world,
            lam=lam,
            ridge=ridge,
            match=match,
            field_stride=field_stride,
            bending=bending,
            equivariance=equivariance,
            equivariance_px=equivariance_px,
            equivariance_shift_px=equivariance_shift_px,
            equivariance_pose=tuple(equivariance_pose),
            appearance=appearance,
        )
        history["train"].append(float(np.mean(losses)) if losses else float("nan"))
        history["val"].append(val_total)
        history["val_match"].append(val_match)
        if prior_final and val_total < best[0]:
            best = (val_total, epoch, copy.deepcopy(model.state_dict()))
        if checkpoint is not None and world.main:
            state = {
                "epoch": epoch,
                "step": step,
                "model": model.state_dict(),
                "optimiser": optimiser.state_dict(),
                "schedule": schedule.state_dict(),
                "random": random_states(rng),
                "noise": noise_gen.get_state(),
                "best": list(best),
                "history": history,
                "skipped": skipped,
            }
            save_checkpoint(checkpoint, "landmarks", fingerprint, state)
    model.load_state_dict(best[2])
    model = model.cpu().eval()
    settings = {
        "epochs": epochs,
        "seed": seed,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "lambda": lam,
        "ridge": ridge,
        "warmup_ridge": warmup_ridge,
        "noise_std": noise_std,
        "match": match,
        "field_stride": field_stride,
        "augment_px": augment_px,
        "head": head,
        "bending": bending,
        "equivariance": equivariance,
        "equivariance_px": equivariance_px,
        "equivariance_shift_px": equivariance_shift_px,
        "equivariance_pose": list(equivariance_pose),
        "appearance": appearance,
        "prior_fade": prior_fade if head == "heatmap" else None,
        "n_train": len(train_idx) if len(val_idx) != len(images) else len(images),
        "n_val": len(val_idx),
        "steps": total_steps,
        "skipped_steps": skipped,
        "device": str(torch_device),
        "world_size": world.size,
    }
    return TrainResult(
        regressor=model,
        config=build_config(model, normalisation=dict(NORMALISATION)),
        history=history,
        best_epoch=best[1],
        seconds=time.perf_counter() - start_wall,
        cpu_seconds=time.process_time() - start_cpu,
        settings=settings,
    )


def _stack_digest(stack: torch.Tensor) -> str:
    """SHA-256 of the prepared training images: a checkpoint resumes only on the same data."""
    return hashlib.sha256(stack.detach().cpu().numpy().tobytes()).hexdigest()


def _prior_fader(model: LandmarkRegressor, fraction: float | None, total_steps: int):
    """A function of the step that scales the heatmap prior (a buffer, so every
    checkpoint carries the prior it was trained with) from 1 down to
    :data:`PRIOR_FLOOR`, and says whether the prior has reached that final
    value (only then are checkpoints kept)."""
    if model.head_kind != "heatmap" or fraction is None:
        return lambda step: True
    if not 0.0 <= fraction <= 1.0:
        raise InputError(f"prior_fade must be between 0 and 1 (or None), got {fraction}.")
    initial = model.prior.clone()
    span = max(fraction * total_steps, 1.0)

    def fade(step: int) -> bool:
        weight = max(PRIOR_FLOOR, 1.0 - (step + 1) / span)
        with torch.no_grad():
            model.prior.copy_(initial * weight)
        return weight == PRIOR_FLOOR

    return fade


def _validate(
    model: LandmarkRegressor,
    stack: torch.Tensor,
    val_pairs: list,
    seed: int,
    world: World = SINGLE,
    **loss: Any,
) -> tuple[float, float]:
    """Mean loss and match term over fixed validation pairs, without input noise.

    The loss is the training objective (``loss``: :func:`_pair_loss` keywords), so
    that the kept checkpoint is the best at what training asks for; the
    equivariance warps come from ``seed``, the same every epoch. Under torchrun each
    rank scores its share of every pair batch and the sums are reduced.
    """
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    totals, matches, counts = 0.0, 0.0, 0
    with torch.no_grad():
        for src, tgt in val_pairs:
            terms = _pair_loss(model, stack, src, tgt, 0.0, generator, world=world, **loss)
            totals += float(terms.total) * len(src)
            matches += float(terms.match) * len(src)
            counts += len(src)
    totals, matches = sum_over_ranks([totals, matches], world, stack.device) / world.size
    return float(totals) / counts, float(matches) / counts


def train_landmarks(
    images: Sequence[np.ndarray],
    *,
    progress: ProgressCallback | None = None,
    **kwargs: Any,
) -> TrainResult:
    """Run :func:`train_landmarks_steps` to completion (same arguments)."""
    return run_steps(train_landmarks_steps(images, **kwargs), progress)


def plot_loss_curve(history: dict[str, list[float]], path: str | os.PathLike) -> Path:
    """Write the training and validation loss per epoch as a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from labelfree.io import atomic_path

    path = Path(path)
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=80)
    epochs = np.arange(1, len(history["train"]) + 1)
    ax.semilogy(epochs, history["train"], label="train (noise + warp augmentation)")
    ax.semilogy(epochs, history["val"], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def train_from_files(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    n_landmarks: int,
    epochs: int = 100,
    seed: int = 0,
    input_size: int | None = None,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    card: dict[str, Any] | None = None,
    resume: str | os.PathLike | None = None,
    skip_bad: bool = False,
    **kwargs: Any,
) -> Path:
    """Train on image files and write a landmark model (plus card and loss curve).

    After every epoch the run's state goes to ``<stem>.ckpt`` beside ``out``
    (:mod:`labelfree.checkpoint`); ``resume`` continues a killed run from it, and it
    is removed once the model is written.

    Parameters
    ----------
    inputs : sequence of path-like
        Files SimpleITK reads (all 2-D or all 3-D). Different sizes or
        spacings are allowed: each image is resampled to the input size over
        its own field of view (recorded in the card).
    out : path-like
        The model file; ``<stem>.card.json`` and ``<stem>.loss.png`` are
        written beside it.
    n_landmarks, epochs, seed, input_size, device
        As :func:`train_landmarks_steps`.
    progress : callable, optional
        Receives :class:`~labelfree.progress.Progress`.
    card : dict, optional
        Extra model-card entries (e.g. measured metrics).
    resume : path-like, optional
        A checkpoint of this run (same inputs and options) to continue from.
    skip_bad : bool
        Leave out inputs that cannot be read (listed in the card) instead of stopping.
    **kwargs
        Further :func:`train_landmarks_steps` parameters.

    Returns
    -------
    Path
        The model file.
    """

    world = join(resolve_device(device))  # torchrun: this rank's place; else one process
    torch_device = device_for(world, resolve_device(device))
    out, paths, kept, data_record, ndim = agree(
        world,
        lambda: _prepare_files(inputs, out, resume, skip_bad, progress, input_size, world),
        torch_device,
    )
    result = train_landmarks(
        kept,
        ndim=ndim,
        n_landmarks=n_landmarks,
        input_size=input_size,
        epochs=epochs,
        seed=seed,
        device=torch_device,
        progress=progress if world.main else None,
        checkpoint=checkpoint_path(out),
        resume=resume,
        world=world,
        **kwargs,
    )
    if not world.main:
        return out  # rank 0 writes the model, its card and plot
    sizes = sorted({k.shape for k in kept})
    spacings = sorted({tuple(round(s, 4) for s in k.spacing) for k in kept})
    full_card = {
        "trained_on": {
            "n_images": len(paths),
            "files": [p.name for p in paths[:50]],
            "sizes_zyx": [list(s) for s in sizes[:10]],
            "spacings_xyz_mm": [list(s) for s in spacings[:10]],
            "resampled": "each image resampled over its field of view to the input size",
        },
        "input_channels": 1,
        "landmarks": n_landmarks,
        "training": result.settings,
        "best_epoch": result.best_epoch,
        "final_loss": {
            "train": result.history["train"][-1],
            "val": result.history["val"][result.best_epoch - 1],
            "val_match": result.history["val_match"][result.best_epoch - 1],
        },
        "training_seconds": round(result.seconds, 1),
        "training_cpu_seconds": round(result.cpu_seconds, 1),
        "resumed_from": None if resume is None else Path(resume).name,
        **data_record,
        **(card or {}),
    }
    out = Path(out)
    save_landmark_model(out, result.regressor, result.config, full_card)
    plot_loss_curve(result.history, out.with_name(out.stem + ".loss.png"))
    checkpoint_path(out).unlink(missing_ok=True)  # the model is the result now
    return out


def _prepare_files(inputs, out, resume, skip_bad, progress, input_size, world):
    """Everything train_from_files checks and reads before training (on every rank)."""
    paths = [Path(p) for p in inputs]
    if not paths:
        raise InputError("No training images were given; pass at least two files.")
    dims: list[int] = []

    def prepare(path: Path, image) -> PreparedImage:
        kept = prepare_training_image(image, dims[0] if dims else None, input_size)
        dims.append(image.ndim)
        return kept

    out, paths, kept, data_record = begin_training(
        out,
        paths,
        prepare,
        # the resampled copy and its whitened stack, float32
        resident_bytes=lambda d: 2 * 4 * (input_size or DEFAULT_INPUT_SIZE.get(d, 48)) ** d,
        resume=resume,
        skip_bad=skip_bad,
        progress=progress if world.main else None,
    )
    return out, paths, kept, data_record, dims[0]
