"""Architecture values: what one subnet of a space chooses, and their validation."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ._space import SearchSpace, StageSpec


class ArchError(ValueError):
    """An architecture that is not part of its space; the message names field, value and allowed values."""


@dataclass(frozen=True, slots=True)
class BlockArch:
    """The choices of one block."""

    kernel_size: int
    expand_ratio: float = 1.0
    op_type: str = "mbconv"
    se_ratio: float = 0.0
    skip: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "op_type": self.op_type,
            "kernel_size": int(self.kernel_size),
            "expand_ratio": float(self.expand_ratio),
            "se_ratio": float(self.se_ratio),
            "skip": bool(self.skip),
        }


@dataclass(frozen=True, slots=True)
class StageArch:
    """The choices of one stage: its active blocks (``depth`` of them) and its width multiplier."""

    blocks: tuple[BlockArch, ...]
    width_mult: float = 1.0

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def to_dict(self) -> dict[str, Any]:
        return {"width_mult": float(self.width_mult), "blocks": [b.to_dict() for b in self.blocks]}


@dataclass(frozen=True, slots=True)
class Arch:
    """One subnet of a named space. Frozen and hashable; ``arch_id`` is stable across processes."""

    space: str
    resolution: int
    stages: tuple[StageArch, ...]

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(s.depth for s in self.stages)

    @property
    def num_blocks(self) -> int:
        return sum(self.depths)

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-ready form (the input of ``arch_id``)."""
        return {
            "space": self.space,
            "resolution": int(self.resolution),
            "stages": [s.to_dict() for s in self.stages],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Arch:
        """Inverse of ``to_dict``; raises ``ArchError`` on a malformed dict (not on an invalid arch)."""
        try:
            stages = tuple(
                StageArch(
                    blocks=tuple(
                        BlockArch(
                            kernel_size=int(b["kernel_size"]),
                            expand_ratio=float(b["expand_ratio"]),
                            op_type=str(b["op_type"]),
                            se_ratio=float(b["se_ratio"]),
                            skip=bool(b["skip"]),
                        )
                        for b in s["blocks"]
                    ),
                    width_mult=float(s["width_mult"]),
                )
                for s in data["stages"]
            )
            return cls(space=str(data["space"]), resolution=int(data["resolution"]), stages=stages)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArchError(f"malformed arch dict: {exc!r}") from exc

    @property
    def arch_id(self) -> str:
        """A 16-hex-digit hash of the canonical form."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _fmt(values: tuple[Any, ...]) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _check(where: str, name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ArchError(f"{where} {name}={value!r} is not allowed; allowed: {_fmt(allowed)}")


def _validate_block(where: str, spec: StageSpec, block: BlockArch) -> None:
    _check(where, "op_type", block.op_type, spec.op_types)
    _check(where, "kernel_size", block.kernel_size, spec.kernel_sizes)
    _check(where, "expand_ratio", block.expand_ratio, spec.allowed_expand_ratios(block.op_type))
    _check(where, "se_ratio", block.se_ratio, spec.se_ratios)
    _check(where, "skip", block.skip, spec.skips)


def validate(space: SearchSpace, arch: Arch) -> Arch:
    """Return ``arch`` if it belongs to ``space``; raise ``ArchError`` naming the first bad field."""
    if arch.space != space.name:
        raise ArchError(f"arch belongs to space {arch.space!r}, not {space.name!r}")
    _check("arch", "resolution", arch.resolution, space.resolutions)
    if len(arch.stages) != len(space.stages):
        raise ArchError(f"arch has {len(arch.stages)} stages; space {space.name!r} has {len(space.stages)}")
    for index, (spec, stage) in enumerate(zip(space.stages, arch.stages)):
        where = f"stage {index} ({spec.name})"
        _check(where, "depth", stage.depth, spec.depths)
        _check(where, "width_mult", stage.width_mult, spec.width_mults)
        for b, block in enumerate(stage.blocks):
            _validate_block(f"{where} block {b}", spec, block)
        if spec.shared_blocks and len(set(stage.blocks)) > 1:
            raise ArchError(f"{where}: all blocks must be identical in space {space.name!r}")
    return arch
