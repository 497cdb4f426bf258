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
