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


def test_cuda_ids_name_a_gpu_and_its_batch():
    d = parse_device_id("local-cuda-b64-torch")
    assert (d.backend, d.batch_size, d.accelerator, d.threads) == ("torch", 64, "cuda:0", 1)
    assert parse_device_id("local-cuda1-compile").accelerator == "cuda:1"
    assert parse_device_id("local-cuda-b8-ort").backend == "onnxruntime"
    assert Device.from_dict(d.to_dict()) == d
    assert Device.from_dict({"id": "old", "backend": "torch"}).accelerator == "cpu"
    with pytest.raises(UnknownDeviceError, match="local-cuda-b4-torch"):
        parse_device_id("local-cuda-2t-torch-b4")
    with pytest.raises(UnknownDeviceError, match="unknown backend 'trt'"):
        parse_device_id("local-cuda-b1-trt")


def test_a_stored_cuda_device_stays_usable_without_a_gpu(tmp_path):
    """Tables measured on a GPU machine are read anywhere; only measuring needs the GPU."""
    import torch

    store = DeviceStore(tmp_path)
    device = parse_device_id("local-cuda-b1-torch")
    store.save(device.with_metadata({"gpu_name": "NVIDIA H200"}))
    assert store.resolve(device.id).meta["gpu_name"] == "NVIDIA H200"
    if not torch.cuda.is_available():
        with pytest.raises(LatencyError, match="no CUDA GPU"):
            store.refresh_metadata(device)


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


@pytest.mark.parametrize("device_id, needle", [
    ("local-cpu-99999999999999999999t-ort", "threads 99999999999999999999 is out of range; allowed: 1 to 1024"),
    ("local-cpu-1025t-ort", "threads 1025 is out of range"),
    ("local-cpu-1t-ort-b99999999999999", "batch size 99999999999999 is out of range; allowed: 1 to 4096"),
    ("local-cpu-1t-compile-b1000000", "batch size 1000000 is out of range"),
    ("local-cuda-b4097-torch", "batch size 4097 is out of range"),
])
def test_local_ids_bound_threads_and_batch(device_id, needle):
    """Counts no machine runs are refused by the grammar, before a backend fails on them mid-measurement."""
    with pytest.raises(UnknownDeviceError, match=needle):
        parse_device_id(device_id)
    top = parse_device_id("local-cpu-1024t-torch-b4096")
    assert (top.threads, top.batch_size) == (1024, 4096)
    assert parse_device_id("local-cuda-b4096-torch").batch_size == 4096


def test_recording_forgets_a_new_device_left_without_data(tmp_path):
    store = DeviceStore(tmp_path)
    with pytest.raises(RuntimeError), store.recording("local-cpu-1t-ort"):
        store.resolve("local-cpu-1t-ort")
        store.lock_path("local-cpu-1t-ort").touch()
        raise RuntimeError("measuring failed")
    assert store.list_ids() == [] and not store.device_dir("local-cpu-1t-ort").exists()
    with pytest.raises(RuntimeError), store.recording("local-cpu-1t-ort"):  # data written: kept to resume
        store.resolve("local-cpu-1t-ort")
        store.table_path("local-cpu-1t-ort", "s").parent.mkdir()
        store.table_path("local-cpu-1t-ort", "s").write_text("{}")
        raise RuntimeError("measuring failed")
    assert store.list_ids() == ["local-cpu-1t-ort"]
    store.table_path("local-cpu-1t-ort", "s").unlink()
    with pytest.raises(RuntimeError), store.recording("local-cpu-1t-ort"):  # stored before: never removed
        raise RuntimeError("measuring failed")
    assert store.list_ids() == ["local-cpu-1t-ort"]
