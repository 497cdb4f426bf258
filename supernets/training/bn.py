"""Batch-norm recalibration: a subnet's running statistics recomputed on training images.

Subnets of a supernet share batch norms whose running statistics were accumulated over many different
subnets; before a subnet is evaluated its statistics are recomputed on a few thousand training images
(Once-for-All does the same). Works on any module: a static subnet from ``extract`` (simplest), or a
supernet with ``forward=lambda x: supernet(x, arch)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor] | torch.Tensor,
                   forward: Callable[[torch.Tensor], object] | None = None, batch_size: int = 256) -> nn.Module:
    """Reset every batch norm of ``model`` and recompute its running mean and variance on ``batches``.

    Args:
        model: the network whose batch norms are recalibrated (in place).
        batches: image batches (already normalised and at the subnet's resolution), or one tensor that
            is split into batches of ``batch_size``.
        forward: how to run one batch (default ``model(x)``).
        batch_size: split size when ``batches`` is one tensor.

    Returns:
        ``model``, in eval mode, with the cumulative-average statistics of all images seen.
    """
    if isinstance(batches, torch.Tensor):
        batches = batches.split(batch_size)
    norms = [m for m in model.modules() if isinstance(m, _BN_TYPES)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every image counts the same
    was_training = model.training
    model.train()
    run = forward or model
    seen = 0
    try:
        for x in batches:
            run(x)
            seen += len(x)
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.train(was_training)
    if seen == 0:
        raise ValueError("recalibrate_bn needs at least one image")
    return model.eval()
