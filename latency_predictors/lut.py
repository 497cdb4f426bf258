"""Per-device lookup tables: one measured latency per distinct layer; a network is the sum of its layers.

File format (JSON, ``format: "hwnas-latency-table"``, ``version: 1``)::

    {
      "format": "hwnas-latency-table", "version": 1,
      "space": "ofa_mbv3_cifar",              # space name
      "device": {"id": ..., "backend": ..., "threads": ..., "batch_size": ..., "metadata": {...}},
      "resolutions": [24, 28, 32],            # resolutions the table covers
      "protocol": {"warmup": ..., "repeats": ..., ...},   # MeasureConfig of the first build (null when imported)
      "source": "measured" | "ofa-import",
      "complete": true,                       # every enumerated layer has an entry
      "entries": {"<layer key>": {"ms": 0.123, "spread": 0.02, "kind": "block"}, ...}
    }

Layer keys are those of ``search_spaces`` plans (``stem-...``, ``mbconv-in...``, ``head-...``). Writes are
atomic (temporary file, then rename); ``build_table`` saves as it goes and resumes from the file.

Other precisions than fp32 sit in the same ``entries`` under ``<layer key>@<precision>`` (``layers.precision_key``)
with ``"precision": "int8"``: fp32 keys are unchanged, so the format stays version 1 and older tables load as
they are. ``predict(space, archs, policies)`` sums each layer at its group's precision.
"""

from __future__ import annotations

import math
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from search_spaces import Arch, PrecisionPolicy, SearchSpace, plan, progress_bar, reading

from .devices import Device, LatencyError, atomic_write_json, read_versioned_json
from .layers import (
    BASE_PRECISION,
    LayerBuilder,
    LayerSpec,
    enumerate_layers,
    network_layers,
    precision_key,
    precision_layers,
)
from .measure import (
    Backend,
    MeasureConfig,
    Measurement,
    NoisyMeasurementWarning,
    QuantizeFn,
    check_clock,
    configure_allocator,
    device_lock,
    quantized_backend,
    time_callable,
    time_interleaved,
)

TABLE_FORMAT = "hwnas-latency-table"
TABLE_VERSION = 1


class MissingEntryError(LatencyError, KeyError):
    """A layer of an arch has no entry in the table."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass
class LookupTable:
    """Measured (or imported) per-layer latencies of one space on one device."""

    space: str
    device: Device
    resolutions: tuple[int, ...]
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    protocol: dict[str, Any] | None = None
    source: str = "measured"
    complete: bool = False
    # Names this table among all tables of its space and device: made when it is first built (kept as it grows),
    # from the entries for an OFA import. Predictors fitted over it record it, so a table rebuilt or replaced
    # since is not read with their old scale and offset. Empty in tables written before it existed.
    table_id: str = ""

    def latency_ms(self, key: str) -> float:
        return float(self.entries[key]["ms"])

    def predict_arch(self, space: SearchSpace, arch: Arch, policy: PrecisionPolicy | None = None) -> float:
        """The table's latency of ``arch``: the sum of its layers' entries, each at the precision ``policy``
        gives its group (stem, stage, head; fp32 throughout without a policy)."""
        if policy is None or policy.is_uniform(BASE_PRECISION):
            layers = [(layer, BASE_PRECISION) for layer in network_layers(plan(space, arch))]
        else:
            layers = [(layer, precision) for layer, _group, precision in precision_layers(space, arch, policy)]
        total = 0.0
        for layer, precision in layers:
            key = precision_key(layer.key, precision)
            entry = self.entries.get(key)
            if entry is None:
                flag = "" if precision == BASE_PRECISION else f" --precisions {precision}"
                hint = (f"resolution {arch.resolution} is not in the table (it covers "
                        f"{', '.join(map(str, self.resolutions))})" if arch.resolution not in self.resolutions
                        else f"the table has no {precision} entries; run 'nas latency build{flag}' to add them"
                        if precision not in self.precisions
                        else f"the table is incomplete; run 'nas latency build{flag}' again to finish it")
                raise MissingEntryError(f"lookup table of {self.space!r} on device {self.device.id!r} has no "
                                        f"entry for layer {key!r}: {hint}")
            total += float(entry["ms"])
        return total

    def predict(self, space: SearchSpace, archs: Iterable[Arch],
                policies: Iterable[PrecisionPolicy | None] | None = None) -> list[float]:
        """The table's latency of each arch; with ``policies`` (one per arch, None: fp32) each layer's entry is
        taken at its group's precision (a mixed-precision network)."""
        archs = list(archs)
        if policies is None:
            return [self.predict_arch(space, a) for a in archs]
        policies = list(policies)
        if len(policies) != len(archs):
            raise LatencyError(f"{len(policies)} precision policies for {len(archs)} subnets; give one each")
        return [self.predict_arch(space, a, p) for a, p in zip(archs, policies)]

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions the table holds entries of (fp32 first)."""
        found = {str(e.get("precision", BASE_PRECISION)) for e in self.entries.values()}
        return tuple(sorted(found, key=lambda p: (p != BASE_PRECISION, p)))

    def complete_for(self, space: SearchSpace, precision: str = BASE_PRECISION) -> bool:
        """Whether every layer of the table's resolutions has an entry at ``precision``."""
        return all(precision_key(k, precision) in self.entries for k in enumerate_layers(space, self.resolutions))

    def compile(self, space: SearchSpace, precision: str = BASE_PRECISION) -> CompiledTable:
        """This table as a vectorised predictor of ``space``'s subnets (``CompiledTable``), every layer at
        ``precision``."""
        return CompiledTable(self, space, precision)

    def to_dict(self) -> dict[str, Any]:
        return {"format": TABLE_FORMAT, "version": TABLE_VERSION, "space": self.space,
                "device": self.device.to_dict(), "resolutions": list(self.resolutions),
                "protocol": self.protocol, "source": self.source, "complete": self.complete,
                "table_id": self.table_id, "entries": self.entries}

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LookupTable:
        path = Path(path)
        if not path.is_file():
            raise LatencyError(f"no lookup table at {path}; build one with 'nas latency build'")
        remedy = "move it away and run 'nas latency build' (or 'nas latency import-ofa') again to make a new one"
        data = read_versioned_json(path, TABLE_FORMAT, TABLE_VERSION, "table", remedy)
        with reading(path, "latency table", remedy):
            entries = {str(k): dict(v) for k, v in dict(data["entries"]).items()}
            for key, entry in entries.items():
                ms = entry["ms"]
                if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not math.isfinite(ms) or ms < 0:
                    raise ValueError(f"entry {key!r} has latency {ms!r}, not a finite number of ms >= 0")
            protocol, complete = data.get("protocol"), data.get("complete", False)
            if protocol is not None and not isinstance(protocol, dict):
                raise TypeError(f"protocol is a {type(protocol).__name__}, not a JSON object")
            if not isinstance(complete, bool):
                raise TypeError(f"complete is {complete!r}, not true or false")
            table_id = data.get("table_id", "")
            if not isinstance(table_id, str):
                raise TypeError(f"table_id is {table_id!r}, not text")
            return cls(space=str(data["space"]), device=Device.from_dict(data["device"]),
                       resolutions=tuple(int(r) for r in data["resolutions"]), entries=entries,
                       protocol=protocol, source=data.get("source", "measured"), complete=complete,
                       table_id=table_id)


class CompiledTable:
    """A lookup table indexed once for one space: a batch of subnets' latencies as one gather and row sum; with
    ``precision`` (e.g. ``int8``), of the subnets with every layer in that precision (``<key>@<precision>``).

    Every layer a subnet of ``space`` can contain sits at one position of a flat array of latencies
    (``search_spaces._genome.PlanIndex``); a subnet's latency is the sum of its layers' entries, as
    ``LookupTable.predict_arch`` computes it (equal to it within float rounding, 1e-12 relative). A layer
    without an entry is NaN in the array, and a subnet that needs one raises ``MissingEntryError`` with
    ``predict_arch``'s message. ``predict_genomes`` scores genomes (``search_spaces._genome``) without
    making archs at all.
    """

    def __init__(self, table: LookupTable, space: SearchSpace, precision: str = BASE_PRECISION) -> None:
        from search_spaces import PrecisionPolicy
        from search_spaces._genome import plan_index

        self.table, self.space, self.precision = table, space, precision
        self.index = plan_index(space)
        # Every layer at ``precision`` (a uniform policy): its ``<key>@<precision>`` entries.
        self._policy = None if precision == BASE_PRECISION else PrecisionPolicy.uniform(space, precision)
        entries = table.entries

        def ms(key: str) -> float:
            entry = entries.get(precision_key(key, precision))
            return float(entry["ms"]) if entry is not None else math.nan

        def stem(p) -> float:
            return ms(p.stem_key()) + sum(ms(b.key()) for b in p.blocks if b.stage_index < 0)

        self.values = self.index.values(stem, lambda b: ms(b.key()), lambda p: ms(p.head_key()))

    def predict_genomes(self, genomes) -> np.ndarray:
        """Latency (ms, float64) of each genome."""
        out = self.values[self.index.positions(genomes)].sum(axis=1)
        missing = np.flatnonzero(np.isnan(out))
        if missing.size:
            from search_spaces._genome import archs_of

            arch = archs_of(self.space, np.asarray(genomes)[missing[:1]])[0]
            self.table.predict_arch(self.space, arch, self._policy)  # raises MissingEntryError naming the layer
        return out

    def predict(self, archs: Iterable[Arch]) -> np.ndarray:
        """Latency (ms) of each arch, as ``LookupTable.predict``."""
        from search_spaces._genome import genomes_of

        return self.predict_genomes(genomes_of(self.space, list(archs)))

    __call__ = predict


MeasureFn = Callable[[LayerSpec], Measurement]


class LayerMeasurer:
    """The default measure function: build the layer alone and time it under ``backend``.

    With ``config.load_reference`` each layer is timed interleaved with a fixed reference layer (the
    middle block of the space's smallest subnet) and reported as ``relative * reference_base_ms``, the
    base being the reference's first latency (kept in the table's protocol, so a resumed build keeps the
    scale).
    """

    # The id of the quantiser whose layers it times (``quantized_layer_measurer``); "" for fp32 layers.
    quantizer: str = ""

    def __init__(self, builder: LayerBuilder, backend: Backend, config: MeasureConfig, batch_size: int = 1,
                 space: SearchSpace | None = None) -> None:
        check_clock(config, backend.threads)
        self.builder, self.backend, self.config, self.batch_size = builder, backend, config, batch_size
        self.space = space
        self.reference_base_ms: float | None = None
        self._reference_run: Callable[[], object] | None = None

    def _prepare(self, layer: LayerSpec) -> Callable[[], object]:
        return self.backend.prepare(layer.build(self.builder), (self.batch_size, *layer.input_shape))

    def reference_run(self, space: SearchSpace) -> Callable[[], object]:
        if self._reference_run is None:
            from search_spaces import smallest

            layers = network_layers(plan(space, smallest(space)))
            self._reference_run = self._prepare(layers[len(layers) // 2])
        return self._reference_run

    def __call__(self, layer: LayerSpec, space: SearchSpace | None = None) -> Measurement:
        configure_allocator()
        run = self._prepare(layer)
        space = space or self.space
        if not self.config.load_reference or space is None:
            return time_callable(run, self.config)
        relative, ref = time_interleaved([run], self.config, reference=self.reference_run(space))
        if self.reference_base_ms is None:
            self.reference_base_ms = ref.latency_ms
        base = self.reference_base_ms
        return replace(relative, latency_ms=relative.latency_ms * base, median_ms=relative.median_ms * base,
                       relative=relative.latency_ms, reference_ms=ref.latency_ms)


def layer_measurer(builder: LayerBuilder, backend: Backend, config: MeasureConfig,
                   batch_size: int = 1, space: SearchSpace | None = None) -> LayerMeasurer:
    """The default measure function (see ``LayerMeasurer``)."""
    return LayerMeasurer(builder, backend, config, batch_size, space)


def quantized_layer_measurer(builder: LayerBuilder, backend: Backend, config: MeasureConfig,
                             quantize: QuantizeFn, batch_size: int = 1, space: SearchSpace | None = None,
                             precision: str = "int8", quantizer: str = "") -> LayerMeasurer:
    """The measure function of a table's ``precision`` entries: each layer built alone, exported to ONNX,
    quantised by ``quantize`` (``nas.quantize.quantize_layer``, whose id is ``quantizer``) and timed by ONNX
    Runtime under the protocol. ``backend`` must be ``onnxruntime`` on the CPU (``LatencyError`` otherwise). With
    ``load_reference`` the reference stays the fp32 reference layer, so both precisions share one scale."""
    try:
        quantized = quantized_backend(backend, quantize, precision)
    except ValueError as exc:
        raise LatencyError(str(exc)) from None
    measurer = LayerMeasurer(builder, quantized, config, batch_size, space)
    measurer.quantizer = quantizer
    if config.load_reference and space is not None:
        measurer._reference_run = LayerMeasurer(builder, backend, config, batch_size, space).reference_run(space)
    return measurer


# The protocol's settings that change what a layer's entry means: entries measured under different values of any
# of them are not on one scale (the others only decide how hard a noisy series is retried).
COMPARABLE_SETTINGS = ("warmup", "repeats", "quantile", "clock", "load_reference")


def check_same_protocol(path: str | os.PathLike[str], stored: dict[str, Any], protocol: MeasureConfig,
                        what: str = "lookup table", asker: str = "this build",
                        remedy: str = "one table keeps one protocol, so build with the table's settings, or move "
                                      "the table away to measure a new one") -> None:
    """Refuse (``LatencyError``, naming each differing setting) to add entries to the table (or ``what``) at
    ``path``, measured with ``stored``, under a ``protocol`` whose ``COMPARABLE_SETTINGS`` differ: a table is one
    protocol, so its sums compare subnets on one scale. Settings an older file did not record count as their
    defaults."""
    had = {**asdict(MeasureConfig()), **stored}
    wanted = asdict(protocol)
    differ = [k for k in COMPARABLE_SETTINGS if had[k] != wanted[k]]
    if differ:
        raise LatencyError(f"{what} {str(path)!r} was measured with "
                           + ", ".join(f"{k} {had[k]}" for k in differ) + f"; {asker} asks for "
                           + ", ".join(f"{k} {wanted[k]}" for k in differ) + f": {remedy}")


def build_table(space: SearchSpace, device: Device, path: str | os.PathLike[str], measure: MeasureFn, *,
                resolutions: Iterable[int] | None = None, protocol: MeasureConfig | None = None,
                lock_path: str | os.PathLike[str] | None = None, progress: bool = True,
                save_every_s: float = 2.0, precision: str = BASE_PRECISION) -> LookupTable:
    """Measure every layer of ``space`` at ``resolutions`` with ``measure``, saving to ``path`` as it goes.

    An existing table at ``path`` (same space and device) is resumed: its entries are kept and only the
    missing layers are measured; resolutions accumulate. The table keeps the protocol of its first build (and its
    load reference's base, so later entries share its scale); adding entries under a protocol that differs in a
    ``COMPARABLE_SETTINGS`` is refused before anything is measured. The file is saved at least every
    ``save_every_s`` seconds, at the end, and when interrupted (by any exception), once it holds an entry.

    ``precision`` other than fp32 adds that precision's entries (``<key>@<precision>``, ``measure`` timing each
    layer in it, e.g. ``LayerMeasurer`` over ``measure.quantized_backend``); fp32 entries keep their keys. Such
    entries record ``measure.quantizer`` (the quantiser's id) where it has one, and an entry of another quantiser
    is measured again.
    """
    resolutions = tuple(sorted(set(space.resolutions if resolutions is None else resolutions)))
    layers = enumerate_layers(space, resolutions)
    path = Path(path)
    # Read and plan inside the lock: a second build on the device waits, then finds the first's entries
    # and measures only what is still missing (nothing, when the first finished).
    with device_lock(lock_path) if lock_path else _null_context():
        table = LookupTable(space=space.name, device=device, resolutions=resolutions,
                            protocol=asdict(protocol) if protocol else None, table_id=uuid.uuid4().hex)
        stored: dict[str, Any] | None = None  # the existing table's protocol
        if path.is_file():
            old = LookupTable.load(path)
            if old.space != space.name or old.device.id != device.id:
                raise LatencyError(f"{path} holds a table of {old.space!r} on {old.device.id!r}, not "
                                   f"{space.name!r} on {device.id!r}")
            table.entries = old.entries
            table.table_id = old.table_id or table.table_id  # the same table, grown
            table.resolutions = tuple(sorted(set(old.resolutions) | set(resolutions)))
            stored = old.protocol
            if stored:  # the table keeps the protocol of its first build, reference base included
                table.protocol = {**(table.protocol or {}), **stored}
            if stored and stored.get("reference_base_ms") and hasattr(measure, "reference_base_ms"):
                measure.reference_base_ms = float(stored["reference_base_ms"])  # type: ignore[attr-defined]
        quantizer = str(getattr(measure, "quantizer", "") or "") if precision != BASE_PRECISION else ""

        def stale(key: str) -> bool:
            entry = table.entries.get(precision_key(key, precision))
            return entry is None or (bool(quantizer) and entry.get("quantizer") != quantizer)

        todo = [layer for key, layer in layers.items() if stale(key)]
        if todo and protocol is not None and stored:
            check_same_protocol(path, stored, protocol)
        desc = f"{space.name} on {device.id}" + ("" if precision == BASE_PRECISION else f" ({precision})")
        bar = _progress(len(layers), len(layers) - len(todo), desc, progress)
        last_save = time.monotonic()
        noisy = 0
        try:
            for layer in todo:
                with warnings.catch_warnings():  # one summary below, not a warning per layer (entries keep "noisy")
                    warnings.simplefilter("ignore", NoisyMeasurementWarning)
                    m = measure(layer)
                noisy += bool(m.noisy)
                entry = {"ms": m.latency_ms, "spread": m.spread, "kind": layer.kind, "noisy": m.noisy}
                if precision != BASE_PRECISION:
                    entry["precision"] = precision
                    if quantizer:
                        entry["quantizer"] = quantizer
                table.entries[precision_key(layer.key, precision)] = entry
                base = getattr(measure, "reference_base_ms", None)
                if base is not None and table.protocol is not None:
                    table.protocol["reference_base_ms"] = base
                bar.update(1)
                if time.monotonic() - last_save > save_every_s:
                    table.save(path)
                    last_save = time.monotonic()
        finally:
            bar.close()
            # From the entries, also when interrupted: an unfinished int8 pass leaves a complete fp32 table complete.
            table.complete = all(key in table.entries for key in enumerate_layers(space, table.resolutions))
            if table.entries or path.is_file():  # a first build that measured nothing leaves no table
                table.save(path)
            if noisy:
                warnings.warn(f"{noisy} of the {len(todo)} layers measured stayed noisy (their entries say "
                              f"\"noisy\": true); a quieter machine or more repeats would steady them",
                              NoisyMeasurementWarning, stacklevel=2)
    return table


class _null_context:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _progress(total: int, done: int, desc: str, enabled: bool):
    return progress_bar(enabled, total=total, initial=done, desc=desc, unit="layer", leave=False)
