"""The MnasNet factorized hierarchical space (Tan et al., CVPR 2019).

Seven blocks over the MobileNetV2 skeleton; each block chooses its operator, kernel, squeeze-excite
ratio, skip, filter-size ratio and number of layers, and all layers of a block are identical.
"""

from __future__ import annotations

from ._registry import register_space
from ._space import SearchSpace, StageSpec

# MobileNetV2 skeleton: (width, stride, base number of layers).
_MBV2_BLOCKS = ((16, 1, 1), (24, 2, 2), (32, 2, 3), (64, 2, 4), (96, 1, 3), (160, 2, 3), (320, 1, 1))


@register_space
def mnasnet() -> SearchSpace:
    stages = tuple(
        StageSpec(
            name=f"block{i + 1}",
            width=width,
            stride=stride,
            depths=tuple(sorted({max(1, base - 1), base, base + 1})),
            kernel_sizes=(3, 5),
            expand_ratios=(3.0, 6.0),
            # Ordered by cost for equal channels: depthwise-separable < inverted residual < regular conv.
            op_types=("sepconv", "mbconv", "conv"),
            se_ratios=(0.0, 0.25),
            skips=(False, True),
            width_mults=(0.75, 1.0, 1.25),
            activation="relu",
            shared_blocks=True,
        )
        for i, (width, stride, base) in enumerate(_MBV2_BLOCKS)
    )
    return SearchSpace(
        name="mnasnet",
        family="mnasnet",
        description="MnasNet factorized hierarchical space: 7 blocks over MobileNetV2, per-block op "
                    "(conv / sepconv / mbconv e3, e6), kernel 3/5, SE 0/0.25, skip, width x0.75-1.25, "
                    "layers base-1..base+1",
        stem_channels=32,
        stem_stride=2,
        stem_activation="relu",
        stages=stages,
        resolutions=(224,),  # MnasNet searches the network at a fixed 224 x 224 input
        feature_channels=1280,
        head_activation="relu",
        num_classes=1000,
        dropout=0.2,
    )
