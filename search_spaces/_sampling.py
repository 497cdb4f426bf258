"""Seeded sampling of archs: largest, smallest, random, mutate.

Randomness always comes from a ``numpy.random.Generator`` owned by the caller (or built from an int
seed); nothing here touches global random state.
"""

from __future__ import annotations

import numpy as np

from ._arch import Arch, BlockArch, StageArch, validate
from ._space import SearchSpace, StageSpec

Seed = int | np.random.Generator | None


def as_generator(seed: Seed) -> np.random.Generator:
    """A generator from an int seed, or the generator itself."""
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _choice(rng: np.random.Generator, values: tuple):
    return values[int(rng.integers(len(values)))]


def _extreme_block(spec: StageSpec, index: int) -> BlockArch:
    op = spec.op_types[index]
    return BlockArch(
        kernel_size=spec.kernel_sizes[index],
        expand_ratio=spec.allowed_expand_ratios(op)[index],
        op_type=op,
        se_ratio=spec.se_ratios[index],
        skip=spec.skips[index],
    )


def _extreme(space: SearchSpace, index: int) -> Arch:
    stages = tuple(
        StageArch(blocks=(_extreme_block(spec, index),) * spec.depths[index], width_mult=spec.width_mults[index])
        for spec in space.stages
    )
    return Arch(space=space.name, resolution=space.resolutions[index], stages=stages)


def largest(space: SearchSpace) -> Arch:
    """Every choice at its last (most expensive) option."""
    return _extreme(space, -1)


def smallest(space: SearchSpace) -> Arch:
    """Every choice at its first (cheapest) option."""
    return _extreme(space, 0)


def _random_block(spec: StageSpec, rng: np.random.Generator) -> BlockArch:
    op = _choice(rng, spec.op_types)
    return BlockArch(
        kernel_size=_choice(rng, spec.kernel_sizes),
        expand_ratio=_choice(rng, spec.allowed_expand_ratios(op)),
        op_type=op,
        se_ratio=_choice(rng, spec.se_ratios),
        skip=_choice(rng, spec.skips),
    )


def _random_stage(spec: StageSpec, rng: np.random.Generator) -> StageArch:
    depth = _choice(rng, spec.depths)
    width = _choice(rng, spec.width_mults)
    if spec.shared_blocks:
        return StageArch(blocks=(_random_block(spec, rng),) * depth, width_mult=width)
    return StageArch(blocks=tuple(_random_block(spec, rng) for _ in range(depth)), width_mult=width)


def random_arch(space: SearchSpace, seed: Seed = None) -> Arch:
    """A uniformly random choice per dimension."""
    rng = as_generator(seed)
    return Arch(
        space=space.name,
        resolution=_choice(rng, space.resolutions),
        stages=tuple(_random_stage(spec, rng) for spec in space.stages),
    )


def sample(space: SearchSpace, n: int, seed: Seed = None) -> list[Arch]:
    """``n`` random archs from one seeded generator."""
    rng = as_generator(seed)
    return [random_arch(space, rng) for _ in range(n)]


def _mutate_block(spec: StageSpec, block: BlockArch, rng: np.random.Generator, prob: float) -> BlockArch:
    fresh = _random_block(spec, rng)
    op = fresh.op_type if rng.random() < prob else block.op_type
    kernel = fresh.kernel_size if rng.random() < prob else block.kernel_size
    allowed = spec.allowed_expand_ratios(op)
    expand = block.expand_ratio if block.expand_ratio in allowed else _choice(rng, allowed)
    if rng.random() < prob:
        expand = _choice(rng, allowed)
    se = fresh.se_ratio if rng.random() < prob else block.se_ratio
    skip = fresh.skip if rng.random() < prob else block.skip
    return BlockArch(kernel_size=kernel, expand_ratio=expand, op_type=op, se_ratio=se, skip=skip)


def mutate(space: SearchSpace, arch: Arch, prob: float = 0.1, seed: Seed = None) -> Arch:
    """Resample each choice of ``arch`` independently with probability ``prob`` (as OFA's evolution)."""
    validate(space, arch)
    rng = as_generator(seed)
    resolution = _choice(rng, space.resolutions) if rng.random() < prob else arch.resolution
    stages = []
    for spec, stage in zip(space.stages, arch.stages):
        depth = _choice(rng, spec.depths) if rng.random() < prob else stage.depth
        width = _choice(rng, spec.width_mults) if rng.random() < prob else stage.width_mult
        if spec.shared_blocks:
            blocks = (_mutate_block(spec, stage.blocks[0], rng, prob),) * depth
        else:
            # Keep every slot up to the largest depth so that a deeper mutation has values to use.
            slots = list(stage.blocks) + [_random_block(spec, rng) for _ in range(spec.max_depth - stage.depth)]
            blocks = tuple(_mutate_block(spec, b, rng, prob) for b in slots)[:depth]
        stages.append(StageArch(blocks=blocks, width_mult=width))
    return Arch(space=space.name, resolution=resolution, stages=tuple(stages))


def crossover(space: SearchSpace, a: Arch, b: Arch, seed: Seed = None) -> Arch:
    """Per-stage and per-block uniform crossover of two archs of ``space``."""
    rng = as_generator(seed)
    resolution = a.resolution if rng.random() < 0.5 else b.resolution
    stages = []
    for spec, sa, sb in zip(space.stages, a.stages, b.stages):
        depth = sa.depth if rng.random() < 0.5 else sb.depth
        width = sa.width_mult if rng.random() < 0.5 else sb.width_mult
        if spec.shared_blocks:
            blocks = ((sa.blocks[0] if rng.random() < 0.5 else sb.blocks[0]),) * depth
        else:
            pool = []
            for i in range(depth):
                options = [s.blocks[i] for s in (sa, sb) if i < s.depth]
                pool.append(options[int(rng.integers(len(options)))])
            blocks = tuple(pool)
        stages.append(StageArch(blocks=blocks, width_mult=width))
    return validate(space, Arch(space=space.name, resolution=resolution, stages=tuple(stages)))
