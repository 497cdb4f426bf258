"""The glue that hands ``supernets``' static builders to ``latency_predictors`` (which never imports
``supernets``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from search_spaces import Arch, BlockPlan, NetworkPlan, SearchSpace
from supernets.static import build, build_block, build_head, build_stem


class StaticBuilder:
    """``latency_predictors.LayerBuilder`` over ``supernets.static``: what is timed is what is deployed."""

    def stem(self, p: NetworkPlan) -> nn.Module:
        return build_stem(p)

    def block(self, p: BlockPlan) -> nn.Module:
        return build_block(p)

    def head(self, p: NetworkPlan) -> nn.Module:
        return build_head(p)

    def network(self, space: SearchSpace, arch: Arch) -> nn.Module:
        return build(space, arch)


def static_builder() -> StaticBuilder:
    return StaticBuilder()


def quantized_layer_measure(space: SearchSpace, device: Any, config: Any, precision: str = "int8") -> Any:
    """The measure function of ``device``'s table entries at ``precision``: each layer of ``space`` built by
    ``static_builder``, quantised as ``nas quantize`` quantises a subnet (``nas.quantize.quantize_layer``) and
    timed by ONNX Runtime in this process (``latency_predictors.lut.quantized_layer_measurer``; ``LatencyError``
    for a device that is not ONNX Runtime on the CPU). What ``nas latency build --precisions`` and ``nas run``
    time int8 entries with."""
    from latency_predictors.lut import quantized_layer_measurer
    from latency_predictors.measure import backend_for

    from .quantize import QUANTIZER_ID, quantize_layer

    return quantized_layer_measurer(static_builder(), backend_for(device), config, quantize_layer, device.batch_size,
                                    space, precision, QUANTIZER_ID)
