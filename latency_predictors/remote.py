"""End-to-end measurement of whole subnets, placed by Ray on the node that is the device.

A node offers a device through the Ray custom resource ``device:<id>`` (capacity 1, so measurements on
one device never overlap); ``init_ray`` makes the local node offer its own device. A board or phone
joins by running a Ray worker with that resource (``ray start --address ... --resources
'{"device:<id>": 1}'``). Tasks take the builder as an argument, so this module never imports
``supernets``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from search_spaces import Arch, SearchSpace, connect_ray, progress_bar, reading

from .devices import Device, LatencyError, atomic_write_json
from .layers import LayerBuilder
from .measure import (
    MeasureConfig,
    Measurement,
    backend_for,
    check_clock,
    configure_allocator,
    device_lock,
    time_callable,
    time_interleaved,
)

MEASUREMENTS_FORMAT = "hwnas-measurements"


def device_resource(device_id: str) -> str:
    return f"device:{device_id}"


def measure_network(space: SearchSpace, arch: Arch, builder: LayerBuilder, device: Device,
                    config: MeasureConfig) -> Measurement:
    """Time one whole subnet in this process under the device's backend."""
    if not device.is_local:
        raise LatencyError(f"device {device.id!r} has no local backend; it cannot be measured here")
    configure_allocator()
    module = builder.network(space, arch)
    backend = backend_for(device)
    check_clock(config, device.threads, device.accelerator)
    shape = (device.batch_size, 3, arch.resolution, arch.resolution)
    return time_callable(backend.prepare(module, shape), config)


def normal_priority() -> int:
    """Bring this process back to niceness 0 and return the niceness it ends up with.

    Ray starts workers at niceness 15 (``RAY_worker_niceness``); on a machine shared with other work such
    a worker gets a few percent of a core, and its timings measure the load, not the network.
    """
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if current > 0:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
        except PermissionError:
            warnings.warn(f"measuring at niceness {current} (cannot lower it without privileges); start Ray "
                          f"with RAY_worker_niceness=0 for undisturbed timings", stacklevel=2)
    return os.getpriority(os.PRIO_PROCESS, 0)


def _measure_batch(space: SearchSpace, arch_dicts: list[dict[str, Any]], builder: LayerBuilder,
                   device: Device, config: MeasureConfig, lock_path: str | None) -> list[dict[str, Any]]:
    normal_priority()
    configure_allocator()
    archs = [Arch.from_dict(d) for d in arch_dicts]
    lock = device_lock(lock_path) if lock_path else None
    if lock:
        lock.__enter__()
    try:
        if not device.is_local:
            raise LatencyError(f"device {device.id!r} has no local backend; it cannot be measured here")
        backend = backend_for(device)
        check_clock(config, device.threads, device.accelerator)

        def prepare(arch: Arch):
            return backend.prepare(builder.network(space, arch),
                                   (device.batch_size, 3, arch.resolution, arch.resolution))

        runs = [prepare(a) for a in archs]
        if not config.load_reference:
            return [m.to_dict() for m in time_interleaved(runs, config)]
        *relative, ref = time_interleaved(runs, config, reference=prepare(reference_arch(space)))
        r = ref.latency_ms
        return [replace(m, latency_ms=m.latency_ms * r, median_ms=m.median_ms * r, relative=m.latency_ms,
                        reference_ms=r).to_dict() for m in relative]
    finally:
        if lock:
            lock.__exit__(None, None, None)


def _ray_options(device: Device) -> dict[str, Any]:
    """Where a measuring task or actor runs: the node offering ``device:<id>``, with the device's threads
    (and its GPU, so that Ray leaves it visible to the task)."""
    options: dict[str, Any] = {"resources": {device_resource(device.id): 1}, "num_cpus": max(1, device.threads)}
    if device.accelerator.startswith("cuda"):
        options["num_gpus"] = 1
    return options


def reference_arch(space: SearchSpace) -> Arch:
    """The fixed workload of load-referenced measurement: the space's smallest subnet at its middle
    resolution."""
    from search_spaces import smallest

    return replace(smallest(space), resolution=space.resolutions[len(space.resolutions) // 2])


def init_ray(device: Device, num_cpus: int | None = None) -> None:
    """Start (or join) Ray so that the local node offers ``device:<id>``; no-op when already running and
    some node offers it."""
    import ray

    # Starts a local instance offering the resource, or attaches to a running cluster (RAY_ADDRESS, `ray
    # start`), whose nodes must offer it: a board joins with `ray start --address HEAD --resources ...`.
    wanted = device_resource(device.id)
    from search_spaces import ray_cluster_named_or_running

    if ray.is_initialized() and wanted not in ray.cluster_resources() and \
            not ray_cluster_named_or_running(connected=False):
        # This process started a local Ray for another device (a run measuring two local devices): start it
        # again offering every device resource it offered, and this one. No measurement is in flight between
        # two calls here (each waits for its results), so nothing is lost.
        offered = {k: v for k, v in ray.cluster_resources().items() if k.startswith(device_resource(""))}
        cpus = int(ray.cluster_resources().get("CPU", 1))
        ray.shutdown()
        connect_ray(num_cpus=max(cpus, num_cpus or max(1, device.threads)), resources={**offered, wanted: 1},
                    log_to_driver=False, configure_logging=False)
    connect_ray(num_cpus=num_cpus or max(1, device.threads), resources={wanted: 1},
                log_to_driver=False, configure_logging=False)
    if wanted not in ray.cluster_resources():
        raise LatencyError(f"no Ray node offers resource {device_resource(device.id)!r}; start a Ray "
                           f"worker on the device with --resources '{{\"{device_resource(device.id)}\": 1}}'")


def cluster_is_named_or_running() -> bool:
    """True when ``RAY_ADDRESS`` names a cluster or one was started on this machine (``ray start``): then a
    lookup table is measured on the cluster's node offering the device (``table_measurer``)."""
    from search_spaces import ray_cluster_named_or_running

    return ray_cluster_named_or_running()


class _LayerActor:
    """Holds a ``LayerMeasurer`` on the node offering the device (state: the load reference's base)."""

    def __init__(self, builder: LayerBuilder, device: Device, config: MeasureConfig, space: SearchSpace) -> None:
        from .lut import LayerMeasurer

        normal_priority()
        configure_allocator()
        self.measure = LayerMeasurer(builder, backend_for(device), config, device.batch_size, space)

    def run(self, layer: Any, reference_base_ms: float | None) -> tuple[dict[str, Any], float | None, str]:
        import ray

        self.measure.reference_base_ms = reference_base_ms
        m = self.measure(layer)
        return m.to_dict(), self.measure.reference_base_ms, ray.get_runtime_context().get_node_id()


class RemoteLayerMeasurer:
    """``measure(layer) -> Measurement`` timed by an actor on the Ray node offering ``device:<id>``: how a
    board that joined the cluster (``ray start --address HEAD --resources '{"device:<id>": 1}'``) gets its
    lookup table. The table itself is read, planned and saved here (``build_table``). ``node_id`` is the
    node that measured; ``close`` ends the actor."""

    def __init__(self, space: SearchSpace, builder: LayerBuilder, device: Device, config: MeasureConfig) -> None:
        import ray

        if not device.is_local:
            raise LatencyError(f"device {device.id!r} has no backend to measure with (imported data)")
        init_ray(device)
        actor = ray.remote(_LayerActor).options(**_ray_options(device))
        self._actor = actor.remote(builder, device, config, space)
        self.reference_base_ms: float | None = None
        self.node_id: str | None = None

    def __call__(self, layer: Any) -> Measurement:
        import ray

        data, self.reference_base_ms, self.node_id = ray.get(self._actor.run.remote(layer, self.reference_base_ms))
        return Measurement(**data)

    def close(self) -> None:
        import ray

        ray.kill(self._actor)


@contextlib.contextmanager
def table_measurer(space: SearchSpace, builder: LayerBuilder, device: Device, config: MeasureConfig,
                   use_ray: bool | None = None) -> Iterator[Any]:
    """The measure function of ``build_table`` for ``device``, for the ``with`` block: on the Ray node offering
    ``device:<id>`` when ``use_ray`` (default: when a cluster is named or running; its actor ends with the
    block), else in this process. A remote one tells the node that measured (``node_id``)."""
    from .lut import layer_measurer

    if use_ray is None:
        use_ray = cluster_is_named_or_running()
    if not use_ray:
        check_clock(config, device.threads, device.accelerator)
        yield layer_measurer(builder, backend_for(device), config, device.batch_size, space)
        return
    remote = RemoteLayerMeasurer(space, builder, device, config)
    try:
        yield remote
    finally:
        remote.close()


def measure_archs(space: SearchSpace, archs: Sequence[Arch], builder: LayerBuilder, device: Device,
                  config: MeasureConfig, *, lock_path: str | os.PathLike[str] | None = None,
                  use_ray: bool = True, chunk: int = 8,
                  on_result: Callable[[Arch, Measurement], None] | None = None,
                  progress: bool = True) -> list[Measurement]:
    """Measure ``archs`` end to end on ``device``, through Ray tasks that need ``device:<id>`` (or in this
    process when ``use_ray`` is False). ``on_result`` is called as each result arrives (for saving)."""
    results: list[Measurement | None] = [None] * len(archs)
    bar = progress_bar(progress, total=len(archs), desc=f"measure {space.name} on {device.id}", unit="net",
                       leave=False)
    chunks = [list(range(i, min(i + chunk, len(archs)))) for i in range(0, len(archs), chunk)]
    lock = str(lock_path) if lock_path else None
    try:
        if not use_ray:
            for idx in chunks:
                for i, m in zip(idx, _measure_batch(space, [archs[i].to_dict() for i in idx], builder, device,
                                                    config, lock)):
                    results[i] = _record(archs[i], m, on_result)
                    bar.update(1)
            return [r for r in results if r is not None]
        import ray

        init_ray(device)
        task = ray.remote(_measure_batch).options(**_ray_options(device), max_retries=1)
        pending = {task.remote(space, [archs[i].to_dict() for i in idx], builder, device, config, lock): idx
                   for idx in chunks}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            idx = pending.pop(done[0])
            for i, m in zip(idx, ray.get(done[0])):
                results[i] = _record(archs[i], m, on_result)
                bar.update(1)
        return [r for r in results if r is not None]
    finally:
        bar.close()


def _record(arch: Arch, data: dict[str, Any], on_result: Callable[[Arch, Measurement], None] | None
            ) -> Measurement:
    m = Measurement(**data)
    if on_result is not None:
        on_result(arch, m)
    return m


def _positive(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _check_records(records: dict[str, Any], reference_base_ms: Any) -> None:
    """Refuse (``ValueError`` / ``TypeError``) records that ``MeasurementLog`` did not write: each an object with
    an ``arch`` object and a list of runs, each run's ``latency_ms`` (and ``relative``, ``reference_ms`` where
    load-referenced) a finite number of ms > 0, like the reference base."""
    if reference_base_ms is not None and not _positive(reference_base_ms):
        raise ValueError(f"reference_base_ms is {reference_base_ms!r}, not a finite number > 0")
    for arch_id, record in records.items():
        if not isinstance(record, dict) or not isinstance(record.get("arch"), dict) \
                or not isinstance(record.get("runs"), list):
            raise TypeError(f"record {arch_id!r} is not an object with an arch and a list of runs")
        for run in record["runs"]:
            if not isinstance(run, dict):
                raise TypeError(f"record {arch_id!r} has a run that is not an object: {run!r}")
            for key in ("latency_ms", "relative", "reference_ms"):
                if (key == "latency_ms" or key in run) and not _positive(run.get(key)):
                    raise ValueError(f"record {arch_id!r} has a run with {key} {run.get(key)!r}, not a finite "
                                     f"number > 0")


class MeasurementLog:
    """End-to-end measurements of one space on one device, kept in a JSON file so that fitting and
    evaluation reuse them and resume after an interruption. Each arch may hold several runs (separate
    measurements, used for the repeatability figure).

    Several processes may share the file (a ``fit`` and an ``eval`` on one device, two runs sharing
    ``$HWNAS_HOME``): every write happens under the log's own lock (``.<name>.lock`` beside it) and starts from
    the file as it is then, so no process's records overwrite another's; ``ensure`` holds that lock for a whole
    pass and plans it from the file, so what another process measured is not measured again.
    """

    def __init__(self, path: str | os.PathLike[str], space: str, device: str,
                 protocol: MeasureConfig | None = None) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self.space, self.device = space, device
        self.protocol = asdict(protocol) if protocol else None
        # Latency of the reference workload in the first load-referenced measurement: relative results are
        # scaled by it, so all of them share one scale.
        self.reference_base_ms: float | None = None
        self._lock_path = self.path.with_name(f".{self.path.name}.lock")
        self._held = 0  # depth of this instance's hold on the lock (``ensure`` holds it while ``add`` writes)
        self._reload()

    def _reload(self) -> None:
        """Take the records (and the reference base, once set) from the file as it is now."""
        if not self.path.is_file():
            return
        with reading(self.path, "latency measurement log", "move it away and measure again"):
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise TypeError(f"expected a JSON object, got {type(data).__name__}")
            records, base = dict(data["records"]), data.get("reference_base_ms")
            _check_records(records, base)
        if data.get("format") != MEASUREMENTS_FORMAT or data.get("space") != self.space:
            raise LatencyError(f"{self.path} is not a measurement log of space {self.space!r}")
        if data.get("device") != self.device:  # copied or renamed into place: its timings are another device's
            raise LatencyError(f"{self.path} holds measurements of device {data.get('device')!r}, not "
                               f"{self.device!r}; move it back where it belongs (or away) to measure this device")
        stored = data.get("protocol")
        if records and stored and self.protocol:  # one log, one protocol: its subnets compare on one scale
            from .lut import check_same_protocol

            with reading(self.path, "latency measurement log", "move it away and measure again"):
                stored = dict(stored)
            check_same_protocol(self.path, stored, MeasureConfig(**self.protocol), "measurement log",
                                "this command", "the subnets measured so far were timed under one protocol, so "
                                "measure with its settings, or move the log away to measure them again")
        self.records = records
        if base is not None:
            self.reference_base_ms = base

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The log's lock, re-entrant within this instance (``add`` called back from inside ``ensure``)."""
        if self._held:
            self._held += 1
            try:
                yield
            finally:
                self._held -= 1
            return
        with device_lock(self._lock_path, what="measurement log"):
            self._held = 1
            try:
                yield
            finally:
                self._held = 0

    def runs(self, arch: Arch) -> list[dict[str, Any]]:
        return self.records.get(arch.arch_id, {}).get("runs", [])

    def add(self, arch: Arch, m: Measurement) -> None:
        """Append a run of ``arch`` to the file as it is now (another process's records stay)."""
        with self._locked():
            self._reload()
            record = self.records.setdefault(arch.arch_id, {"arch": arch.to_dict(), "runs": []})
            data = m.to_dict()
            if "relative" in data and self.reference_base_ms is None:
                self.reference_base_ms = float(data["reference_ms"])
            record["runs"].append(data)
            self._write()

    def latency_ms(self, arch: Arch, run: int = 0) -> float:
        """The run's latency: load-referenced runs as ``relative * reference_base_ms``, others as timed."""
        data = self.runs(arch)[run]
        if "relative" in data and self.reference_base_ms is not None:
            return float(data["relative"]) * self.reference_base_ms
        return float(data["latency_ms"])

    def save(self) -> None:
        """Write the records, merged with the file's: an arch keeps the longer of its two run lists (runs are
        only ever appended), the file's reference base wins once it has one."""
        with self._locked():
            mine, base = self.records, self.reference_base_ms
            self.records = {}
            self._reload()
            for arch_id, record in mine.items():
                theirs = self.records.get(arch_id)
                if theirs is None or len(theirs.get("runs", [])) < len(record.get("runs", [])):
                    self.records[arch_id] = record
            if self.reference_base_ms is None:
                self.reference_base_ms = base
            self._write()

    def _write(self) -> None:
        atomic_write_json(self.path, {"format": MEASUREMENTS_FORMAT, "version": 1, "space": self.space,
                                      "device": self.device, "protocol": self.protocol,
                                      "reference_base_ms": self.reference_base_ms, "records": self.records})

    def ensure(self, space: SearchSpace, archs: Sequence[Arch], runs: int, builder: LayerBuilder,
               device: Device, config: MeasureConfig, **kwargs: Any) -> None:
        """Measure until every arch has ``runs`` runs; each pass measures only what is missing. A pass holds the
        log's lock and starts from the file, so a second process on the same log waits, then measures only what
        the first left missing."""
        for r in range(1, runs + 1):
            with self._locked():
                self._reload()
                todo = [a for a in archs if len(self.runs(a)) < r]
                if todo:
                    measure_archs(space, todo, builder, device, config, on_result=self.add, **kwargs)
