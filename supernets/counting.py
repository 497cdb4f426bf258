"""Parameter and multiply-accumulate counts of a built module: the reference the plan's counts are tested
against. The project counts subnets from their plans (``search_spaces.arch_counts``: no module is built)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from search_spaces import Arch, Counts, SearchSpace


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(module: nn.Module, resolution: int) -> int:
    """MACs of one forward pass at batch 1 (``torch.utils.flop_counter`` FLOPs / 2)."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(torch.zeros(1, 3, resolution, resolution))
    finally:
        module.train(was_training)
    return int(counter.get_total_flops() // 2)


def built_counts(space: SearchSpace, arch: Arch, num_classes: int | None = None) -> Counts:
    """Parameters and MACs of ``arch`` at its own resolution, measured on the built static network (slow: the
    reference for ``search_spaces.arch_counts``)."""
    from .static import build

    net = build(space, arch, num_classes)
    return Counts(params=count_params(net), macs=count_macs(net, arch.resolution))
