"""Hardware in the loop with front members at several precisions: the measure callable gets each member's
policy, measurements are kept and matched by member id, and ``device_measurers`` times quantised subnets
through ONNX Runtime (one real measurement of a tiny subnet)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from latency_predictors import DeviceStore, MeasureConfig
from nas.errors import UsageError
from nas.fronts import FrontMember, MemoryFrontStore
from nas.search import _measured_ms, hardware_in_the_loop
from nas.search_stage import device_measurers
from search_spaces import PrecisionPolicy, arch_to_string, get_space, policy_to_string, sample, smallest

SPACE = get_space("ofa_mbv3_cifar")
INT8 = "p:i,i,i,i,i,i,i"
MIXED = "p:f,i,i,i,i,i,f"
QUICK = MeasureConfig(warmup=1, repeats=3, retries=0)


def member(arch, policy=None, accuracy=0.9, latency_ms=4.0) -> FrontMember:
    return FrontMember(device="dev", arch=arch, arch_string=arch_to_string(SPACE, arch), arch_id=arch.arch_id,
                       val_accuracy=accuracy, test_accuracy=None, predicted_latency_ms=latency_ms,
                       measured_latency_ms=None, macs=1000, params=10, policy=policy)


class Recorder:
    """A measure callable that records what it was called with: fp32 subnets take 3 ms, quantised ones 1 ms."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, archs, *rest):
        self.calls.append((list(archs), *rest))
        policies = rest[0] if rest else [None] * len(archs)
        return [3.0 if p is None else 1.0 for p in policies]


def test_an_fp32_front_is_measured_as_before(tmp_path):
    store = MemoryFrontStore()
    archs = sample(SPACE, 2, 0)
    store.write_front("dev", [member(archs[0], accuracy=0.8, latency_ms=2.0), member(archs[1])])
    measure = Recorder()
    report = hardware_in_the_loop(tmp_path, {"dev": measure}, store=store)["dev"]
    assert len(measure.calls) == 1 and len(measure.calls[0]) == 1  # fn(archs): no policies argument
    assert report.policies == [None, None] and report.member_ids == report.arch_ids


def test_quantised_members_get_their_policies_and_are_matched_by_member_id(tmp_path):
    store = MemoryFrontStore()
    arch = sample(SPACE, 1, 3)[0]
    front = [member(arch, accuracy=0.9, latency_ms=4.0), member(arch, INT8, accuracy=0.88, latency_ms=2.0),
             member(arch, MIXED, accuracy=0.89, latency_ms=3.0)]
    store.write_front("dev", front)
    stored = store.front("dev")
    measure = Recorder()
    report = hardware_in_the_loop(tmp_path, {"dev": measure}, store=store)["dev"]
    archs, policies = measure.calls[0]
    assert archs == [arch] * 3
    assert [None if p is None else policy_to_string(p) for p in policies] == [m.policy for m in stored]
    assert all(p is None or isinstance(p, PrecisionPolicy) for p in policies)
    # Stored per member id, with the policy: the fp32 and int8 measurements of one arch stay apart.
    by_id = {m.member_id: m for m in store.measurements("dev")}
    assert set(by_id) == {arch.arch_id, f"{arch.arch_id}+{INT8}", f"{arch.arch_id}+{MIXED}"}
    assert by_id[arch.arch_id].measured_latency_ms == 3.0 and by_id[arch.arch_id].policy is None
    assert by_id[f"{arch.arch_id}+{INT8}"].measured_latency_ms == 1.0 and by_id[f"{arch.arch_id}+{INT8}"].policy == INT8
    assert _measured_ms(store, "dev") == {arch.arch_id: 3.0, f"{arch.arch_id}+{INT8}": 1.0,
                                         f"{arch.arch_id}+{MIXED}": 1.0}
    # On measured latency the mixed member (1 ms, 0.89) dominates the int8 one (1 ms, 0.88) and the fp32
    # one stays (slower, more accurate).
    assert {(m.policy, m.measured_latency_ms) for m in store.front("dev")} == {(MIXED, 1.0), (None, 3.0)}
    assert report.member_ids == [m.member_id for m in stored] and report.policies == [m.policy for m in stored]
    assert report.measured_ms == [3.0 if m.policy is None else 1.0 for m in stored]
    written = json.loads((tmp_path / "fronts" / "hil.json").read_text())["dev"]
    assert written["policies"] == report.policies


def test_an_object_with_measure_gets_policies_too(tmp_path):
    store = MemoryFrontStore()
    arch = sample(SPACE, 1, 4)[0]
    store.write_front("dev", [member(arch, INT8)])

    class Device:
        def __init__(self) -> None:
            self.got = None

        def measure(self, archs, policies):
            self.got = policies
            return np.array([0.5])

    device = Device()
    hardware_in_the_loop(tmp_path, {"dev": device}, store=store)
    assert policy_to_string(device.got[0]) == INT8
    assert store.front("dev")[0].measured_latency_ms == 0.5


def test_device_measurers_time_a_quantised_subnet_in_onnx_runtime(tmp_path):
    arch = replace(smallest(SPACE), resolution=min(SPACE.resolutions))
    measurers = device_measurers(SPACE, ["local-cpu-1t-ort"], store=tmp_path / "devices", use_ray=False,
                                 measure_config=QUICK)
    int8 = PrecisionPolicy.uniform(SPACE, "int8")
    fp32_ms, int8_ms, also_fp32_ms = measurers["local-cpu-1t-ort"]([arch, arch, arch],
                                                                   [None, int8, PrecisionPolicy.uniform(SPACE, "fp32")])
    assert fp32_ms > 0 and int8_ms > 0 and also_fp32_ms > 0
    # The quantised timing is kept with the device's measurements (reused by a later call).
    path = DeviceStore(tmp_path / "devices").measurements_path("local-cpu-1t-ort", SPACE.name)
    kept = json.loads(path.with_name(f"{SPACE.name}.quantized.json").read_text())
    assert [r["runs"] for r in kept["records"].values()] == [[int8_ms]]
    assert measurers["local-cpu-1t-ort"]([arch], [int8]) == [int8_ms]


def test_device_measurers_refuse_quantised_subnets_elsewhere(tmp_path):
    measurers = device_measurers(SPACE, ["local-cpu-1t-torch"], store=tmp_path, use_ray=False)
    arch = smallest(SPACE)
    for device in measurers:
        with pytest.raises(UsageError, match="cannot time quantised subnets.*ONNX Runtime on the CPU"):
            measurers[device]([arch], [PrecisionPolicy.uniform(SPACE, "int8")])


def test_device_measurers_time_quantised_subnets_on_any_ort_cpu_device(tmp_path):
    # What nas run builds int8 table entries for (Device.times_quantized), hardware in the loop re-measures:
    # ONNX Runtime on the CPU with any number of threads and any batch.
    arch = replace(smallest(SPACE), resolution=min(SPACE.resolutions))
    measurers = device_measurers(SPACE, ["local-cpu-2t-ort-b2"], store=tmp_path, use_ray=False,
                                 measure_config=QUICK)
    (int8_ms,) = measurers["local-cpu-2t-ort-b2"]([arch], [PrecisionPolicy.uniform(SPACE, "int8")])
    assert int8_ms > 0
