"""Typed, frozen descriptions of a search space: its stages and their choices.

A space is written once, here and in the modules that register spaces; the supernet, the latency
tables, the encodings, the Optuna parameters and the importers all read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

OP_TYPES = ("conv", "sepconv", "mbconv")
"""Block operators any space may offer.

- ``conv``: a regular k x k convolution from the block input to its output channels.
- ``sepconv``: a depthwise k x k convolution followed by a 1 x 1 projection.
- ``mbconv``: an inverted residual block (1 x 1 expansion by ``expand_ratio``, depthwise k x k, 1 x 1
  projection), as in MobileNetV2/V3.
"""

ACTIVATIONS = ("relu", "hswish")


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor``, never below 90% of ``value``."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True, slots=True)
class StageSpec:
    """What may vary inside one stage (a run of blocks with one output width).

    Every tuple of choices is sorted from the cheapest to the most expensive option, so the first
    entries give the smallest subnet and the last entries the largest.
    """

    name: str
    # Output channels of every block of the stage, before the width multiplier.
    width: int
    # Stride of the first block of the stage; the others have stride 1.
    stride: int
    # Allowed numbers of blocks.
    depths: tuple[int, ...]
    # Allowed depthwise (or regular) kernel sizes.
    kernel_sizes: tuple[int, ...]
    # Allowed expansion ratios of ``mbconv`` blocks (other operators always use 1).
    expand_ratios: tuple[float, ...]
    # Allowed block operators, from ``OP_TYPES``.
    op_types: tuple[str, ...] = ("mbconv",)
    # Allowed squeeze-excite ratios (0 means no squeeze-excite).
    se_ratios: tuple[float, ...] = (0.0,)
    # Allowed skip choices: whether a block adds an identity shortcut where shapes allow.
    skips: tuple[bool, ...] = (True,)
    # Allowed multipliers of ``width``.
    width_mults: tuple[float, ...] = (1.0,)
    # Activation of every block of the stage, from ``ACTIVATIONS``.
    activation: str = "relu"
    # True when all blocks of the stage must be identical (MnasNet); False for per-block choices (OFA).
    shared_blocks: bool = False

    @property
    def max_depth(self) -> int:
        return max(self.depths)

    def allowed_expand_ratios(self, op_type: str) -> tuple[float, ...]:
        """Expansion ratios allowed for ``op_type``: the stage's for ``mbconv``, ``(1.0,)`` otherwise."""
        return self.expand_ratios if op_type == "mbconv" else (1.0,)

    def out_channels(self, width_mult: float, divisor: int) -> int:
        return make_divisible(self.width * width_mult, divisor)

    def __post_init__(self) -> None:
        for name in ("depths", "kernel_sizes", "expand_ratios", "op_types", "se_ratios", "skips",
                     "width_mults"):
            values = getattr(self, name)
            if not values:
                raise ValueError(f"stage {self.name!r}: {name} must not be empty")
            if len(set(values)) != len(values):
                raise ValueError(f"stage {self.name!r}: {name} has duplicates: {values}")
        unknown = [op for op in self.op_types if op not in OP_TYPES]
        if unknown:
            raise ValueError(f"stage {self.name!r}: unknown op types {unknown}; allowed: {OP_TYPES}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"stage {self.name!r}: activation {self.activation!r} not in {ACTIVATIONS}")
        if min(self.depths) < 1 or self.stride not in (1, 2):
            raise ValueError(f"stage {self.name!r}: depths must be >= 1 and stride 1 or 2")


@dataclass(frozen=True, slots=True)
class SearchSpace:
    """A factorized search space: a fixed stem, elastic stages, a fixed head.

    ``family`` names the supernet family that implements the space (``ofa_mbv3`` or ``mnasnet``).
    """

    name: str
    family: str
    description: str
    # Stem: a 3 x 3 convolution from RGB.
    stem_channels: int
    stem_stride: int
    stem_activation: str
    stages: tuple[StageSpec, ...]
    # Allowed input resolutions (square), ascending.
    resolutions: tuple[int, ...]
    # Output channels of the fixed first block (a 3 x 3 depthwise-separable block); 0 for none.
    first_block_channels: int = 0
    # Channels of the final 1 x 1 expansion before pooling; 0 for none.
    final_expand_channels: int = 0
    # Channels of the pooled 1 x 1 feature layer before the classifier.
    feature_channels: int = 1280
    head_activation: str = "relu"
    num_classes: int = 1000
    dropout: float = 0.1
    channel_divisor: int = 8
    # Extra facts for importers and reports (never used to build networks).
    metadata: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError(f"space {self.name!r} has no stages")
        if list(self.resolutions) != sorted(set(self.resolutions)):
            raise ValueError(f"space {self.name!r}: resolutions must be ascending and distinct")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"space {self.name!r}: stage names must be distinct")

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def max_blocks(self) -> int:
        """Number of elastic blocks of the largest subnet."""
        return sum(s.max_depth for s in self.stages)

    def with_num_classes(self, num_classes: int) -> SearchSpace:
        """The same space with another classifier size (for datasets other than the space's default)."""
        from dataclasses import replace

        return replace(self, num_classes=num_classes)
