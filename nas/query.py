"""Querying a run's fronts, and exporting a chosen subnet: ONNX or ``torch.export`` with the input normalisation
inside and metadata, both checked against PyTorch before they are written, or a state dict. A member with a
precision policy (int8 or mixed) exports to ONNX only: the quantised QDQ model (``nas.quantize``), checked
against its fake-quantised graph."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import math
import os
import sqlite3
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from search_spaces import READ_ERRORS, reading

from . import hwnas_version
from .errors import ExportCheckError, UsageError
from .fronts import FRONTS_REMEDY, FrontMember, FrontStore, Measurement, ReferencePoint, get_front_store
from .search_paths import run_path, search_paths

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["EXPORT_SUFFIXES", "Normalization", "RunCalibration", "check_min_accuracy", "check_quantized_export",
           "check_outside_run_results", "export_member", "export_quantized_member", "export_subnet",
           "knee_export_path", "ofa_config_of", "open_fronts", "query_front", "run_calibration", "subnet_of",
           "suffixes_text"]

EXPORT_SUFFIXES = (".onnx", ".pt2", ".pt")
KNEE_SUFFIX = "-knee.onnx"  # nas run's export of a device's knee subnet: RUN/exports/<device>-knee.onnx
ONNX_TOLERANCE = 1e-4
# Format tags of the exported files (``hwnas_format`` in their metadata; ``format`` in a ``.pt``).
ONNX_FORMAT = "hwnas-subnet-onnx-1"
PT2_FORMAT = "hwnas-subnet-pt2-1"
PT_FORMAT = "hwnas-subnet-1"
# The ONNX input's name, and the extra file of a ``.pt2`` archive holding its metadata (JSON).
ONNX_INPUT = "image"
PT2_METADATA_FILE = "hwnas.json"
# Images an export is checked on (real ones where the run has data).
CHECK_IMAGES = 8


# What SQLite and the rows it returns raise for a damaged store: not a database, a malformed image, a
# row whose arch or numbers do not parse.
_FRONT_READ_ERRORS = (*READ_ERRORS, sqlite3.DatabaseError)


class _CheckedFrontStore(FrontStore):
    """A run's front store whose reads raise ``DamagedFileError`` naming the file when it is damaged
    (truncated, not a database, a bad row: ``SQLiteFrontStore`` checks every column; this catches the rest),
    with members' checkpoints resolved against the run folder."""

    def __init__(self, path: Path, run_root: Path) -> None:
        self.path = path
        self.run_root = run_root
        with self._reading():
            self._store = get_front_store(path, create=False)

    def _reading(self):
        return reading(self.path, "front store", FRONTS_REMEDY, _FRONT_READ_ERRORS)

    def _read(self, method: Callable[..., Any], *args: Any) -> Any:
        with self._reading():
            return method(*args)

    def front(self, device: str) -> list[FrontMember]:
        members = self._read(self._store.front, device)
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
        if not run_path(run_dir).is_dir():
            raise UsageError(f"{str(run_path(run_dir))!r} is a file, not a run folder; give the run's folder "
                             f"(the config's run_dir, or runs/<name>)")
        raise UsageError(f"run {str(run_path(run_dir))!r} has no fronts (fronts/fronts.sqlite); "
                         f"run `nas search` first")
    return _CheckedFrontStore(path, run_path(run_dir))


def knee_export_path(run: Any, device: str) -> Path:
    """Where ``nas run`` exports the knee subnet of ``device``'s front."""
    return run.exports / f"{device}{KNEE_SUFFIX}"


def check_outside_run_results(out: str | os.PathLike[str], run_dir: Any, option: str) -> Path:
    """``UsageError`` when the output file ``out`` (of ``option``: ``--export``, ``--out``) would replace what the
    run keeps: anything under its ``checkpoints/``, ``fronts/`` or ``search/`` folder, its config copy, metrics,
    import record or lock files, or what ``nas run`` writes into the output folders (``plots/fronts.png``,
    ``exports/<device>-knee.onnx``: ``nas run`` would take another file there for its own, since it tells a
    stage done by the file's age). Other names under ``plots/`` and ``exports/`` are fine. Returns the path."""
    from .ofa_zoo import IMPORT_RECORD_NAME
    from .rundir import RunDir
    from .search_paths import search_paths

    path = Path(out)
    try:
        run = RunDir(run_path(run_dir))
        target = path.expanduser().resolve()
    except (OSError, ValueError, UsageError):  # a name no file system holds: check_writable says so
        return path
    folders = (run.checkpoints, run.fronts, run.search)
    files = (run.config_copy, run.metrics, run.train_lock, run.root / IMPORT_RECORD_NAME)
    inside = next((f for f in folders if target == f or f in target.parents), None)
    if target == search_paths(run).plot or (target.parent == run.exports and target.name.endswith(KNEE_SUFFIX)):
        raise UsageError(f"{option} {str(out)!r} is the name `nas run` gives its own {target.parent.name}/ file in "
                         f"{run.root}; choose another name (e.g. {target.parent / ('my-' + target.name)})")
    if inside is not None or target in files:
        where = f"into the run's {inside.name}/ folder" if inside is not None else f"over the run's {target.name}"
        raise UsageError(f"{option} {str(out)!r} would write {where} ({run.root}), which keeps the run's results; "
                         f"write it elsewhere, e.g. into {run.exports}/ or {run.plots}/")
    return path


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
                         f"{_ms(fastest.latency_ms)} ms (fastest, accuracy {_acc(fastest.val_accuracy)}) to "
                         f"{_ms(slowest.latency_ms)} ms (most accurate, accuracy {_acc(slowest.val_accuracy)})")
    best = max(within, key=lambda m: (m.val_accuracy, -m.latency_ms))
    if min_accuracy is not None and best.val_accuracy < min_accuracy:
        reach = [m for m in front if m.val_accuracy >= min_accuracy]
        hint = (f"; accuracy {min_accuracy:g} needs at least {_ms(reach[0].latency_ms)} ms" if reach
                else f"; no member reaches it (best {_acc(slowest.val_accuracy)})")
        raise UsageError(f"no subnet on {device} within {max_latency_ms:g} ms reaches accuracy {min_accuracy:g}: "
                         f"the best within the budget has {_acc(best.val_accuracy)}{hint}")
    return best


def _printed(value: float, decimals: int, up: bool) -> str:
    """``value`` with ``decimals`` decimals, rounded up (``up``) or down: what an error prints as a budget or an
    accuracy, so that giving it back as ``--max-latency-ms`` / ``--min-accuracy`` admits the member it names
    (15.4163 ms is ``15.417``, not ``15.416``; accuracy 0.57158 is ``0.5715``, not ``0.5716``)."""
    text, step = f"{value:.{decimals}f}", 10.0 ** -decimals
    if up and float(text) < value:
        text = f"{float(text) + step:.{decimals}f}"
    elif not up and float(text) > value:
        text = f"{float(text) - step:.{decimals}f}"
    return text


def _ms(latency_ms: float) -> str:
    return _printed(latency_ms, 3, up=True)


def _acc(accuracy: float) -> str:
    return _printed(accuracy, 4, up=False)


# --- exports -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Normalization:
    """The per-channel input normalisation a subnet was trained with: ``(x - mean) / std`` on RGB pixels
    in [0, 1] (uint8 divided by 255)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # Where the numbers come from, recorded in exports ("training images of the run's dataset", "ImageNet").
    source: str

    def __post_init__(self) -> None:
        values = (*self.mean, *self.std)
        if len(self.mean) != 3 or len(self.std) != 3 or not all(math.isfinite(v) for v in values) \
                or min(self.std) <= 0:
            raise ValueError(f"a normalisation needs 3 finite means and 3 positive stds; got mean {self.mean}, "
                             f"std {self.std}")

    @classmethod
    def imagenet(cls) -> Normalization:
        """ImageNet's mean and std: what streamed image folders and Once-for-All's supernets use."""
        from .streaming import IMAGENET_MEAN, IMAGENET_STD

        return cls(tuple(IMAGENET_MEAN), tuple(IMAGENET_STD), "ImageNet")

    @classmethod
    def of(cls, data: Any) -> Normalization:
        """The normalisation of a dataset of ``nas.data`` (its ``mean``/``std``, computed on its training
        images) or ``nas.streaming`` (ImageNet's)."""
        mean, std = getattr(data, "mean", None), getattr(data, "std", None)
        if mean is None or std is None:
            return cls.imagenet()
        return cls(tuple(float(v) for v in mean.flatten().tolist()), tuple(float(v) for v in std.flatten().tolist()),
                   "training images of the run's dataset")


@functools.cache
def _normalized_subnet_class() -> type:
    # Built on first use, so that importing this module does not import torch.
    import torch
    from torch import nn

    class NormalizedSubnet(nn.Module):
        """``model`` after ``(image - mean) / std``: takes float32 NCHW RGB images in [0, 1].

        For export only: it holds the mean and std as buffers (shape (1, 3, 1, 1)), so ONNX and
        ``torch.export`` graphs carry the normalisation and deploy without hwnas.
        """

        def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor([float(v) for v in mean], dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor([float(v) for v in std], dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.model((image - self.mean) / self.std)

    NormalizedSubnet.__module__, NormalizedSubnet.__qualname__ = __name__, "NormalizedSubnet"
    return NormalizedSubnet


def __getattr__(name: str) -> Any:  # ``from nas.query import NormalizedSubnet`` (imports torch then)
    if name == "NormalizedSubnet":
        return _normalized_subnet_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def ofa_config_of(arch: Any) -> dict[str, Any] | None:
    """Once-for-All's config (``{"ks", "e", "d", "r"}``) of ``arch``, or None for spaces it cannot describe."""
    from search_spaces import ArchError, get_space, to_ofa_config

    try:
        return to_ofa_config(get_space(arch.space), arch)
    except ArchError:  # not an ofa_mbv3 space (mnasnet)
        return None


def _input_sentence(resolution: int, batch: str) -> str:
    return (f"float32 NCHW RGB in [0, 1] (uint8 / 255), shape {batch}x3x{resolution}x{resolution}; "
            f"normalisation (x - mean) / std is inside the graph")


def _resized(images: torch.Tensor, resolution: int) -> torch.Tensor:
    import torch
    import torch.nn.functional as F

    images = images.detach().cpu()
    images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    if images.shape[-2:] != (resolution, resolution):
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return images.clamp(0.0, 1.0).contiguous()


def _check_images(images: torch.Tensor | None, resolution: int, seed: int, source: str
                  ) -> tuple[torch.Tensor, str]:
    """At least two float [0, 1] images at ``resolution`` (dynamic shapes need a batch above 1), and what
    they are."""
    import torch

    if images is None or len(images) == 0:
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(CHECK_IMAGES, 3, resolution, resolution, generator=gen), \
            f"{CHECK_IMAGES} seeded random images"
    images = _resized(images, resolution)
    described = f"{len(images)} {source}"
    if len(images) < 2:
        images = torch.cat([images, images.flip(-1)])
    return images, described


def _agreement(net: nn.Module, images: torch.Tensor, got: np.ndarray, what: str, tolerance: float) -> dict[str, float]:
    """How far ``got`` (an exported file's outputs on ``images``) is from ``net``'s; ``ExportCheckError`` when
    beyond the tolerance.

    Outputs of order 1 are held to ``tolerance`` absolutely. Larger logits (an untrained or barely
    calibrated net) are held to ``tolerance`` relative to their magnitude, or, when that is tighter than
    float32 arithmetic itself, to a few times PyTorch's own float32 error against float64.
    """
    import copy

    import torch

    with torch.no_grad():
        expected = net(images).numpy()
    diff = float(np.max(np.abs(got - expected)))
    scale = max(1.0, float(np.max(np.abs(expected))))
    allowed = tolerance * scale
    fp32_error = 0.0
    if diff > allowed and scale > 1.0:
        with torch.no_grad():
            exact = copy.deepcopy(net).double()(images.double()).numpy()
        fp32_error = float(np.max(np.abs(expected - exact)))
        allowed = max(allowed, 4.0 * fp32_error)
    if not diff <= allowed:
        raise ExportCheckError(f"{what} of the subnet differs from PyTorch by {diff:.3g} (allowed {allowed:.3g}: "
                               f"{tolerance:g} x output scale {scale:.3g}); nothing written")
    return {"max_abs_diff": diff, "output_scale": scale, "torch_fp32_error": fp32_error}


def _metadata_strings(metadata: dict[str, Any]) -> dict[str, str]:
    """ONNX metadata is string to string: strings stay, everything else is JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()}


def _onnx_bytes(net: nn.Module, example: torch.Tensor, metadata: dict[str, Any]) -> bytes:
    import onnx
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), buffer, dynamo=False, input_names=[ONNX_INPUT],
                          output_names=["logits"], dynamic_axes={ONNX_INPUT: {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17)
    model = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(model, _metadata_strings(metadata))
    arch = metadata.get("arch_string")
    model.doc_string = f"hwnas subnet{' ' + arch if arch else ''}: {metadata['input']}"
    return model.SerializeToString()


def _export_onnx(net: nn.Module, images: torch.Tensor, metadata: dict[str, Any], tolerance: float
                 ) -> tuple[bytes, dict[str, Any]]:
    import onnxruntime as ort

    data = _onnx_bytes(net, images[:1], metadata)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    stored = session.get_modelmeta().custom_metadata_map
    if stored.get("hwnas_format") != ONNX_FORMAT:
        raise ExportCheckError("the ONNX model lost its hwnas metadata on the way; nothing written")
    got = session.run(None, {ONNX_INPUT: images.numpy()})[0]
    return data, _agreement(net, images, got, "ONNX export", tolerance)


def _export_pt2(net: nn.Module, images: torch.Tensor, metadata: dict[str, Any], tolerance: float
                ) -> tuple[bytes, dict[str, Any]]:
    """A ``torch.export`` program with a dynamic batch dimension (batch 1 when torch cannot make it
    symbolic: the metadata's ``batch`` says which), checked by loading the very bytes to be written."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            batch = torch.export.Dim("batch", min=1)
            program = torch.export.export(net, (images,), dynamic_shapes={"image": {0: batch}})
            metadata = {**metadata, "batch": "dynamic"}
        except Exception as exc:  # whatever torch.export raises for a batch dimension it cannot trace
            program = torch.export.export(net, (images[:1],))
            metadata = {**metadata, "batch": f"1 (a dynamic batch failed to export: {type(exc).__name__})",
                        "input": metadata["input"].replace("Nx3x", "1x3x")}
        buffer = io.BytesIO()
        torch.export.save(program, buffer, extra_files={PT2_METADATA_FILE: json.dumps(metadata, sort_keys=True)})
        data = buffer.getvalue()
        extra = {PT2_METADATA_FILE: ""}
        loaded = torch.export.load(io.BytesIO(data), extra_files=extra).module()
    if json.loads(extra[PT2_METADATA_FILE] or "null") != json.loads(json.dumps(metadata)):
        raise ExportCheckError(f"the torch.export file lost its {PT2_METADATA_FILE} on the way; nothing written")
    with torch.no_grad():
        if metadata["batch"] == "dynamic":
            got = loaded(images)
        else:
            got = torch.cat([loaded(images[i:i + 1]) for i in range(len(images))])
    summary = _agreement(net, images, got.numpy(), "torch.export program", tolerance)
    return data, {**summary, "batch": metadata["batch"]}


def export_subnet(model: nn.Module, resolution: int, out: str | os.PathLike[str], *,
                  normalization: Normalization | None = None, images: torch.Tensor | None = None,
                  images_source: str = "real images", metadata: dict[str, Any] | None = None, seed: int = 0,
                  tolerance: float = ONNX_TOLERANCE) -> dict[str, Any]:
    """Write ``model`` (eval mode) to ``out`` atomically: ``.onnx``, ``.pt2`` or ``.pt``.

    ``.onnx`` and ``.pt2`` hold ``NormalizedSubnet(model, mean, std)`` and deploy without hwnas: the input
    (named ``image``) is a float32 NCHW RGB batch with pixel values in [0, 1] (uint8 divided by 255) at
    ``resolution``; ``(x - mean) / std`` is inside the graph; the output is ``logits``.

    - ``.onnx``: a dynamic batch axis; ``metadata`` and what the file needs to be used (``hwnas_format``,
      ``input``, ``mean``, ``std``, ``resolution``, ``hwnas_version``) in the model's ``metadata_props``
      (strings; values that are not strings are JSON). ONNX Runtime runs it on ``images`` and the file is
      written only when it agrees with PyTorch: the largest absolute difference at most ``tolerance`` (times
      the largest output magnitude when that is above 1, or four times PyTorch's own float32 error against
      float64 when that is larger still).
    - ``.pt2``: ``torch.export.save`` of the same module with a dynamic batch dimension (or batch 1 where
      torch cannot trace one: metadata ``batch`` says which); the metadata as JSON in the archive's extra
      file ``hwnas.json``. Load with ``torch.export.load(path, extra_files={"hwnas.json": ""}).module()``;
      written only when the loaded program agrees with PyTorch as above.
    - ``.pt``: ``{"format": "hwnas-subnet-1", **metadata, "state_dict"}`` of ``model`` itself, without
      normalisation (loadable with ``torch.load(weights_only=True)``; rebuild with
      ``supernets.build(space, Arch.from_dict(arch))`` and ``load_state_dict``; normalise inputs with the
      stored ``mean`` and ``std``).

    Args:
        model: the subnet, taking normalised images.
        resolution: the side of its input images.
        out: the file to write; its suffix picks the format.
        normalization: the mean and std ``model`` expects (default: ImageNet's).
        images: real images to check the export on, NCHW float in [0, 1] or uint8, any size (resized to
            ``resolution``); default: seeded random images.
        images_source: what ``images`` are, for the summary's ``checked_on``.
        metadata: what to record about the subnet (JSON-able values).
        seed: seed of the random check images.
        tolerance: see above.

    Returns:
        A summary: path, format, and for ``.onnx``/``.pt2`` the measured max abs difference and what it was
        measured on.
    """
    from .io import atomic_write_bytes

    path = _export_path(out)
    normalization = normalization or Normalization.imagenet()
    model = model.eval()
    common = {**(metadata or {}), "resolution": int(resolution), "mean": list(normalization.mean),
              "std": list(normalization.std), "normalization": normalization.source, "hwnas_version": hwnas_version()}
    if path.suffix == ".pt":
        import torch

        buffer = io.BytesIO()
        torch.save({"format": PT_FORMAT, **common,
                    "input": f"the state dict of the subnet without normalisation: it takes (x - mean) / std of "
                             f"float32 NCHW RGB x in [0, 1], shape Nx3x{resolution}x{resolution}",
                    "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, buffer)
        atomic_write_bytes(path, buffer.getvalue())
        return {"path": str(path), "format": "pt"}
    net = _normalized_subnet_class()(model, normalization.mean, normalization.std).eval()
    checks, checked_on = _check_images(images, resolution, seed, images_source)
    if path.suffix == ".onnx":
        data, summary = _export_onnx(net, checks, {"hwnas_format": ONNX_FORMAT, **common,
                                                   "input": _input_sentence(resolution, "N")}, tolerance)
    else:
        data, summary = _export_pt2(net, checks, {"hwnas_format": PT2_FORMAT, **common,
                                                  "input": _input_sentence(resolution, "N")}, tolerance)
    atomic_write_bytes(path, data)
    return {"path": str(path), "format": path.suffix[1:], **summary, "checked_on": checked_on,
            "mean": list(normalization.mean), "std": list(normalization.std)}


def suffixes_text() -> str:
    """The allowed export suffixes, as error messages list them (``.onnx, .pt2 or .pt``)."""
    return f"{', '.join(EXPORT_SUFFIXES[:-1])} or {EXPORT_SUFFIXES[-1]}"


def _export_path(out: str | os.PathLike[str]) -> Path:
    path = Path(out)
    if path.suffix not in EXPORT_SUFFIXES:
        raise UsageError(f"cannot export to {str(path)!r}: the file name must end in {suffixes_text()}")
    return path


class RunCalibration:
    """A run's dataset as an export needs it.

    Iterating yields the BN-recalibration batches (normalised training images, augmented as in training:
    what ``subnet_of`` takes; each iteration draws the same seeded batches). ``normalization`` is the mean
    and std those batches were normalised with; ``check_images`` gives a few real test images in [0, 1] to
    check an export on. ``data_seed`` is the seed the run's data was loaded with (it also seeds the training
    images a quantised export is calibrated on).
    """

    def __init__(self, data: Any, num_images: int, batch_size: int = 200, seed: int = 0, data_seed: int = 0) -> None:
        self.data = data
        self.num_images = num_images
        self.batch_size = batch_size
        self.seed = seed
        self.data_seed = data_seed
        self.normalization = Normalization.of(data)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.data.calibration_batches(self.num_images, self.batch_size, self.seed))

    def check_images(self, n: int = 8) -> torch.Tensor | None:
        """The first ``n`` images of the test split (else validation, else training) as float NCHW in
        [0, 1] at the size the dataset keeps them; None when it has no images."""
        import torch

        splits = getattr(self.data, "splits", None)
        if splits is not None:  # nas.data.ImageData: uint8 splits in memory
            x = next((splits[s][0] for s in ("test", "val", "train") if len(splits[s][0])), None)
            return None if x is None else x[:n].cpu().float() / 255
        for split in ("test", "val", "train"):  # nas.streaming: normalised batches, undone here
            if self.data.size(split):
                x, _ = next(iter(self.data.eval_batches(split, n, n)))
                mean = torch.tensor(self.normalization.mean).view(1, 3, 1, 1)
                std = torch.tensor(self.normalization.std).view(1, 3, 1, 1)
                return (x.cpu().float() * std + mean).clamp(0.0, 1.0)
        return None


def run_calibration(store: FrontStore, resolution: int) -> RunCalibration | None:
    """BN-recalibration batches (with their normalisation and real images to check exports on) from the
    run's dataset, as recorded in its front store by the search; None when the run recorded no dataset
    (an imported Once-for-All supernet: ImageNet's normalisation, the supernet's batch norms)."""
    dataset = store.get_meta("dataset")
    if not dataset:
        return None
    from supernets.training import TrainSettings

    from .config import parse_dataset
    from .data import load_dataset

    # What the search recorded, checked as a config's dataset section is: a value no search writes means the
    # store is damaged (a dataset that has moved since is load_dataset's error, naming it).
    with reading(getattr(store, "path", "of the run"), "front store", FRONTS_REMEDY, (*_FRONT_READ_ERRORS, UsageError)):
        config = parse_dataset(dataset)
        data_seed = _meta_count(store, "data_seed", 0, 0)
        # Loaded as the search loaded it (at the searched space's largest resolution, recorded since precision
        # search), so the batch norms and the calibration images are those of the subnets the search measured.
        data_resolution = _meta_count(store, "data_resolution", resolution, 1)
        # a store written before the count was recorded: training's default; 0 images: the supernet's statistics
        images = _meta_count(store, "bn_images", TrainSettings().bn_recal_images, 0)
    data = load_dataset(config, data_resolution, seed=data_seed)
    return RunCalibration(data, images, 200, data_seed, data_seed=data_seed)


def _meta_count(store: FrontStore, key: str, default: int, low: int) -> int:
    """The store's meta ``key``, an integer >= ``low`` (``default`` when absent); ``ValueError`` otherwise."""
    value = store.get_meta(key)
    if value is None:
        return int(default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"meta {key!r} is {json.dumps(value)[:40]}, not an integer >= {low}")
    return value


def _recalibrates(calibration: Iterable[torch.Tensor] | None) -> bool:
    """Whether ``calibration`` recalibrates batch norms (a ``RunCalibration`` of 0 images does not)."""
    return calibration is not None and getattr(calibration, "num_images", 1) > 0


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
    if _recalibrates(calibration):
        recalibrate_bn(net, (resize(execution.batch(x), member.arch.resolution) for x in calibration))
    return net.cpu().eval()


def export_member(member: FrontMember, out: str | os.PathLike[str], *, model: nn.Module | None = None,
                  calibration: Iterable[torch.Tensor] | None = None, normalization: Normalization | None = None,
                  images: torch.Tensor | None = None, store: FrontStore | None = None,
                  agreement: str = "require") -> dict[str, Any]:
    """Export a front member (see ``export_subnet`` for the formats and the checks).

    Args:
        member: the front member.
        out: the file (``.onnx``, ``.pt2`` or ``.pt``).
        model: the subnet to write (default: extracted from the member's supernet).
        calibration: BN-recalibration batches for the extracted subnet (``run_calibration`` gives them for a
            run with data); without, the supernet's statistics are kept (a run without data).
        normalization: the mean and std the subnet expects; default: that of ``calibration`` when it is a
            ``RunCalibration``, else ImageNet's (what runs without data, imported Once-for-All supernets,
            were trained with). Plain calibration batches without a normalisation are a ``ValueError``.
        images: real images in [0, 1] to check the export on; default: the test images of ``calibration``
            when it is a ``RunCalibration``, else seeded random ones.
        store: the run's front store, for the member's latency on every device whose front holds it (the
            same arch at the same precision; default: its own device only), and the calibration method of a
            quantised member (meta ``quantization_method``; default ``minmax``).
        agreement: for a quantised member, what a failed check of the int8 kernels does (``quantize_subnet``):
            ``require`` (``ExportCheckError``, nothing written) or ``warn`` (written, with a warning).

    A member with a precision policy (int8 or mixed) is exported by ``export_quantized_member``: ``.onnx``
    only (``.pt2``/``.pt`` are a ``UsageError``); the subnet is extracted and recalibrated from
    ``calibration``, which must be a ``RunCalibration`` (its normalisation and images are used: ``model``
    is refused, ``normalization`` and ``images`` are not taken).
    """
    _export_path(out)  # a wrong suffix fails before any work
    if member.policy is not None:
        check_quantized_export(member, out)
        if model is not None:
            raise ValueError("export_member: a quantised member is extracted from its supernet; model= is for fp32 "
                             "members only")
        return export_quantized_member(member, out, calibration, store=store, agreement=agreement)
    if normalization is None:
        normalization = getattr(calibration, "normalization", None)
        if normalization is None and calibration is not None:
            raise ValueError("export_member: calibration batches without their normalisation; pass normalization= "
                             "(or calibration=run_calibration(store, resolution), which carries it)")
    images_source = "given images"
    if images is None and isinstance(calibration, RunCalibration):
        images, images_source = calibration.check_images(CHECK_IMAGES), "images of the run's dataset"
    model = model if model is not None else subnet_of(member, calibration)
    batch_norm = "recalibrated" if _recalibrates(calibration) else "supernet statistics"
    latency_ms, measured = _latency_per_device(member, store)
    metadata = {"space": member.arch.space, "arch": member.arch.to_dict(), "arch_string": member.arch_string,
                "arch_id": member.arch_id, "num_classes": _num_classes(model), "val_accuracy": member.val_accuracy,
                "test_accuracy": member.test_accuracy, "device": member.device, "latency_ms": latency_ms,
                "latency_measured": measured, "batch_norm": batch_norm}
    ofa_config = ofa_config_of(member.arch)
    if ofa_config is not None:
        metadata["ofa_config"] = ofa_config
    summary = export_subnet(model, member.arch.resolution, out, normalization=normalization, images=images,
                            images_source=images_source, metadata=metadata)
    return {**summary, "batch_norm": batch_norm}


def _latency_per_device(member: FrontMember, store: FrontStore | None) -> tuple[dict[str, float], dict[str, bool]]:
    """The member's latency on every device whose front holds it (the same arch and policy), and whether each was
    measured (hardware in the loop) rather than predicted."""
    latency_ms, measured = {member.device: member.latency_ms}, {member.device: member.measured_latency_ms is not None}
    for device in (store.devices() if store is not None else []):
        for other in store.front(device):
            if other.member_id == member.member_id:
                latency_ms[device], measured[device] = other.latency_ms, other.measured_latency_ms is not None
    return latency_ms, measured


def check_quantized_export(member: FrontMember, out: str | os.PathLike[str]) -> None:
    """``UsageError`` unless a quantised member's export goes to an ``.onnx`` file (what the command line
    checks before any work)."""
    path = _export_path(out)
    if member.policy is not None and path.suffix != ".onnx":
        raise UsageError(f"cannot export {str(path)!r}: member {member.arch_id} is {member.precision} (policy "
                         f"{member.policy}) and only .onnx carries int8; export it to FILE.onnx (.pt2 and .pt hold "
                         f"fp32 members only)")


def export_quantized_member(member: FrontMember, out: str | os.PathLike[str], calibration: RunCalibration | None,
                            *, store: FrontStore | None = None, method: str | None = None,
                            calibration_images: int | None = None, max_images: int | None = None,
                            agreement: str = "require") -> dict[str, Any]:
    """Write a member with a precision policy as the quantised QDQ ONNX model, atomically.

    The subnet is extracted and its batch norms recalibrated as an fp32 export does (``subnet_of`` on
    ``calibration``, the run's data from ``run_calibration``); ``nas.quantize`` then calibrates it on
    training images of the run's dataset, quantises it under the member's policy with ``method`` (default:
    the run's front store meta ``quantization_method``, else ``minmax``) and writes it only when ONNX
    Runtime's int8 kernels agree with its fake-quantised graph (``quantize_subnet``; ``agreement="warn"``
    writes it anyway, with a warning). The model's metadata
    names the policy (``precision_policy``, ``precision``), the member, and its accuracy and latency.

    Returns:
        A summary: path, format (``onnx``), ``quantized`` True, the policy, precision and calibration method,
        the fake-quantisation check, fp32 against quantised accuracy (val and test) and ONNX Runtime latency
        (CPU, 1 thread), mean, std and how batch norms were set.
    """
    from latency_predictors.measure import NoisyMeasurementWarning

    from .quantize import CALIBRATION_METHODS, prepare_member, quantize_subnet
    from .quantize._flow import CALIBRATION_IMAGES
    from .search_config import DEFAULT_QUANTIZATION_METHOD

    check_quantized_export(member, out)
    if method is None:
        method = (store.get_meta("quantization_method", None) if store is not None else None) or \
            DEFAULT_QUANTIZATION_METHOD
    if method not in CALIBRATION_METHODS:
        raise UsageError(f"quantization method {method!r} (front store meta quantization_method) is not allowed; "
                         f"allowed: {', '.join(CALIBRATION_METHODS)}")
    latency_ms, measured = _latency_per_device(member, store)
    metadata: dict[str, Any] = {
        "member_id": member.member_id, "policy": member.policy, "precision": member.precision,
        "device": member.device, "latency_ms": latency_ms, "latency_measured": measured,
        "front_val_accuracy": member.val_accuracy, "front_test_accuracy": member.test_accuracy,
        "normalization": getattr(getattr(calibration, "normalization", None), "source", None)}
    ofa_config = ofa_config_of(member.arch)
    if ofa_config is not None:
        metadata["ofa_config"] = ofa_config
    with warnings.catch_warnings():  # the protocol retries a noisy series and keeps the best; no warning here
        warnings.simplefilter("ignore", NoisyMeasurementWarning)
        prepared = prepare_member(member, calibration, metadata=metadata, max_images=max_images,
                                  calibration=calibration_images or CALIBRATION_IMAGES)
        report = quantize_subnet(prepared, out, policy=member.policy, method=method, agreement=agreement)
    normalization = calibration.normalization
    return {"path": report.path, "format": "onnx", "quantized": True, "policy": report.policy,
            "precision": member.precision, "calibration_method": report.method.method,
            "fake_quant_check": report.fake_quant_check, "val_accuracy": report.val_accuracy,
            "test_accuracy": report.test_accuracy, "latency_ms": report.latency_ms,
            "mean": list(normalization.mean), "std": list(normalization.std),
            "batch_norm": "recalibrated" if _recalibrates(calibration) else "supernet statistics"}


def _num_classes(model: nn.Module) -> int:
    from torch import nn

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return int(linears[-1].out_features) if linears else -1
