"""Archs as integer arrays ("genomes"), for scoring and searching many subnets at once.

A genome is one row of choice indices, one gene per searched choice, in a fixed order: the resolution; then per
stage its depth, its width multiplier and one gene per block slot (``max_depth`` slots, one when the stage's
blocks are shared), the index of the slot's block among the stage's block variants (op type x kernel x expand
x SE x skip, in that nesting order). Genes with a single choice are kept (always 0), so every space's genomes
have the same shape rules. The names are those of ``nas.search_params`` (``resolution``, ``s0.depth``,
``s0.width_mult``, ``s0.b0``, ...).

Slots beyond a stage's depth are inactive: they change nothing of the subnet (Once-for-All's evolution also
carries them along, so a deeper mutation has values to use). ``genomes_of`` writes them as copies of the
stage's last active block, which makes the genome of an arch unique (``canonical`` does the same to any
genome); ``archs_of`` ignores them.

``PlanIndex`` resolves, once per space, every layer a genome can contain to a position in one flat array: a
network's sum over its layers of any per-layer quantity (a lookup table's latency, parameters, MACs) is then a
gather and a row sum over a batch of genomes. It relies on the plan's structure: a block's shapes depend only on
the resolution, its stage's width, the width of the stage before it (first block only) and its own choices;
the stem on the resolution; the head on the resolution and the last stage's width.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ._arch import Arch, BlockArch, StageArch, validate
from ._plan import BlockPlan, NetworkPlan, plan
from ._space import SearchSpace, StageSpec

__all__ = ["GeneLayout", "PlanIndex", "archs_of", "canonical", "gene_layout", "genomes_of", "plan_index",
           "random_genomes"]


def block_variants(spec: StageSpec) -> tuple[BlockArch, ...]:
    """Every block a slot of ``spec`` may hold, in gene order (as ``nas.search_params.block_variants``)."""
    return tuple(BlockArch(kernel_size=k, expand_ratio=e, op_type=op, se_ratio=se, skip=skip)
                 for op in spec.op_types
                 for k, e, se, skip in itertools.product(spec.kernel_sizes, spec.allowed_expand_ratios(op),
                                                         spec.se_ratios, spec.skips))


@dataclass(frozen=True)
class GeneLayout:
    """Where each choice of a space sits in a genome."""

    space: SearchSpace
    names: tuple[str, ...]
    cardinality: np.ndarray          # choices per gene
    depth_gene: tuple[int, ...]      # per stage: the column of its depth
    width_gene: tuple[int, ...]      # per stage: the column of its width multiplier
    slot_genes: tuple[tuple[int, ...], ...]   # per stage: the columns of its block slots
    variants: tuple[tuple[BlockArch, ...], ...]  # per stage: block variants in gene order
    depths: tuple[np.ndarray, ...]   # per stage: depth of each depth gene value

    @property
    def length(self) -> int:
        return len(self.names)


_LAYOUTS: dict[SearchSpace, GeneLayout] = {}
_INDEXES: dict[SearchSpace, PlanIndex] = {}


def _slots(spec: StageSpec) -> int:
    return 1 if spec.shared_blocks else spec.max_depth


def gene_layout(space: SearchSpace) -> GeneLayout:
    """The genome layout of ``space`` (cached per space)."""
    layout = _LAYOUTS.get(space)
    if layout is not None:
        return layout
    names, cards = ["resolution"], [len(space.resolutions)]
    depth_gene, width_gene, slot_genes, variants = [], [], [], []
    for s, spec in enumerate(space.stages):
        depth_gene.append(len(names))
        names.append(f"s{s}.depth")
        cards.append(len(spec.depths))
        width_gene.append(len(names))
        names.append(f"s{s}.width_mult")
        cards.append(len(spec.width_mults))
        v = block_variants(spec)
        variants.append(v)
        slot_genes.append(tuple(range(len(names), len(names) + _slots(spec))))
        for b in range(_slots(spec)):
            names.append(f"s{s}.b{b}")
            cards.append(len(v))
    layout = GeneLayout(space=space, names=tuple(names), cardinality=np.asarray(cards, dtype=np.int64),
                        depth_gene=tuple(depth_gene), width_gene=tuple(width_gene), slot_genes=tuple(slot_genes),
                        variants=tuple(variants),
                        depths=tuple(np.asarray(spec.depths, dtype=np.int64) for spec in space.stages))
    _LAYOUTS[space] = layout
    return layout


def genomes_of(space: SearchSpace, archs: Iterable[Arch]) -> np.ndarray:
    """The canonical genomes of ``archs``, an ``(N, genes)`` int64 array (archs are validated)."""
    layout = gene_layout(space)
    res = {r: i for i, r in enumerate(space.resolutions)}
    depth = [{d: i for i, d in enumerate(spec.depths)} for spec in space.stages]
    width = [{w: i for i, w in enumerate(spec.width_mults)} for spec in space.stages]
    variant = [{b: i for i, b in enumerate(v)} for v in layout.variants]
    rows = []
    for arch in archs:
        validate(space, arch)
        row = [res[arch.resolution]]
        for s, stage in enumerate(arch.stages):
            row.append(depth[s][stage.depth])
            row.append(width[s][stage.width_mult])
            last = stage.depth - 1
            row += [variant[s][stage.blocks[min(b, last)]] for b in range(len(layout.slot_genes[s]))]
        rows.append(row)
    if not rows:
        return np.zeros((0, layout.length), dtype=np.int64)
    return np.asarray(rows, dtype=np.int64)


def _active_depths(layout: GeneLayout, genomes: np.ndarray) -> list[np.ndarray]:
    return [layout.depths[s][genomes[:, g]] for s, g in enumerate(layout.depth_gene)]


def canonical(space: SearchSpace, genomes: np.ndarray) -> np.ndarray:
    """``genomes`` with every inactive slot set to its stage's last active block (a copy): two genomes of the
    same arch become equal."""
    layout = gene_layout(space)
    out = np.array(genomes, dtype=np.int64, copy=True)
    rows = np.arange(out.shape[0])
    for s, d in enumerate(_active_depths(layout, out)):
        slots = layout.slot_genes[s]
        if len(slots) <= 1:
            continue
        last = np.asarray(slots)[d - 1]
        fill = out[rows, last]
        for b, g in enumerate(slots):
            inactive = d <= b
            out[inactive, g] = fill[inactive]
    return out


def archs_of(space: SearchSpace, genomes: np.ndarray) -> list[Arch]:
    """The archs of ``genomes`` (inactive slots ignored)."""
    layout = gene_layout(space)
    genomes = np.asarray(genomes, dtype=np.int64)
    if genomes.ndim != 2 or genomes.shape[1] != layout.length:
        raise ValueError(f"genomes of {space.name!r} have shape (N, {layout.length}); got {genomes.shape}")
    bad = (genomes < 0) | (genomes >= layout.cardinality)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise ValueError(f"genome {row}: gene {layout.names[col]!r} is {int(genomes[row, col])}, allowed "
                         f"0..{int(layout.cardinality[col]) - 1}")
    out = []
    for row in genomes.tolist():
        stages = []
        for s, spec in enumerate(space.stages):
            depth = spec.depths[row[layout.depth_gene[s]]]
            variants = layout.variants[s]
            slots = layout.slot_genes[s]
            if spec.shared_blocks:
                blocks = (variants[row[slots[0]]],) * depth
            else:
                blocks = tuple(variants[row[g]] for g in slots[:depth])
            stages.append(StageArch(blocks=blocks, width_mult=spec.width_mults[row[layout.width_gene[s]]]))
        out.append(Arch(space=space.name, resolution=space.resolutions[row[0]], stages=tuple(stages)))
    return out


def random_genomes(space: SearchSpace, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` uniformly random genomes: every choice uniform, as ``random_arch`` draws them (not canonical)."""
    layout = gene_layout(space)
    return (rng.random((n, layout.length)) * layout.cardinality).astype(np.int64)


class PlanIndex:
    """Every layer context of a space at one flat position, and each genome's layers as positions.

    ``values(stem, block, head)`` fills one array with a per-layer quantity: ``stem(p)`` of a network plan
    for the layers fixed by the resolution alone (the stem and, where the space has one, the fixed first
    block: ``p.blocks[0]`` with ``stage_index`` -1), ``block(b)`` of a block plan, ``head(p)`` for the
    head. ``positions(genomes)`` gives each genome's layers as indices into that array, inactive block
    positions pointing at a trailing zero; ``values[positions].sum(1)`` is then the network's total.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.layout = layout = gene_layout(space)
        stages = space.stages
        self.n_res = len(space.resolutions)
        base = _base_arch(space)
        self._fixed_plans: list[NetworkPlan] = []   # per resolution
        self._head_plans: list[NetworkPlan] = []    # per (resolution, last width)
        self._block_plans: list[BlockPlan] = []     # flat, in position order
        self._block_offset: list[list[int]] = []    # per stage: offset of block 0 and of blocks >= 1
        self._block_dims: list[tuple[int, int, int]] = []  # per stage: (previous widths, widths, variants)
        for r in space.resolutions:
            self._fixed_plans.append(plan(space, replace(base, resolution=r)))
        last = stages[-1]
        for r in space.resolutions:
            for w in last.width_mults:
                self._head_plans.append(plan(space, _with_stage(base, space, len(stages) - 1, w, None, r)))
        for s, spec in enumerate(stages):
            prev_widths = stages[s - 1].width_mults if s > 0 else (None,)
            variants = layout.variants[s]
            self._block_dims.append((len(prev_widths), len(spec.width_mults), len(variants)))
            firsts, others = [], []
            for r, wp, w, v in itertools.product(space.resolutions, prev_widths, spec.width_mults, variants):
                arch = _with_stage(base, space, s, w, v, r)
                if s > 0:
                    arch = _with_width(arch, s - 1, wp)
                blocks = [b for b in plan(space, arch).blocks if b.stage_index == s]
                firsts.append(blocks[0])
                others.append(blocks[1] if len(blocks) > 1 else blocks[0])
            offsets = [len(self._block_plans)]
            self._block_plans += firsts
            if spec.max_depth > 1:
                offsets.append(len(self._block_plans))
                self._block_plans += others
            self._block_offset.append(offsets)
        self.n_fixed = len(self._fixed_plans)
        self.n_head = len(self._head_plans)
        self.size = self.n_fixed + self.n_head + len(self._block_plans)   # the zero sits at index ``size``
        # Positions per genome: fixed, head, then every block slot of every stage (max_depth each).
        self.n_positions = 2 + sum(spec.max_depth for spec in stages)

    def values(self, stem: Callable[[NetworkPlan], float], block: Callable[[BlockPlan], float],
               head: Callable[[NetworkPlan], float], dtype=np.float64) -> np.ndarray:
        """The quantity at every position, plus a trailing 0 (the position of an inactive block)."""
        out = [stem(p) for p in self._fixed_plans] + [head(p) for p in self._head_plans]
        out += [block(b) for b in self._block_plans]
        return np.asarray(out + [0], dtype=dtype)

    def fixed_plans(self) -> list[NetworkPlan]:
        return list(self._fixed_plans)

    def head_plans(self) -> list[NetworkPlan]:
        return list(self._head_plans)

    def block_plans(self) -> list[BlockPlan]:
        return list(self._block_plans)

    def positions(self, genomes: np.ndarray) -> np.ndarray:
        """``(N, n_positions)`` int64 indices into ``values`` (inactive blocks: ``size``)."""
        layout, stages = self.layout, self.space.stages
        g = np.asarray(genomes, dtype=np.int64)
        n = g.shape[0]
        out = np.empty((n, self.n_positions), dtype=np.int64)
        r = g[:, 0]
        out[:, 0] = r
        last = len(stages) - 1
        out[:, 1] = self.n_fixed + r * len(stages[last].width_mults) + g[:, layout.width_gene[last]]
        base = self.n_fixed + self.n_head
        col = 2
        depths = _active_depths(layout, g)
        for s, spec in enumerate(stages):
            n_prev, n_w, n_v = self._block_dims[s]
            wp = g[:, layout.width_gene[s - 1]] if s > 0 else 0
            context = ((r * n_prev + wp) * n_w + g[:, layout.width_gene[s]]) * n_v
            slots = layout.slot_genes[s]
            for b in range(spec.max_depth):
                v = g[:, slots[0] if spec.shared_blocks else slots[b]]
                offset = self._block_offset[s][min(b, 1)]
                out[:, col] = np.where(depths[s] > b, base + offset + context + v, self.size)
                col += 1
        return out


def plan_index(space: SearchSpace) -> PlanIndex:
    """The ``PlanIndex`` of ``space`` (built once per space: a few hundred to a few thousand plans)."""
    index = _INDEXES.get(space)
    if index is None:
        index = _INDEXES[space] = PlanIndex(space)
    return index


def _base_arch(space: SearchSpace) -> Arch:
    stages = tuple(StageArch(blocks=(block_variants(spec)[0],) * spec.depths[0], width_mult=spec.width_mults[0])
                   for spec in space.stages)
    return validate(space, Arch(space=space.name, resolution=space.resolutions[0], stages=stages))


def _with_width(arch: Arch, s: int, width: float) -> Arch:
    stages = list(arch.stages)
    stages[s] = replace(stages[s], width_mult=width)
    return replace(arch, stages=tuple(stages))


def _with_stage(arch: Arch, space: SearchSpace, s: int, width: float, variant: BlockArch | None,
                resolution: int) -> Arch:
    """``arch`` at ``resolution`` with stage ``s`` at ``width``, its blocks all ``variant`` at the stage's
    largest depth (``None``: keep its blocks)."""
    stages = list(arch.stages)
    blocks = stages[s].blocks if variant is None else (variant,) * space.stages[s].max_depth
    stages[s] = StageArch(blocks=blocks, width_mult=width)
    return replace(arch, resolution=resolution, stages=tuple(stages))


def gather_sum(values: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Row sums of ``values[positions]`` (float64, or int64 for integer values)."""
    return values[positions].sum(axis=1)


def as_genomes(space: SearchSpace, archs_or_genomes: Sequence[Arch] | np.ndarray) -> np.ndarray:
    """Genomes as given, or those of a sequence of archs."""
    if isinstance(archs_or_genomes, np.ndarray) and archs_or_genomes.dtype.kind in "iu":
        return archs_or_genomes
    return genomes_of(space, archs_or_genomes)
