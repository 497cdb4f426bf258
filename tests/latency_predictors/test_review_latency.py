"""Damaged device data and out-of-range counts are refused in one line (exit status 2), never used: a table whose
protocol, entries or ``complete`` flag are not what ``LookupTable.save`` writes; a device record of another
device or with impossible fields; a predictor file with non-finite or mis-shaped parameters; a measurement log
grown under another protocol; ``--samples`` / ``--draws`` / ``--fit-samples`` beyond any useful measurement."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from latency_predictors import (
    DeviceStore,
    LatencyError,
    LookupTable,
    MeasureConfig,
    Measurement,
    MeasurementLog,
    build_table,
    load_predictor,
    make_predictor,
    network_macs,
)
from nas.cli import main
from search_spaces import DamagedFileError, get_space, sample

from .conftest import CountingMeasure

SPACE = get_space("ofa_mbv3_cifar")
DEVICE = "local-cpu-1t-ort"
TINY = MeasureConfig(warmup=1, repeats=3, retries=0)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("nas: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def _edit_json(path: Path, edit) -> bytes:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path.read_bytes()


@pytest.fixture
def store(tmp_path, monkeypatch) -> DeviceStore:
    """A home with ``DEVICE`` recorded and a complete fake table of ``SPACE`` at resolution 24."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    store = DeviceStore(tmp_path / "home")
    device = store.resolve(DEVICE)
    build_table(SPACE, device, store.table_path(DEVICE, SPACE.name), CountingMeasure(), resolutions=[24],
                protocol=MeasureConfig(), progress=False)
    return store


def _first_entry(key: str, value):
    def edit(data):
        data["entries"][next(iter(data["entries"]))][key] = value
    return edit


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d.__setitem__("protocol", [1, 2]), "protocol is a list"),
    (_first_entry("ms", -0.5), "latency -0.5"),
    (_first_entry("ms", "0.5"), "latency '0.5'"),
    (_first_entry("ms", True), "latency True"),
    (lambda d: d.__setitem__("complete", "false"), "complete is 'false'"),
])
def test_a_damaged_table_is_refused_by_build_in_one_line_and_kept(store, edit, needle, capsys):
    """A table that is complete (nothing to measure) but damaged was resumed as it was (a negative or textual
    latency, a "false" read as complete) or crashed the build (a protocol that is a list)."""
    path = store.table_path(DEVICE, SPACE.name)
    before = _edit_json(path, edit)
    code, out, err = _run(capsys, "latency", "build", "--space", SPACE.name, "--device", DEVICE, "--resolutions",
                          "24", "--no-ray", "-q", "--home", str(store.root))
    _one_line_error(code, err, "damaged", str(path), needle)
    assert out == "" and path.read_bytes() == before


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d.__setitem__("backend", "nope"), "backend 'nope'"),
    (lambda d: d.__setitem__("backend", 3), "backend 3"),
    (lambda d: d.__setitem__("threads", 0), "threads 0"),
    (lambda d: d.__setitem__("batch_size", -1), "batch_size -1"),
    (lambda d: d.__setitem__("accelerator", "cuda:x"), "accelerator 'cuda:x'"),
    (lambda d: d.__setitem__("threads", 4), "threads 4 (the id says 1)"),
    (lambda d: d.__setitem__("backend", "torch"), "backend 'torch' (the id says 'onnxruntime')"),
    (lambda d: d.__setitem__("id", "note10"), "names device 'note10'"),
])
def test_a_damaged_device_record_is_refused_in_one_line(store, edit, needle, capsys):
    """``nas devices`` listed such records as they were, and a build measured with them: an unknown backend was a
    traceback, a record naming another id sent the new table into that device's folder."""
    record = store.device_dir(DEVICE) / "device.json"
    before = _edit_json(record, edit)
    code, out, err = _run(capsys, "devices", "--json", "--home", str(store.root))
    _one_line_error(code, err, "damaged", str(record), needle)
    assert out == ""
    code, _out, err = _run(capsys, "latency", "build", "--space", SPACE.name, "--device", DEVICE, "--resolutions",
                           "24", "--no-ray", "-q", "--home", str(store.root))
    _one_line_error(code, err, str(record), needle)
    assert record.read_bytes() == before and sorted(p.name for p in (store.root / "devices").iterdir()) == [DEVICE]


def _data(n: int, seed: int):
    archs = [replace(a, resolution=24) for a in sample(SPACE, n, seed=seed)]
    return archs, np.array([0.3 + 0.02 * network_macs(SPACE, a) / 1e6 for a in archs])


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A fake table and a saved predictor of each plain kind fitted with it: ``(table, {kind: path})``."""
    from latency_predictors import Device

    folder = tmp_path_factory.mktemp("predictors")
    table = build_table(SPACE, Device("local-cpu-1t-torch", "torch"), folder / "t.json", CountingMeasure(),
                        resolutions=[24], progress=False)
    archs, y = _data(30, 0)
    paths = {}
    for kind in ("table_linear", "flops", "ridge", "mlp", "residual"):
        paths[kind] = folder / f"{kind}.json"
        make_predictor(kind, SPACE, table).fit(archs, y).save(paths[kind])
    return table, paths


def _set_param(name, value):
    return lambda params: params.__setitem__(name, value)


@pytest.mark.parametrize("kind, edit, needle", [
    ("table_linear", _set_param("scale", float("nan")), "parameter 'scale' is nan"),
    ("table_linear", _set_param("offset", float("inf")), "parameter 'offset' is inf"),
    ("flops", _set_param("ms_per_gmac", float("nan")), "parameter 'ms_per_gmac' is nan"),
    ("ridge", _set_param("coef", [1.0, 2.0]), "parameter 'coef' has shape (2,)"),
    ("ridge", _set_param("mean", [0.0]), "parameter 'mean' has shape (1,)"),
    ("ridge", _set_param("intercept", float("-inf")), "parameter 'intercept' is -inf"),
    ("mlp", _set_param("weights", [[1.0]]), "parameter 'weights' has 1 arrays, not 6"),
    ("mlp", lambda p: p["weights"][2].__setitem__(0, [float("nan")] * len(p["weights"][2][0])),
     "parameter 'weights[2]' holds a value that is not a finite number"),
    ("residual", _set_param("scale", float("nan")), "parameter 'scale' is nan"),
])
def test_a_predictor_with_damaged_parameters_is_refused_when_loaded(fitted, kind, edit, needle, tmp_path):
    """Such files loaded and then predicted NaN or infinity for every subnet, a broadcast nonsense (a one-element
    mean), or failed inside numpy at the first prediction."""
    table, paths = fitted
    data = json.loads(paths[kind].read_text())
    edit(data["params"])
    path = tmp_path / f"{kind}.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DamagedFileError, match="damaged") as err:
        load_predictor(path, SPACE, table)
    assert needle in str(err.value) and str(path) in str(err.value)
    # The undamaged file still loads and predicts finite latencies.
    archs, _ = _data(5, 1)
    assert np.isfinite(load_predictor(paths[kind], SPACE, table).predict(archs)).all()


def _measured(ms: float) -> Measurement:
    return Measurement(latency_ms=ms, median_ms=ms, spread=0.0, kept=3, rejected=0)


def test_a_measurement_log_is_not_grown_under_another_protocol(tmp_path):
    """Subnets timed with one protocol were reused, and new ones added, under another (a fit with --quantile 0.1
    or --clock thread_cpu after one with the defaults), mixing two scales in one set; the log then recorded only
    the later protocol."""
    path = tmp_path / "m.json"
    log = MeasurementLog(path, SPACE.name, DEVICE, TINY)
    archs, _ = _data(2, 0)
    for arch in archs:
        log.add(arch, _measured(1.0))
    before = path.read_bytes()
    for other, needle in ((replace(TINY, quantile=0.1), "quantile 0.5; this command asks for quantile 0.1"),
                          (replace(TINY, clock="thread_cpu"), "clock wall; this command asks for clock thread_cpu")):
        with pytest.raises(LatencyError, match="measurement log") as err:
            MeasurementLog(path, SPACE.name, DEVICE, other)
        assert needle in str(err.value) and "\n" not in str(err.value)
    assert path.read_bytes() == before
    # The same protocol (settings that only decide retries may differ) and no protocol at all read it as before.
    again = MeasurementLog(path, SPACE.name, DEVICE, replace(TINY, retries=2, noise_threshold=0.2))
    assert set(again.records) == {a.arch_id for a in archs}
    assert len(MeasurementLog(path, SPACE.name, DEVICE).records) == 2


def _first_run(key, value):
    return lambda record: record["runs"][0].__setitem__(key, value)


@pytest.mark.parametrize("edit, needle", [
    (_first_run("latency_ms", float("nan")), "latency_ms nan"),
    (_first_run("latency_ms", "1.0"), "latency_ms '1.0'"),
    (_first_run("latency_ms", -1.0), "latency_ms -1.0"),
    (lambda record: record["runs"][0].pop("latency_ms"), "latency_ms None"),
    (_first_run("relative", float("inf")), "relative inf"),
    (lambda record: record.__setitem__("runs", None), "not an object with an arch and a list of runs"),
    (lambda record: record.__setitem__("arch", 3), "not an object with an arch and a list of runs"),
    (lambda record: record["runs"].__setitem__(0, 2.5), "a run that is not an object"),
])
def test_a_damaged_measurement_log_is_refused_when_read(edit, needle, tmp_path):
    """Such records were read as they were: a fit then failed with a traceback (NaN in a least-squares solve, a
    text latency, a run list that is null) or refused with a message that named no file (a negative latency)."""
    path = tmp_path / "m.json"
    log = MeasurementLog(path, SPACE.name, DEVICE, TINY)
    archs, _ = _data(2, 0)
    for arch in archs:
        log.add(arch, _measured(1.0))
    data = json.loads(path.read_text())
    edit(data["records"][archs[0].arch_id])
    path.write_text(json.dumps(data))
    with pytest.raises(DamagedFileError, match="measurement log") as err:
        MeasurementLog(path, SPACE.name, DEVICE, TINY)
    assert needle in str(err.value) and archs[0].arch_id in str(err.value) and str(path) in str(err.value)


def test_fit_refuses_a_measurement_log_of_another_protocol_in_one_line(store, capsys):
    log_path = store.measurements_path(DEVICE, SPACE.name)
    log = MeasurementLog(log_path, SPACE.name, DEVICE, TINY)
    archs, _ = _data(3, 0)
    for arch in archs:
        log.add(arch, _measured(1.0))
    before = log_path.read_bytes()
    code, out, err = _run(capsys, "latency", "fit", "--space", SPACE.name, "--device", DEVICE, "--resolutions", "24",
                          "--samples", "3", "--repeats", "3", "--warmup", "1", "--quantile", "0.25", "--no-ray", "-q",
                          "--home", str(store.root))
    _one_line_error(code, err, str(log_path), "quantile 0.5", "quantile 0.25")
    assert out == "" and log_path.read_bytes() == before
    assert not store.predictor_dir(DEVICE, SPACE.name).exists()


@pytest.mark.parametrize("argv, needle", [
    # --from of an unknown device: before the bound, the count passed and the source was refused instead.
    (["fit", "--samples", str(10 ** 15), "--from", "nowhere"], "--samples must be at least 3 and at most 100000"),
    (["eval", "--samples", str(10 ** 15)], "--samples must be at least 3 and at most 100000"),
    (["eval", "--draws", str(10 ** 9)], "--draws must be at least 1 and at most 1000"),
    (["eval", "--precision", "int8", "--fit-samples", str(10 ** 9)],
     "--fit-samples must be at least 3 and at most 100000"),
    (["fit", "--samples", "2"], "--samples must be at least 3"),
])
def test_counts_beyond_any_measurement_are_refused_before_anything_is_written(argv, needle, capsys, tmp_path):
    home = tmp_path / "home"
    code, out, err = _run(capsys, "latency", argv[0], "--space", SPACE.name, "--device", DEVICE, *argv[1:],
                          "--no-ray", "-q", "--home", str(home))
    _one_line_error(code, err, needle)
    assert out == "" and not home.exists()


@pytest.mark.parametrize("argv", [
    ["devices"],
    ["devices", "--json"],
    ["latency", "fit", "--space", SPACE.name, "--device", DEVICE, "--from", "nowhere"],
    ["latency", "import-ofa", "/nonexistent/ofa", "--device", "note10"],
])
@pytest.mark.parametrize("home", ["", " "])
def test_an_empty_home_is_refused_not_read_as_the_default_folder(argv, home, capsys, tmp_path, monkeypatch):
    """``--home "$UNSET"`` read and wrote ``~/.hwnas`` as if --home had been left out."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("HWNAS_HOME", raising=False)
    DeviceStore(tmp_path / ".hwnas").resolve(DEVICE)
    before = _files(tmp_path)
    code, out, err = _run(capsys, *argv, "--home", home)
    _one_line_error(code, err, f"--home {home!r} is empty")
    assert out == "" and _files(tmp_path) == before


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_devices_refuses_a_home_that_is_a_file(json_flag, capsys, tmp_path, monkeypatch):
    """It printed "no devices under FILE yet" (or an empty JSON list) with exit status 0."""
    home = tmp_path / "home"
    home.write_text("not a folder")
    code, out, err = _run(capsys, "devices", *json_flag, "--home", str(home))
    _one_line_error(code, err, f"device data folder {str(home)!r} is not a folder")
    assert out == ""
    monkeypatch.setenv("HWNAS_HOME", str(home))
    code, out, err = _run(capsys, "devices", *json_flag)
    _one_line_error(code, err, "is not a folder")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_predictor_fitted_over_a_table_is_refused_with_a_rebuilt_table(store, capsys):
    """Moving a table away and building it again (another protocol, another day) kept the predictors fitted over
    the old one: their scale and offset were applied to the new table's sums without a word."""
    from latency_predictors.workflow import load_predictors

    device = store.get(DEVICE)
    path = store.table_path(DEVICE, SPACE.name)
    table = LookupTable.load(path)
    archs, y = _data(20, 0)
    folder = store.predictor_dir(DEVICE, SPACE.name)
    for kind in ("table_linear", "residual", "ridge", "table"):
        make_predictor(kind, SPACE, table).fit(archs, y).save(folder / f"{kind}.json")
    assert set(load_predictors(store, device, SPACE)) == {"table_linear", "residual", "ridge", "table"}
    # Growing the table (another resolution) keeps it the same table.
    grown = build_table(SPACE, device, path, CountingMeasure(), resolutions=[28], protocol=MeasureConfig(),
                        progress=False)
    assert grown.table_id == table.table_id and set(load_predictors(store, device, SPACE))
    path.unlink()
    build_table(SPACE, device, path, CountingMeasure(), resolutions=[24],
                protocol=replace(MeasureConfig(), quantile=0.1), progress=False)
    with pytest.raises(LatencyError, match="fitted over another lookup table") as err:
        load_predictors(store, device, SPACE)
    assert "nas latency fit" in str(err.value)
    code, out, err = _run(capsys, "latency", "eval", "--space", SPACE.name, "--device", DEVICE, "--resolutions", "24",
                          "--samples", "3", "--repeats", "3", "--warmup", "1", "--no-ray", "-q", "--home",
                          str(store.root))
    _one_line_error(code, err, "fitted over another lookup table", str(folder))
    assert not store.eval_dir(DEVICE).exists()


def test_importing_the_same_ofa_tables_again_keeps_predictors_fitted_over_them(ofa_lut_dir, tmp_path):
    from latency_predictors import Device, import_ofa_tables

    w12 = get_space("ofa_mbv3_w1.2")
    device = Device(id="note10", backend=None)
    first, again = (import_ofa_tables(ofa_lut_dir, w12, device) for _ in range(2))
    assert first.table_id and first.table_id == again.table_id
    archs = [replace(a, resolution=160) for a in sample(w12, 10, seed=0)]
    path = tmp_path / "table_linear.json"
    make_predictor("table_linear", w12, first).fit(archs, np.array(first.predict(w12, archs)) * 1.3).save(path)
    assert np.isfinite(load_predictor(path, w12, again).predict(archs)).all()


def test_a_table_of_another_device_or_space_copied_into_place_is_refused(store, capsys):
    """A device's table file holding another device's (or space's) table was read as this device's latencies."""
    from latency_predictors.workflow import load_predictors, load_table

    other = store.resolve("local-cpu-2t-ort")
    copied = store.table_path(other.id, SPACE.name)
    copied.parent.mkdir(parents=True)
    copied.write_bytes(store.table_path(DEVICE, SPACE.name).read_bytes())
    with pytest.raises(LatencyError, match="holds the table of 'ofa_mbv3_cifar' on 'local-cpu-1t-ort'"):
        load_table(store, other, SPACE)
    with pytest.raises(LatencyError, match="not of 'ofa_mbv3_cifar' on 'local-cpu-2t-ort'"):
        load_predictors(store, other, SPACE)
    w10 = get_space("ofa_mbv3_w1.0")
    renamed = store.table_path(DEVICE, w10.name)
    renamed.write_bytes(store.table_path(DEVICE, SPACE.name).read_bytes())
    with pytest.raises(LatencyError, match="not of 'ofa_mbv3_w1.0' on 'local-cpu-1t-ort'"):
        load_table(store, store.get(DEVICE), w10)
    assert load_table(store, store.get(DEVICE), SPACE).space == SPACE.name
    code, out, err = _run(capsys, "latency", "eval", "--space", SPACE.name, "--device", other.id, "--resolutions",
                          "24", "--samples", "3", "--repeats", "3", "--warmup", "1", "--no-ray", "-q", "--home",
                          str(store.root))
    _one_line_error(code, err, str(copied), "on 'local-cpu-1t-ort'")
    assert out == "" and not store.measurements_path(other.id, SPACE.name).exists()


def test_a_measurement_log_of_another_device_is_refused(tmp_path):
    """The log checked its space but not its device: another device's timings were reused as this one's."""
    path = tmp_path / "m.json"
    log = MeasurementLog(path, SPACE.name, "local-cpu-2t-ort", TINY)
    archs, _ = _data(2, 0)
    log.add(archs[0], _measured(1.0))
    with pytest.raises(LatencyError, match="measurements of device 'local-cpu-2t-ort', not 'local-cpu-1t-ort'"):
        MeasurementLog(path, SPACE.name, DEVICE, TINY)
    assert len(MeasurementLog(path, SPACE.name, "local-cpu-2t-ort", TINY).records) == 1
