"""Training on several processes under ``torchrun`` (gloo on CPU, NCCL on CUDA).

Without ``torchrun`` (no ``WORLD_SIZE`` above 1) nothing here does anything and a
trainer runs in one process as before. Under ``torchrun`` every rank draws the
same batches from the same seeded generators, computes the loss on its share
of each batch (weighted so that the shares add up to the whole batch's mean),
and the gradients are averaged across ranks with ``all_reduce`` before each
optimiser step: the update DistributedDataParallel makes, for a model whose
forward pass calls its sub-networks directly (as CUTS's windows do). So the
effective batch, the learning-rate schedule and the result equal one process's,
to within float rounding. Only rank 0 writes files and progress.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

from labelfree.errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """Where this process stands: ``rank`` of ``size`` processes."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and reports progress."""
        return self.rank == 0

    def share(self, count: int) -> list[int]:
        """This rank's positions in a batch of ``count`` items: ``rank, rank + size, ...``."""
        return list(range(self.rank, count, self.size))


SINGLE = World()


def world_from_environment() -> World:
    """``RANK`` and ``WORLD_SIZE`` as torchrun sets them; one process otherwise."""
    try:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        return SINGLE
    return World(rank, size) if size > 1 and 0 <= rank < size else SINGLE


def join(device: torch.device) -> World:
    """Join torchrun's process group (once) and return this process's place in it."""
    world = world_from_environment()
    if world.size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return world


def device_for(world: World, device: torch.device) -> torch.device:
    """Under torchrun on CUDA, each rank takes the GPU of its ``LOCAL_RANK``."""
    if world.size > 1 and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def agree(world: World, work: Callable[[], T], device: torch.device | None = None) -> T:
    """Run ``work()`` on every rank; if it fails on any rank, every rank stops.

    Without this, a rank that fails alone (a file readable on one machine only) would leave
    the others waiting in their first collective until the backend's timeout.
    """
    error = None
    try:
        value = work()
    except Exception as err:  # noqa: BLE001 -- re-raised below, on every rank
        error = err
    if world.size > 1 and sum_over_ranks([error is not None], world, device)[0] and error is None:
        raise InputError(
            "Another process of this run stopped (see its message); nothing was trained."
        )
    if error is not None:
        raise error
    return value


def average_gradients(model: torch.nn.Module, world: World) -> None:
    """Mean of every parameter's gradient over the ranks (a missing gradient counts as 0)."""
    if world.size == 1:
        return
    for parameter in model.parameters():
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
        parameter.grad /= world.size


def sum_over_ranks(values, world: World, device: torch.device | None = None) -> np.ndarray:
    """Element-wise sum of float ``values`` over the ranks (the same result on every rank).

    ``device`` is where the reduction runs: the model's (NCCL reduces CUDA tensors only).
    """
    array = np.asarray(values, dtype=np.float64)
    if world.size == 1:
        return array
    tensor = torch.from_numpy(array.copy()).to(device or "cpu")
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().numpy()


class SyncedBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the whole batch across ranks.

    ``torch.nn.SyncBatchNorm`` runs on GPUs only; this one reduces with the
    differentiable ``torch.distributed.nn.functional.all_reduce``, so it also runs on
    gloo (CPU). Same parameters and buffers as ``BatchNorm2d``: state dicts load both ways.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        count = torch.tensor([x.shape[0] * x.shape[2] * x.shape[3]], dtype=x.dtype, device=x.device)
        moments = torch.cat([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)), count])
        moments = all_reduce(moments)
        channels = x.shape[1]
        n = moments[-1]
        mean = moments[:channels] / n
        var = (moments[channels : 2 * channels] / n - mean * mean).clamp_min(0.0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            unbiased = var * n / (n - 1)
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * unbiased)
        shape = (1, channels, 1, 1)
        normalised = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        return normalised * self.weight.view(shape) + self.bias.view(shape)


def synchronise_batch_norm(model: torch.nn.Module, world: World) -> torch.nn.Module:
    """Under torchrun, turn every BatchNorm2d of ``model`` into :class:`SyncedBatchNorm2d`."""
    if world.size == 1:
        return model
    for module in model.modules():
        for name, child in module.named_children():
            if type(child) is torch.nn.BatchNorm2d:
                synced = SyncedBatchNorm2d(
                    child.num_features, child.eps, child.momentum, child.affine
                ).to(child.weight.device)
                synced.load_state_dict(child.state_dict())
                setattr(module, name, synced)
    return model
