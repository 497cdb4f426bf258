"""Post-training static quantisation of one subnet through ONNX Runtime (QDQ), under any precision policy.

The subnet is exported as deployed (``NormalizedSubnet``: RGB in [0, 1], normalisation inside), pre-processed
by ONNX Runtime (shape inference, constant folding, BN folded into convolutions) and its nodes named by
layer group. Activation ranges are calibrated once per method on training images and kept (ONNX Runtime's
calibration cache), so each policy costs only the rewrite of the graph: int8 groups get QuantizeLinear /
DequantizeLinear pairs around their nodes (weights symmetric int8 per output channel, activations 8-bit
asymmetric), fp32 groups are left out (``nodes_to_exclude``).

Activations are unsigned 8-bit (U8S8): on x86 ONNX Runtime fuses U8S8 QDQ into ``QLinearConv`` with
VNNI / VPMADDUBSW kernels, while S8S8 keeps half the convolutions in float between Q/DQ pairs; measured on
this machine, S8S8 ran 2.8x (smallest ``ofa_mbv3_cifar`` subnet) to 5.7x (largest) slower than U8S8.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from search_spaces import NetworkPlan, PrecisionPolicy

from ..errors import UsageError
from ..search_config import QUANTIZATION_METHODS
from ._groups import name_nodes, nodes_to_exclude
from ._images import ImageSet

if TYPE_CHECKING:
    import onnx
    from torch import nn

    from ..query import Normalization

__all__ = ["CALIBRATION_METHODS", "QUANTIZER_ID", "SubnetQuantizer", "calibrate_ranges", "preprocess", "qdq_quantize",
           "quantize_layer", "unshare_initializers"]

# What a quantised model of hwnas is: QDQ, int8 per-channel weights, uint8 activations, every Conv / Gemm with its
# own initializers, calibrated by ``_CALIBRATOR_OPTIONS``. Kept with every cached quantised timing and accuracy
# (``latency_predictors.workflow.measure_quantized``, ``nas.accuracy.AccuracyCache``): change it whenever the
# models built change, and what was measured of the earlier ones is measured again instead of reused.
QUANTIZER_ID = "qdq-u8s8-per-channel-2"

# Calibration methods by the names hwnas uses (ONNX Runtime's ``CalibrationMethod`` members).
CALIBRATION_METHODS = QUANTIZATION_METHODS  # one list, in nas.search_config (parsed with the config)
_ORT_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
CALIBRATION_BATCH = 32
# Calibrator settings. Entropy (TensorRT's KL threshold): ONNX Runtime's default of 128 histogram bins for
# 128 quantised bins leaves one candidate threshold, the full range (= MinMax); 512 bins give it 193 to
# choose from. Percentile: ONNX Runtime's defaults (2048 bins, 99.999th percentile, symmetric ranges).
_CALIBRATOR_OPTIONS: dict[str, dict[str, Any]] = {
    "minmax": {}, "entropy": {"num_bins": 512, "num_quantized_bins": 128}, "percentile": {}}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantisation tools log warnings through the root logger (biases of folded BNs that
    are not initializers, pre-processing advice) and print calibration progress; nothing a user acts on."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


class _Reader:
    """ONNX Runtime's ``CalibrationDataReader`` over batches of one input (an ``ImageSet``'s, or any arrays)."""

    def __init__(self, batches: Iterable[np.ndarray], input_name: str = "image") -> None:
        self._batches = iter(list(batches))
        self._input = input_name

    def get_next(self) -> dict[str, Any] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input: batch}


def _reader(images: ImageSet | Iterable[np.ndarray], input_name: str = "image") -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(_Reader, CalibrationDataReader):
        pass

    batches = images.batches(CALIBRATION_BATCH) if isinstance(images, ImageSet) else images
    return Reader(batches, input_name)


def preprocess(raw: bytes) -> onnx.ModelProto:
    """ONNX Runtime's pre-processing for quantisation (shape inference, constant folding, BN folded into
    convolutions) of an fp32 model, every node named (``name_nodes``)."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="hwnas-quant-") as folder, _quiet():
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "fp32_pre.onnx"
        source.write_bytes(raw)
        quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
        model = onnx.load(str(target))
    return name_nodes(unshare_initializers(model))


# The ops whose weights and biases are given their own initializers (``unshare_initializers``).
_WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def unshare_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every convolution / matrix product its own copy of each weight or bias initializer an earlier node
    also reads (in place; returns ``model``). Other shared constants (activations' scalars) stay shared:
    copying those too made uniform int8 subnets about 6% slower.

    The exporter stores equal tensors once (a fresh subnet's BN-folded biases are all zeros), so an fp32 node
    of a mixed policy can share its bias with an int8 node; quantising that node replaces the initializer by
    a DequantizeLinear output, and the fp32 convolution, left with a bias that is not a constant, loses ONNX
    Runtime's NCHWc kernels: measured 1.77 ms instead of about 0.1 ms for one 7x7 depthwise convolution at
    32 x 32, a whole mixed subnet 2-2.6x slower than both fp32 and int8 (issue 15, item 3)."""
    import onnx

    initializers = {t.name: t for t in model.graph.initializer}
    taken = set(initializers) | {v for n in model.graph.node for v in n.output}
    seen: set[str] = set()
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            if name not in initializers or node.op_type not in _WEIGHTED or index == 0:
                continue
            if name not in seen:
                seen.add(name)
                continue
            copy_name, k = f"{name}_copy", 1
            while copy_name in taken:
                copy_name, k = f"{name}_copy{k}", k + 1
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[name])
            copy.name = copy_name
            model.graph.initializer.append(copy)
            taken.add(copy_name)
            node.input[index] = copy_name
    return model


def calibrate_ranges(fp32: bytes, data: ImageSet | Iterable[np.ndarray], method: str = "minmax",
                     input_name: str = "image") -> str:
    """The activation ranges of ``method`` over ``data`` fed to ``fp32``'s input ``input_name`` (ONNX
    Runtime's calibration cache, JSON): every tensor a quantised node could read or write."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

    check_method(method)
    with tempfile.TemporaryDirectory(prefix="hwnas-calib-") as folder, _quiet():
        source = Path(folder) / "fp32.onnx"
        source.write_bytes(fp32)
        calibrator = create_calibrator(source, None, str(Path(folder) / "augmented.onnx"),
                                       getattr(CalibrationMethod, _ORT_METHODS[method]),
                                       extra_options=_CALIBRATOR_OPTIONS[method])
        calibrator.collect_data(_reader(data, input_name))
        save_tensors_data(calibrator.compute_data(), Path(folder) / "ranges.json")
        return (Path(folder) / "ranges.json").read_text(encoding="utf-8")


def qdq_quantize(fp32: bytes, ranges: str, method: str = "minmax", exclude: Iterable[str] = ()) -> bytes:
    """The QDQ model of ``fp32`` with ``ranges`` (``calibrate_ranges``): hwnas's one quantisation setting --
    weights int8 symmetric per output channel, activations uint8 asymmetric per tensor (U8S8, fused into
    integer kernels on x86) -- every node quantised but those named in ``exclude``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory(prefix="hwnas-quant-") as folder, _quiet():
        source, target, cache = (Path(folder) / n for n in ("fp32.onnx", "qdq.onnx", "ranges.json"))
        source.write_bytes(fp32)
        cache.write_text(ranges, encoding="utf-8")
        quantize_static(str(source), str(target), None, quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=False, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                        calibrate_method=getattr(CalibrationMethod, _ORT_METHODS[method]),
                        calibration_cache_path=str(cache))
        return target.read_bytes()


# Random inputs a lone layer is calibrated on (its ranges only shape the timing, not an accuracy).
LAYER_CALIBRATION_BATCHES = 4


def quantize_layer(model: bytes, input_shape: tuple[int, ...], method: str = "minmax", seed: int = 0) -> bytes:
    """A lone layer's ONNX model (one float input) quantised as ``SubnetQuantizer`` quantises a subnet's int8
    groups: pre-processed, calibrated on standard-normal inputs of ``input_shape`` (seeded), QDQ with
    ``qdq_quantize``'s settings. What a lookup table's int8 entry times."""
    import onnx

    fp32 = preprocess(model)
    name = fp32.graph.input[0].name
    fp32_bytes = fp32.SerializeToString()
    rng = np.random.default_rng(seed)
    batches = [rng.standard_normal(input_shape).astype(np.float32) for _ in range(LAYER_CALIBRATION_BATCHES)]
    quantized = qdq_quantize(fp32_bytes, calibrate_ranges(fp32_bytes, batches, method, name), method)
    onnx.load_from_string(quantized)  # a model ONNX can read back
    return quantized


def check_method(method: str) -> str:
    if method not in CALIBRATION_METHODS:
        raise UsageError(f"calibration method {method!r} is not allowed; allowed: {', '.join(CALIBRATION_METHODS)}")
    return method


def _prepared_fp32(net: nn.Module, resolution: int, normalization: Normalization, metadata: dict[str, Any]
                   ) -> onnx.ModelProto:
    """The deployed fp32 graph of ``net``, pre-processed for quantisation, every node named by its group."""
    import onnx
    import torch

    from ..query import _input_sentence, _normalized_subnet_class, _onnx_bytes

    wrapped = _normalized_subnet_class()(net.eval().cpu(), normalization.mean, normalization.std).eval()
    example = torch.rand(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    metadata = {"input": _input_sentence(resolution, "N"), "mean": list(normalization.mean),
                "std": list(normalization.std), "resolution": int(resolution), **metadata}
    raw = _onnx_bytes(wrapped, example, metadata)
    model = preprocess(raw)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {p.key: p.value for p in onnx.load_from_string(raw).metadata_props})
    return model


class SubnetQuantizer:
    """One subnet's deployed fp32 graph and its calibrated activation ranges: the QDQ model of any policy.

    Args:
        net: the subnet (BN recalibrated, eval mode), taking normalised images.
        plan: its ``NetworkPlan`` (``search_spaces.plan(space, arch)``): maps graph nodes to layer groups.
        resolution: the side of its input images.
        normalization: the mean and std ``net`` expects (the graph takes RGB in [0, 1]).
        calibration: training images in [0, 1] at ``resolution`` to calibrate activation ranges on.
        metadata: recorded in the model's ``metadata_props`` (JSON-able values).
    """

    def __init__(self, net: nn.Module, plan: NetworkPlan, resolution: int, normalization: Normalization,
                 calibration: ImageSet, metadata: dict[str, Any] | None = None) -> None:
        self.plan = plan
        self.resolution = resolution
        self.calibration = calibration
        self.fp32_model = _prepared_fp32(net, resolution, normalization, dict(metadata or {}))
        self.fp32 = self.fp32_model.SerializeToString()
        self.node_names = [n.name for n in self.fp32_model.graph.node]
        self._ranges: dict[str, str] = {}
        self._cache: dict[tuple[str, tuple[str, ...]], bytes] = {}

    def ranges(self, method: str) -> str:
        """The activation ranges of ``method`` on the calibration images (ONNX Runtime's calibration cache,
        JSON), computed on the first call: every tensor a quantised node could read or write."""
        check_method(method)
        if method not in self._ranges:
            self._ranges[method] = calibrate_ranges(self.fp32, self.calibration, method)
        return self._ranges[method]

    def _quantize(self, method: str, exclude: list[str]) -> bytes:
        return qdq_quantize(self.fp32, self.ranges(method), method, exclude)

    def quantize(self, policy: PrecisionPolicy, method: str = "minmax") -> bytes:
        """The ONNX model of ``policy``: QDQ int8 for its int8 groups, fp32 elsewhere (the fp32 graph itself
        when no group is int8). Activation ranges are calibrated on the first call per ``method``."""
        check_method(method)
        if "int8" not in policy.precisions:
            return self.fp32
        exclude = nodes_to_exclude(self.node_names, self.plan, policy)
        key = (method, tuple(exclude))
        if key not in self._cache:
            self._cache[key] = self._quantize(method, exclude)
        return self._cache[key]
