"""Elastic blocks: each runs any ``BlockPlan`` up to its largest configuration.

A block is driven by the ``BlockPlan`` of the active subnet (``search_spaces.plan``), so channel counts,
kernel, squeeze-excite width and residual are resolved in exactly one place, as for the static net.
The input width is the input tensor's. ``static_state`` gives the state dict of the matching
``static.MBConv`` / ``SepConv`` / ``RegularConv``.
"""

from __future__ import annotations

import torch
from torch import nn

from search_spaces import BlockPlan

from .elastic_layers import ElasticConvBNAct, ElasticSqueezeExcite, prefixed


class ElasticMBConv(nn.Module):
    """Inverted residual elastic in kernel, expanded width, output width and squeeze-excite width."""

    def __init__(self, max_in: int, max_mid: int, max_out: int, kernel_sizes: tuple[int, ...], stride: int,
                 max_se: int, act: str) -> None:
        super().__init__()
        self.expand = ElasticConvBNAct(max_in, max_mid, act=act)
        self.depthwise = ElasticConvBNAct(max_mid, max_mid, kernel_sizes, stride, depthwise=True, act=act)
        self.se = ElasticSqueezeExcite(max_mid, max_se) if max_se else None
        self.project = ElasticConvBNAct(max_mid, max_out)

    def forward(self, x: torch.Tensor, p: BlockPlan) -> torch.Tensor:
        y = self.expand(x, p.mid_channels) if p.mid_channels != p.in_channels else x
        y = self.depthwise(y, p.mid_channels, p.kernel_size)
        if p.se_channels:
            y = self.se(y, p.se_channels)
        y = self.project(y, p.out_channels)
        return x + y if p.residual else y

    def residual_norms(self) -> list[nn.BatchNorm2d]:
        """The batch norm whose output the residual connection adds to the input."""
        return [self.project.bn]

    def static_state(self, p: BlockPlan) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        if p.mid_channels != p.in_channels:
            state.update(prefixed("expand.", self.expand.static_state(p.in_channels, p.mid_channels)))
        state.update(prefixed("depthwise.", self.depthwise.static_state(p.mid_channels, p.mid_channels,
                                                                         p.kernel_size)))
        if p.se_channels:
            state.update(prefixed("se.", self.se.static_state(p.mid_channels, p.se_channels)))
        state.update(prefixed("project.", self.project.static_state(p.mid_channels, p.out_channels)))
        return state


class ElasticSepConv(nn.Module):
    """Depthwise-separable block elastic in kernel, input/output width and squeeze-excite width."""

    def __init__(self, max_in: int, max_out: int, kernel_sizes: tuple[int, ...], stride: int, max_se: int,
                 act: str) -> None:
        super().__init__()
        self.depthwise = ElasticConvBNAct(max_in, max_in, kernel_sizes, stride, depthwise=True, act=act)
        self.se = ElasticSqueezeExcite(max_in, max_se) if max_se else None
        self.project = ElasticConvBNAct(max_in, max_out)

    def forward(self, x: torch.Tensor, p: BlockPlan) -> torch.Tensor:
        y = self.depthwise(x, p.in_channels, p.kernel_size)
        if p.se_channels:
            y = self.se(y, p.se_channels)
        y = self.project(y, p.out_channels)
        return x + y if p.residual else y

    def residual_norms(self) -> list[nn.BatchNorm2d]:
        """The batch norm whose output the residual connection adds to the input."""
        return [self.project.bn]

    def static_state(self, p: BlockPlan) -> dict[str, torch.Tensor]:
        state = prefixed("depthwise.", self.depthwise.static_state(p.in_channels, p.in_channels, p.kernel_size))
        if p.se_channels:
            state.update(prefixed("se.", self.se.static_state(p.in_channels, p.se_channels)))
        state.update(prefixed("project.", self.project.static_state(p.in_channels, p.out_channels)))
        return state


class ElasticRegularConv(nn.Module):
    """Regular convolution block elastic in kernel, input/output width and squeeze-excite width."""

    def __init__(self, max_in: int, max_out: int, kernel_sizes: tuple[int, ...], stride: int, max_se: int,
                 act: str) -> None:
        super().__init__()
        self.conv = ElasticConvBNAct(max_in, max_out, kernel_sizes, stride, act=act)
        self.se = ElasticSqueezeExcite(max_out, max_se) if max_se else None

    def forward(self, x: torch.Tensor, p: BlockPlan) -> torch.Tensor:
        y = self.conv(x, p.out_channels, p.kernel_size)
        if p.se_channels:
            y = self.se(y, p.se_channels)
        return x + y if p.residual else y

    def residual_norms(self) -> list[nn.BatchNorm2d]:
        """The batch norm before the residual addition (the squeeze-excite gate, when there is one, scales its
        output: a zero there still makes the block the identity)."""
        return [self.conv.bn]

    def static_state(self, p: BlockPlan) -> dict[str, torch.Tensor]:
        state = prefixed("conv.", self.conv.static_state(p.in_channels, p.out_channels, p.kernel_size))
        if p.se_channels:
            state.update(prefixed("se.", self.se.static_state(p.out_channels, p.se_channels)))
        return state


class ElasticChoiceBlock(nn.Module):
    """Single-path op choice: separate elastic weights per operator, one active per forward."""

    def __init__(self, ops: dict[str, nn.Module]) -> None:
        super().__init__()
        self.ops = nn.ModuleDict(ops)

    def forward(self, x: torch.Tensor, p: BlockPlan) -> torch.Tensor:
        return self.ops[p.op_type](x, p)

    def residual_norms(self) -> list[nn.BatchNorm2d]:
        """Every operator's batch norm before the residual addition."""
        return [bn for op in self.ops.values() for bn in op.residual_norms()]

    def static_state(self, p: BlockPlan) -> dict[str, torch.Tensor]:
        return self.ops[p.op_type].static_state(p)
