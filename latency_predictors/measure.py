"""The measurement protocol and its backends.

One protocol for every backend: warm up, time ``repeats`` runs, reject outliers (beyond 3 IQR of the
quartiles), report the median with its spread (IQR / median). When the spread is above
``noise_threshold`` the whole series is measured again (up to ``retries`` times, the least noisy series
is kept) and a warning is issued if it stays noisy.

Backends turn a ``torch.nn.Module`` and an input shape into a zero-argument callable that runs one
inference:

- ``torch``: eager PyTorch under ``torch.inference_mode`` with ``torch.set_num_threads(threads)``;
- ``onnxruntime``: the module exported to ONNX (legacy TorchScript exporter, weights inline), run by an
  ``InferenceSession`` with ``intra_op_num_threads=threads`` on the CPU provider;
- ``torch_compile``: ``torch.compile`` of the eager module (slow first call; warm-up absorbs it).

On a CUDA accelerator (``accelerator="cuda:<i>"``) the module and its input live on the GPU (cuDNN picks its
fastest kernels during warm-up) and each run times itself with CUDA events recorded around it on the
current stream, then waits for the end event: the reported time is the GPU's, from the first kernel's
queueing to the last one's end, host launch gaps included. ONNX Runtime runs there through its CUDA
provider with the input and output bound on the GPU (no host copies timed).

Call ``configure_allocator()`` in the measuring process before any torch work (glibc otherwise maps
and frees the large buffers on every run, which makes CPU timings noisy).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import io
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import nn

BACKENDS = ("torch", "onnxruntime", "torch_compile")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_allocator_configured = False
CLOCKS = {"wall": time.perf_counter, "thread_cpu": time.thread_time}


class NoisyMeasurementWarning(UserWarning):
    """A measurement's spread stayed above the noise threshold after re-measuring."""


def configure_allocator() -> bool:
    """Keep glibc from returning large buffers to the OS between runs (idempotent).

    Returns False where glibc is not available (the setting then does not apply).
    """
    global _allocator_configured
    if _allocator_configured:
        return True
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    _allocator_configured = True
    return True


@dataclass(frozen=True, slots=True)
class MeasureConfig:
    """How much to run: the protocol's knobs."""

    # Untimed runs before timing (also absorbs lazy initialisation and compilation).
    warmup: int = 5
    # Timed runs per series.
    repeats: int = 30
    # Spread (IQR / median) above which the series is measured again.
    noise_threshold: float = 0.05
    # Extra series measured when the spread is too high.
    retries: int = 2
    # Lower bound on the time spent in one series; short layers get more repeats.
    min_series_s: float = 0.0
    # Quantile of the kept samples reported as the latency: 0.5 (the median) by default; a low quantile
    # (0.1-0.25) is more repeatable on a machine shared with other work, whose load only adds time.
    quantile: float = 0.5
    # End-to-end only: time a fixed reference network in every round and report latencies relative to it,
    # scaled by the reference's first measured latency (cancels a machine-wide slow-down from other work).
    load_reference: bool = False
    # "wall" (elapsed time, the latency a user sees) or "thread_cpu" (CPU time of the calling thread:
    # only for one-thread backends, where inference runs on that thread; it leaves out the time the
    # thread waits for a core, so it stays repeatable on a machine shared with other work).
    clock: str = "wall"

    def __post_init__(self) -> None:
        if self.clock not in CLOCKS:
            raise ValueError(f"unknown clock {self.clock!r}; allowed: {', '.join(CLOCKS)}")


@dataclass(frozen=True, slots=True)
class Measurement:
    """The result of one measured series, in milliseconds."""

    # The reported latency: the configured quantile of the kept samples (the median by default).
    latency_ms: float
    median_ms: float
    # (Q3 - Q1) / median over the kept samples.
    spread: float
    # Samples kept and rejected as outliers.
    kept: int
    rejected: int
    # Whether the spread stayed above the threshold.
    noisy: bool = False
    # Load-referenced measurements: the latency in units of the reference workload, and the reference's
    # latency (ms) in the same rounds (``latency_ms = relative * reference_ms``).
    relative: float | None = None
    reference_ms: float | None = None

    def to_dict(self) -> dict[str, float | int | bool]:
        data = {"latency_ms": self.latency_ms, "median_ms": self.median_ms, "spread": self.spread,
                "kept": self.kept, "rejected": self.rejected, "noisy": self.noisy}
        if self.relative is not None and self.reference_ms is not None:
            data.update(relative=self.relative, reference_ms=self.reference_ms)
        return data


def summarize(samples_ms: np.ndarray | list[float], quantile: float = 0.5) -> Measurement:
    """Latency (``quantile``), median and spread of timings after rejecting outliers beyond 3 IQR of the
    quartiles."""
    x = np.asarray(samples_ms, dtype=float)
    if x.size == 0:
        raise ValueError("no samples to summarize")
    q1, q3 = np.percentile(x, [25, 75])
    iqr = q3 - q1
    keep = (x >= q1 - 3 * iqr) & (x <= q3 + 3 * iqr)
    kept = x[keep]
    median = float(np.median(kept))
    k1, k3 = np.percentile(kept, [25, 75])
    spread = float((k3 - k1) / median) if median > 0 else 0.0
    return Measurement(latency_ms=float(np.quantile(kept, quantile)), median_ms=median, spread=spread,
                       kept=int(kept.size), rejected=int((~keep).sum()))


class SelfTimed:
    """A run that times itself and returns its time in ms (CUDA events); the protocol uses that time
    instead of its clock."""

    def __init__(self, run: Callable[[], float]) -> None:
        self.run = run

    def __call__(self) -> float:
        return self.run()


def _time_once(run: Callable[[], object], clock: Callable[[], float]) -> float:
    if isinstance(run, SelfTimed):
        return run()
    t0 = clock()
    run()
    return (clock() - t0) * 1e3


def time_callable(run: Callable[[], object], config: MeasureConfig) -> Measurement:
    """Apply the protocol to ``run``: warm up, timed series, outlier rejection, noise check."""
    for _ in range(config.warmup):
        run()
    best: Measurement | None = None
    clock = CLOCKS[config.clock]
    for _attempt in range(1 + max(0, config.retries)):
        samples: list[float] = []
        start = time.perf_counter()
        while len(samples) < config.repeats or time.perf_counter() - start < config.min_series_s:
            samples.append(_time_once(run, clock))
            if len(samples) >= 20 * config.repeats:
                break
        result = summarize(samples, config.quantile)
        if best is None or result.spread < best.spread:
            best = result
        if best.spread <= config.noise_threshold:
            return best
    assert best is not None
    warnings.warn(f"measurement stayed noisy: spread {best.spread:.1%} > {config.noise_threshold:.1%} "
                  f"(median {best.median_ms:.3f} ms)", NoisyMeasurementWarning, stacklevel=2)
    return replace(best, noisy=True)


def time_interleaved(runs: list[Callable[[], object]], config: MeasureConfig, rounds: int = 6,
                     reference: Callable[[], object] | None = None) -> list[Measurement]:
    """The protocol for several callables at once, interleaved: each round times a slice of every
    callable's repeats in turn, so a burst of load from elsewhere on the machine spreads over all of them
    instead of biasing one. Callables that stay noisy are measured again alone (``time_callable``).

    With a ``reference`` (a fixed workload timed in every round too), each sample is divided by the
    reference's median in its round: the results are then in units of the reference (dimensionless), and
    a slow-down of the whole machine cancels out. The last element returned is the reference itself, in ms.
    """
    timed = [*runs, reference] if reference is not None else list(runs)
    for run in timed:
        for _ in range(config.warmup):
            run()
    per_round = max(1, -(-config.repeats // rounds))
    samples: list[list[list[float]]] = [[] for _ in timed]
    clock = CLOCKS[config.clock]
    for _ in range(rounds):
        for run, out in zip(timed, samples):
            out.append([_time_once(run, clock) for _ in range(per_round)])
    if reference is not None:
        ref_round = [float(np.median(r)) for r in samples[-1]]
        flat = [[t / ref_round[k] for k, times in enumerate(out) for t in times] for out in samples[:-1]]
        results = [summarize(x, config.quantile) for x in flat]
        return [*results, summarize([t for times in samples[-1] for t in times], config.quantile)]
    results = []
    for run, out in zip(runs, samples):
        m = summarize([t for times in out for t in times], config.quantile)
        if m.spread > config.noise_threshold and config.retries > 0:
            again = time_callable(run, replace(config, warmup=1, retries=config.retries - 1))
            m = again if again.spread < m.spread else m
        results.append(m)
    return results


# --- backends -------------------------------------------------------------------------------------


class Backend:
    """Turns a module and an input shape into a callable that runs one inference.

    Implementations set ``name`` and implement ``prepare``; ``threads`` is the number of intra-op threads,
    ``accelerator`` where the inference runs (``cpu`` or ``cuda:<i>``).
    """

    name = ""

    def __init__(self, threads: int = 1, accelerator: str = "cpu") -> None:
        self.threads = threads
        self.accelerator = accelerator

    @property
    def on_cuda(self) -> bool:
        return self.accelerator.startswith("cuda")

    def prepare(self, module: nn.Module, input_shape: tuple[int, ...]) -> Callable[[], object]:
        raise NotImplementedError

    def _torch_run(self, module: nn.Module, input_shape: tuple[int, ...]) -> Callable[[], object]:
        """One inference of ``module`` (already eval) under ``torch.inference_mode``; self-timed on CUDA."""
        import torch

        torch.set_num_threads(self.threads)
        if not self.on_cuda:
            x = torch.randn(*input_shape)

            def run() -> object:
                with torch.inference_mode():
                    return module(x)

            return run
        device = torch.device(self.accelerator)
        torch.backends.cudnn.benchmark = True
        x = torch.randn(*input_shape, device=device)

        def forward() -> None:
            with torch.inference_mode():
                module(x)

        return cuda_timed(forward, device)


def cuda_timed(forward: Callable[[], object], device: Any) -> SelfTimed:
    """``forward`` timed with CUDA events on the device's current stream (ms), synchronised after each run."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)

    def run() -> float:
        stream = torch.cuda.current_stream(device)
        start.record(stream)
        forward()
        end.record(stream)
        end.synchronize()
        return float(start.elapsed_time(end))

    return SelfTimed(run)


class TorchBackend(Backend):
    name = "torch"

    def prepare(self, module: nn.Module, input_shape: tuple[int, ...]) -> Callable[[], object]:
        return self._torch_run(module.eval().to(self.accelerator), input_shape)


class TorchCompileBackend(Backend):
    name = "torch_compile"

    def prepare(self, module: nn.Module, input_shape: tuple[int, ...]) -> Callable[[], object]:
        import torch

        return self._torch_run(torch.compile(module.eval().to(self.accelerator)), input_shape)


def export_onnx(module: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """The ONNX bytes of ``module`` in eval mode (legacy exporter: fast and needs no external files)."""
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval().cpu(), (torch.randn(*input_shape),), buffer, dynamo=False,
                          input_names=["input"], output_names=["output"], opset_version=17)
    return buffer.getvalue()


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def prepare(self, module: nn.Module, input_shape: tuple[int, ...]) -> Callable[[], object]:
        import onnxruntime as ort

        model = export_onnx(module, input_shape)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        x = np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)
        if not self.on_cuda:
            session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
            feed = {"input": x}

            def run() -> object:
                return session.run(None, feed)

            return run
        import torch

        index = torch.device(self.accelerator).index or 0
        session = ort.InferenceSession(model, options, providers=[("CUDAExecutionProvider", {"device_id": index})])
        binding = session.io_binding()
        binding.bind_ortvalue_input("input", ort.OrtValue.ortvalue_from_numpy(x, "cuda", index))
        binding.bind_output("output", "cuda", index)

        def forward() -> None:
            session.run_with_iobinding(binding)

        return cuda_timed(forward, torch.device(self.accelerator))


# Quantises a lone layer's ONNX model (float input ``input`` of the given shape) into the model to time: the
# caller hands it in (``nas.quantize.quantize_layer``, ONNX Runtime QDQ), as it hands in the ``LayerBuilder``.
QuantizeFn = Callable[[bytes, tuple[int, ...]], bytes]


def onnx_model_run(model: bytes, input_shape: tuple[int, ...], threads: int = 1, seed: int = 0
                   ) -> Callable[[], object]:
    """One inference of an ONNX ``model`` (bytes; a quantised one too) on the CPU provider, configured as
    ``OnnxRuntimeBackend`` configures its sessions, fed seeded standard-normal input of ``input_shape`` on its
    first input (whatever its name)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(seed).standard_normal(input_shape).astype(np.float32)
    feed = {session.get_inputs()[0].name: x}

    def run() -> object:
        return session.run(None, feed)

    return run


class QuantizedOnnxRuntimeBackend(Backend):
    """``onnxruntime`` on the CPU with each module quantised before it is timed: exported as
    ``OnnxRuntimeBackend`` exports it, then ``quantize(model, input_shape)`` (int8 lookup-table entries)."""

    name = "onnxruntime"

    def __init__(self, threads: int = 1, accelerator: str = "cpu", quantize: QuantizeFn | None = None,
                 precision: str = "int8") -> None:
        super().__init__(threads, accelerator)
        if quantize is None:
            raise ValueError("a quantised backend needs the function that quantises a layer's ONNX model")
        if self.on_cuda:
            raise ValueError(f"{precision} layers are timed by ONNX Runtime on the CPU, not on {accelerator}")
        self.quantize = quantize
        self.precision = precision

    def prepare(self, module: nn.Module, input_shape: tuple[int, ...]) -> Callable[[], object]:
        return onnx_model_run(self.quantize(export_onnx(module, input_shape), input_shape), input_shape,
                              self.threads)


def quantized_backend(backend: Backend, quantize: QuantizeFn, precision: str = "int8") -> Backend:
    """``backend`` (which must be ``onnxruntime`` on the CPU) timing each module quantised by ``quantize``;
    ``ValueError`` naming the backend otherwise (only ONNX Runtime runs the quantised models)."""
    if backend.name != "onnxruntime" or backend.on_cuda:
        where = backend.name + ("" if not backend.on_cuda else f" on {backend.accelerator}")
        raise ValueError(f"{precision} entries are timed only by the onnxruntime backend on the CPU (devices "
                         f"local-...-ort), not by {where}")
    return QuantizedOnnxRuntimeBackend(backend.threads, backend.accelerator, quantize, precision)


_BACKEND_CLASSES: dict[str, type[Backend]] = {
    "torch": TorchBackend,
    "onnxruntime": OnnxRuntimeBackend,
    "torch_compile": TorchCompileBackend,
}


def get_backend(name: str, threads: int = 1, accelerator: str = "cpu") -> Backend:
    """The backend called ``name`` (one of ``BACKENDS``) on ``accelerator`` (``cpu`` or ``cuda:<i>``)."""
    if name not in _BACKEND_CLASSES:
        raise ValueError(f"unknown backend {name!r}; allowed: {', '.join(BACKENDS)}")
    return _BACKEND_CLASSES[name](threads, accelerator)


def backend_for(device: Any) -> Backend:
    """The backend that times a local ``devices.Device`` (its backend, threads and accelerator)."""
    return get_backend(device.backend or "", device.threads, getattr(device, "accelerator", "cpu"))


def check_clock(config: MeasureConfig, threads: int, accelerator: str = "cpu") -> None:
    """The thread CPU clock only measures one-thread inference on the CPU."""
    if config.clock == "thread_cpu" and accelerator != "cpu":
        raise ValueError(f"clock 'thread_cpu' cannot time a {accelerator} device (its work is not on this "
                         f"thread); use 'wall' (CUDA devices time themselves with CUDA events)")
    if config.clock == "thread_cpu" and threads != 1:
        raise ValueError(f"clock 'thread_cpu' needs a one-thread device, not {threads} threads; use 'wall'")


def measure_module(module: nn.Module, input_shape: tuple[int, ...], backend: Backend,
                   config: MeasureConfig | None = None) -> Measurement:
    """Latency of one inference of ``module`` on an input of ``input_shape`` under ``backend``."""
    configure_allocator()
    check_clock(config or MeasureConfig(), backend.threads, backend.accelerator)
    return time_callable(backend.prepare(module, input_shape), config or MeasureConfig())


@contextlib.contextmanager
def device_lock(path: str | os.PathLike[str], timeout_s: float | None = None, *, what: str = "device",
                notice_after_s: float = 1.0) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock on ``path`` so measurements on one device never overlap.

    Blocks until the lock is free (or raises ``TimeoutError`` after ``timeout_s``). While held, the file names
    its holder (pid and host), so a process that has waited ``notice_after_s`` says once, on stderr, whom it
    waits for (``what`` names the lock in that line) instead of hanging silently.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        start = time.monotonic()
        told = False
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - start
                if timeout_s is not None and waited > timeout_s:
                    raise TimeoutError(f"{what} lock {path} is held by {lock_holder(path)}") from None
                if not told and waited >= notice_after_s:
                    print(f"waiting for the {what} lock {path}, held by {lock_holder(path)}", file=sys.stderr,
                          flush=True)
                    told = True
                time.sleep(0.05)
        try:
            handle.truncate(0)  # "a+": the write lands at the (new) end, the start
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            handle.flush()
        except OSError:  # naming the holder is a courtesy; the lock itself is held
            pass
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                handle.truncate(0)
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def lock_holder(path: str | os.PathLike[str]) -> str:
    """Who holds the ``device_lock`` at ``path`` (``pid N on HOST``), as far as its file tells."""
    try:
        return Path(path).read_text(encoding="utf-8").strip() or "another process"
    except (OSError, UnicodeDecodeError):
        return "another process"
