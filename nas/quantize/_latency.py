"""The quantised models the latency predictors time: lone layers (int8 lookup-table entries) and whole subnets
under a precision policy (``nas latency eval --precision int8|mixed``), quantised exactly as ``nas quantize``
quantises a trained subnet (``SubnetQuantizer``: the same pre-processing, calibration and QDQ settings).

Latency does not depend on the weights' values, only on the graph, so the subnets are built with fresh weights
(``supernets.static.build``, what the fp32 end-to-end measurements time) and calibrated on random images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from search_spaces import Arch, PrecisionPolicy, SearchSpace, plan, validate_policy

from ._images import ImageSet
from ._ptq import SubnetQuantizer, check_method, quantize_layer

if TYPE_CHECKING:
    from latency_predictors.layers import LayerBuilder

__all__ = ["LATENCY_CALIBRATION_IMAGES", "quantize_layer", "quantized_subnet_model"]

# Random images a subnet timed for latency is calibrated on (its ranges shape no accuracy here).
LATENCY_CALIBRATION_IMAGES = 16


def quantized_subnet_model(space: SearchSpace, arch: Arch, policy: PrecisionPolicy, *,
                           builder: LayerBuilder | None = None, method: str = "minmax",
                           images: int = LATENCY_CALIBRATION_IMAGES, seed: int = 0) -> bytes:
    """The ONNX model (bytes) of ``arch`` under ``policy`` as ``nas quantize`` writes it (deployed graph with
    the input normalisation, QDQ int8 for the int8 groups), with fresh weights from ``builder.network`` (default
    ``supernets.static.build``) and activation ranges calibrated on ``images`` seeded random images in [0, 1]."""
    from ..query import Normalization

    check_method(method)
    validate_policy(space, policy, arch)
    if builder is None:
        from ..latency_builders import static_builder

        builder = static_builder()
    net = builder.network(space, arch).eval()
    rng = np.random.default_rng(seed)
    r = arch.resolution
    calibration = ImageSet(rng.random((images, 3, r, r), dtype=np.float32), np.zeros(images, dtype=np.int64),
                           f"{images} random images (latency timing)")
    normalization = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "fixed (latency timing)")
    quantizer = SubnetQuantizer(net, plan(space, arch), r, normalization, calibration)
    return quantizer.quantize(policy, method)
