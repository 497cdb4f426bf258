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
        _stop(head)
        shutil.rmtree(temp, ignore_errors=True)


NODE_OF_DEVICE = """
import ray
ray.init()
print([n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("device:{device}")][0])
"""


def _stop(process: subprocess.Popen) -> None:
    """Stop a `ray start --block` process group: SIGTERM, then SIGKILL after 30 s."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.skipif(not RAY.exists(), reason="the ray command is not installed")
def test_a_board_that_joined_the_cluster_gets_its_table_and_predictors_measured_there(tmp_path) -> None:
    """Issue 11, item 12: a head without the device, a second node offering ``device:<id>`` (as a board
    joins), and the CLI pointed at the head: `nas latency build`, `fit` and `eval` measure on that node."""
    import json
    import shutil
    import tempfile

    port = _free_port()
    temp = Path(tempfile.mkdtemp(prefix="hwb", dir="/tmp"))
    device = "local-cpu-1t-torch"
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(repo)}
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", f"--temp-dir={temp}", "--block"]
    head = subprocess.Popen([str(RAY), "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    board = None
    try:
        deadline = time.monotonic() + 90
        while not (temp / "ray_current_cluster").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert (temp / "ray_current_cluster").exists(), "the Ray head did not start"
        board = subprocess.Popen(
            [str(RAY), "start", f"--address=127.0.0.1:{port}", f"--resources={{\"device:{device}\": 1}}", *common],
            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cli_env = {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
        node = ""
        while not node and time.monotonic() < deadline + 60:  # the board's node registers
            probe = subprocess.run([sys.executable, "-c", NODE_OF_DEVICE.format(device=device)], env=cli_env,
                                   capture_output=True, text=True, timeout=120)
            node = probe.stdout.strip().splitlines()[-1] if probe.returncode == 0 and probe.stdout.strip() else ""
            time.sleep(0 if node else 1)
        assert node, "the second node did not join"
        home = tmp_path / "home"
        nas = [sys.executable, "-m", "nas"]
        measure = ["--space", "ofa_mbv3_cifar", "--device", device, "--resolutions", "24", "--warmup", "1",
                   "--repeats", "2", "--home", str(home), "--quiet"]
        build = subprocess.run([*nas, "latency", "build", *measure], env=cli_env, capture_output=True, text=True,
                               timeout=600, cwd=repo)
        assert build.returncode == 0, build.stderr[-3000:]
        assert f"measured on Ray node {node}" in build.stdout, build.stdout
        table = json.loads((home / "devices" / device / "tables" / "ofa_mbv3_cifar.json").read_text())
        assert table["complete"] and len(table["entries"]) > 50
        # Whole subnets: Ray tasks that need device:<id>, which only the board's node offers.
        for action in (["fit", "--samples", "6"], ["eval", "--samples", "4", "--json"]):
            result = subprocess.run([*nas, "latency", *action, *measure], env=cli_env, capture_output=True,
                                    text=True, timeout=600, cwd=repo)
            assert result.returncode == 0, result.stderr[-3000:]
        assert "spearman" in result.stdout
    finally:
        if board is not None:
            _stop(board)
        _stop(head)
        shutil.rmtree(temp, ignore_errors=True)
