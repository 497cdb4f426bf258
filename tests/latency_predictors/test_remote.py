from __future__ import annotations

from dataclasses import replace

import pytest

from latency_predictors import MeasureConfig, MeasurementLog, measure_archs
from search_spaces import get_space, sample

SPACE = get_space("ofa_mbv3_cifar")
TINY = MeasureConfig(warmup=1, repeats=3, retries=0)


def test_measurement_log_in_process_resumes(tmp_path, device, builder):
    archs = [replace(a, resolution=24) for a in sample(SPACE, 3, seed=0)]
    log = MeasurementLog(tmp_path / "m.json", SPACE.name, device.id, TINY)
    log.ensure(SPACE, archs[:2], 1, builder, device, TINY, use_ray=False, progress=False)
    again = MeasurementLog(tmp_path / "m.json", SPACE.name, device.id, TINY)
    assert [len(again.runs(a)) for a in archs] == [1, 1, 0]
    again.ensure(SPACE, archs, 2, builder, device, TINY, use_ray=False, progress=False)
    assert [len(again.runs(a)) for a in archs] == [2, 2, 2]
    assert all(again.latency_ms(a, 1) > 0 for a in archs)


def test_load_referenced_measurement_is_scaled_by_the_first_reference(tmp_path, device, builder):
    config = MeasureConfig(warmup=1, repeats=3, retries=0, load_reference=True)
    archs = [replace(a, resolution=24) for a in sample(SPACE, 3, seed=4)]
    log = MeasurementLog(tmp_path / "m.json", SPACE.name, device.id, config)
    log.ensure(SPACE, archs, 1, builder, device, config, use_ray=False, progress=False, chunk=2)
    runs = [log.runs(a)[0] for a in archs]
    assert all(r["relative"] > 0 and r["reference_ms"] > 0 for r in runs)
    assert log.reference_base_ms == runs[0]["reference_ms"]
    reread = MeasurementLog(tmp_path / "m.json", SPACE.name, device.id, config)
    for a, r in zip(archs, runs):
        assert reread.latency_ms(a) == pytest.approx(r["relative"] * runs[0]["reference_ms"])


@pytest.mark.slow
def test_measurement_runs_on_the_device_node_through_ray(tmp_path, device, builder, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    archs = [replace(a, resolution=24) for a in sample(SPACE, 2, seed=1)]
    try:
        results = measure_archs(SPACE, archs, builder, device, TINY, lock_path=tmp_path / "lock", chunk=1,
                                progress=False)
        assert ray.cluster_resources().get(f"device:{device.id}") == 1
        # Workers measure at normal priority (Ray's default niceness 15 would starve them).
        from latency_predictors.remote import normal_priority

        assert ray.get(ray.remote(normal_priority).remote()) == 0
    finally:
        ray.shutdown()
    assert len(results) == 2 and all(m.latency_ms > 0 for m in results)


@pytest.mark.slow
def test_two_local_devices_are_measured_in_one_process(tmp_path, device, builder, monkeypatch):
    """A run with two local devices measures one, then the other: the local Ray this process started for the
    first is started again offering both resources (it failed with 'no Ray node offers resource')."""
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    other = replace(device, id=f"{device.id}-other")
    arch = replace(sample(SPACE, 1, seed=2)[0], resolution=24)
    try:
        first = measure_archs(SPACE, [arch], builder, device, TINY, lock_path=tmp_path / "lock", progress=False)
        second = measure_archs(SPACE, [arch], builder, other, TINY, lock_path=tmp_path / "lock2", progress=False)
        resources = ray.cluster_resources()
        assert resources.get(f"device:{device.id}") == 1 and resources.get(f"device:{other.id}") == 1
    finally:
        ray.shutdown()
    assert first[0].latency_ms > 0 and second[0].latency_ms > 0
