"""Several processes on one device's data: measurement logs, quantised logs, fits and tables keep every record.

The concurrent tests start real processes (a small Python snippet each) that wait for a start file, then record fake
measurements through the library's own API at the same time; nothing is timed for real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from latency_predictors import (
    Device,
    DeviceStore,
    LatencyError,
    LookupTable,
    MeasureConfig,
    Measurement,
    build_table,
    device_lock,
    fit_device,
    fit_is_complete,
)
from latency_predictors.devices import atomic_write_text, file_mode
from latency_predictors.metrics import scatter_plot
from search_spaces import get_space, sample

from .conftest import CountingMeasure, fake_latency

SPACE = get_space("ofa_mbv3_cifar")
REPO = Path(__file__).resolve().parents[2]
TINY = MeasureConfig(warmup=1, repeats=3, retries=0)

# Common head of the snippets: wait for the start file so that both processes write at the same time.
_HEAD = """
import json, os, sys, time
from dataclasses import replace
from pathlib import Path
from search_spaces import get_space, sample
SPACE = get_space("ofa_mbv3_cifar")
ARCHS = [replace(a, resolution=24) for a in sample(SPACE, 24, seed=3)]
home, first, last, go = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
"""
_WAIT = """
go.with_name(f"ready-{os.getpid()}").touch()
while not go.exists():
    time.sleep(0.01)
"""


def _run_together(snippet: str, tmp_path: Path, ranges: list[tuple[int, int]]) -> list[str]:
    """Run ``snippet`` in one process per ``(first, last)`` range, started together; their stdout."""
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(snippet), str(tmp_path), str(a), str(b),
                               str(go)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for a, b in ranges]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < len(procs):  # both imported and opened their logs
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a writer did not start"
        time.sleep(0.05)
    go.touch()  # then they start at once
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outs.append(out)
    return outs


def _archs():
    return [replace(a, resolution=24) for a in sample(SPACE, 24, seed=3)]


def test_two_processes_adding_to_one_measurement_log_keep_every_record(tmp_path):
    """Each process opened the log before the other wrote (the loss: each rewrote the file from its own copy)."""
    snippet = _HEAD + """
from latency_predictors import MeasurementLog, Measurement
log = MeasurementLog(home / "m.json", SPACE.name, "local-cpu-1t-ort")
""" + _WAIT + """
for a in ARCHS[first:last] + [ARCHS[-1]]:  # the last arch: one run from each process
    log.add(a, Measurement(latency_ms=1.0 + first, median_ms=1.0, spread=0.0, kept=3, rejected=0))
    time.sleep(0.01)
"""
    _run_together(snippet, tmp_path, [(0, 10), (10, 20)])
    records = json.loads((tmp_path / "m.json").read_text())["records"]
    archs = _archs()
    assert {a.arch_id for a in archs[:20]} | {archs[-1].arch_id} == set(records)
    assert all(len(records[a.arch_id]["runs"]) == 1 for a in archs[:20])
    assert len(records[archs[-1].arch_id]["runs"]) == 2


def test_ensure_in_two_processes_measures_each_subnet_once(tmp_path):
    """Two fits of the same subnets at once: the second waits for the first's pass and finds them measured."""
    snippet = _HEAD + """
import latency_predictors.remote as remote
from latency_predictors import Device, MeasureConfig, Measurement, MeasurementLog
measured = []

def fake_measure(space, archs, builder, device, config, *, on_result=None, **kwargs):
    for a in archs:
        time.sleep(0.02)
        measured.append(a.arch_id)
        on_result(a, Measurement(latency_ms=1.0, median_ms=1.0, spread=0.0, kept=3, rejected=0))

remote.measure_archs = fake_measure
log = MeasurementLog(home / "m.json", SPACE.name, "local-cpu-1t-ort")
""" + _WAIT + """
log.ensure(SPACE, ARCHS[first:last], 1, None, Device("local-cpu-1t-ort", "onnxruntime"), MeasureConfig())
print(len(measured))
"""
    outs = _run_together(snippet, tmp_path, [(0, 12), (0, 12)])
    records = json.loads((tmp_path / "m.json").read_text())["records"]
    assert sum(int(o) for o in outs) == 12 and len(records) == 12
    assert all(len(r["runs"]) == 1 for r in records.values())


def test_two_quantized_measurements_keep_each_others_records(tmp_path):
    """An int8 and a mixed evaluation at once (the loss: the second wrote the records it read before the lock)."""
    snippet = _HEAD + """
import latency_predictors.measure as measure
from latency_predictors import Device, DeviceStore, MeasureConfig, Measurement
from latency_predictors.workflow import measure_quantized, quantized_policies
measured = []

def fake_interleaved(runs, config, **kwargs):
    time.sleep(0.02)
    return [Measurement(latency_ms=2.0, median_ms=2.0, spread=0.0, kept=3, rejected=0) for _ in runs]

measure.onnx_model_run = lambda model, shape, threads: (lambda: measured.append(1))
measure.time_interleaved = fake_interleaved
precision = "int8" if first == 0 else "mixed"
archs = ARCHS[first:last]
policies = quantized_policies(SPACE, archs, precision, seed=0)
device = Device("local-cpu-1t-ort", "onnxruntime")
store = DeviceStore(home)
""" + _WAIT + """
runs = measure_quantized(store, device, SPACE, archs, policies, lambda s, a, p: b"", MeasureConfig(), chunk=2,
                         progress=False)
assert all(r == [2.0, 2.0] for r in runs)
"""
    _run_together(snippet, tmp_path, [(0, 8), (8, 16)])
    path = DeviceStore(tmp_path).measurements_path("local-cpu-1t-ort", SPACE.name).with_name(
        f"{SPACE.name}.quantized.json")
    records = json.loads(path.read_text())["records"]
    assert {k.split("|")[0] for k in records} == {a.arch_id for a in _archs()[:16]}


# --- an interrupted fit is not a finished one (item 4) ---------------------------------------------------------


@pytest.fixture
def fake_measuring(monkeypatch):
    """End-to-end measurement replaced by a MACs-like fake: ``fit_device`` runs in well under a second."""
    import latency_predictors.remote as remote
    from latency_predictors.layers import network_gmacs

    def fake(space, archs, builder, device, config, *, on_result=None, **kwargs):
        for arch, g in zip(archs, network_gmacs(space, archs)):
            on_result(arch, Measurement(latency_ms=1.0 + 10 * float(g), median_ms=1.0, spread=0.0, kept=3,
                                        rejected=0))

    monkeypatch.setattr(remote, "measure_archs", fake)


def _fit(store: DeviceStore, n: int):
    device = Device("local-cpu-1t-ort", "onnxruntime")
    return fit_device(store, device, SPACE, object(), n, TINY, resolutions=[24], use_ray=False, progress=False,
                      choose="random")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.is_dir() else {}


def _interrupt_predictor_saves(monkeypatch, after: int) -> None:
    import latency_predictors.learned as learned

    real, calls = learned.atomic_write_json, []

    def failing(path, data):
        calls.append(path)
        if len(calls) > after:
            raise KeyboardInterrupt("simulated kill")
        real(path, data)

    monkeypatch.setattr(learned, "atomic_write_json", failing)


def test_an_interrupted_fit_is_not_complete_and_a_refit_never_mixes_predictors(tmp_path, fake_measuring,
                                                                                 monkeypatch):
    store = DeviceStore(tmp_path)
    folder = store.predictor_dir("local-cpu-1t-ort", SPACE.name)
    with monkeypatch.context() as patch:  # killed after the first predictor was written
        _interrupt_predictor_saves(patch, after=1)
        with pytest.raises(KeyboardInterrupt):
            _fit(store, 5)
    assert not fit_is_complete(store, "local-cpu-1t-ort", SPACE.name, 5)
    assert not folder.exists() and store.predictors("local-cpu-1t-ort") == {}
    assert not list(folder.parent.iterdir())  # no half-written folder left beside it

    report = _fit(store, 5)
    assert fit_is_complete(store, "local-cpu-1t-ort", SPACE.name, 5)
    assert not fit_is_complete(store, "local-cpu-1t-ort", SPACE.name, 6)  # asked for more than was fitted
    assert not fit_is_complete(store, "local-cpu-1t-ort", SPACE.name, 5, source="other-device")
    first = _snapshot(folder)
    assert set(first) == {f"{k}.json" for k in report.predictors}

    with monkeypatch.context() as patch:  # a refit on more subnets killed halfway through its predictors
        _interrupt_predictor_saves(patch, after=2)
        with pytest.raises(KeyboardInterrupt):
            _fit(store, 6)
    assert _snapshot(folder) == first  # the finished fit, whole
    assert fit_is_complete(store, "local-cpu-1t-ort", SPACE.name, 5)
    assert not fit_is_complete(store, "local-cpu-1t-ort", SPACE.name, 6)
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{SPACE.name}.")] in (
        [], [f".{SPACE.name}.lock"])

    import latency_predictors.workflow as workflow

    with monkeypatch.context() as patch:  # killed after its old record went, before the new folder moved in
        def killed(new, target):
            raise KeyboardInterrupt("simulated kill")

        patch.setattr(workflow, "swap_folder", killed)
        with pytest.raises(KeyboardInterrupt):
            _fit(store, 6)
    assert _snapshot(folder) == first and not fit_is_complete(store, "local-cpu-1t-ort", SPACE.name, 5)

    _fit(store, 6)
    assert fit_is_complete(store, "local-cpu-1t-ort", SPACE.name, 6)
    assert set(store.predictors("local-cpu-1t-ort")) == {SPACE.name}



def test_a_swap_killed_between_its_renames_leaves_nothing_behind_after_the_next_fit(tmp_path, fake_measuring,
                                                                                      monkeypatch):
    import latency_predictors.devices as devices

    store = DeviceStore(tmp_path)
    folder = store.predictor_dir("local-cpu-1t-ort", SPACE.name)
    _fit(store, 5)
    real_replace = os.replace

    def killed_after_first_rename(src, dst):
        real_replace(src, dst)
        if Path(dst).name.startswith(f".{SPACE.name}.old-"):
            raise KeyboardInterrupt("simulated kill between the renames")

    with monkeypatch.context() as patch:
        patch.setattr(devices.os, "replace", killed_after_first_rename)
        with pytest.raises(KeyboardInterrupt):
            _fit(store, 6)
    hidden = [p for p in folder.parent.iterdir() if p.name.startswith(f".{SPACE.name}.old-")]
    assert len(hidden) == 1 and not folder.exists()  # the old predictors, whole, hidden beside the folder
    assert not fit_is_complete(store, "local-cpu-1t-ort", SPACE.name, 5)

    _fit(store, 6)
    assert fit_is_complete(store, "local-cpu-1t-ort", SPACE.name, 6)
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{SPACE.name}.")] in (
        [], [f".{SPACE.name}.lock"])

# --- a table keeps its protocol and completeness (items 5 and 6) ---------------------------------------------------


class ReferencedMeasure:
    """A load-referenced layer measurer: its base is the first reference latency unless the table gives one."""

    def __init__(self, base: float) -> None:
        self.first_reference_ms = base
        self.reference_base_ms: float | None = None
        self.bases_used: set[float] = set()

    def __call__(self, layer) -> Measurement:
        if self.reference_base_ms is None:
            self.reference_base_ms = self.first_reference_ms
        self.bases_used.add(self.reference_base_ms)
        ms = fake_latency(layer) * self.reference_base_ms
        return Measurement(latency_ms=ms, median_ms=ms, spread=0.0, kept=3, rejected=0, relative=fake_latency(layer),
                           reference_ms=self.first_reference_ms)


def test_a_table_keeps_its_reference_base_and_protocol_when_it_grows(tmp_path, device):
    path = tmp_path / "t.json"
    config = MeasureConfig(warmup=1, repeats=3, retries=0, load_reference=True)
    build_table(SPACE, device, path, ReferencedMeasure(2.0), resolutions=[24], protocol=config, progress=False)
    build_table(SPACE, device, path, ReferencedMeasure(3.0), resolutions=[24], protocol=config, progress=False)
    assert LookupTable.load(path).protocol["reference_base_ms"] == 2.0  # a second run used to drop it
    later = ReferencedMeasure(3.0)  # the machine is slower today: its own base would be 3.0
    table = build_table(SPACE, device, path, later, resolutions=[24, 28], protocol=config, progress=False)
    assert later.bases_used == {2.0} and table.protocol["reference_base_ms"] == 2.0 and table.complete
    saved = LookupTable.load(path).protocol
    assert saved["reference_base_ms"] == 2.0 and saved["repeats"] == 3 and saved["load_reference"]


def test_growing_a_table_under_another_protocol_is_refused_before_measuring(tmp_path, device):
    path = tmp_path / "t.json"
    build_table(SPACE, device, path, CountingMeasure(), resolutions=[24], protocol=TINY, progress=False)
    before = path.read_bytes()
    measure = CountingMeasure()
    with pytest.raises(LatencyError, match=r"measured with repeats 3; this build asks for repeats 7") as err:
        build_table(SPACE, device, path, measure, resolutions=[24, 28], protocol=replace(TINY, repeats=7),
                    progress=False)
    assert "\n" not in str(err.value) and not measure.calls and path.read_bytes() == before
    # Nothing to measure: nothing refused, and the old entries keep their label.
    table = build_table(SPACE, device, path, measure, resolutions=[24], protocol=replace(TINY, repeats=7),
                        progress=False)
    assert table.protocol["repeats"] == 3 and not measure.calls


def test_growing_a_table_under_another_protocol_is_refused_on_the_command_line(tmp_path, capsys, monkeypatch):
    from nas.cli import main

    monkeypatch.setenv("HWNAS_HOME", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    store = DeviceStore(tmp_path)
    device = store.resolve("local-cpu-1t-ort")
    path = store.table_path(device.id, SPACE.name)
    build_table(SPACE, device, path, CountingMeasure(), resolutions=[24], protocol=MeasureConfig(), progress=False)
    before = path.read_bytes()
    code = main(["latency", "build", "--space", SPACE.name, "--device", device.id, "--resolutions", "24", "28",
                 "--repeats", "7", "--no-ray", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "repeats 7" in err and "repeats 30" in err
    assert path.read_bytes() == before


def test_an_interrupted_int8_pass_leaves_a_complete_fp32_table_complete(tmp_path, device):
    path = tmp_path / "t.json"
    build_table(SPACE, device, path, CountingMeasure(), resolutions=[24], protocol=TINY, progress=False)
    with pytest.raises(KeyboardInterrupt):
        build_table(SPACE, device, path, CountingMeasure(fail_after=3), resolutions=[24], protocol=TINY,
                    progress=False, precision="int8")
    table = LookupTable.load(path)
    assert table.complete and "int8" in table.precisions and not table.complete_for(SPACE, "int8")


# --- code review items --------------------------------------------------------------------------------------------


def test_a_waiting_process_is_told_who_holds_the_device(tmp_path, capsys):
    lock = tmp_path / "measure.lock"
    entered, release = threading.Event(), threading.Event()

    def holder():
        with device_lock(lock):
            entered.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    entered.wait(5)
    try:
        with pytest.raises(TimeoutError, match=f"pid {os.getpid()} on "):
            with device_lock(lock, timeout_s=0.3, notice_after_s=0.0):
                pass
    finally:
        release.set()
        thread.join()
    err = capsys.readouterr().err
    assert err.count("waiting for the device lock") == 1 and f"pid {os.getpid()}" in err


def test_written_files_get_the_usual_mode_and_plots_leave_no_temporary_file(tmp_path):
    atomic_write_text(tmp_path / "a.json", "{}\n")
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == file_mode()
    old = os.umask(0o022)
    try:
        assert file_mode() == 0o644
    finally:
        os.umask(old)
    scatter_plot(tmp_path / "eval" / "x.png", [1.0, 2.0], {"table": [1.1, 1.9]}, "x")
    assert [p.name for p in (tmp_path / "eval").iterdir()] == ["x.png"]
    assert (tmp_path / "eval" / "x.png").stat().st_mode & 0o777 == file_mode()
