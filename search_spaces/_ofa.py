"""Once-for-All MobileNetV3 spaces, and conversion from/to OFA's subnet configs."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from ._arch import Arch, ArchError, BlockArch, StageArch, validate
from ._registry import register_space
from ._space import SearchSpace, StageSpec, make_divisible

# OFA MobileNetV3-Large layout: (width, stride, activation, squeeze-excite) of the five elastic stages.
_OFA_STAGES = (
    (24, 2, "relu", False),
    (40, 2, "relu", True),
    (80, 2, "hswish", False),
    (112, 1, "hswish", True),
    (160, 2, "hswish", True),
)
OFA_DEPTHS = (2, 3, 4)
OFA_KERNELS = (3, 5, 7)
OFA_EXPANDS = (3.0, 4.0, 6.0)


def _ofa_space(name: str, width_mult: float, strides: Sequence[int], stem_stride: int,
               resolutions: Sequence[int], num_classes: int, description: str) -> SearchSpace:
    def scaled(channels: int) -> int:
        return make_divisible(channels * width_mult, 8)

    stages = tuple(
        StageSpec(
            name=f"stage{i + 1}",
            width=scaled(width),
            stride=stride,
            depths=OFA_DEPTHS,
            kernel_sizes=OFA_KERNELS,
            expand_ratios=OFA_EXPANDS,
            se_ratios=(0.25,) if se else (0.0,),
            activation=activation,
        )
        for i, ((width, _, activation, se), stride) in enumerate(zip(_OFA_STAGES, strides))
    )
    return SearchSpace(
        name=name,
        family="ofa_mbv3",
        description=description,
        stem_channels=scaled(16),
        stem_stride=stem_stride,
        stem_activation="hswish",
        stages=stages,
        resolutions=tuple(resolutions),
        first_block_channels=scaled(16),
        final_expand_channels=scaled(960),
        feature_channels=scaled(1280),
        head_activation="hswish",
        num_classes=num_classes,
        dropout=0.1,
    )


@register_space
def ofa_mbv3_w10() -> SearchSpace:
    return _ofa_space("ofa_mbv3_w1.0", 1.0, (2, 2, 2, 1, 2), 2, range(128, 225, 4), 1000,
                      "Once-for-All MobileNetV3 (w1.0) for ImageNet: 5 stages, depth 2-4, kernel 3/5/7, "
                      "expand 3/4/6, resolution 128-224")


@register_space
def ofa_mbv3_w12() -> SearchSpace:
    return _ofa_space("ofa_mbv3_w1.2", 1.2, (2, 2, 2, 1, 2), 2, range(128, 225, 4), 1000,
                      "Once-for-All MobileNetV3 (w1.2) for ImageNet: widths x1.2 (stem 24, head 1152/1536)")


@register_space
def ofa_mbv3_cifar() -> SearchSpace:
    # 32x32 inputs: stride-1 stem and first stage, so the last feature map is 4x4 at resolution 32.
    return _ofa_space("ofa_mbv3_cifar", 1.0, (1, 2, 2, 1, 2), 1, (24, 28, 32), 10,
                      "Once-for-All MobileNetV3 adapted to 32x32 inputs (stride-1 stem and first stage), "
                      "10 classes")


def _max_depth(space: SearchSpace) -> int:
    return max(s.max_depth for s in space.stages)


def _number(value: Any, key: str, *, integral: bool, allowed: Sequence[Any] = ()) -> float:
    """``value`` as a finite number (a whole one when ``integral``); ``ArchError`` naming ``key`` otherwise."""
    kind = "a whole number" if integral else "a number"
    where = f"; allowed: {', '.join(map(str, allowed))}" if allowed else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArchError(f"OFA config {key!r} must be {kind}, got {value!r}{where}")
    number = float(value)
    if not math.isfinite(number) or (integral and not number.is_integer()):
        raise ArchError(f"OFA config {key!r} must be {kind}, got {value!r}{where}")
    return number


def _numbers(values: Any, key: str, count: int, space: SearchSpace, *, integral: bool) -> list[float]:
    """The list ``values`` of ``count`` finite numbers; ``ArchError`` naming ``key`` otherwise."""
    if isinstance(values, str | bytes | Mapping) or not isinstance(values, Sequence):
        raise ArchError(f"OFA config {key!r} must be a list of {count} numbers for {space.name!r}, got {values!r}")
    if len(values) != count:
        raise ArchError(f"OFA config {key!r} has {len(values)} entries; {space.name!r} needs {count}")
    return [_number(v, f"{key}[{i}]", integral=integral) for i, v in enumerate(values)]


def from_ofa_config(space: SearchSpace, config: Mapping[str, Any], resolution: int | None = None) -> Arch:
    """Convert OFA's ``{"ks": [...], "e": [...], "d": [...], "r": ...}`` into an ``Arch`` of ``space``.

    ``ks`` and ``e`` hold one entry per block slot (stages x max depth, 20 for OFA MobileNetV3); slots
    beyond a stage's depth are ignored. The resolution comes from ``r`` (an int or a one-element list),
    else ``resolution``, else the space's largest.
    """
    if space.family != "ofa_mbv3":
        raise ArchError(f"OFA configs only describe ofa_mbv3 spaces, not {space.name!r}")
    slots = _max_depth(space)
    n_stages = len(space.stages)
    missing = [k for k in ("ks", "e", "d") if k not in config]
    if missing:
        raise ArchError(f"OFA config lacks {', '.join(missing)}; it needs ks, e, d (and optionally r)")
    ds = _numbers(config["d"], "d", n_stages, space, integral=True)
    ks = _numbers(config["ks"], "ks", n_stages * slots, space, integral=True)
    es = _numbers(config["e"], "e", n_stages * slots, space, integral=False)
    r = config.get("r", resolution)
    if isinstance(r, (list, tuple)):
        if len(r) != 1:
            raise ArchError(f"OFA config 'r' must hold one resolution, got {r}")
        r = r[0]
    r = space.resolutions[-1] if r is None else int(_number(r, "r", integral=True, allowed=space.resolutions))
    stages = []
    for s, (spec, depth) in enumerate(zip(space.stages, ds)):
        if depth not in spec.depths:
            raise ArchError(f"OFA config d[{s}]={depth:g} is not allowed; allowed: {spec.depths}")
        blocks = tuple(
            BlockArch(kernel_size=int(ks[s * slots + b]), expand_ratio=float(es[s * slots + b]),
                      op_type="mbconv", se_ratio=spec.se_ratios[0], skip=True)
            for b in range(int(depth))
        )
        stages.append(StageArch(blocks=blocks))
    return validate(space, Arch(space=space.name, resolution=r, stages=tuple(stages)))


def to_ofa_config(space: SearchSpace, arch: Arch) -> dict[str, Any]:
    """The OFA config of ``arch``; inactive slots repeat the stage's last active block, as OFA stores them."""
    validate(space, arch)
    if space.family != "ofa_mbv3":
        raise ArchError(f"OFA configs only describe ofa_mbv3 spaces, not {space.name!r}")
    slots = _max_depth(space)
    ks: list[int] = []
    es: list[int | float] = []
    for stage in arch.stages:
        padded = list(stage.blocks) + [stage.blocks[-1]] * (slots - stage.depth)
        ks += [b.kernel_size for b in padded]
        es += [int(b.expand_ratio) if float(b.expand_ratio).is_integer() else b.expand_ratio for b in padded]
    return {"ks": ks, "e": es, "d": list(arch.depths), "r": [arch.resolution]}
