"""Short, human-readable arch strings that round-trip.

Grammar (only the dimensions a space lets vary are written)::

    arch   := "r" RESOLUTION ("/" stage)+
    stage  := ["w" WIDTH_MULT ":"] (blocks | "d" DEPTH ":" block)   # the second form: identical blocks;
                                                                      # "w" needed where the width varies
    blocks := block ("," block)*                                      # one token per active block
    block  := token ("_" token)*
    token  := "conv" | "sep" | "mb"        operator (mbconv, sepconv, conv)
            | "k" KERNEL                   kernel size
            | "e" EXPAND                   expansion ratio (mbconv only)
            | "se" RATIO                   squeeze-excite ratio (0 = none)
            | "id" | "noid"                identity shortcut where shapes allow, or none
    (each field at most once per block)

Example (``ofa_mbv3_w1.0``): ``r224/k3_e6,k5_e4/k7_e3,k3_e3,k5_e6/...`` -- five stages, one token per block.
Example (``mnasnet``): ``r224/w1.25:d2:mb_k5_e6_se0.25_id/...``.
"""

from __future__ import annotations

from ._arch import Arch, ArchError, BlockArch, StageArch, _check, validate
from ._space import SearchSpace, StageSpec

_OP_TOKENS = {"conv": "conv", "sepconv": "sep", "mbconv": "mb"}
_TOKEN_OPS = {v: k for k, v in _OP_TOKENS.items()}


def _num(value: float) -> str:
    return f"{value:g}"


def _block_token(spec: StageSpec, block: BlockArch) -> str:
    parts = []
    if len(spec.op_types) > 1:
        parts.append(_OP_TOKENS[block.op_type])
    if len(spec.kernel_sizes) > 1:
        parts.append(f"k{block.kernel_size}")
    if block.op_type == "mbconv" and len(spec.expand_ratios) > 1:
        parts.append(f"e{_num(block.expand_ratio)}")
    if len(spec.se_ratios) > 1:
        parts.append(f"se{_num(block.se_ratio)}")
    if len(spec.skips) > 1:
        parts.append("id" if block.skip else "noid")
    return "_".join(parts) or "b"


def arch_to_string(space: SearchSpace, arch: Arch) -> str:
    """The short string of ``arch`` (validated against ``space``)."""
    validate(space, arch)
    out = [f"r{arch.resolution}"]
    for spec, stage in zip(space.stages, arch.stages):
        prefix = f"w{_num(stage.width_mult)}:" if len(spec.width_mults) > 1 else ""
        if spec.shared_blocks:
            out.append(f"{prefix}d{stage.depth}:{_block_token(spec, stage.blocks[0])}")
        else:
            out.append(prefix + ",".join(_block_token(spec, b) for b in stage.blocks))
    return "/".join(out)


def _parse_number(token: str, prefix: str, where: str) -> float:
    try:
        return float(token[len(prefix):])
    except ValueError:
        raise ArchError(f"{where}: cannot read a number from token {token!r}") from None


def _parse_int(token: str, prefix: str, where: str) -> int:
    """The whole number after ``prefix`` (plain digits: ``k3.5`` is not kernel 3, ``d2_0`` not depth 20)."""
    digits = token[len(prefix):]
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 9:  # more digits: no space has such sizes
        raise ArchError(f"{where}: cannot read a whole number from token {token!r}")
    return int(digits)


def _parse_block(spec: StageSpec, text: str, where: str) -> BlockArch:
    op = spec.op_types[0] if len(spec.op_types) == 1 else None
    kernel = spec.kernel_sizes[0] if len(spec.kernel_sizes) == 1 else None
    expand: float | None = None
    se = spec.se_ratios[0] if len(spec.se_ratios) == 1 else None
    skip = spec.skips[0] if len(spec.skips) == 1 else None
    given: dict[str, str] = {}  # field -> the token that gave it
    for token in text.split("_") if text != "b" else []:
        if token in _TOKEN_OPS:
            name, op = "operator", _TOKEN_OPS[token]
        elif token in ("id", "noid"):
            name, skip = "shortcut", token == "id"
        elif token.startswith("se"):
            name, se = "se ratio", _parse_number(token, "se", where)
        elif token.startswith("k"):
            name, kernel = "kernel size", _parse_int(token, "k", where)
        elif token.startswith("e"):
            name, expand = "expand ratio", _parse_number(token, "e", where)
        else:
            raise ArchError(f"{where}: unknown token {token!r} in block {text!r}; "
                            "tokens: conv, sep, mb, k<int>, e<num>, se<num>, id, noid")
        if name in given:
            raise ArchError(f"{where}: block {text!r} gives its {name} twice ({given[name]!r} and {token!r}); "
                            f"give each once")
        given[name] = token
    missing = [name for name, v in (("op", op), ("kernel", kernel), ("se", se), ("skip", skip)) if v is None]
    if missing:
        raise ArchError(f"{where}: block {text!r} does not give {', '.join(missing)}")
    assert op is not None and kernel is not None and se is not None and skip is not None
    if expand is None:
        allowed = spec.allowed_expand_ratios(op)
        if len(allowed) > 1:
            raise ArchError(f"{where}: block {text!r} does not give its expand ratio (e<num>)")
        expand = allowed[0]
    return BlockArch(kernel_size=kernel, expand_ratio=expand, op_type=op, se_ratio=se, skip=skip)


def arch_from_string(space: SearchSpace, text: str) -> Arch:
    """Parse an arch string of ``space``; raise ``ArchError`` naming the bad part."""
    parts = text.strip().split("/")
    if not parts[0].startswith("r"):
        raise ArchError(f"arch string must start with r<resolution>, got {parts[0]!r}")
    try:
        resolution = _parse_int(parts[0], "r", "arch string")
    except ArchError:
        raise ArchError(f"cannot read the resolution from {parts[0]!r}") from None
    if len(parts) - 1 != len(space.stages):
        raise ArchError(f"arch string has {len(parts) - 1} stages; space {space.name!r} has "
                        f"{len(space.stages)} (separate stages with '/')")
    stages = []
    for index, (spec, token) in enumerate(zip(space.stages, parts[1:])):
        where = f"stage {index} ({spec.name})"
        width = spec.width_mults[0]
        if token.startswith("w"):
            head, _, token = token.partition(":")
            width = _parse_number(head, "w", where)
        elif len(spec.width_mults) > 1:
            raise ArchError(f"{where}: stage {token!r} does not give its width multiplier; start it with "
                            f"w<num>: (allowed: {', '.join(map(_num, spec.width_mults))})")
        if spec.shared_blocks:
            head, _, body = token.partition(":")
            if not head.startswith("d") or not body:
                raise ArchError(f"{where}: expected d<depth>:<block>, got {token!r}")
            depth = _parse_int(head, "d", where)
            _check(where, "depth", depth, spec.depths)  # before the blocks are repeated that many times
            blocks = (_parse_block(spec, body, where),) * depth
        else:
            if not token:
                raise ArchError(f"{where}: no blocks given")
            blocks = tuple(_parse_block(spec, b, f"{where} block {i}") for i, b in enumerate(token.split(",")))
        stages.append(StageArch(blocks=blocks, width_mult=width))
    return validate(space, Arch(space=space.name, resolution=resolution, stages=tuple(stages)))
