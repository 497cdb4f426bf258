from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nas.cli import main

REPO = Path(__file__).resolve().parents[1]


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, message", [
    (["latency", "build", "--space", "nope", "--device", "local-cpu-1t-torch"], "unknown space 'nope'"),
    (["latency", "build", "--space", "ofa_mbv3_cifar", "--device", "local-cpu-1t-torch", "--resolutions", "33"],
     "allowed: 24, 28, 32"),
    (["latency", "build", "--space", "ofa_mbv3_cifar", "--device", "local-cpu-1t-tflite"],
     "unknown backend 'tflite'"),
    (["latency", "eval", "--space", "ofa_mbv3_cifar", "--device", "phone"], "unknown device 'phone'"),
    (["latency", "build", "--space", "ofa_mbv3_cifar", "--device", "local-cpu-1t-ort", "--backend", "torch"],
     "runs onnxruntime, not torch"),
    (["latency", "fit", "--space", "ofa_mbv3_cifar", "--device", "local-cpu-1t-torch", "--samples", "1"],
     "--samples must be at least 3"),
    (["latency", "eval", "--space", "ofa_mbv3_cifar", "--device", "local-cpu-1t-torch"], "no predictors or table"),
    (["latency", "import-ofa", "/nonexistent/ofa", "--device", "note10"], "does not exist"),
    (["latency", "fit", "--space", "ofa_mbv3_cifar", "--device", "local-cpu-2t-torch", "--clock", "thread_cpu"],
     "needs a one-thread device"),
])
def test_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path):
    code, out, err = _run(capsys, *argv, "--home", str(tmp_path))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("nas: error:") and message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("device, needle", [
    ("local-cpu-99999999999999999999t-ort", "allowed: 1 to 1024"),
    ("local-cpu-1t-ort-b99999999999999", "allowed: 1 to 4096"),
    ("local-cpu-1t-compile-b1000000", "allowed: 1 to 4096"),
])
def test_absurd_threads_or_batch_are_refused_and_register_nothing(device, needle, capsys, tmp_path):
    code, out, err = _run(capsys, "latency", "build", "--space", "ofa_mbv3_cifar", "--no-ray", "--resolutions", "24",
                          "--device", device, "--quiet", "--home", str(tmp_path))
    assert code == 2 and err.count("\n") == 1 and needle in err
    assert json.loads(_run(capsys, "devices", "--json", "--home", str(tmp_path))[1])["devices"] == []


@pytest.mark.parametrize("measured", [0, 3])
def test_a_build_failing_before_its_first_entry_registers_nothing(measured, capsys, tmp_path, monkeypatch):
    """A backend error while measuring leaves no device record nor table; entries measured before it stay, with
    the device, for the next build to resume."""
    import contextlib

    import latency_predictors.remote
    from latency_predictors import LookupTable
    from latency_predictors.measure import Measurement

    calls = []

    def failing(layer):
        calls.append(layer)
        if len(calls) > measured:
            raise RuntimeError("cannot allocate memory")
        return Measurement(latency_ms=1.0, median_ms=1.0, spread=0.0, kept=1, rejected=0)

    monkeypatch.setattr(latency_predictors.remote, "table_measurer",
                        lambda *args, **kwargs: contextlib.nullcontext(failing))
    home = tmp_path / "home"
    with pytest.raises(RuntimeError, match="cannot allocate memory"):
        main(["latency", "build", "--space", "ofa_mbv3_cifar", "--device", "local-cpu-1t-torch", "--no-ray",
              "--resolutions", "24", "--quiet", "--home", str(home)])
    capsys.readouterr()
    code, out, _ = _run(capsys, "devices", "--json", "--home", str(home))
    devices = json.loads(out)["devices"]
    if not measured:
        assert devices == [] and not (home / "devices" / "local-cpu-1t-torch").exists()
    else:
        assert [d["id"] for d in devices] == ["local-cpu-1t-torch"] and devices[0]["tables"] == ["ofa_mbv3_cifar"]
        table = LookupTable.load(home / "devices" / "local-cpu-1t-torch" / "tables" / "ofa_mbv3_cifar.json")
        assert len(table.entries) == measured and not table.complete


def test_eval_without_a_table_registers_nothing(capsys, tmp_path):
    code, _, err = _run(capsys, "latency", "eval", "--space", "ofa_mbv3_cifar", "--device", "local-cpu-1t-torch",
                        "--home", str(tmp_path))
    assert code == 2 and "no predictors or table" in err
    assert json.loads(_run(capsys, "devices", "--json", "--home", str(tmp_path))[1])["devices"] == []


def test_build_then_devices_lists_table(capsys, tmp_path):
    home = str(tmp_path)
    code, out, _ = _run(capsys, "latency", "build", "--space", "ofa_mbv3_cifar", "--device", "local-cpu-1t-torch",
                        "--resolutions", "24", "--repeats", "2", "--warmup", "0", "--quiet", "--home", home)
    assert code == 0 and "93 layers" in out
    code, out, _ = _run(capsys, "devices", "--json", "--home", home)
    data = json.loads(out)
    (device,) = data["devices"]
    assert device["id"] == "local-cpu-1t-torch" and device["tables"] == ["ofa_mbv3_cifar"]
    assert device["metadata"]["cpu_count"]
    code, out, _ = _run(capsys, "devices", "--home", home)
    assert code == 0 and "local-cpu-1t-torch" in out


def test_import_ofa(capsys, tmp_path):
    lut = Path(os.environ.get("HWNAS_OFA_LUT_DIR", REPO.parent / "shared" / "data" / "ofa_note10_lut"))
    if not lut.is_dir():
        pytest.skip("OFA lookup tables not available")
    code, out, _ = _run(capsys, "latency", "import-ofa", str(lut), "--device", "note10", "--home", str(tmp_path))
    assert code == 0 and "ofa_mbv3_w1.2" in out
    code, out, _ = _run(capsys, "devices", "--json", "--home", str(tmp_path))
    (device,) = json.loads(out)["devices"]
    assert device["id"] == "note10" and device["backend"] is None and device["tables"] == ["ofa_mbv3_w1.2"]
    code, _, err = _run(capsys, "latency", "fit", "--space", "ofa_mbv3_w1.2", "--device", "note10",
                        "--home", str(tmp_path))
    assert code == 2 and "no local backend" in err


# --- issue 14: fit --from (transfer), active choice and its predicted gain, eval as a curve ------------------
# The measurement logs are filled beforehand with a synthetic device's latencies, so nothing is timed.


def _synthetic_ms(space, archs, factor=1.0):
    from latency_predictors import network_macs

    return [factor * (0.3 + 0.02 * network_macs(space, a) / 1e6 + 0.05 * a.num_blocks) for a in archs]


def _fill_log(store, device_id, space, archs, runs=1, factor=1.0):
    from latency_predictors import Measurement, MeasurementLog

    log = MeasurementLog(store.measurements_path(device_id, space.name), space.name, device_id)
    for arch, ms in zip(archs, _synthetic_ms(space, archs, factor)):
        for r in range(runs):
            value = ms * (1.0 + 0.01 * r)
            log.add(arch, Measurement(latency_ms=value, median_ms=value, spread=0.02, kept=30, rejected=0))


def test_fit_from_another_device_then_eval_curve(capsys, tmp_path):
    from latency_predictors import DeviceStore, make_predictor
    from latency_predictors.workflow import choose_archs, eval_archs, fit_set_ids, sample_archs
    from search_spaces import get_space

    space, store, home = get_space("ofa_mbv3_cifar"), DeviceStore(tmp_path), str(tmp_path)
    source = store.resolve("local-cpu-1t-ort")
    train = sample_archs(space, 40, 5)
    fitted = make_predictor("residual", space).fit(train, _synthetic_ms(space, train))
    fitted.save(store.predictor_dir(source.id, space.name) / "residual.json")
    # What fit will choose: spread by the source device's prediction (the new device has no table).
    chosen = choose_archs(space, 12, 0, None, fitted.predict)
    _fill_log(store, "local-cpu-1t-torch", space, chosen, factor=2.5)
    code, out, err = _run(capsys, "latency", "fit", "--space", space.name, "--device", "local-cpu-1t-torch",
                          "--from", "local-cpu-1t-ort", "--samples", "12", "--json", "--quiet", "--home", home)
    assert code == 0, err
    report = json.loads(out)  # pure JSON
    assert "transfer" in report["predictors"] and report["choose"] == "active"
    assert report["prior"] == "local-cpu-1t-ort:residual" and report["source"] == "local-cpu-1t-ort"
    curve = report["curve"]
    assert report["curve_kind"] == "transfer" and curve["points"] and curve["gain_pct"] >= 0
    saved = json.loads((store.predictor_dir("local-cpu-1t-torch", space.name) / "transfer.json").read_text())
    assert saved["params"]["source"]["device"] == "local-cpu-1t-ort"
    assert saved["params"]["scale"] == pytest.approx(2.5, rel=0.05)  # the other device, 2.5 times slower

    fresh = eval_archs(space, 10, fit_set_ids(store, store.get("local-cpu-1t-torch"), space))
    _fill_log(store, "local-cpu-1t-torch", space, fresh, runs=2, factor=2.5)
    code, out, err = _run(capsys, "latency", "eval", "--space", space.name, "--device", "local-cpu-1t-torch",
                          "--samples", "10", "--draws", "2", "--json", "--quiet", "--home", home)
    assert code == 0, err
    data = json.loads(out)
    assert data["curve_pool"] == 22 and data["floor"]["n"] == 10 and data["floor"]["median_spread"] == 0.02
    rows = data["curve"]["transfer"]
    assert [r["samples"] for r in rows] == [5, 10]  # 20 would leave fewer than 5 subnets to test on
    assert {"spearman", "kendall", "within_5pct", "within_10pct", "mape_pct"} <= set(rows[0])
    assert data["predictors"]["transfer"]["within_10pct"] == 1.0
    code, out, _ = _run(capsys, "latency", "eval", "--space", space.name, "--device", "local-cpu-1t-torch",
                        "--samples", "10", "--draws", "2", "--quiet", "--home", home)
    assert code == 0 and "against training samples" in out and "(floor)" in out and "transfer" in out


@pytest.mark.parametrize("extra, message", [
    (["--from", "nowhere"], "unknown device 'nowhere'"),
    (["--from", "local-cpu-1t-torch"], "names the device being fitted"),
    (["--from", "local-cpu-1t-ort"], "no predictor or table"),
    (["--from-kind", "ridge"], "--from-kind needs --from"),
])
def test_fit_from_bad_input_exits_2_with_one_line(extra, message, capsys, tmp_path):
    from latency_predictors import DeviceStore

    DeviceStore(tmp_path).resolve("local-cpu-1t-ort")
    code, _, err = _run(capsys, "latency", "fit", "--space", "ofa_mbv3_cifar", "--device", "local-cpu-1t-torch",
                        *extra, "--home", str(tmp_path))
    assert code == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err
