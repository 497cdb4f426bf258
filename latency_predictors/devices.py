"""Devices and the store that keeps their data (metadata, lookup tables, fitted predictors).

A device is an id plus how it runs a model. Ids of devices this machine can measure follow a grammar::

    local-<hardware>-<N>t-<backend>[-b<B>]

- ``<hardware>``: a word naming the CPU (``cpu``, or e.g. ``xeon``; letters and digits). The local backends
  time models on this machine's CPU, so an accelerator's name (``gpu``, ``cuda``, ``npu``, ``tpu``, ``mps``,
  ...) is refused: its measurements would be CPU timings saved under a GPU's name;
- ``<N>t``: intra-op threads, e.g. ``1t``, ``4t``; at most ``MAX_THREADS`` (1024);
- ``<backend>``: ``ort`` (ONNX Runtime), ``torch`` (PyTorch eager) or ``compile`` (``torch.compile``);
- ``-b<B>``: batch size, default 1; at most ``MAX_BATCH_SIZE`` (4096).

Examples: ``local-cpu-1t-ort``, ``local-cpu-2t-torch-b8``.

An NVIDIA GPU of this machine (through CUDA) is named::

    local-cuda[<index>][-b<B>]-<backend>

e.g. ``local-cuda-b1-torch``, ``local-cuda-b64-compile``, ``local-cuda1-b8-ort`` (GPU 1; ``ort`` needs
ONNX Runtime's CUDA provider; the batch size has the same bound). Timing uses CUDA events around each run,
after warm-up, synchronised. Measuring on such a device where this machine has no such GPU is refused; its
stored tables and predictors stay usable anywhere. Any other id (letters, digits, ``.``, ``_``, ``-``) names
a device whose data was imported (``note10`` from Once-for-All's tables) or measured
elsewhere; it has no local backend.

The store lays out one folder per device under its root (``$HWNAS_HOME``, default ``~/.hwnas``; library
code always receives the root explicitly)::

    <root>/devices/<id>/device.json                 the device and its metadata
    <root>/devices/<id>/tables/<space>.json         lookup tables (see ``lut.py`` for the format)
    <root>/devices/<id>/predictors/<space>/<kind>.json   fitted predictors
    <root>/devices/<id>/measurements/<space>.json   end-to-end measurements (reused, resumable)
    <root>/devices/<id>/eval/<space>.{csv,png,json} accuracy reports
    <root>/devices/<id>/measure.lock                held while measuring
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import json
import os
import platform
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from search_spaces import reading

BACKEND_TOKENS = {"ort": "onnxruntime", "torch": "torch", "compile": "torch_compile"}
_LOCAL_ID = re.compile(r"^local-(?P<hw>[a-z0-9]+)-(?P<threads>[1-9][0-9]*)t-(?P<backend>[a-z]+)"
                       r"(?:-b(?P<batch>[1-9][0-9]*))?$")
_CUDA_ID = re.compile(r"^local-cuda(?P<index>[0-9]*)(?:-b(?P<batch>[1-9][0-9]*))?-(?P<backend>[a-z]+)$")
_ANY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Hardware words of local ids that name an accelerator, which no local backend measures on.
_ACCELERATOR = re.compile(r"^(gpu|cuda|rocm|hip|xpu|mps|npu|tpu|dsp|nnapi|vulkan|metal|trt|tensorrt)[0-9]*$")
DEVICE_FILE_VERSION = 1
# Bounds of the local grammar, generous for any machine: beyond them a backend fails only once measuring
# (an integer overflow, an allocation of terabytes), after the device was recorded.
MAX_THREADS = 1024
MAX_BATCH_SIZE = 4096


class LatencyError(Exception):
    """Bad input to the latency tools (the command line turns it into a one-line error)."""


class UnknownDeviceError(LatencyError):
    """A device id that is neither stored nor a valid local id."""


def default_root(home: str | os.PathLike[str] | None = None) -> Path:
    """``home`` (the command line's ``--home``), else ``$HWNAS_HOME`` or ``~/.hwnas`` (for the command line only;
    library code takes the root). An empty ``home`` (``--home "$UNSET"``) is a ``LatencyError``, not the default
    folder: device data would otherwise be read from and written to ``~/.hwnas`` unasked."""
    if home is not None:
        if not str(home).strip():
            raise LatencyError(f"--home {home!r} is empty; give the device data folder, or leave --home out for "
                               f"$HWNAS_HOME or ~/.hwnas")
        return Path(home)
    return Path(os.environ.get("HWNAS_HOME") or Path.home() / ".hwnas")


@dataclass(frozen=True, slots=True)
class Device:
    """A measurable (or imported) device."""

    id: str
    # Backend from ``measure.BACKENDS``; None for imported devices that cannot be measured here.
    backend: str | None
    threads: int = 1
    batch_size: int = 1
    # Where the backend runs: "cpu", or "cuda:<index>" for an NVIDIA GPU.
    accelerator: str = "cpu"
    # Facts captured when it was measured: cpu model, cores, library versions, host, date.
    metadata: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def meta(self) -> dict[str, str]:
        return dict(self.metadata)

    @property
    def is_local(self) -> bool:
        return self.backend is not None

    @property
    def times_quantized(self) -> bool:
        """Whether it times quantised (QDQ int8) layers and subnets: ONNX Runtime on the CPU, the one backend
        here that runs them as integer kernels."""
        return self.backend == "onnxruntime" and self.accelerator == "cpu"

    def with_metadata(self, metadata: Mapping[str, Any]) -> Device:
        return replace(self, metadata=tuple(sorted((str(k), str(v)) for k, v in metadata.items())))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "backend": self.backend, "threads": self.threads,
                "batch_size": self.batch_size, "accelerator": self.accelerator, "metadata": self.meta}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Device:
        """The device ``to_dict`` wrote; a field of the wrong type or out of range (an unknown backend, 0 threads,
        an accelerator other than ``cpu`` / ``cuda:<index>``) is a ``ValueError`` / ``TypeError`` naming it."""
        device_id, backend = data["id"], data.get("backend")
        threads, batch_size = data.get("threads", 1), data.get("batch_size", 1)
        accelerator, metadata = data.get("accelerator", "cpu"), data.get("metadata", {})
        if not isinstance(device_id, str) or not _ANY_ID.match(device_id):
            raise ValueError(f"device id {device_id!r} is not letters, digits, '.', '_', '-'")
        if backend is not None and backend not in BACKEND_TOKENS.values():
            raise ValueError(f"device {device_id!r} has backend {backend!r}; allowed: "
                             f"{', '.join(BACKEND_TOKENS.values())} or null (imported)")
        for name, value, limit in (("threads", threads, MAX_THREADS), ("batch_size", batch_size, MAX_BATCH_SIZE)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                raise ValueError(f"device {device_id!r} has {name} {value!r}; allowed: an integer 1 to {limit}")
        if not isinstance(accelerator, str) or not re.fullmatch(r"cpu|cuda:[0-9]+", accelerator):
            raise ValueError(f"device {device_id!r} has accelerator {accelerator!r}; allowed: cpu, cuda:<index>")
        if not isinstance(metadata, Mapping):
            raise TypeError(f"device {device_id!r} has metadata of type {type(metadata).__name__}, not an object")
        return cls(id=device_id, backend=backend, threads=threads, batch_size=batch_size,
                   accelerator=accelerator).with_metadata(metadata)


def _backend_of(device_id: str, token: str, example: str) -> str:
    if token not in BACKEND_TOKENS:
        raise UnknownDeviceError(f"device {device_id!r}: unknown backend {token!r}; allowed: "
                                 f"{', '.join(BACKEND_TOKENS)} (e.g. {example})")
    return BACKEND_TOKENS[token]


def _bounded(device_id: str, digits: str | None, limit: int, what: str) -> int:
    """The count ``digits`` of an id (1 when absent), refused above ``limit``."""
    if digits is None:
        return 1
    if len(digits) > len(str(limit)) or int(digits) > limit:
        raise UnknownDeviceError(f"device {device_id!r}: {what} {digits} is out of range; allowed: 1 to {limit}")
    return int(digits)


def parse_device_id(device_id: str) -> Device | None:
    """The local device an id describes, or None when the id does not follow the local grammar. Threads above
    ``MAX_THREADS`` or a batch size above ``MAX_BATCH_SIZE`` are an ``UnknownDeviceError``."""
    cuda = _CUDA_ID.match(device_id)
    if cuda:
        return Device(id=device_id, backend=_backend_of(device_id, cuda["backend"], "local-cuda-b1-torch"),
                      threads=1, batch_size=_bounded(device_id, cuda["batch"], MAX_BATCH_SIZE, "batch size"),
                      accelerator=f"cuda:{int(cuda['index'] or 0)}")
    match = _LOCAL_ID.match(device_id)
    if not match:
        return None
    backend = _backend_of(device_id, match["backend"], "local-cpu-1t-ort")
    if re.fullmatch(r"cuda[0-9]*", match["hw"]):
        batch = f"-b{match['batch']}" if match["batch"] else "-b1"
        raise UnknownDeviceError(f"device {device_id!r}: a CUDA GPU is named without threads, as "
                                 f"'local-{match['hw']}{batch}-{match['backend']}'")
    if _ACCELERATOR.match(match["hw"]):
        cpu_id = device_id.replace(f"local-{match['hw']}-", "local-cpu-", 1)
        raise UnknownDeviceError(f"device {device_id!r} names hardware {match['hw']!r}, which no local backend "
                                 f"measures; use {cpu_id!r} for this machine's CPU, or local-cuda-b<B>-<backend> "
                                 f"for an NVIDIA GPU")
    return Device(id=device_id, backend=backend, threads=_bounded(device_id, match["threads"], MAX_THREADS, "threads"),
                  batch_size=_bounded(device_id, match["batch"], MAX_BATCH_SIZE, "batch size"))


def _check_agrees_with_id(device: Device) -> None:
    """Refuse (``ValueError``) a stored local device whose backend, threads, batch size or accelerator differ from
    what its id says: it would be measured one way and its numbers read as the other."""
    try:
        parsed = parse_device_id(device.id)
    except UnknownDeviceError:  # an id no local backend measures: refused where it is measured
        return
    if parsed is None:
        return
    differ = [f"{name} {getattr(device, name)!r} (the id says {getattr(parsed, name)!r})"
              for name in ("backend", "threads", "batch_size", "accelerator")
              if getattr(device, name) != getattr(parsed, name)]
    if differ:
        raise ValueError(f"device {device.id!r} has " + ", ".join(differ))


def local_device_id(threads: int = 1, backend: str = "onnxruntime", batch_size: int = 1,
                    hardware: str = "cpu") -> str:
    """The id of a local CPU device (inverse of ``parse_device_id``)."""
    token = {v: k for k, v in BACKEND_TOKENS.items()}[backend]
    suffix = f"-b{batch_size}" if batch_size != 1 else ""
    return f"local-{hardware}-{threads}t-{token}{suffix}"


def check_measurable(device: Device) -> None:
    """Refuse (``LatencyError``) to measure on a local device whose hardware this machine lacks: a CUDA GPU
    index that is not here, or ONNX Runtime without its CUDA provider."""
    if not device.accelerator.startswith("cuda"):
        return
    import torch

    index = int(device.accelerator.partition(":")[2] or 0)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        have = f"{count} CUDA GPU(s)" if count else f"no CUDA GPU (torch {torch.__version__})"
        raise LatencyError(f"device {device.id!r} is timed on CUDA GPU {index}, but this machine has {have}; "
                           f"measure it where that GPU is, or use a local-cpu-... device here")
    if device.backend == "onnxruntime":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise LatencyError(f"device {device.id!r} needs ONNX Runtime's CUDAExecutionProvider, which this "
                               f"onnxruntime lacks (it has: {', '.join(ort.get_available_providers())}); "
                               f"install onnxruntime-gpu, or time the GPU with local-cuda-b{device.batch_size}-torch")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def capture_metadata(accelerator: str = "cpu") -> dict[str, str]:
    """Facts about this machine and its libraries (and the GPU when ``accelerator`` is ``cuda:<i>``),
    recorded with every measurement."""
    import importlib.metadata as md

    meta = {
        "cpu_model": _cpu_model(),
        "cpu_count": str(os.cpu_count()),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    for package in ("torch", "onnxruntime", "numpy"):
        try:
            meta[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    if accelerator.startswith("cuda"):
        import torch

        index = int(accelerator.partition(":")[2] or 0)
        meta.update(gpu_name=torch.cuda.get_device_name(index), cuda=str(torch.version.cuda),
                    cudnn=str(torch.backends.cudnn.version()))
    return meta


def _cannot_write(path: Path, exc: OSError | ValueError) -> LatencyError:
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return LatencyError(f"cannot write {str(path)!r} ({reason}); the device data folder (--home or $HWNAS_HOME) "
                        f"must be a folder you can write to")


def _umask() -> int:
    """This process's umask, read without changing it where Linux tells it (``os.umask`` sets it to read it,
    which races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open()`` gives a new file (``0o666`` less the umask): temporary files (``mkstemp``: 0600) get it
    before they are renamed into place, so a table or predictor is as readable as any other file written here."""
    return 0o666 & ~_umask()


def write_atomically(path: str | os.PathLike[str], data: bytes,
                     cannot_write: Callable[[Path, OSError | ValueError], Exception] = _cannot_write) -> Path:
    """Write ``data`` to a temporary file beside ``path`` (parent folders are created), give it the mode
    ``open()`` would (``file_mode``), flush it to disk, then rename it over ``path``: a crash leaves the old file
    or the new one, never a torn one. A path that cannot be written (a file where a folder should be, no
    permission, a NUL in the name, a full disk) raises ``cannot_write(path, error)``: this package's
    ``LatencyError`` by default, ``nas.io``'s ``UsageError`` there. Returns the path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise cannot_write(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), file_mode())  # mkstemp's 0600 would stay after the rename
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise cannot_write(path, exc) from exc
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """``write_atomically``; a path that cannot be written is a ``LatencyError`` naming it."""
    write_atomically(path, data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """``atomic_write_bytes`` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """A new, empty hidden folder beside ``folder`` to fill, then move in with ``swap_folder``; removed with
    whatever it holds when the block ends without that (an error, an interruption)."""
    folder = Path(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        new = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.new-"))
        os.chmod(new, 0o777 & ~_umask())
    except OSError as exc:
        raise _cannot_write(folder, exc) from exc
    try:
        yield new
    finally:
        shutil.rmtree(new, ignore_errors=True)


def swap_folder(new: Path, folder: str | os.PathLike[str]) -> None:
    """Put the filled folder ``new`` (``staged_folder``) in the place of ``folder``, whose old content goes
    whole: readers see the old set or the new one, never a mix (between the two renames, for a moment, none).
    Callers serialise swaps of one folder (two renames are not one atomic step), so an old content left
    hidden beside it by a swap killed between its renames is stale by now: it goes first."""
    folder = Path(folder)
    for stale in folder.parent.glob(f".{glob.escape(folder.name)}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)
    old = None
    try:
        if folder.exists():
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old-"))
            os.replace(folder, old)  # over the empty folder just made
        os.replace(new, folder)
    except OSError as exc:
        with contextlib.suppress(OSError):
            if old is not None and folder.exists():
                old.rmdir()  # the first rename failed: the placeholder is still empty
            elif old is not None:
                os.replace(old, folder)  # the second failed: the old content goes back
        raise _cannot_write(folder, exc) from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=False) + "\n")


def read_versioned_json(path: str | os.PathLike[str], fmt: str, version: int, what: str,
                        remedy: str = "move it away and make it again") -> dict[str, Any]:
    """Read a JSON file of ours, checking its ``format`` name and that its ``version`` is not newer.

    A file that is truncated, not JSON, not a JSON object or unreadable is a ``DamagedFileError`` naming it
    and ``remedy``; callers parse its fields inside ``reading(path, what, remedy)`` as well.
    """
    path = Path(path)
    with reading(path, f"latency {what}", remedy):
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise TypeError(f"expected a JSON object, got {type(data).__name__}")
        file_version = int(data.get("version", 0))
    if data.get("format") != fmt:
        raise LatencyError(f"{path} is not a hwnas latency {what}")
    if file_version > version:
        raise LatencyError(f"{path} has {what} format version {data['version']}; this hwnas reads up to {version}")
    return data


class DeviceStore:
    """Device data under one root folder (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def check_writable(self) -> None:
        """Refuse (``LatencyError``) a root that is not a folder this process can write (a file, or under one,
        or read-only), before any work: the first write would otherwise fail only after measuring or reading."""
        folder, what = self.root, "not a folder you can write to"
        try:
            while not folder.exists() and folder != folder.parent:
                folder = folder.parent
            if folder.is_dir() and os.access(folder, os.W_OK | os.X_OK):
                return
            if folder.is_file():
                what = "a file"
        except (OSError, ValueError):  # a name too long to look up, a NUL in it
            pass
        raise LatencyError(f"device data folder {str(self.root)!r} is not usable: {str(folder)!r} is {what}; "
                           f"give --home or HWNAS_HOME a folder you can write to")

    # paths
    def device_dir(self, device_id: str) -> Path:
        if not _ANY_ID.match(device_id):
            raise LatencyError(f"invalid device id {device_id!r}: use letters, digits, '.', '_', '-'")
        return self.root / "devices" / device_id

    def table_path(self, device_id: str, space: str) -> Path:
        return self.device_dir(device_id) / "tables" / f"{space}.json"

    def predictor_dir(self, device_id: str, space: str) -> Path:
        return self.device_dir(device_id) / "predictors" / space

    def measurements_path(self, device_id: str, space: str) -> Path:
        return self.device_dir(device_id) / "measurements" / f"{space}.json"

    def eval_dir(self, device_id: str) -> Path:
        return self.device_dir(device_id) / "eval"

    def lock_path(self, device_id: str) -> Path:
        return self.device_dir(device_id) / "measure.lock"

    # devices
    def list_ids(self) -> list[str]:
        folder = self.root / "devices"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if (p / "device.json").is_file())

    def get(self, device_id: str) -> Device:
        """The stored device ``device_id``; ``UnknownDeviceError`` names the known ones otherwise."""
        path = self.device_dir(device_id) / "device.json"
        if not path.is_file():
            known = ", ".join(self.list_ids()) or "none yet"
            raise UnknownDeviceError(
                f"unknown device {device_id!r}; known devices: {known} (local devices are named like "
                f"local-cpu-1t-ort / local-cpu-1t-torch; imported ones come from 'nas latency import-ofa')")
        remedy = ("move it away; measuring on the device again ('nas latency build') or importing its tables "
                  "('nas latency import-ofa') records it anew, keeping its tables")
        data = read_versioned_json(path, "hwnas-device", DEVICE_FILE_VERSION, "device record", remedy)
        with reading(path, "latency device record", remedy):
            device = Device.from_dict(data)
            if device.id != device_id:  # the folder names the device: its data would go to another's folder
                raise ValueError(f"it names device {device.id!r}, not {device_id!r} (its folder)")
            _check_agrees_with_id(device)
            return device

    def find(self, device_id: str) -> Device:
        """The stored device, else the parsed local device, saving nothing: what checks made before any work
        use (bad input leaves the store as it was; the step that measures records the device,
        ``refresh_metadata``). Raises ``UnknownDeviceError`` for an id that is neither."""
        try:
            return self.get(device_id)
        except UnknownDeviceError:
            local = parse_device_id(device_id)
            if local is None:
                raise
            return local

    def resolve(self, device_id: str, *, create_local: bool = True) -> Device:
        """The stored device, else (when ``create_local``) the parsed local device, saved with fresh
        metadata. Raises ``UnknownDeviceError`` for an id that is neither."""
        try:
            return self.get(device_id)
        except UnknownDeviceError:
            local = parse_device_id(device_id)
            if local is None or not create_local:
                raise
            check_measurable(local)
            return self.save(local.with_metadata(capture_metadata(local.accelerator)))

    def save(self, device: Device) -> Device:
        atomic_write_json(self.device_dir(device.id) / "device.json",
                          {"format": "hwnas-device", "version": DEVICE_FILE_VERSION, **device.to_dict()})
        return device

    def refresh_metadata(self, device: Device) -> Device:
        """Record this machine's current facts on a local device (called when measuring); a stored local id
        naming hardware that is not measured here (``local-gpu-1t-ort``, a CUDA GPU this machine lacks) is
        refused."""
        if not device.is_local:
            return device
        parse_device_id(device.id)
        check_measurable(device)
        return self.save(device.with_metadata(capture_metadata(device.accelerator)))

    @contextlib.contextmanager
    def recording(self, device_id: str) -> Iterator[None]:
        """For a block that records ``device_id`` (``refresh_metadata``) and then measures on it: when the block
        fails (an error or an interruption) and the device was not stored before it, its folder goes again unless
        the block left data there (table entries, measurements, predictors). A failed first measurement thus
        registers nothing, and what was measured stays for the next run to resume."""
        stored = (self.device_dir(device_id) / "device.json").is_file()
        try:
            yield
        except BaseException:
            if not stored:
                self._forget_without_data(device_id)
            raise

    def _forget_without_data(self, device_id: str) -> None:
        """Remove the folder of ``device_id`` when it holds nothing but its record and lock, and no one else
        measures on it (holds the lock) now."""
        from .measure import device_lock

        folder = self.device_dir(device_id)
        if not folder.is_dir():
            return
        bare = {"device.json", self.lock_path(device_id).name}
        with contextlib.suppress(TimeoutError, OSError), device_lock(self.lock_path(device_id), timeout_s=0):
            if not any(p.is_file() and p.relative_to(folder).as_posix() not in bare for p in folder.rglob("*")):
                shutil.rmtree(folder)

    def tables(self, device_id: str) -> list[str]:
        folder = self.device_dir(device_id) / "tables"
        return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []

    def predictors(self, device_id: str) -> dict[str, list[str]]:
        folder = self.device_dir(device_id) / "predictors"
        if not folder.is_dir():
            return {}
        # Hidden folders are a refit's new or old predictors being swapped (``workflow.fit_device``).
        return {p.name: sorted(f.stem for f in p.glob("*.json")) for p in sorted(folder.iterdir())
                if p.is_dir() and not p.name.startswith(".")}

    def describe(self) -> list[dict[str, Any]]:
        """Every stored device with its tables and predictors (the ``nas devices`` listing); a root that is not a
        folder (a file) is a ``LatencyError`` (a root not there yet holds no devices)."""
        if self.root.exists() and not self.root.is_dir():
            raise LatencyError(f"device data folder {str(self.root)!r} is not a folder; give --home or HWNAS_HOME "
                               f"the folder that holds devices/")
        return [{**self.get(i).to_dict(), "tables": self.tables(i), "predictors": self.predictors(i)}
                for i in self.list_ids()]
