"""Accuracy of one subnet of a supernet: extract it, recalibrate its batch norms, classify a split."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces import Arch

from .bn import recalibrate_bn
from .device import Execution


class DataSource(Protocol):
    """What training and evaluation need from a dataset (``nas.data`` implements it).

    Batches are float tensors ``(N, 3, H, W)``, normalised, at the dataset's native resolution, with int64
    labels; the training loop resizes them to each step's resolution.
    """

    num_classes: int

    def steps_per_epoch(self, batch_size: int, world_size: int) -> int: ...

    def train_batches(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def eval_batches(self, split: str, batch_size: int, max_images: int | None = None
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def calibration_batches(self, num_images: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]: ...

    def to(self, device: torch.device) -> None:
        """Deliver every later batch on ``device`` (in-memory data moves there and augments there)."""


def resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """``x`` at ``resolution`` x ``resolution`` (bilinear), unchanged when it already is."""
    if x.shape[-1] == resolution and x.shape[-2] == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)


@torch.no_grad()
def accuracy(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], resolution: int,
             execution: Execution | None = None) -> float:
    """Top-1 accuracy (0..1) of ``model`` on ``batches`` resized to ``resolution``, on the model's device
    (and in ``execution``'s precision when given)."""
    model.eval()
    device = next(model.parameters()).device
    correct = torch.zeros((), dtype=torch.int64, device=device)
    total = 0
    with execution.autocast() if execution is not None else contextlib.nullcontext():
        for x, y in batches:
            x = execution.batch(x) if execution is not None else x.to(device)
            correct += (model(resize(x, resolution)).argmax(1) == y.to(device)).sum()
            total += len(y)
    return int(correct) / max(total, 1)


def subnet_accuracy(supernet: nn.Module, arch: Arch, data: DataSource, split: str = "val",
                    bn_images: int = 2000, max_images: int | None = None, batch_size: int = 200,
                    seed: int = 0, execution: Execution | None = None) -> float:
    """Accuracy of ``arch`` inherited from ``supernet``: extracted, batch norms recalibrated on
    ``bn_images`` training images (none when 0), evaluated on ``split``; on the supernet's device."""
    from supernets import extract

    net = extract(supernet, arch)
    if execution is not None:
        execution.module(net)  # the extracted network in the execution's memory format
    if bn_images > 0:
        prepare = execution.batch if execution is not None else (lambda x: x.to(next(net.parameters()).device))
        with execution.autocast() if execution is not None else contextlib.nullcontext():
            recalibrate_bn(net, (resize(prepare(x), arch.resolution)
                                 for x in data.calibration_batches(bn_images, batch_size, seed)))
    return accuracy(net, data.eval_batches(split, batch_size, max_images), arch.resolution, execution)
