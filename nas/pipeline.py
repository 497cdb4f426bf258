"""``nas run``: the whole pipeline, each stage skipped when its result is already there.

train (or import) -> latency (table / predictors per device) -> search -> hardware in the loop -> plot -> export.
Every stage resumes by itself (training from its checkpoint, the table from its saved entries, the study
from its journal), so an interrupted ``nas run`` continues where it stopped.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ExperimentConfig
from .errors import UsageError
from .rundir import RunDir


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: ``done()`` says whether its result is already in place."""

    name: str
    done: Callable[[], bool]
    run: Callable[[], Any]


@dataclass(frozen=True)
class PipelineResult:
    run_dir: Path
    ran: tuple[str, ...]
    skipped: tuple[str, ...]
    fronts: Path
    plot: Path
    export: Path | None


def _disconnect_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


class Pipeline:
    """The stages of one experiment over one run folder and one device store."""

    def __init__(self, config: ExperimentConfig, run: RunDir, home: str | Path | None = None,
                 progress: bool = True, verbose: bool = False, quiet: bool = False) -> None:
        from latency_predictors import DeviceStore, default_root

        from .query import knee_export_path
        from .search_paths import search_paths

        self.config = config
        self.run = run
        self.progress = progress
        self.verbose = verbose
        self.quiet = quiet
        self.space = config.get_space()
        self.search = config.search  # parsed and cross-checked when the config was read
        if not self.search.devices:
            raise UsageError("config: no devices; add e.g. `devices: [local-cpu-1t-ort]`")
        self.latency = config.latency
        self.store = DeviceStore(home if home is not None else default_root())
        self.paths = search_paths(run)
        self.export_path = knee_export_path(run, self.search.devices[0])
        # Every input is checked now, before any stage trains, imports or measures (and nothing is saved).
        self._check_devices()
        self._check_fit_from()
        self._check_precisions()
        self._check_accuracy_predictor()
        self._latency_missing()  # a device not local, with no table or predictor to search with
        self._check_storage()

    def _trained(self) -> bool:
        """The run holds this config's trained supernet; one trained from another config (seed, data, training
        settings) is a ``UsageError``, never "done" (``nas.accuracy.check_run_supernet``, as ``nas train``)."""
        from .accuracy import check_run_supernet

        if not self.run.is_trained():
            return False
        check_run_supernet(self.config, self.run)
        return True

    # -- stage bodies ---------------------------------------------------------------------------------
    def _train(self) -> None:
        from .training import train

        train(self.config, self.run, progress=self.progress, verbose=self.verbose, quiet=self.quiet)

    def _device(self, device_id: str) -> Any:
        """The device as stored, or the local device its id names (recorded by the stage that measures it)."""
        return self.store.find(device_id)

    def _local_devices(self) -> list[Any]:
        return [d for d in (self._device(i) for i in self.search.devices) if d.is_local]

    def _check_devices(self) -> None:
        """Every device is stored or a valid local id, and each local one can be timed on this machine (the
        latency and hardware-in-the-loop stages measure them)."""
        from latency_predictors import check_measurable

        for device in self._local_devices():
            check_measurable(device)

    def _check_accuracy_predictor(self) -> None:
        """With ``search.accuracy: predictor`` and an imported predictor (in the run already, or one the config's
        ``supernet`` section imports), ``search.resolutions`` must be ones it covers (as the search stage checks)."""
        from .ofa_zoo import OFA_PREDICTOR_RESOLUTIONS, OFAAccuracyPredictor, covers_resolutions
        from .search_stage import predictor_space

        if self.search.accuracy != "predictor":
            return
        space = self.search.restrict(self.space)
        if self.paths.accuracy_predictor.is_file():
            if covers_resolutions(self.paths.accuracy_predictor):
                predictor_space(OFAAccuracyPredictor.load(self.paths.accuracy_predictor).resolutions, self.search,
                                space)
        elif self.config.supernet is not None and self.config.supernet.accuracy_predictor is not None:
            predictor_space(OFA_PREDICTOR_RESOLUTIONS, self.search, space)

    def _check_storage(self) -> None:
        """``search.storage`` opens (a database), or the run's journal holds no damaged record."""
        from .study import check_storage

        check_storage(self.search, self.run)

    def _check_fit_from(self) -> None:
        """``latency.fit_from`` names a device fitted earlier in this config, or one with a stored predictor or
        table of the space (checked before any stage runs)."""
        source = self.latency.fit_from
        if source is None or source in self.search.devices[:-1]:
            return
        from latency_predictors import LatencyError
        from latency_predictors.workflow import source_predictor

        if source in self.search.devices:
            raise UsageError(f"latency.fit_from {source!r} is the last of the devices; list it before the devices "
                             f"that transfer from it")
        try:
            source_predictor(self.store, source, self.space)
        except LatencyError as exc:  # an unknown device, or one with nothing to transfer from
            raise UsageError(f"latency.fit_from: {exc}") from None

    def _check_precisions(self) -> None:
        """With int8 in ``search.precisions``: every local device times quantised layers (ONNX Runtime on the CPU)
        for its table's int8 entries, and every other device brings a table with them (checked before any stage)."""
        if not self.search.quantized:
            return
        from latency_predictors.workflow import load_table

        for device_id in self.search.devices:
            device = self._device(device_id)
            if device.is_local:
                if not self.latency.table:
                    raise UsageError("search.precisions lists int8, whose latency comes from the int8 entries of each "
                                     "device's lookup table: set latency.table: true")
                if not device.times_quantized:
                    raise UsageError(f"search.precisions lists int8, and quantised layers are timed only by ONNX "
                                     f"Runtime on the CPU; device {device_id!r} runs {device.backend} on "
                                     f"{device.accelerator} (use a local-...-ort device, or precisions: [fp32])")
                continue
            table = load_table(self.store, device, self.space)
            if table is None or "int8" not in table.precisions:
                raise UsageError(f"search.precisions lists int8, and device {device_id!r} (not local) has no lookup "
                                 f"table with int8 entries for {self.space.name!r}; list fp32 only for it")

    def _fits_transfer(self, device: Any) -> bool:
        return self.latency.fit_from is not None and device.id != self.latency.fit_from

    def _latency_missing(self) -> list[tuple[Any, str]]:
        """(device, what) pairs still to make: 'table' and/or 'fit'."""
        from latency_predictors.workflow import fit_is_complete, load_predictors, load_table

        missing = []
        wanted = set(self.latency.resolutions or self.space.resolutions)
        for device_id in self.search.devices:
            device = self._device(device_id)
            table = load_table(self.store, device, self.space)
            if not device.is_local:
                if table is None and not load_predictors(self.store, device, self.space):
                    raise UsageError(f"device {device_id!r} is not local and has no table or predictor for "
                                     f"{self.space.name!r}; import one (`nas latency import-ofa`)")
                continue
            if self.latency.table and (table is None or not table.complete or not wanted <= set(table.resolutions)):
                missing.append((device, "table"))
            for precision in self.search.precisions:
                if precision != "fp32" and self.latency.table and (
                        table is None or not wanted <= set(table.resolutions)
                        or not table.complete_for(self.space, precision)):
                    missing.append((device, precision))
            source = self.latency.fit_from if self._fits_transfer(device) else None
            if self.latency.fit_samples and not fit_is_complete(self.store, device.id, self.space.name,
                                                                self.latency.fit_samples, source=source):
                missing.append((device, "fit"))  # never fitted, or a fit interrupted (no record written)
        return missing

    def _latency(self) -> None:
        from latency_predictors import build_table, configure_allocator, fit_predictors
        from latency_predictors.remote import table_measurer

        from .latency_builders import quantized_layer_measure, static_builder

        configure_allocator()
        measure = self.latency.measure_config()

        def build(device: Any, measure_layer: Any, precision: str = "fp32") -> None:
            build_table(self.space, device, self.store.table_path(device.id, self.space.name), measure_layer,
                        resolutions=self.latency.resolutions or None, protocol=measure,
                        lock_path=self.store.lock_path(device.id), progress=self.progress, precision=precision)

        for device, what in self._latency_missing():
            with self.store.recording(device.id):  # failing before its first measurement registers nothing
                device = self.store.refresh_metadata(device)
                if what == "table":
                    with table_measurer(self.space, static_builder(), device, measure) as measure_layer:
                        build(device, measure_layer)
                elif what != "fit":  # a precision's entries, timed in this process where each layer is quantised
                    build(device, quantized_layer_measure(self.space, device, measure, what), what)
                else:
                    source = self.latency.fit_from if self._fits_transfer(device) else None
                    fit_predictors(self.store, device, self.space, static_builder(), self.latency.fit_samples,
                                   measure, resolutions=self.latency.resolutions or None, progress=self.progress,
                                   source=source)

    def _search(self) -> None:
        from .search_stage import search_stage

        search_stage(self.config, self.run, progress=self.progress, store=self.store)

    def _hil(self) -> None:
        from .search import hardware_in_the_loop
        from .search_stage import device_measurers

        measurers = device_measurers(self.space, [d.id for d in self._local_devices()], store=self.store,
                                     progress=self.progress, measure_config=self.latency.measure_config())
        for device, report in hardware_in_the_loop(self.run, measurers).items():
            print(f"hardware in the loop, {device}: {len(report.arch_ids)} front members re-measured, "
                  f"predicted vs measured MAPE {100 * report.mape:.1f}%, Spearman {report.spearman:.3f}; "
                  f"{report.members_after} members on the measured front", file=sys.stderr)

    def _made_from_fronts(self, path: Path) -> bool:
        """``path`` exists and was written after the fronts last changed (a grown search, a new
        hardware-in-the-loop pass make it stale): how the stages after the search know what they were made from."""
        fronts = self.paths.fronts
        return path.is_file() and fronts.is_file() and path.stat().st_mtime >= fronts.stat().st_mtime

    # Plot and export hold the run's search lock: a search of another process cannot rewrite the fronts while
    # they are read, so an artifact newer than the fronts (``_made_from_fronts``) was made from them.
    def _plot(self) -> None:
        from .plots import plot_run
        from .search_paths import search_lock

        with search_lock(self.run):
            plot_run(self.run, config=self.search, space=self.search.restrict(self.space))

    def _export(self) -> None:
        from .pareto import knee_point
        from .query import export_member, open_fronts, run_calibration
        from .search_paths import search_lock

        with search_lock(self.run):
            store = open_fronts(self.run)
            front = store.front(self.search.devices[0])
            knee = front[knee_point([m.val_accuracy for m in front], [m.latency_ms for m in front])]
            # The knee was chosen by its accuracy under ONNX Runtime's own int8 kernels: should they stray from
            # the fake-quantised graph beyond the check's tolerance, the file is still written, with a warning.
            export_member(knee, self.export_path, calibration=run_calibration(store, knee.arch.resolution),
                          store=store, agreement="warn")

    # -- the pipeline ---------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        from .search_stage import search_is_complete

        if self.config.supernet is not None:
            from .ofa_zoo import is_imported

            first = Stage("import", lambda: is_imported(self.config.supernet, self.space.name, self.run), self._train)
        else:
            first = Stage("train", self._trained, self._train)
        return [
            first,
            Stage("latency", lambda: not self._latency_missing(), self._latency),
            Stage("search", lambda: search_is_complete(self.config, self.run), self._search),
            Stage("hardware-in-the-loop",  # devices not measured here (imported tables) have nothing to re-measure
                  lambda: not self._local_devices() or self._made_from_fronts(self.paths.hil), self._hil),
            Stage("plot", lambda: self._made_from_fronts(self.paths.plot), self._plot),
            Stage("export", lambda: self._made_from_fronts(self.export_path), self._export),
        ]

    def run_all(self) -> PipelineResult:
        ran: list[str] = []
        skipped: list[str] = []
        for stage in self.stages():
            if stage.done():
                print(f"[{stage.name}] already done, skipped", file=sys.stderr)
                skipped.append(stage.name)
                continue
            print(f"[{stage.name}] running", file=sys.stderr)
            started = time.perf_counter()
            try:
                stage.run()
            finally:
                _disconnect_ray()  # each stage starts Ray with the resources it needs (e.g. device:<id>)
            print(f"[{stage.name}] done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
            ran.append(stage.name)
        return PipelineResult(run_dir=self.run.root, ran=tuple(ran), skipped=tuple(skipped),
                              fronts=self.paths.fronts, plot=self.paths.plot, export=self.export_path)
