"""Device placement, precision and in-process training: ``train.device`` / ``train.precision``, the
``nas train --no-ray`` path (trains, checkpoints, resumes after SIGKILL), damaged data found before
training. GPU-only tests skip where CUDA is absent (CI)."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from nas.cli import main
from nas.rundir import RunDir
from search_spaces import get_space, largest, sample
from supernets import build_supernet, extract
from supernets.training import DeviceError, Execution
from supernets.training.evaluate import resize

ROOT = Path(__file__).resolve().parents[2]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def tiny_config(config_path: Path, *, device: str = "auto", ray: bool = False, epochs: int = 2, **dataset) -> Path:
    config = {
        "name": "tiny", "space": "ofa_mbv3_cifar",
        "dataset": {"kind": "digits", "image_size": 24, "max_train_images": 64, **dataset},
        "train": {"strategy": "progressive_shrinking", "batch_size": 8, "max_steps_per_epoch": 2,
                  "bn_recal_images": 16, "eval_random_subnets": 1, "max_val_images": 32, "device": device,
                  "phases": [{"name": "full", "epochs": 1, "lr": 0.05, "elastic": {"resolutions": [24]}},
                             {"name": "kernel", "epochs": epochs, "lr": 0.02, "distill_weight": 1.0,
                              "elastic": {"resolutions": [24], "kernel_sizes": [3, 5, 7]}}]},
        "ray": {"enabled": ray, "num_workers": 1, "cpus_per_worker": 1, "max_failures": 1},
    }
    config_path.write_text(yaml.safe_dump(config))
    return config_path


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@no_cuda
def test_auto_picks_the_cpu_and_cuda_is_refused_here() -> None:
    execution = Execution.resolve("auto", "auto")
    assert execution.device.type == "cpu" and execution.precision == "fp32"
    # channels-last on the CPU for fixed and varying shapes alike (cpu_precision.py measured both faster)
    assert execution.channels_last and execution.for_shapes(True).channels_last
    off = Execution.resolve("cpu", "auto", channels_last=False)
    assert not off.channels_last and not off.for_shapes(True).channels_last
    with pytest.raises(DeviceError, match="no CUDA device"):
        Execution.resolve("cuda")
    with pytest.raises(DeviceError, match="fp16 needs CUDA"):
        Execution.resolve("cpu", "fp16")


@no_cuda
def test_nas_train_on_cuda_without_one_is_a_one_line_error_before_any_work(tmp_path, capsys) -> None:
    for ray in (False, True):
        config = tiny_config(tmp_path / f"cuda_{ray}.yaml", device="cuda", ray=ray)
        run = tmp_path / f"run_{ray}"
        assert main(["train", str(config), "--run-dir", str(run)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "cuda" in err and "Traceback" not in err
        assert not run.exists()  # nothing written


def test_unknown_device_and_precision_are_refused_at_load(tmp_path, capsys) -> None:
    config = tiny_config(tmp_path / "bad.yaml")
    raw = yaml.safe_load(config.read_text())
    raw["train"]["precision"] = "int4"
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "train.precision" in err and "bf16" in err


def test_channels_last_supernet_computes_what_the_default_format_does() -> None:
    space = get_space("ofa_mbv3_cifar")
    torch.manual_seed(0)
    plain = build_supernet(space).eval()
    fast = Execution.resolve("cpu", "fp32")
    last = fast.module(copy.deepcopy(plain))
    assert any(p.ndim == 4 and p.shape[1] > 1 and not p.is_contiguous() for p in last.parameters())
    x = torch.randn(4, 3, 28, 28)
    with torch.no_grad():
        for arch in (largest(space), *sample(space, 3, seed=1)):
            xr = resize(x, arch.resolution)
            expected = plain(xr, arch)
            got = last(fast.batch(xr), arch)
            assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
            net = fast.module(extract(last, arch))
            assert torch.allclose(net(fast.batch(xr)), expected, atol=1e-4, rtol=1e-4)


def test_bf16_training_step_on_cpu_lowers_the_loss() -> None:
    execution = Execution.resolve("cpu", "bf16")
    space = get_space("ofa_mbv3_cifar")
    torch.manual_seed(0)
    net = execution.module(build_supernet(space)).train()
    arch = largest(space)
    x = torch.randn(16, 3, 24, 24)
    y = torch.randint(0, 10, (16,))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        with execution.autocast():
            out = net(x, arch)
        assert out.dtype == torch.bfloat16  # autocast did run the convolutions in bf16
        loss = F.cross_entropy(out.float(), y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]


@needs_cuda
def test_cuda_training_step_in_bf16_channels_last() -> None:
    execution = Execution.resolve("cuda", "auto")
    assert execution.precision == "bf16" and execution.channels_last and not execution.for_shapes(True).channels_last
    space = get_space("ofa_mbv3_cifar")
    net = execution.module(build_supernet(space)).train()
    x = execution.batch(torch.randn(8, 3, 32, 32))
    with execution.autocast():
        out = net(x, largest(space))
    F.cross_entropy(out.float(), torch.zeros(8, dtype=torch.long, device="cuda")).backward()
    assert out.device.type == "cuda"


def test_in_process_training_writes_checkpoints_metrics_and_a_line_per_epoch(tmp_path, capsys) -> None:
    config = tiny_config(tmp_path / "tiny.yaml")
    run = tmp_path / "run"
    assert main(["train", str(config), "--run-dir", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "training on cpu, fp32" in out
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("epoch ")] == \
        ["epoch 1/3 full", "epoch 2/3 kernel", "epoch 3/3 kernel"]
    rows = metrics(run)
    assert [r["global_epoch"] for r in rows] == [0, 1, 2]
    for row in rows:
        assert row["device"] == "cpu" and row["train_images_per_s"] > 0 and row["eval_images_per_s"] > 0
    assert RunDir(run).is_trained() and not (run / "ray").exists()
    assert main(["train", str(config), "--run-dir", str(run)]) == 0
    assert "already trained" in capsys.readouterr().out


def test_a_diverged_loss_stops_in_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys) -> None:
    """A NaN loss (here: a learning rate of 1e12) is not trained on for epochs: one line, exit 2, before the
    epoch is checkpointed (seen on a GPU: the sandwich rule at twice its learning rate went NaN in epoch 1 and
    ran on for 6 epochs)."""
    from tests.cli_helpers import fails_in_one_line

    config = tiny_config(tmp_path / "tiny.yaml")
    data = yaml.safe_load(config.read_text())
    data["train"]["phases"][1]["lr"] = 1e12
    config.write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    fails_in_one_line(capsys, ["train", config, "--run-dir", run, "--no-progress"], "training diverged",
                      "phase 'kernel'", "lower the learning rate")
    assert [r["phase"] for r in metrics(run)] == ["full"]  # the first phase's epoch stays, nothing after it


def test_in_process_run_resumes_after_sigkill(tmp_path) -> None:
    config = tiny_config(tmp_path / "tiny.yaml", epochs=4)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "nas", "train", str(config), "--run-dir", str(run),
                                "--no-progress"], cwd=tmp_path, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=open(tmp_path / "stderr.txt", "w"))
    latest = run / "checkpoints" / "latest.pt"
    deadline = time.monotonic() + 240
    try:
        while not latest.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert latest.exists(), f"no checkpoint appeared: {(tmp_path / 'stderr.txt').read_text()[-2000:]}"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (run / "checkpoints" / "supernet.pt").exists()
    assert len(metrics(run)) < 5
    result = subprocess.run([sys.executable, "-m", "nas", "train", str(config), "--run-dir", str(run),
                             "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "after epoch" in result.stdout  # it continued, not restarted
    assert [r["global_epoch"] for r in metrics(run)] == [0, 1, 2, 3, 4]


def _write_cifar(folder: Path, n: int = 40) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("train_0.npz", "test.npz"):
        np.savez(folder / name, x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                 y=rng.integers(0, 10, n).astype(np.uint8))


def test_truncated_cifar_shard_is_a_one_line_error_naming_it_before_training(tmp_path, capsys) -> None:
    data = tmp_path / "cifar"
    _write_cifar(data)
    shard = data / "test.npz"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    config = tiny_config(tmp_path / "cifar.yaml", kind="cifar10", path=str(data), image_size=None,
                         max_train_images=None)
    run = tmp_path / "run"
    assert main(["train", str(config), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(shard) in err and "truncated" in err
    assert not run.exists()


def test_in_memory_data_moves_to_a_device_and_batches_stay_seeded(tmp_path) -> None:
    from nas.data import DatasetConfig, load_dataset

    data = tmp_path / "cifar"
    _write_cifar(data, 64)
    cfg = DatasetConfig(kind="cifar10", path=str(data))
    a, b = load_dataset(cfg, 32), load_dataset(cfg, 32)
    b.to("cpu")  # the same code path as a GPU, on the CPU
    for (xa, ya), (xb, yb) in zip(a.train_batches(8, seed=3), b.train_batches(8, seed=3)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    if torch.cuda.is_available():
        b.to("cuda")
        xb, _ = next(b.train_batches(8, seed=3))
        xa, _ = next(a.train_batches(8, seed=3))
        assert xb.device.type == "cuda" and torch.allclose(xa, xb.cpu(), atol=1e-6)


@pytest.mark.parametrize("key, value", [("lr", float("inf")), ("lr", float("nan")), ("weight_decay", float("inf"))])
def test_non_finite_numbers_are_refused_at_load(tmp_path, capsys, key, value) -> None:
    config = tiny_config(tmp_path / "bad.yaml")
    raw = yaml.safe_load(config.read_text())
    raw["train"][key] = value
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"train.{key}" in err and "finite" in err
    assert not (tmp_path / "run").exists()
