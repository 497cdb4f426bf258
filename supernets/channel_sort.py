"""Channel-importance reordering for progressive shrinking (Once-for-All's "sort channels").

Before a supernet is trained at smaller widths, the expanded channels of each inverted-residual block
are reordered so that the most important ones come first and are the ones smaller subnets keep.
Importance is the L1 norm of the projection weights reading a channel. The permutation is applied to
every tensor indexed by those channels, so the largest subnet computes exactly the same function.
Rebuild optimizer state (momentum buffers) after calling it.
"""

from __future__ import annotations

import torch
from torch import nn

from .elastic_blocks import ElasticMBConv
from .elastic_layers import ElasticBatchNorm2d


def _permute_(tensor: torch.Tensor, order: torch.Tensor, dim: int) -> None:
    tensor.copy_(tensor.index_select(dim, order))


def _permute_bn_(bn: ElasticBatchNorm2d, order: torch.Tensor) -> None:
    for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        _permute_(t, order, 0)


@torch.no_grad()
def sort_mbconv_channels(block: ElasticMBConv) -> torch.Tensor:
    """Reorder one block's expanded channels (and its squeeze-excite's reduced channels) by importance.

    Returns the order applied to the expanded channels (new index -> old index).
    """
    project = block.project.conv.weight  # (out, mid, 1, 1)
    order = torch.argsort(project.abs().sum((0, 2, 3)), descending=True, stable=True)
    _permute_(block.expand.conv.weight, order, 0)
    _permute_bn_(block.expand.bn, order)
    _permute_(block.depthwise.conv.weight, order, 0)
    _permute_bn_(block.depthwise.bn, order)
    if block.se is not None:
        _permute_(block.se.reduce.weight, order, 1)
        _permute_(block.se.expand.weight, order, 0)
        _permute_(block.se.expand.bias, order, 0)
        reduced = torch.argsort(block.se.expand.weight.abs().sum((0, 2, 3)), descending=True, stable=True)
        _permute_(block.se.reduce.weight, reduced, 0)
        _permute_(block.se.reduce.bias, reduced, 0)
        _permute_(block.se.expand.weight, reduced, 1)
    _permute_(project, order, 1)
    return order


def sort_channels(supernet: nn.Module) -> int:
    """Sort the expanded channels of every elastic inverted-residual block; returns how many were sorted."""
    blocks = [m for m in supernet.modules() if isinstance(m, ElasticMBConv)]
    for block in blocks:
        sort_mbconv_channels(block)
    return len(blocks)
