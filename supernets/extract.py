"""Exact extraction of a static subnet from a supernet."""

from __future__ import annotations

import torch
from torch import nn

from search_spaces import Arch, arch_to_string, plan

from .elastic import ElasticSupernet
from .static import StaticNet


def unwrap(supernet: nn.Module) -> ElasticSupernet:
    """The supernet inside a DDP (or similar ``.module``) wrapper."""
    inner = getattr(supernet, "module", supernet)
    if not isinstance(inner, ElasticSupernet):
        raise TypeError(f"expected a supernet from build_supernet, got {type(inner).__name__}")
    return inner


def extract(supernet: nn.Module, arch: Arch) -> StaticNet:
    """A plain ``StaticNet`` for ``arch`` holding copies of the supernet's active weights and BN statistics.

    Its structure (module classes, state-dict keys and shapes) equals ``build(space, arch)``; in eval
    mode its output equals ``supernet(x, arch)``. It is on the supernet's device and dtype, in the
    supernet's train/eval mode.
    """
    net = unwrap(supernet)
    space = net.space
    with torch.no_grad():
        state = net.subnet_state_dict(arch)
    reference = next(net.parameters())
    static = StaticNet(plan(space, arch), space.dropout, arch_to_string(space, arch))
    static.to(device=reference.device, dtype=reference.dtype)
    static.load_state_dict(state, strict=True)  # copies
    static.train(net.training)
    return static
