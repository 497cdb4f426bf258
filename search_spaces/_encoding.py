"""Fixed-length numeric encoding of archs, for predictors.

Every categorical choice with more than one option becomes a one-hot group; each stage has
``max_depth`` block slots (one slot when its blocks are shared), and slots beyond the depth are all
zero. The resolution is one-hot too. ``decode(space, encode(space, a)) == a``.
"""

from __future__ import annotations

import numpy as np

from ._arch import Arch, ArchError, BlockArch, StageArch, validate
from ._space import SearchSpace, StageSpec

# One group: (feature-name prefix, the allowed values).
_Group = tuple[str, tuple]


def _block_groups(spec: StageSpec) -> list[tuple[str, tuple]]:
    groups: list[tuple[str, tuple]] = []
    for field_name, values in (("op_type", spec.op_types), ("kernel_size", spec.kernel_sizes),
                               ("expand_ratio", spec.expand_ratios), ("se_ratio", spec.se_ratios),
                               ("skip", spec.skips)):
        if len(values) > 1:
            groups.append((field_name, values))
    return groups


def _slots(spec: StageSpec) -> int:
    return 1 if spec.shared_blocks else spec.max_depth


def encoding_names(space: SearchSpace) -> list[str]:
    """One readable name per feature, in encoding order."""
    names = [f"resolution={r}" for r in space.resolutions] if len(space.resolutions) > 1 else []
    for s, spec in enumerate(space.stages):
        if len(spec.depths) > 1:
            names += [f"s{s}.depth={d}" for d in spec.depths]
        if len(spec.width_mults) > 1:
            names += [f"s{s}.width_mult={w:g}" for w in spec.width_mults]
        for b in range(_slots(spec)):
            for field_name, values in _block_groups(spec):
                names += [f"s{s}.b{b}.{field_name}={v}" for v in values]
    return names


def encoding_length(space: SearchSpace) -> int:
    return len(encoding_names(space))


def _one_hot(values: tuple, value) -> list[float]:
    return [1.0 if v == value else 0.0 for v in values]


def encode(space: SearchSpace, arch: Arch) -> np.ndarray:
    """The fixed-length float32 vector of ``arch``."""
    validate(space, arch)
    out: list[float] = []
    if len(space.resolutions) > 1:
        out += _one_hot(space.resolutions, arch.resolution)
    for spec, stage in zip(space.stages, arch.stages):
        if len(spec.depths) > 1:
            out += _one_hot(spec.depths, stage.depth)
        if len(spec.width_mults) > 1:
            out += _one_hot(spec.width_mults, stage.width_mult)
        for b in range(_slots(spec)):
            block = stage.blocks[b] if b < stage.depth else None
            for field_name, values in _block_groups(spec):
                if block is None:
                    out += [0.0] * len(values)
                elif field_name == "expand_ratio" and block.op_type != "mbconv":
                    out += [0.0] * len(values)
                else:
                    out += _one_hot(values, getattr(block, field_name))
    return np.asarray(out, dtype=np.float32)


def encode_many(space: SearchSpace, archs) -> np.ndarray:
    """Stack the encodings of several archs into an (N, encoding_length) array."""
    rows = [encode(space, a) for a in archs]
    return np.stack(rows) if rows else np.zeros((0, encoding_length(space)), dtype=np.float32)


class _Reader:
    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector
        self.pos = 0

    def take(self, values: tuple):
        chunk = self.vector[self.pos:self.pos + len(values)]
        self.pos += len(values)
        if len(chunk) != len(values):
            raise ArchError("encoding is shorter than the space's encoding length")
        if not chunk.any():
            return None
        return values[int(np.argmax(chunk))]


def decode(space: SearchSpace, vector: np.ndarray) -> Arch:
    """Inverse of ``encode`` (argmax per one-hot group)."""
    vector = np.asarray(vector, dtype=np.float32).ravel()
    if vector.shape[0] != encoding_length(space):
        raise ArchError(f"encoding has length {vector.shape[0]}; space {space.name!r} needs "
                        f"{encoding_length(space)}")
    reader = _Reader(vector)
    resolution = reader.take(space.resolutions) if len(space.resolutions) > 1 else space.resolutions[0]
    stages = []
    for spec in space.stages:
        depth = reader.take(spec.depths) if len(spec.depths) > 1 else spec.depths[0]
        width = reader.take(spec.width_mults) if len(spec.width_mults) > 1 else spec.width_mults[0]
        blocks = []
        for _ in range(_slots(spec)):
            values = {name: reader.take(choices) for name, choices in _block_groups(spec)}
            if values and all(v is None for k, v in values.items() if k != "expand_ratio"):
                blocks.append(None)
                continue
            op = values.get("op_type") or spec.op_types[0]
            expand = values.get("expand_ratio") if op == "mbconv" else 1.0
            if expand is None:
                expand = spec.allowed_expand_ratios(op)[0]
            blocks.append(BlockArch(
                kernel_size=values.get("kernel_size") or spec.kernel_sizes[0],
                expand_ratio=expand,
                op_type=op,
                se_ratio=values["se_ratio"] if "se_ratio" in values else spec.se_ratios[0],
                skip=values["skip"] if "skip" in values else spec.skips[0],
            ))
        if depth is None or width is None or resolution is None:
            raise ArchError("encoding has an empty one-hot group for depth, width or resolution")
        if spec.shared_blocks:
            if blocks[0] is None:
                raise ArchError(f"encoding has no block choices for stage {spec.name!r}")
            active = (blocks[0],) * depth
        else:
            if any(b is None for b in blocks[:depth]):
                raise ArchError(f"encoding has an empty block inside the depth of stage {spec.name!r}")
            active = tuple(blocks[:depth])
        stages.append(StageArch(blocks=active, width_mult=width))
    return validate(space, Arch(space=space.name, resolution=resolution, stages=tuple(stages)))


# --- batches of genomes (``search_spaces._genome``) --------------------------------------------------------

_COLUMNS: dict[SearchSpace, tuple] = {}


def _genome_columns(space: SearchSpace) -> tuple:
    """Per gene value, the feature columns ``encode`` sets to 1 (``length`` where it sets none)."""
    cached = _COLUMNS.get(space)
    if cached is not None:
        return cached
    from ._genome import gene_layout

    layout = gene_layout(space)
    index = {name: i for i, name in enumerate(encoding_names(space))}
    none = len(index)

    def col(name: str) -> int:
        return index.get(name, none)

    res = np.asarray([col(f"resolution={r}") for r in space.resolutions], dtype=np.int64)
    stages = []
    for s, spec in enumerate(space.stages):
        depth = np.asarray([col(f"s{s}.depth={d}") for d in spec.depths], dtype=np.int64)
        width = np.asarray([col(f"s{s}.width_mult={w:g}") for w in spec.width_mults], dtype=np.int64)
        groups = _block_groups(spec)
        slots = []
        for b in range(_slots(spec)):
            rows = []
            for block in layout.variants[s]:
                row = []
                for field_name, _ in groups:
                    if field_name == "expand_ratio" and block.op_type != "mbconv":
                        row.append(none)
                    else:
                        row.append(col(f"s{s}.b{b}.{field_name}={getattr(block, field_name)}"))
                rows.append(row)
            slots.append(np.asarray(rows, dtype=np.int64).reshape(len(rows), len(groups)))
        stages.append((depth, width, slots))
    cached = _COLUMNS[space] = (none, res, tuple(stages))
    return cached


def encode_genomes(space: SearchSpace, genomes: np.ndarray, dtype=np.float32) -> np.ndarray:
    """``encode_many`` of the archs of ``genomes`` (``search_spaces._genome``), built as one array:
    ``encode_genomes(space, genomes_of(space, archs)) == encode_many(space, archs)`` exactly (``dtype``: of the
    result; the values are 0 and 1 in any)."""
    from ._genome import gene_layout

    layout = gene_layout(space)
    g = np.asarray(genomes, dtype=np.int64)
    none, res, stages = _genome_columns(space)
    n = g.shape[0]
    parts = [res[g[:, 0]][:, None]]
    for s, (depth, width, slots) in enumerate(stages):
        d_gene = g[:, layout.depth_gene[s]]
        parts += [depth[d_gene][:, None], width[g[:, layout.width_gene[s]]][:, None]]
        d = layout.depths[s][d_gene]
        for b, cols in enumerate(slots):
            chosen = cols[g[:, layout.slot_genes[s][b]]]
            parts.append(np.where((d > b)[:, None], chosen, none))
    cols = np.concatenate(parts, axis=1)
    out = np.zeros((n, none + 1), dtype=dtype)
    out[np.arange(n)[:, None], cols] = 1.0
    return out[:, :none]
