"""Running a (quantised) subnet in ONNX Runtime on the CPU: outputs, top-1, latency, and the check of the
int8 kernels against the fake-quantised graph."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from latency_predictors.measure import MeasureConfig, Measurement, time_callable, time_interleaved

from ._images import ImageSet

__all__ = ["DEFAULT_MEASURE", "FAKE_QUANT_TOLERANCE", "fake_quant_agreement", "latencies_ms", "logits", "session",
           "top1"]

INPUT = "image"
# One thread, on the calling thread's CPU clock: repeatable on a machine shared with other work (the
# protocol's ``thread_cpu`` clock; ONNX Runtime with one intra-op thread runs on the calling thread).
DEFAULT_MEASURE = MeasureConfig(warmup=10, repeats=60, clock="thread_cpu", quantile=0.25)
# How far ONNX Runtime's int8 kernels may be from the fake-quantised graph (QuantizeLinear / DequantizeLinear
# evaluated as float ops, everything else in float32), as the mean absolute logit difference: at most this
# share of the quantisation error the graph simulates (mean |fake-quantised - fp32|), or one step of the
# output's quantisation scale when that is larger (a nearly lossless policy). Integer kernels requantise
# each layer's accumulator where the float graph rounds the float result: the two differ by at most one
# step per layer, carried to the output by the layers after it, so they stay well below the quantisation
# error itself (measured: a quarter of it on a trained digits subnet, an eighth on an untrained one); a
# kernel computing something else would not.
FAKE_QUANT_TOLERANCE = 0.5


def session(model: bytes, threads: int = 1, optimize: bool = True) -> Any:
    """An ONNX Runtime CPU session of ``model``: ``threads`` intra-op threads, sequential; ``optimize``
    False runs the graph as written (no fusion into integer kernels: Q/DQ pairs stay float ops)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def logits(model: bytes | Any, images: ImageSet | np.ndarray, batch_size: int = 256, threads: int = 0,
           optimize: bool = True) -> np.ndarray:
    """The model's logits on ``images`` (a session or model bytes; ``threads`` 0: ONNX Runtime's default)."""
    run = session(model, threads, optimize) if isinstance(model, bytes) else model
    x = images.images if isinstance(images, ImageSet) else images
    out = [run.run(None, {INPUT: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def top1(model: bytes | Any, images: ImageSet, batch_size: int = 256, threads: int = 0) -> float:
    """Top-1 accuracy (fraction) of the model on ``images`` (``threads`` 0: ONNX Runtime's default)."""
    if len(images) == 0:
        return float("nan")
    return float(np.mean(logits(model, images, batch_size, threads).argmax(1) == images.labels))


def _output_scale(model: bytes) -> float | None:
    """The scale of the last DequantizeLinear feeding the graph output (None: the output is not quantised)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(model).graph
    consts = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    node = producers.get(graph.output[0].name)
    seen = 0
    while node is not None and seen < 8:  # walk back through float ops (Gemm's DQ output, Flatten...)
        if node.op_type == "DequantizeLinear" and node.input[1] in consts:
            return float(np.max(numpy_helper.to_array(consts[node.input[1]])))
        node, seen = producers.get(node.input[0]), seen + 1
    return None


def fake_quant_agreement(model: bytes, images: ImageSet | np.ndarray, fp32: bytes | None = None
                         ) -> dict[str, float]:
    """How the int8 kernels ONNX Runtime fuses a QDQ graph into compare with the fake-quantised reference
    (the same graph run unoptimised: Q/DQ as float ops).

    Returns the mean and max absolute logit differences (also in steps of the output's scale), top-1
    agreement, and with ``fp32`` (the unquantised model) the quantisation error the reference simulates
    (mean |reference - fp32|), the ``allowed`` mean difference (``FAKE_QUANT_TOLERANCE`` times that, at
    least one output step) and whether the kernels are ``within`` it.
    """
    reference = logits(model, images, optimize=False)
    got = logits(model, images, optimize=True)
    if not got.size:
        return {"mean_abs_diff": 0.0, "max_abs_diff": 0.0, "output_scale": 0.0, "steps": 0.0,
                "top1_agreement": 1.0, "within": 1.0}
    diff = np.abs(got - reference)
    scale = _output_scale(model) or max(1e-12, float(np.max(np.abs(reference))) / 127)
    out = {"mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max()), "output_scale": scale,
           "steps": float(diff.max()) / scale, "mean_steps": float(diff.mean()) / scale,
           "top1_agreement": float(np.mean(got.argmax(1) == reference.argmax(1)))}
    if fp32 is not None:
        error = float(np.mean(np.abs(reference - logits(fp32, images))))
        allowed = max(FAKE_QUANT_TOLERANCE * error, scale)
        out.update({"quantization_error": error, "allowed": allowed, "within": float(out["mean_abs_diff"] <= allowed)})
    return out


def _runner(model: bytes, example: np.ndarray, threads: int) -> Any:
    run = session(model, threads)
    feed = {INPUT: example}
    run.run(None, feed)
    return lambda: run.run(None, feed)


def latencies_ms(models: Sequence[bytes], resolution: int, config: MeasureConfig = DEFAULT_MEASURE,
                 threads: int = 1, example: np.ndarray | None = None) -> list[Measurement]:
    """End-to-end latency of each model on one image in ONNX Runtime CPU with ``threads`` threads, by the
    project's protocol; several models are timed interleaved, so load from elsewhere spreads over all."""
    x = example if example is not None else \
        np.random.default_rng(0).random((1, 3, resolution, resolution), dtype=np.float32)
    runs = [_runner(m, x, threads) for m in models]
    if len(runs) == 1:
        return [time_callable(runs[0], config)]
    return time_interleaved(runs, config)
