from __future__ import annotations

import pytest

from latency_predictors import (
    Device,
    DeviceStore,
    LatencyError,
    UnknownDeviceError,
    local_device_id,
    parse_device_id,
)


def test_local_id_grammar_round_trips():
    d = parse_device_id("local-cpu-4t-ort-b8")
    assert (d.backend, d.threads, d.batch_size) == ("onnxruntime", 4, 8)
    assert parse_device_id("local-cpu-1t-torch").backend == "torch"
    assert local_device_id(4, "onnxruntime", 8) == "local-cpu-4t-ort-b8"
    assert parse_device_id("note10") is None
    with pytest.raises(UnknownDeviceError, match="unknown backend 'tflite'"):
        parse_device_id("local-cpu-1t-tflite")


def test_store_resolves_saves_and_describes(tmp_path):
    store = DeviceStore(tmp_path)
    assert store.list_ids() == []
    with pytest.raises(UnknownDeviceError, match="known devices: none yet"):
        store.get("phone")
    local = store.resolve("local-cpu-1t-ort")
    assert local.meta["cpu_count"] and local.meta["date"] and "onnxruntime" in local.meta
    store.save(Device("note10", None).with_metadata({"source": "ofa"}))
    with pytest.raises(UnknownDeviceError, match="local-cpu-1t-ort, note10"):
        store.resolve("phone")
    assert store.get("note10").meta == {"source": "ofa"}
    rows = store.describe()
    assert [r["id"] for r in rows] == ["local-cpu-1t-ort", "note10"]
    assert rows[0]["tables"] == [] and rows[0]["predictors"] == {}
    with pytest.raises(LatencyError, match="invalid device id"):
        store.device_dir("../x")
