"""Attaching to a running Ray cluster: a head started by the test (``ray start --head``) with a custom
``device:<id>`` resource, named through ``RAY_ADDRESS``; the latency measurement's Ray start attaches to it
instead of refusing, and a task that needs the device resource runs there."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
RAY = Path(sys.executable).with_name("ray")

PROBE = """
import ray
from latency_predictors.devices import parse_device_id
from latency_predictors.remote import device_resource, init_ray
device = parse_device_id("{device}")
init_ray(device)
resource = device_resource(device.id)
@ray.remote(num_cpus=0, resources={{resource: 1}})
def where():
    return ray.get_runtime_context().get_node_id()
print("OK", resource in ray.cluster_resources(), ray.get(where.remote()) is not None)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not RAY.exists(), reason="the ray command is not installed")
def test_measurement_attaches_to_a_named_cluster_offering_the_device() -> None:
    import shutil
    import tempfile

    port = _free_port()
    temp = Path(tempfile.mkdtemp(prefix="hwr", dir="/tmp"))  # short: Ray's socket paths live under it
    device = "local-cpu-1t-ort"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    head = subprocess.Popen(
        [str(RAY), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
         "--include-dashboard=false",
         f"--resources={{\"device:{device}\": 1}}", f"--temp-dir={temp}", "--block"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        probe_env = {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
        address_file = temp / "ray_current_cluster"
        deadline = time.monotonic() + 90
        while not address_file.exists() and time.monotonic() < deadline:
            time.sleep(0.5)  # the head is still starting
        assert address_file.exists(), "the Ray head did not start"
        result = subprocess.run([sys.executable, "-c", PROBE.format(device=device)], env=probe_env,
                                capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "OK True True" in result.stdout
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)
