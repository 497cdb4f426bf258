"""The concrete layers of one arch: channels, strides, feature-map sizes.

This is where an arch becomes shapes. Supernets, static builders, latency tables and MAC counts all
read these plans, so a layer means the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._arch import Arch, validate
from ._space import SearchSpace, make_divisible


def conv_out_size(size: int, stride: int) -> int:
    """Spatial size after a 'same'-padded convolution with ``stride``."""
    return (size + stride - 1) // stride


@dataclass(frozen=True, slots=True)
class BlockPlan:
    """One block with all its shapes resolved."""

    op_type: str
    in_channels: int
    out_channels: int
    # Channels of the inner feature map (mbconv: expanded; sepconv: input; conv: output).
    mid_channels: int
    kernel_size: int
    stride: int
    # Reduced channels of the squeeze-excite module; 0 for none.
    se_channels: int
    activation: str
    # Whether the identity shortcut is actually added (chosen and shapes allow).
    residual: bool
    input_size: int
    # Index of the stage in the space (-1 for the fixed first block) and of the block in the stage.
    stage_index: int
    block_index: int

    @property
    def output_size(self) -> int:
        return conv_out_size(self.input_size, self.stride)

    @property
    def expand_ratio(self) -> float:
        return self.mid_channels / self.in_channels if self.op_type == "mbconv" else 1.0

    def key(self) -> str:
        """A readable unique key of the layer configuration (used by lookup tables)."""
        return (f"{self.op_type}-in{self.input_size}x{self.input_size}x{self.in_channels}"
                f"-out{self.output_size}x{self.output_size}x{self.out_channels}-mid{self.mid_channels}"
                f"-k{self.kernel_size}-s{self.stride}-se{self.se_channels}-{self.activation}"
                f"-res{int(self.residual)}")


@dataclass(frozen=True, slots=True)
class NetworkPlan:
    """Every layer of one arch, stem to classifier."""

    resolution: int
    stem_channels: int
    stem_stride: int
    stem_activation: str
    blocks: tuple[BlockPlan, ...]
    # Final 1 x 1 expansion (0 for none), pooled feature layer, classes.
    final_expand_channels: int
    feature_channels: int
    head_activation: str
    num_classes: int

    @property
    def stem_output_size(self) -> int:
        return conv_out_size(self.resolution, self.stem_stride)

    @property
    def last_block_channels(self) -> int:
        return self.blocks[-1].out_channels if self.blocks else self.stem_channels

    @property
    def head_input_size(self) -> int:
        return self.blocks[-1].output_size if self.blocks else self.stem_output_size

    def stem_key(self) -> str:
        return (f"stem-in{self.resolution}x{self.resolution}x3-out{self.stem_output_size}x"
                f"{self.stem_output_size}x{self.stem_channels}-s{self.stem_stride}-{self.stem_activation}")

    def head_key(self) -> str:
        size = self.head_input_size
        return (f"head-in{size}x{size}x{self.last_block_channels}-expand{self.final_expand_channels}"
                f"-feature{self.feature_channels}-classes{self.num_classes}-{self.head_activation}")


def se_channels(mid_channels: int, se_ratio: float, divisor: int) -> int:
    return make_divisible(mid_channels * se_ratio, divisor) if se_ratio > 0 else 0


def mid_channels(op_type: str, in_channels: int, out_channels: int, expand_ratio: float, divisor: int) -> int:
    if op_type == "mbconv":
        return make_divisible(round(in_channels * expand_ratio), divisor)
    return out_channels if op_type == "conv" else in_channels


def plan(space: SearchSpace, arch: Arch) -> NetworkPlan:
    """Resolve ``arch`` (validated) into its layers."""
    validate(space, arch)
    divisor = space.channel_divisor
    size = conv_out_size(arch.resolution, space.stem_stride)
    channels = space.stem_channels
    blocks: list[BlockPlan] = []
    if space.first_block_channels:
        out = space.first_block_channels
        first = space.stages[0]
        blocks.append(BlockPlan(
            op_type="mbconv", in_channels=channels, out_channels=out, mid_channels=channels,
            kernel_size=3, stride=1, se_channels=0, activation=first.activation,
            residual=channels == out, input_size=size, stage_index=-1, block_index=0,
        ))
        channels = out
    for s, (spec, stage) in enumerate(zip(space.stages, arch.stages)):
        out = spec.out_channels(stage.width_mult, divisor)
        for b, block in enumerate(stage.blocks):
            stride = spec.stride if b == 0 else 1
            mid = mid_channels(block.op_type, channels, out, block.expand_ratio, divisor)
            blocks.append(BlockPlan(
                op_type=block.op_type, in_channels=channels, out_channels=out, mid_channels=mid,
                kernel_size=block.kernel_size, stride=stride,
                se_channels=se_channels(mid, block.se_ratio, divisor), activation=spec.activation,
                residual=block.skip and stride == 1 and channels == out, input_size=size,
                stage_index=s, block_index=b,
            ))
            size = conv_out_size(size, stride)
            channels = out
    return NetworkPlan(
        resolution=arch.resolution,
        stem_channels=space.stem_channels,
        stem_stride=space.stem_stride,
        stem_activation=space.stem_activation,
        blocks=tuple(blocks),
        final_expand_channels=space.final_expand_channels,
        feature_channels=space.feature_channels,
        head_activation=space.head_activation,
        num_classes=space.num_classes,
    )
