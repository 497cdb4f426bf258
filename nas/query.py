"""Querying a run's fronts, and exporting a chosen subnet (ONNX checked against PyTorch, or a state dict)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import sqlite3
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from search_spaces import READ_ERRORS, reading

from .errors import UsageError
from .fronts import FrontMember, FrontStore, Measurement, ReferencePoint, get_front_store
from .search import run_path, search_paths

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["EXPORT_SUFFIXES", "check_min_accuracy", "export_member", "export_subnet", "open_fronts", "query_front",
           "subnet_of"]

EXPORT_SUFFIXES = (".onnx", ".pt")
ONNX_TOLERANCE = 1e-4


_FRONTS_REMEDY = "move it away and run `nas search CONFIG` again to rewrite the fronts from the run's study"
# What SQLite and the rows it returns raise for a damaged store: not a database, a malformed image, a
# row whose arch or numbers do not parse.
_FRONT_READ_ERRORS = (*READ_ERRORS, sqlite3.DatabaseError)


class _CheckedFrontStore(FrontStore):
    """A run's front store whose reads raise ``DamagedFileError`` naming the file when it is damaged
    (truncated, not a database, a bad row). (Until ``SQLiteFrontStore`` raises it itself.)"""

    def __init__(self, path: Path, run_root: Path) -> None:
        self.path = path
        self.run_root = run_root
        with self._reading():
            self._store = get_front_store(path, create=False)

    def _reading(self):
        return reading(self.path, "front store", _FRONTS_REMEDY, _FRONT_READ_ERRORS)

    def _read(self, method: Callable[..., Any], *args: Any) -> Any:
        with self._reading():
            return method(*args)

    def front(self, device: str) -> list[FrontMember]:
        with self._reading():
            members = self._store.front(device)
            for m in members:  # a bad row: numbers that are not numbers
                if not (0.0 <= float(m.val_accuracy) <= 1.0 and float(m.latency_ms) > 0):
                    raise ValueError(f"member {m.arch_id} of {device!r} has accuracy {m.val_accuracy!r} and "
                                     f"latency {m.latency_ms!r} ms")
        # Checkpoints are stored relative to the run folder (older stores: absolute): resolve them here.
        return [dataclasses.replace(m, checkpoint=str(self.run_root / m.checkpoint))
                if m.checkpoint and not Path(m.checkpoint).is_absolute() else m for m in members]

    def devices(self) -> list[str]:
        return self._read(self._store.devices)

    def references(self, device: str) -> list[ReferencePoint]:
        return self._read(self._store.references, device)

    def measurements(self, device: str) -> list[Measurement]:
        return self._read(self._store.measurements, device)

    def get_meta(self, key: str, default: Any = None) -> Any:
        return self._read(self._store.get_meta, key, default)

    # Writes pass through: their failures (a locked database) are not damage.
    def write_front(self, device: str, members: Sequence[FrontMember]) -> None:
        self._store.write_front(device, members)

    def write_references(self, device: str, points: Sequence[ReferencePoint]) -> None:
        self._store.write_references(device, points)

    def write_measurements(self, measurements: Sequence[Measurement]) -> None:
        self._store.write_measurements(measurements)

    def set_meta(self, key: str, value: Any) -> None:
        self._store.set_meta(key, value)

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        return self._store.transaction()


def open_fronts(run_dir: Any) -> FrontStore:
    """The run's front store; a run without one is a ``UsageError``, a damaged one (truncated, not a
    database, a bad row) a ``DamagedFileError`` naming it, when it is opened or read."""
    path = search_paths(run_dir).fronts
    if not path.exists():
        if not run_path(run_dir).exists():
            raise UsageError(f"no run folder {str(run_path(run_dir))!r}")
        raise UsageError(f"run {str(run_path(run_dir))!r} has no fronts (fronts/fronts.sqlite); "
                         f"run `nas search` first")
    return _CheckedFrontStore(path, run_path(run_dir))


def check_min_accuracy(min_accuracy: float | None) -> None:
    """``UsageError`` unless ``min_accuracy`` is None or a finite fraction in [0, 1]."""
    if min_accuracy is None or (math.isfinite(min_accuracy) and 0.0 <= min_accuracy <= 1.0):
        return
    hint = (f"; {min_accuracy:g} looks like a percentage: use {min_accuracy / 100:g}"
            if math.isfinite(min_accuracy) and 1.0 < min_accuracy <= 100.0 else "")
    raise UsageError(f"--min-accuracy must be a validation accuracy as a fraction in [0, 1] (e.g. 0.9); got "
                     f"{min_accuracy:g}{hint}")


def query_front(run_dir: Any, device: str, max_latency_ms: float, min_accuracy: float | None = None, *,
                store: FrontStore | None = None) -> FrontMember:
    """The most accurate front member of ``device`` whose latency is at most ``max_latency_ms``.

    Latency is the measured one where the run re-measured its fronts, else the predicted one; accuracy
    is validation accuracy (fraction). Raises ``UsageError`` naming the feasible range when the budget is
    below the fastest member, naming the devices for an unknown device, and naming the best reachable
    accuracy when ``min_accuracy`` cannot be met within the budget.
    """
    check_min_accuracy(min_accuracy)
    store = store or open_fronts(run_dir)
    devices = store.devices()
    if device not in devices:
        raise UsageError(f"unknown device {device!r} for this run; devices with a front: "
                         f"{', '.join(devices) or 'none'}")
    if not max_latency_ms > 0:
        raise UsageError(f"--max-latency-ms must be positive; got {max_latency_ms}")
    front = store.front(device)
    fastest, slowest = front[0], front[-1]
    within = [m for m in front if m.latency_ms <= max_latency_ms]
    if not within:
        raise UsageError(f"no subnet on {device} meets {max_latency_ms:g} ms; the front spans "
                         f"{fastest.latency_ms:.3f} ms (fastest, accuracy {fastest.val_accuracy:.4f}) to "
                         f"{slowest.latency_ms:.3f} ms (most accurate, accuracy {slowest.val_accuracy:.4f})")
    best = max(within, key=lambda m: (m.val_accuracy, -m.latency_ms))
    if min_accuracy is not None and best.val_accuracy < min_accuracy:
        reach = [m for m in front if m.val_accuracy >= min_accuracy]
        hint = (f"; accuracy {min_accuracy:g} needs at least {reach[0].latency_ms:.3f} ms" if reach
                else f"; no member reaches it (best {slowest.val_accuracy:.4f})")
        raise UsageError(f"no subnet on {device} within {max_latency_ms:g} ms reaches accuracy {min_accuracy:g}: "
                         f"the best within the budget has {best.val_accuracy:.4f}{hint}")
    return best


def _onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17)
    return buffer.getvalue()


def export_subnet(model: nn.Module, resolution: int, out: str | os.PathLike[str], *,
                  metadata: dict[str, Any] | None = None, seed: int = 0,
                  tolerance: float = ONNX_TOLERANCE) -> dict[str, Any]:
    """Write ``model`` (eval mode) to ``out`` atomically: ``.onnx`` or ``.pt``.

    ``.onnx``: exported with a dynamic batch axis, then run by ONNX Runtime on random inputs and compared
    with PyTorch; the file is written only when the largest absolute difference is at most ``tolerance``
    (times the largest output magnitude when that is above 1, or four times PyTorch's own float32 error
    against float64 when that is larger still).
    ``.pt``: ``{"state_dict", **metadata}`` (loadable with ``torch.load(weights_only=True)``; rebuild with
    ``supernets.build(space, Arch.from_dict(arch))`` and ``load_state_dict``).

    Returns a summary (path, format, and for ONNX the measured max abs difference).
    """
    import torch

    from .io import atomic_write_bytes

    path = Path(out)
    if path.suffix not in EXPORT_SUFFIXES:
        raise UsageError(f"cannot export to {str(path)!r}: the file name must end in {' or '.join(EXPORT_SUFFIXES)}")
    model = model.eval()
    if path.suffix == ".pt":
        buffer = io.BytesIO()
        torch.save({"format": "hwnas-subnet-1", **(metadata or {}),
                    "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, buffer)
        atomic_write_bytes(path, buffer.getvalue())
        return {"path": str(path), "format": "pt"}
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(seed)
    example = torch.randn(2, 3, resolution, resolution, generator=gen)
    data = _onnx_bytes(model, example[:1])
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(example).numpy()
    got = session.run(None, {"input": example.numpy()})[0]
    diff = float(np.max(np.abs(got - expected)))
    # Outputs of order 1 are held to ``tolerance`` absolutely. Larger logits (an untrained or barely
    # calibrated net) are held to ``tolerance`` relative to their magnitude, or, when that is tighter than
    # float32 arithmetic itself, to a few times PyTorch's own float32 error against float64.
    scale = max(1.0, float(np.max(np.abs(expected))))
    allowed = tolerance * scale
    fp32_error = 0.0
    if diff > allowed and scale > 1.0:
        import copy

        with torch.no_grad():
            exact = copy.deepcopy(model).double()(example.double()).numpy()
        fp32_error = float(np.max(np.abs(expected - exact)))
        allowed = max(allowed, 4.0 * fp32_error)
    if not diff <= allowed:
        raise RuntimeError(f"ONNX export of the subnet differs from PyTorch by {diff:.3g} (allowed {allowed:.3g}: "
                           f"{tolerance:g} x output scale {scale:.3g}); nothing written")
    atomic_write_bytes(path, data)
    return {"path": str(path), "format": "onnx", "max_abs_diff": diff, "output_scale": scale,
            "torch_fp32_error": fp32_error}


def subnet_of(member: FrontMember, calibration: Iterable[torch.Tensor] | None = None,
              supernet_loader: Callable[[str], tuple[Any, nn.Module]] | None = None,
              device: str = "auto") -> nn.Module:
    """The member's static subnet with the supernet's weights, batch norms recalibrated on ``calibration``.

    ``calibration`` yields normalised training image batches (any resolution; resized to the member's).
    Without it the supernet's stored BN statistics are kept. Recalibration runs on ``device`` (``auto``:
    CUDA when available, in fp32); the subnet is returned on the CPU, ready to export.
    """
    from supernets import extract
    from supernets.training.bn import recalibrate_bn
    from supernets.training.checkpoint import CheckpointError
    from supernets.training.device import DeviceError, Execution
    from supernets.training.evaluate import resize

    if not member.checkpoint:
        raise UsageError(f"front member {member.arch_id} has no supernet checkpoint to take weights from")
    if supernet_loader is None:
        from supernets.training.checkpoint import load_supernet_file as supernet_loader
    if not Path(member.checkpoint).exists():
        raise UsageError(f"supernet checkpoint {member.checkpoint!r} of this run is missing")
    try:
        execution = Execution.resolve(device, "fp32", channels_last=False)
    except DeviceError as exc:
        raise UsageError(str(exc)) from exc
    try:
        _, supernet = supernet_loader(member.checkpoint)
    except CheckpointError as exc:  # a damaged or foreign supernet.pt: its message names it and what to do
        raise UsageError(str(exc)) from exc
    net = extract(execution.module(supernet), member.arch)
    if calibration is not None:
        recalibrate_bn(net, (resize(execution.batch(x), member.arch.resolution) for x in calibration))
    return net.cpu().eval()


def export_member(member: FrontMember, out: str | os.PathLike[str], *, model: nn.Module | None = None,
                  calibration: Iterable[torch.Tensor] | None = None) -> dict[str, Any]:
    """Export a front member: its extracted subnet (or ``model`` when given), batch norms recalibrated on
    ``calibration`` when there is one (else the supernet's statistics: a run without data)."""
    model = model if model is not None else subnet_of(member, calibration)
    batch_norm = "recalibrated" if calibration is not None else "supernet statistics"
    metadata = {"space": member.arch.space, "arch": member.arch.to_dict(), "arch_string": member.arch_string,
                "arch_id": member.arch_id, "num_classes": _num_classes(model), "resolution": member.arch.resolution,
                "val_accuracy": member.val_accuracy, "latency_ms": member.latency_ms, "device": member.device,
                "batch_norm": batch_norm}
    return {**export_subnet(model, member.arch.resolution, out, metadata=metadata), "batch_norm": batch_norm}


def _num_classes(model: nn.Module) -> int:
    from torch import nn

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return int(linears[-1].out_features) if linears else -1
