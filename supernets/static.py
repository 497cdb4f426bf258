"""Plain PyTorch layers of a subnet, built from a ``NetworkPlan``.

These are what ``extract`` returns and what ``build`` initialises: ordinary convolutions, batch norms
and linears, no elastic machinery. Every block is one of three classes, by operator.
"""

from __future__ import annotations

import torch
from torch import nn

from search_spaces import Arch, BlockPlan, NetworkPlan, SearchSpace, arch_to_string, plan

BN_MOMENTUM = 0.1
BN_EPS = 1e-5


def activation(name: str) -> nn.Module:
    """The module for an activation name of ``search_spaces.ACTIVATIONS``."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "hswish":
        return nn.Hardswish(inplace=True)
    raise ValueError(f"unknown activation {name!r}; allowed: relu, hswish")


class ConvBNAct(nn.Sequential):
    """Convolution ('same' padding, no bias), batch norm, optional activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, act: str | None = None) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups,
                      bias=False),
            nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM),
        ]
        if act is not None:
            layers.append(activation(act))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Squeeze-excite: pooled 1 x 1 reduce (ReLU), 1 x 1 expand, hard-sigmoid gate."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = torch.relu(self.reduce(s))
        return x * nn.functional.hardsigmoid(self.expand(s))


class MBConv(nn.Module):
    """Inverted residual: 1 x 1 expansion (absent at expand ratio 1), depthwise, SE, 1 x 1 projection."""

    def __init__(self, p: BlockPlan) -> None:
        super().__init__()
        self.expand = (ConvBNAct(p.in_channels, p.mid_channels, 1, act=p.activation)
                       if p.mid_channels != p.in_channels or p.expand_ratio != 1 else None)
        self.depthwise = ConvBNAct(p.mid_channels, p.mid_channels, p.kernel_size, p.stride,
                                   groups=p.mid_channels, act=p.activation)
        self.se = SqueezeExcite(p.mid_channels, p.se_channels) if p.se_channels else None
        self.project = ConvBNAct(p.mid_channels, p.out_channels, 1)
        self.residual = p.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.depthwise(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.residual else y


class SepConv(nn.Module):
    """Depthwise-separable: depthwise k x k, SE, 1 x 1 projection."""

    def __init__(self, p: BlockPlan) -> None:
        super().__init__()
        self.depthwise = ConvBNAct(p.in_channels, p.in_channels, p.kernel_size, p.stride,
                                   groups=p.in_channels, act=p.activation)
        self.se = SqueezeExcite(p.in_channels, p.se_channels) if p.se_channels else None
        self.project = ConvBNAct(p.in_channels, p.out_channels, 1)
        self.residual = p.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.depthwise(x)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.residual else y


class RegularConv(nn.Module):
    """Regular k x k convolution with batch norm and activation, then SE."""

    def __init__(self, p: BlockPlan) -> None:
        super().__init__()
        self.conv = ConvBNAct(p.in_channels, p.out_channels, p.kernel_size, p.stride, act=p.activation)
        self.se = SqueezeExcite(p.out_channels, p.se_channels) if p.se_channels else None
        self.residual = p.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.se is not None:
            y = self.se(y)
        return x + y if self.residual else y


BLOCK_CLASSES: dict[str, type[nn.Module]] = {"mbconv": MBConv, "sepconv": SepConv, "conv": RegularConv}


def build_block(p: BlockPlan) -> nn.Module:
    """The static module of one block plan."""
    return BLOCK_CLASSES[p.op_type](p)


def build_stem(p: NetworkPlan) -> nn.Module:
    return ConvBNAct(3, p.stem_channels, 3, p.stem_stride, act=p.stem_activation)


class Head(nn.Module):
    """Final 1 x 1 expansion with BN (when the plan has one), global pooling, 1 x 1 feature layer,
    dropout and classifier. Without a final expansion the feature layer has BN and comes before pooling
    (MnasNet); with one, it has no BN and acts on the pooled vector (MobileNetV3)."""

    def __init__(self, p: NetworkPlan, dropout: float = 0.0) -> None:
        super().__init__()
        in_channels = p.last_block_channels
        if p.final_expand_channels:
            self.final_expand: nn.Module | None = ConvBNAct(in_channels, p.final_expand_channels, 1,
                                                           act=p.head_activation)
            self.feature = nn.Sequential(
                nn.Conv2d(p.final_expand_channels, p.feature_channels, 1, bias=False),
                activation(p.head_activation),
            )
        else:
            self.final_expand = None
            self.feature = ConvBNAct(in_channels, p.feature_channels, 1, act=p.head_activation)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(p.feature_channels, p.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.final_expand is not None:
            x = self.final_expand(x)
            x = self.feature(x.mean((2, 3), keepdim=True))
        else:
            x = self.feature(x).mean((2, 3), keepdim=True)
        return self.classifier(self.dropout(torch.flatten(x, 1)))


def build_head(p: NetworkPlan, dropout: float = 0.0) -> nn.Module:
    return Head(p, dropout)


class StaticNet(nn.Module):
    """A plain subnet: stem, blocks, head. ``arch_string`` records which subnet it is."""

    def __init__(self, p: NetworkPlan, dropout: float = 0.0, arch_string: str = "") -> None:
        super().__init__()
        self.stem = build_stem(p)
        self.blocks = nn.Sequential(*[build_block(b) for b in p.blocks])
        self.head = build_head(p, dropout)
        self.resolution = p.resolution
        self.arch_string = arch_string

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def init_weights(module: nn.Module) -> None:
    """He-normal convolutions, unit batch norms, small-normal classifier, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def zero_init_residuals(net: StaticNet, p: NetworkPlan) -> int:
    """Set gamma to 0 in the last batch norm of each residual block of ``net`` (built from plan ``p``) inside the
    stages, the blocks ``ElasticSupernet.zero_init_residuals`` starts as the identity, so that a network trained
    from scratch can start as the supernet's subnets do. Returns how many batch norms were set."""
    count = 0
    with torch.no_grad():
        for block, bp in zip(net.blocks, p.blocks):
            if bp.residual and bp.stage_index >= 0:
                last = block.conv if isinstance(block, RegularConv) else block.project
                last[1].weight.zero_()
                count += 1
    return count


def build(space: SearchSpace, arch: Arch, num_classes: int | None = None,
          zero_init_residual: bool = False) -> StaticNet:
    """A freshly initialised static network for ``arch`` (same structure as ``extract`` returns);
    ``zero_init_residual``: its residual blocks start as the identity (``zero_init_residuals``), as a supernet's
    subnets do under ``train.zero_init_residual``."""
    if num_classes is not None and num_classes != space.num_classes:
        space = space.with_num_classes(num_classes)
    p = plan(space, arch)
    net = StaticNet(p, space.dropout, arch_to_string(space, arch))
    init_weights(net)
    if zero_init_residual:
        zero_init_residuals(net, p)
    return net
