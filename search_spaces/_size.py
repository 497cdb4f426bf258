"""How many archs a space holds."""

from __future__ import annotations

import math

from ._space import SearchSpace, StageSpec


def block_choices(spec: StageSpec) -> int:
    """Distinct choices of one block of ``spec``."""
    ops = sum(len(spec.kernel_sizes) * len(spec.allowed_expand_ratios(op)) for op in spec.op_types)
    return ops * len(spec.se_ratios) * len(spec.skips)


def stage_choices(spec: StageSpec) -> int:
    per_block = block_choices(spec)
    if spec.shared_blocks:
        by_depth = per_block * len(spec.depths)
    else:
        by_depth = sum(per_block**d for d in spec.depths)
    return by_depth * len(spec.width_mults)


def space_size(space: SearchSpace) -> int:
    """Exact number of distinct archs (resolutions included)."""
    return math.prod(stage_choices(s) for s in space.stages) * len(space.resolutions)
