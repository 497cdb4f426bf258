from __future__ import annotations

import json
from dataclasses import replace

import pytest

from latency_predictors import (
    LatencyError,
    LayerMeasurer,
    LookupTable,
    MeasureConfig,
    MissingEntryError,
    build_table,
    enumerate_layers,
    get_backend,
    layer_keys,
    layer_measurer,
)
from search_spaces import get_space, sample

from .conftest import CountingMeasure

SPACE = get_space("ofa_mbv3_cifar")


def test_prediction_is_the_sum_of_entries(tmp_path, device):
    table = build_table(SPACE, device, tmp_path / "t.json", CountingMeasure(), resolutions=[24], progress=False)
    assert table.complete and table.resolutions == (24,)
    for arch in sample(SPACE, 5, seed=0):
        arch = replace(arch, resolution=24)
        expected = sum(table.entries[k]["ms"] for k in layer_keys(SPACE, arch))
        assert table.predict_arch(SPACE, arch) == pytest.approx(expected)


def test_file_round_trip_and_format(tmp_path, device):
    path = tmp_path / "t.json"
    table = build_table(SPACE, device, path, CountingMeasure(), resolutions=[24], progress=False)
    data = json.loads(path.read_text())
    assert data["format"] == "hwnas-latency-table" and data["version"] == 1
    assert data["device"]["id"] == device.id and data["space"] == SPACE.name
    loaded = LookupTable.load(path)
    assert loaded.entries == table.entries and loaded.device == device
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(LatencyError, match="version 99"):
        LookupTable.load(path)


def test_resume_after_interruption_measures_nothing_twice(tmp_path, device):
    path = tmp_path / "t.json"
    first = CountingMeasure(fail_after=17)
    with pytest.raises(KeyboardInterrupt):
        build_table(SPACE, device, path, first, resolutions=[24, 28], progress=False, save_every_s=1e9)
    saved = LookupTable.load(path)
    assert len(saved.entries) == 17 and not saved.complete
    second = CountingMeasure()
    table = build_table(SPACE, device, path, second, resolutions=[24, 28], progress=False)
    assert table.complete
    assert not set(first.calls) & set(second.calls)
    assert set(first.calls) | set(second.calls) == set(enumerate_layers(SPACE, [24, 28]))
    assert max(second.calls.values()) == 1
    # A finished table is not measured again; a new resolution measures only its layers.
    third = CountingMeasure()
    build_table(SPACE, device, path, third, resolutions=[24, 28], progress=False)
    assert not third.calls


def test_missing_entry_names_layer_and_cause(tmp_path, device):
    table = build_table(SPACE, device, tmp_path / "t.json", CountingMeasure(), resolutions=[24], progress=False)
    arch = replace(sample(SPACE, 1, seed=0)[0], resolution=32)
    with pytest.raises(MissingEntryError, match="resolution 32 is not in the table"):
        table.predict_arch(SPACE, arch)
    arch24 = replace(arch, resolution=24)
    del table.entries[layer_keys(SPACE, arch24)[3]]
    with pytest.raises(MissingEntryError, match="incomplete"):
        table.predict_arch(SPACE, arch24)


def test_other_device_table_is_not_resumed(tmp_path, device):
    path = tmp_path / "t.json"
    build_table(SPACE, device, path, CountingMeasure(), resolutions=[24], progress=False)
    with pytest.raises(LatencyError, match="holds a table"):
        build_table(SPACE, replace(device, id="local-cpu-2t-torch"), path, CountingMeasure(), resolutions=[24],
                    progress=False)


def test_real_measurement_of_a_small_table(tmp_path, device, builder):
    config = MeasureConfig(warmup=1, repeats=3, retries=0)
    measure = layer_measurer(builder, get_backend("torch", 1), config)
    table = build_table(SPACE, device, tmp_path / "t.json", measure, resolutions=[24], protocol=config,
                        lock_path=tmp_path / "lock", progress=False)
    assert table.complete
    assert all(e["ms"] > 0 for e in table.entries.values())
    arch = replace(sample(SPACE, 1, seed=2)[0], resolution=24)
    assert table.predict_arch(SPACE, arch) > 0


def test_load_referenced_table_keeps_its_scale_on_resume(tmp_path, device, builder):
    config = MeasureConfig(warmup=1, repeats=3, retries=0, load_reference=True)
    path = tmp_path / "t.json"

    class Interrupted(LayerMeasurer):
        calls = 0

        def __call__(self, layer, space=None):
            if self.calls == 5:
                raise KeyboardInterrupt
            self.calls += 1
            return super().__call__(layer, space)

    first = Interrupted(builder, get_backend("torch", 1), config, space=SPACE)
    with pytest.raises(KeyboardInterrupt):
        build_table(SPACE, device, path, first, resolutions=[24], protocol=config, progress=False)
    base = LookupTable.load(path).protocol["reference_base_ms"]
    assert base == first.reference_base_ms > 0
    second = layer_measurer(builder, get_backend("torch", 1), config, space=SPACE)
    table = build_table(SPACE, device, path, second, resolutions=[24], protocol=config, progress=False)
    assert second.reference_base_ms == base and table.complete


def test_two_builds_on_one_device_measure_each_layer_once(tmp_path, device):
    """Two builds at once (threads here, the same flock as two processes) plan inside the lock: the second
    waits for the first and then finds everything measured."""
    import threading
    import time as clock

    class SlowMeasure(CountingMeasure):
        def __call__(self, layer):
            clock.sleep(0.002)  # both builds are surely running at once
            return super().__call__(layer)

    path, lock = tmp_path / "t.json", tmp_path / "device.lock"
    measures = [SlowMeasure(), SlowMeasure()]
    threads = [threading.Thread(target=build_table, args=(SPACE, device, path, m),
                                kwargs={"resolutions": [24], "progress": False, "lock_path": lock})
               for m in measures]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    table = LookupTable.load(path)
    assert table.complete
    measured = [key for m in measures for key, n in m.calls.items() for _ in range(n)]
    assert sorted(measured) == sorted(table.entries)  # every layer once, by one of the two
