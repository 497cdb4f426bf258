"""Parameters and multiply-accumulates of a subnet, computed from its plan (no module is built).

The counts are those of the static network ``supernets.build`` makes from the same plan: convolutions without
bias followed by batch norm (two affine parameters per channel), squeeze-excite convolutions with bias, the
MobileNetV3 head's feature layer without bias or batch norm, a classifier with bias. MACs count convolutions
and the classifier at batch 1, as torch's flop counter does (FLOPs / 2). ``tests/supernets`` checks both
against built networks of every space.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._arch import Arch
from ._plan import BlockPlan, NetworkPlan, plan
from ._space import SearchSpace

__all__ = ["Counts", "arch_counts", "block_macs", "block_params", "genome_counts", "head_macs", "head_params",
           "stem_macs", "stem_params"]


@dataclass(frozen=True, slots=True)
class Counts:
    params: int
    macs: int

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def macs_m(self) -> float:
        return self.macs / 1e6


def _has_expand(b: BlockPlan) -> bool:
    return b.mid_channels != b.in_channels or b.expand_ratio != 1


def _conv_bn(c_in: int, c_out: int, kernel: int, groups: int = 1) -> int:
    return c_in // groups * c_out * kernel * kernel + 2 * c_out


def _se(channels: int, reduced: int) -> int:
    return 2 * channels * reduced + reduced + channels if reduced else 0


def block_params(b: BlockPlan) -> int:
    if b.op_type == "mbconv":
        expand = _conv_bn(b.in_channels, b.mid_channels, 1) if _has_expand(b) else 0
        return (expand + _conv_bn(b.mid_channels, b.mid_channels, b.kernel_size, groups=b.mid_channels)
                + _se(b.mid_channels, b.se_channels) + _conv_bn(b.mid_channels, b.out_channels, 1))
    if b.op_type == "sepconv":
        return (_conv_bn(b.in_channels, b.in_channels, b.kernel_size, groups=b.in_channels)
                + _se(b.in_channels, b.se_channels) + _conv_bn(b.in_channels, b.out_channels, 1))
    return _conv_bn(b.in_channels, b.out_channels, b.kernel_size) + _se(b.out_channels, b.se_channels)


def block_macs(b: BlockPlan) -> int:
    out_hw = b.output_size ** 2
    in_hw = b.input_size ** 2
    if b.op_type == "mbconv":
        expand = b.in_channels * b.mid_channels * in_hw if _has_expand(b) else 0
        body = b.mid_channels * b.kernel_size ** 2 * out_hw + b.mid_channels * b.out_channels * out_hw
        return expand + body + 2 * b.mid_channels * b.se_channels
    if b.op_type == "sepconv":
        return (b.in_channels * b.kernel_size ** 2 * out_hw + b.in_channels * b.out_channels * out_hw
                + 2 * b.in_channels * b.se_channels)
    return b.in_channels * b.out_channels * b.kernel_size ** 2 * out_hw + 2 * b.out_channels * b.se_channels


def stem_params(p: NetworkPlan) -> int:
    return _conv_bn(3, p.stem_channels, 3)


def stem_macs(p: NetworkPlan) -> int:
    return 3 * p.stem_channels * 9 * p.stem_output_size ** 2


def head_params(p: NetworkPlan) -> int:
    c = p.last_block_channels
    classifier = p.feature_channels * p.num_classes + p.num_classes
    if p.final_expand_channels:
        return (_conv_bn(c, p.final_expand_channels, 1) + p.final_expand_channels * p.feature_channels
                + classifier)
    return _conv_bn(c, p.feature_channels, 1) + classifier


def head_macs(p: NetworkPlan) -> int:
    hw = p.head_input_size ** 2
    c = p.last_block_channels
    if p.final_expand_channels:
        body = c * p.final_expand_channels * hw + p.final_expand_channels * p.feature_channels
    else:
        body = c * p.feature_channels * hw
    return body + p.feature_channels * p.num_classes


def arch_counts(space: SearchSpace, arch: Arch, num_classes: int | None = None) -> Counts:
    """Parameters and MACs of ``arch`` at its own resolution, from its plan (microseconds, no torch)."""
    if num_classes is not None and num_classes != space.num_classes:
        space = space.with_num_classes(num_classes)
    p = plan(space, arch)
    return Counts(params=stem_params(p) + sum(block_params(b) for b in p.blocks) + head_params(p),
                  macs=stem_macs(p) + sum(block_macs(b) for b in p.blocks) + head_macs(p))


_COUNT_VALUES: dict[SearchSpace, tuple] = {}


def _count_values(space: SearchSpace) -> tuple:
    cached = _COUNT_VALUES.get(space)
    if cached is None:
        from ._genome import plan_index

        index = plan_index(space)
        # The stem position covers every layer fixed by the resolution: the stem and the fixed first block.
        params = index.values(lambda p: stem_params(p) + sum(block_params(b) for b in p.blocks
                                                             if b.stage_index < 0),
                              block_params, head_params, dtype=np.int64)
        macs = index.values(lambda p: stem_macs(p) + sum(block_macs(b) for b in p.blocks if b.stage_index < 0),
                            block_macs, head_macs, dtype=np.int64)
        cached = _COUNT_VALUES[space] = (index, params, macs)
    return cached


def genome_counts(space: SearchSpace, genomes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parameters and MACs (int64 arrays) of a batch of genomes (``search_spaces._genome``), as a gather and
    a sum: equal to ``arch_counts`` of each genome's arch."""
    index, params, macs = _count_values(space)
    positions = index.positions(genomes)
    return params[positions].sum(axis=1), macs[positions].sum(axis=1)
