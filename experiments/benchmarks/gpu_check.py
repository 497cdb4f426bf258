"""GPU check: training throughput and the Once-for-All claim on part of CIFAR-10, in one command.

Runs where neither Ray nor Optuna is installed (the lent GPU machine): training goes through the project's
own loop in process (``supernets.training.run_job``, what ``nas train --no-ray`` runs).

1. Throughput of the ``ofa_mbv3_cifar`` network at batch 256 (synthetic batches on the device, one SGD
   step = forward, loss, backward, update): the static largest subnet against the supernet at its largest,
   fp32 against bf16, channels-last, with and without ``torch.compile``; the supernet at random subnets
   against the static networks of the same subnets; sandwich steps (largest, smallest, a random subnet), their
   sliced parameters' gradients added in place or by plain autograd; fp16 with a grad scaler.
   ``--launch-bound`` (CUDA) adds, last, the largest subnet's step captured in a CUDA graph (static and
   supernet) and at twice the batch.
2. Accuracy: a progressive-shrinking run and a sandwich-rule run of the supernet on the packed CIFAR-10
   part (``cifar_pack.py``), then the small, medium and large subnets trained from scratch for the same
   number of epochs; test accuracy of each (inherited: batch norms recalibrated, no retraining).
   The number of epochs is sized from the step times measured in 1 so that the whole check fits
   ``--budget-s`` (``--epochs`` fixes it instead).

    python experiments/benchmarks/cifar_pack.py ../shared/data/cifar10 .gpu_data     # here, once
    python experiments/benchmarks/gpu_check.py --data .gpu_data --out $OUT            # on the GPU machine
    python experiments/benchmarks/gpu_check.py --data ../shared/data/cifar10 --out /tmp/gc --tiny   # CPU smoke

Writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out`` after every section (a run cut short keeps
what it measured).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from cifar_pack import is_packed, unpack_folder  # noqa: E402
from ofa_claim import medium  # noqa: E402
from ofa_claim import subnets as claim_subnets  # noqa: E402  - small, medium, large
from torch import nn  # noqa: E402

from nas.data import DatasetConfig, ImageData, load_dataset  # noqa: E402
from search_spaces import Arch, SearchSpace, get_space, largest, sample, smallest  # noqa: E402
from supernets import build, build_supernet  # noqa: E402
from supernets.training import (  # noqa: E402
    Execution,
    TrainJob,
    TrainSettings,
    load_supernet_file,
    make_phase,
    read_metrics,
    resize,
    run_job,
    sandwich_phase,
    sandwich_subnet_lr,
    subnet_accuracy,
)
from supernets.training.evaluate import accuracy  # noqa: E402

SPACE = "ofa_mbv3_cifar"
SEED = 0


# ---------------------------------------------------------------------------------------------------------
# Subnets and settings.


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The training recipe shared by the supernet runs and the from-scratch runs."""

    batch_size: int = 256
    lr: float = 0.2
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    momentum: float = 0.9
    bn_images: int = 2000           # BN recalibration before every test evaluation
    val_images: int = 1000          # per-epoch validation of the supernet runs
    max_steps: int | None = None    # cap on steps per epoch (the tiny smoke run)
    kernel_transform_lr: float = 1.0  # supernet runs: the kernel transforms' rate relative to the phase's
    # Sandwich runs: BigNAS's recipe, each part on its own (``TrainSettings`` says what each does).
    zero_init_residual: bool = False
    sandwich_labels: str = "all"
    sandwich_dropout: str = "all"
    scratch_zero_init: bool = False  # from-scratch runs: residual blocks start as the identity too


# Progressive shrinking in Once-for-All's order, as fractions of the epochs: full network, elastic
# kernel, elastic depth, elastic expand ratio (channels sorted first); learning rate relative to the first.
PS_PLAN = (("full", 0.40, 1.0, {}, 1), ("kernel", 0.15, 0.3, {"kernel_sizes": [3, 5, 7]}, 1),
           ("depth", 0.20, 0.2, {"kernel_sizes": [3, 5, 7], "depths": [2, 3, 4]}, 2),
           ("expand", 0.25, 0.2, {"kernel_sizes": [3, 5, 7], "depths": [2, 3, 4], "expand_ratios": [3, 4, 6]}, 2))


def ps_phases(space: SearchSpace, epochs: int, lr: float) -> tuple:
    counts = [max(1, round(fraction * epochs)) for _, fraction, *_ in PS_PLAN]
    counts[0] += max(0, epochs - sum(counts))
    phases = []
    for (name, _, lr_factor, elastic, subnets), count in zip(PS_PLAN, counts):
        phases.append(make_phase(name, count, lr * lr_factor, {"resolutions": list(space.resolutions), **elastic},
                                 subnets_per_step=subnets, distill_weight=0.0 if name == "full" else 1.0,
                                 sort_channels=name == "expand"))
    return tuple(phases)


# ---------------------------------------------------------------------------------------------------------
# Throughput.


def _step_fn(forward: Callable[[torch.Tensor], torch.Tensor], params: list[nn.Parameter],
             execution: Execution) -> Callable[[torch.Tensor, torch.Tensor], None]:
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    scaler = execution.grad_scaler()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        with execution.autocast():
            loss = F.cross_entropy(forward(x).float(), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
    return step


def _graphed_step(forward: Callable[[torch.Tensor], torch.Tensor], params: list[nn.Parameter],
                  execution: Execution, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """``_step_fn``'s step on the fixed batch ``(x, y)`` captured once in a CUDA graph; returns its replay (one
    launch for every kernel of forward, backward and update). PyTorch's whole-network capture: warm-up on a side
    stream, gradients set to None before capture so that backward allocates them in the graph's pool, autocast
    without its cache. bf16 / fp32 only (a grad scaler's inf checks do not capture)."""
    if execution.device.type != "cuda" or execution.precision == "fp16":
        raise ValueError("CUDA graphs need a CUDA device and bf16 or fp32")
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    dtype = {"bf16": torch.bfloat16, "fp32": None}[execution.precision]

    def body() -> None:
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None, cache_enabled=False):
            loss = F.cross_entropy(forward(x).float(), y)
        loss.backward()
        optimizer.step()

    side = torch.cuda.Stream(execution.device)
    side.wait_stream(torch.cuda.current_stream(execution.device))
    with torch.cuda.stream(side):
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            body()
    torch.cuda.current_stream(execution.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        body()
    return graph.replay


def _batch(execution: Execution, batch: int, resolution: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = execution.batch(torch.randn(batch, 3, resolution, resolution, generator=g))
    return x, torch.randint(0, classes, (batch,), generator=g).to(execution.device)


def time_steps(steps_fns: list[Callable[[], None]], execution: Execution, warmup: int, repeats: int,
               rounds_count: int = 3) -> float:
    """Median over rounds of the mean seconds per call of ``steps_fns`` (called in turn)."""
    for fn in steps_fns:
        for _ in range(warmup):
            fn()
    execution.synchronize()
    rounds = []
    for _ in range(rounds_count):
        started = time.perf_counter()
        for _ in range(repeats):
            for fn in steps_fns:
                fn()
        execution.synchronize()
        rounds.append((time.perf_counter() - started) / (repeats * len(steps_fns)))
    return float(np.median(rounds))


def throughput(device: str, batch: int, warmup: int, repeats: int, n_random: int, with_compile: bool,
               record: Callable[[dict], None], launch_bound: bool = False) -> dict[str, float]:
    """Training images/s of the variants; returns the step times the accuracy plan needs (seconds).
    ``launch_bound`` (on CUDA): last, the two ways around per-kernel launch cost -- the step captured in a CUDA
    graph, and twice the batch."""
    space = get_space(SPACE)
    big, small, mid = largest(space), smallest(space), medium(space)
    randoms = sample(space, n_random, seed=3)
    times: dict[str, float] = {}

    def measure(name: str, what: str, precision: str, channels_last: bool, compiled: bool,
                make: Callable[[Execution], list[Callable[[], None]]], fresh: bool = False,
                images: int = batch) -> float | None:
        row: dict[str, Any] = {"name": name, "network": what, "precision": precision,
                               "channels_last": channels_last, "compile": compiled}
        try:
            execution = Execution.resolve(device, precision, channels_last)
            fns = make(execution)
            seconds = time_steps(fns, execution, 0, 1, 1) if fresh else time_steps(fns, execution, warmup, repeats)
            row.update(step_ms=round(1000 * seconds, 3), images_per_s=round(images / seconds, 1), batch=images)
            print(f"  {name:<34} {images / seconds:>9.0f} img/s  ({1000 * seconds:.2f} ms/step)", flush=True)
            times[name] = seconds
        except Exception as exc:  # noqa: BLE001 - a failed variant is recorded, the check goes on
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"  {name:<34} failed: {row['error']}", flush=True)
            seconds = None
        record(row)
        return seconds

    def static_steps(archs: list[Arch], compiled: bool, graphed: bool = False, images: int = batch
                     ) -> Callable[[Execution], list[Callable[[], None]]]:
        def make(execution: Execution) -> list[Callable[[], None]]:
            fns = []
            for arch in archs:
                torch.manual_seed(SEED)
                net = execution.module(build(space, arch)).train()
                forward = torch.compile(net) if compiled else net
                x, y = _batch(execution, images, arch.resolution, space.num_classes)
                fns.append(_graphed_step(forward, list(net.parameters()), execution, x, y) if graphed else
                           functools.partial(_step_fn(forward, list(net.parameters()), execution), x, y))
            return fns
        return make

    def super_steps(archs: list[Arch], compiled: bool, graphed: bool = False
                    ) -> Callable[[Execution], list[Callable[[], None]]]:
        def make(execution: Execution) -> list[Callable[[], None]]:
            torch.manual_seed(SEED)
            net = execution.module(build_supernet(space)).train()
            model = torch.compile(net) if compiled else net
            fns = []
            for arch in archs:
                x, y = _batch(execution, batch, arch.resolution, space.num_classes)
                forward = functools.partial(model, arch=arch)
                fns.append(_graphed_step(forward, list(net.parameters()), execution, x, y) if graphed else
                           functools.partial(_step_fn(forward, list(net.parameters()), execution), x, y))
            return fns
        return make

    def teacher_forward(execution: Execution) -> list[Callable[[], None]]:
        net = execution.module(build(space, big)).eval()
        x, _ = _batch(execution, batch, big.resolution, space.num_classes)

        def fn() -> None:
            with torch.no_grad(), execution.autocast():
                net(x)
        return [fn]

    gpu = device != "cpu" and torch.cuda.is_available()
    fast = ("bf16", gpu)
    for precision, cl in (("fp32", False), ("bf16", False), *([fast] if gpu else [])):
        tag = f"{precision}{'+cl' if cl else ''}"
        measure(f"static largest {tag}", "static", precision, cl, False, static_steps([big], False))
        measure(f"supernet largest {tag}", "supernet", precision, cl, False, super_steps([big], False))
    if gpu:
        measure("supernet largest fp16+cl", "supernet", "fp16", True, False, super_steps([big], False))
    if with_compile:
        measure(f"static largest {fast[0]}{'+cl' if gpu else ''} compile", "static", fast[0], gpu, True,
                static_steps([big], True))
    tag = f"{fast[0]}{'+cl' if gpu else ''}"
    measure(f"static random x{n_random} {tag}", "static", fast[0], gpu, False, static_steps(list(randoms), False))
    measure(f"supernet random x{n_random} {tag}", "supernet", fast[0], gpu, False, super_steps(list(randoms), False))

    def sandwich_steps(in_place: bool) -> Callable[[Execution], list[Callable[[], None]]]:
        """Sandwich steps as training runs them: largest, smallest, random subnet ``i`` (one backward pass each,
        one optimizer step), with the sliced parameters' gradients added in place or by plain autograd."""
        def make(execution: Execution) -> list[Callable[[], None]]:
            torch.manual_seed(SEED)
            net = execution.module(build_supernet(space)).train()
            net.set_in_place_grads(in_place)
            optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
            batches = {a.resolution: _batch(execution, batch, a.resolution, space.num_classes)
                       for a in (big, small, *randoms)}

            def step(arch: Arch) -> None:
                optimizer.zero_grad(set_to_none=True)
                for a in (big, small, arch):
                    x, y = batches[a.resolution]
                    with execution.autocast():
                        loss = F.cross_entropy(net(x, a).float(), y)
                    loss.backward()
                optimizer.step()
            return [functools.partial(step, a) for a in randoms]
        return make

    for mode, in_place in (("plain", False), ("in place", True)):
        measure(f"supernet sandwich x{n_random} {tag} {mode}", "supernet", fast[0], gpu, False,
                sandwich_steps(in_place))
    # What the elastic phases meet: subnets never run before, in the default memory format (channels-last
    # plans its kernels per new shape: seconds per subnet, measured on an H200).
    fresh = list(sample(space, 4 * n_random, seed=11))
    measure(f"supernet new subnets {fast[0]}", "supernet", fast[0], False, False, super_steps(fresh, False),
            fresh=True)
    measure(f"supernet smallest {tag}", "supernet", fast[0], gpu, False, super_steps([small], False))
    measure(f"static smallest {tag}", "static", fast[0], gpu, False, static_steps([small], False))
    measure(f"static medium {tag}", "static", fast[0], gpu, False, static_steps([mid], False))
    measure(f"teacher forward {tag}", "static", fast[0], gpu, False, teacher_forward)
    if launch_bound and gpu:  # last: a capture that fails may leave the device unusable for what follows
        measure(f"static largest {tag} x2 batch", "static", fast[0], gpu, False,
                static_steps([big], False, images=2 * batch), images=2 * batch)
        measure(f"static largest {tag} cuda graph", "static", fast[0], gpu, False, static_steps([big], False, True))
        measure(f"supernet largest {tag} cuda graph", "supernet", fast[0], gpu, False,
                super_steps([big], False, True))
    return {
        "super_largest": times.get(f"supernet largest {tag}"),
        "super_random": times.get(f"supernet new subnets {fast[0]}"),
        "super_smallest": times.get(f"supernet smallest {tag}"), "teacher": times.get(f"teacher forward {tag}"),
        "static_small": times.get(f"static smallest {tag}"), "static_medium": times.get(f"static medium {tag}"),
        "static_large": times.get(f"static largest {tag}"),
    }


# ---------------------------------------------------------------------------------------------------------
# Accuracy.


SIDE_BY_SIDE_SLOWDOWN = 1.4
"""How much longer each of two training processes takes side by side on one GPU than alone: an estimate (not
yet measured for two; in the fourth session five side by side took 2.6-3.1x as long each, for 5x the work)."""


def plan_epochs(times: dict[str, float | None], steps: int, seconds: float, runs: tuple[str, ...] = (
        "ps", "sandwich", "scratch"), sandwich_subnets: int = 4, side_by_side: bool = False) -> int:
    """The most epochs E such that each of ``runs`` (progressive shrinking, the sandwich rule with
    ``sandwich_subnets`` a step, the 3 from-scratch runs) trains E epochs in ``seconds``: one after another, or
    with the from-scratch runs in a process beside the supernet runs (``side_by_side``)."""
    if any(v is None for v in times.values()):
        return 0
    t = times
    ps = sum(fraction * (subnets * (t["super_largest"] if name == "full" else t["super_random"])
                         + (0 if name == "full" else t["teacher"]))
             for name, fraction, _, _, subnets in PS_PLAN)
    sandwich = t["super_largest"] + t["super_smallest"] + max(0, sandwich_subnets - 2) * t["super_random"]
    scratch = t["static_small"] + t["static_medium"] + t["static_large"]
    supernet = ps * ("ps" in runs) + sandwich * ("sandwich" in runs)
    scratch *= "scratch" in runs
    step = max(supernet, scratch) * SIDE_BY_SIDE_SLOWDOWN if side_by_side else supernet + scratch
    per_epoch = steps * step * 1.15 + 2 * 1.5  # + launch jitter; eval and checkpoint
    return max(4, int(seconds / per_epoch))


def train_supernet(strategy: str, phases: tuple, data_cfg: DatasetConfig, recipe: Recipe, device: str,
                   folder: Path, compile_teacher: bool) -> tuple[Path, list[dict]]:
    space = get_space(SPACE)
    bignas = {"zero_init_residual": recipe.zero_init_residual, "sandwich_labels": recipe.sandwich_labels,
              "sandwich_dropout": recipe.sandwich_dropout} if strategy == "sandwich" else {}
    settings = TrainSettings(strategy=strategy, phases=phases, lr=recipe.lr, batch_size=recipe.batch_size,
                             momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                             label_smoothing=recipe.label_smoothing, max_steps_per_epoch=recipe.max_steps,
                             kernel_transform_lr=recipe.kernel_transform_lr, **bignas,
                             bn_recal_images=min(recipe.bn_images, 1000), eval_random_subnets=1,
                             max_val_images=recipe.val_images, device=device, compile=compile_teacher)
    folder.mkdir(parents=True, exist_ok=True)
    job = TrainJob(space=space, settings=settings, phases=settings.resolved_phases(space), seed=SEED,
                   config_hash=f"gpu-check-{strategy}", latest_path=str(folder / "latest.pt"),
                   teacher_path=str(folder / "teacher.pt"), supernet_path=str(folder / "supernet.pt"),
                   metrics_path=str(folder / "metrics.jsonl"),
                   make_data=functools.partial(load_dataset, data_cfg, 32, SEED), progress=False)
    run_job(job, log=lambda line: print(f"  [{strategy}] {line}", flush=True))
    return folder / "supernet.pt", read_metrics(job.metrics_path)


def train_scratch(arch: Arch, data: ImageData, epochs: int, recipe: Recipe, execution: Execution) -> nn.Module:
    """``build(space, arch)`` trained for ``epochs`` with the recipe, at the subnet's own resolution."""
    space = get_space(SPACE)
    torch.manual_seed(SEED)
    net = execution.module(build(space, arch, zero_init_residual=recipe.scratch_zero_init))
    steps = data.steps_per_epoch(recipe.batch_size, 1)
    if recipe.max_steps:
        steps = min(steps, recipe.max_steps)
    decay = [p for p in net.parameters() if p.ndim > 1]
    rest = [p for p in net.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": recipe.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}],
                                lr=recipe.lr, momentum=recipe.momentum, nesterov=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps)
    for epoch in range(epochs):
        net.train()
        for _, (x, y) in zip(range(steps), data.train_batches(recipe.batch_size, SEED * 1000 + epoch)):
            optimizer.zero_grad(set_to_none=True)
            with execution.autocast():
                out = net(resize(execution.batch(x), arch.resolution)).float()
            F.cross_entropy(out, y, label_smoothing=recipe.label_smoothing).backward()
            optimizer.step()
            schedule.step()
    return net.eval()


def step_ratios(rows: list[dict], tag: str, n_random: int) -> dict[str, float]:
    """Supernet / static step times of the throughput rows measured so far: one subnet a step (fp32 and
    ``tag`` at the largest, ``tag`` at the random subnets), and the sandwich step (plain, in place) against
    the static steps of its three subnets."""
    by_name = {r["name"]: r for r in rows if "step_ms" in r}
    ratios = {}
    for what in ("largest fp32", f"largest {tag}", f"random x{n_random} {tag}"):
        s, t = by_name.get(f"supernet {what}"), by_name.get(f"static {what}")
        if s and t:
            ratios[f"supernet / static step, {what}"] = round(s["step_ms"] / t["step_ms"], 3)
    parts = [by_name.get(f"static {what} {tag}") for what in ("largest", "smallest", f"random x{n_random}")]
    if all(parts):
        static_ms = sum(r["step_ms"] for r in parts)
        for mode in ("plain", "in place"):
            if f"supernet sandwich x{n_random} {tag} {mode}" in by_name:
                ratios[f"sandwich step ({mode}) / static largest + smallest + random steps"] = round(
                    by_name[f"supernet sandwich x{n_random} {tag} {mode}"]["step_ms"] / static_ms, 3)
    return ratios


def start_beside(args: argparse.Namespace, epochs: int) -> subprocess.Popen:
    """This check's from-scratch runs in a process of their own, beside the supernet runs on the same device
    (same data, recipe and epochs): each training process alone leaves a GPU about half idle, bound by kernel
    launches. Writes ``--out``/scratch/gpu_check.json and ``--out``/scratch.log."""
    command = [sys.executable, str(Path(__file__).resolve()), "--data", str(args.data),
               "--out", str(args.out / "scratch"), "--device", args.device, "--batch", str(args.batch),
               "--epochs", str(epochs), "--skip", "throughput", "--skip", "ps", "--skip", "sandwich",
               *(["--tiny"] if args.tiny else []), *(["--scratch-zero-init"] if args.scratch_zero_init else []),
               *(["--train-images", str(args.train_images)] if args.train_images else []),
               *(["--test-images", str(args.test_images)] if args.test_images else [])]
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "scratch.log", "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def merge_beside(beside: subprocess.Popen, out: Path, results: dict) -> None:
    """Wait for the from-scratch runs started by ``start_beside`` and put their accuracies (and errors) into
    ``results``' table."""
    beside.wait()
    try:
        child = json.loads((out / "scratch" / "gpu_check.json").read_text())
    except (OSError, ValueError) as exc:
        results["errors"].append(f"scratch (beside): no results ({exc}); see {out / 'scratch.log'}")
        return
    results["errors"] += [f"scratch (beside): {e}" for e in child.get("errors", [])]
    acc = results["accuracy"]
    rows = {row["subnet"]: row for row in acc["table"]}
    for row in child.get("accuracy", {}).get("table", []):
        if row["subnet"] in rows:
            rows[row["subnet"]]["scratch"] = row.get("scratch")
    acc["scratch_train_s"] = child.get("accuracy", {}).get("scratch_train_s")
    acc["side_by_side"] = True
    print(f"  scratch (beside, {out / 'scratch.log'}): " + ", ".join(
        f"{n} {100 * r['scratch']:.2f}%" for n, r in rows.items() if isinstance(r.get("scratch"), float)),
        flush=True)


def _phase_speeds(rows: list[dict]) -> dict[str, float]:
    speeds: dict[str, list[float]] = {}
    for row in rows:
        speeds.setdefault(row["phase"], []).append(row.get("train_images_per_s", 0.0))
    return {k: round(float(np.median(v)), 1) for k, v in speeds.items()}


# ---------------------------------------------------------------------------------------------------------
# Report.


def write_report(out: Path, results: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2))
    lines = [f"GPU check on {results['device_name']} (torch {results['torch']}), "
             f"{results.get('elapsed_s', 0):.0f} s", "",
             "| variant | img/s | ms/step |", "| --- | --- | --- |"]
    for row in results["throughput"]:
        value = (f"{row['images_per_s']:.0f} | {row['step_ms']:.2f}" if "images_per_s" in row
                 else f"failed: {row['error']} |")
        lines.append(f"| {row['name']} | {value} |")
    for name, ratio in results.get("ratios", {}).items():
        lines.append(f"\n{name}: {ratio}")
    acc = results.get("accuracy", {})
    if acc.get("table"):
        lines += ["", f"Accuracy ({acc.get('epochs')} epochs each, {acc.get('train_images')} training images, "
                      f"{acc.get('test_images')} test images):", "",
                  "| subnet | res | PS inherited % | sandwich inherited % | from scratch % | PS - scratch "
                  "| sandwich - scratch |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for row in acc["table"]:
            def pct(v: Any) -> str:
                return f"{100 * v:.2f}" if isinstance(v, float) else "-"

            def diff(a: Any, b: Any) -> str:
                return f"{100 * (a - b):+.2f}" if isinstance(a, float) and isinstance(b, float) else "-"
            lines.append(f"| {row['subnet']} | {row['resolution']} | {pct(row.get('ps'))} | "
                         f"{pct(row.get('sandwich'))} | "
                         f"{pct(row.get('scratch'))} | {diff(row.get('ps'), row.get('scratch'))} | "
                         f"{diff(row.get('sandwich'), row.get('scratch'))} |")
    for key in ("errors",):
        for error in results.get(key, []):
            lines.append(f"\nerror: {error}")
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--data", type=Path, required=True,
                        help="CIFAR-10 npz shards (train_*.npz, test.npz) or a cifar_pack.py folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--tiny", action="store_true", help="a CPU smoke run of about a minute")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall-time budget of the whole check")
    parser.add_argument("--epochs", type=int, help="epochs of every training run (default: sized to the budget)")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile (about 40 s of compiling; gained nothing on an H200)")
    parser.add_argument("--launch-bound", action="store_true",
                        help="also time, last, the step captured in a CUDA graph and at twice the batch (the "
                             "H200's steps were bound by kernel launches)")
    parser.add_argument("--skip", choices=("throughput", "accuracy", "ps", "sandwich", "scratch"), action="append",
                        default=[], help="leave a part out (repeatable)")
    parser.add_argument("--sandwich-lr-factor", type=float, default=None,
                        help="the sandwich run's learning rate relative to the recipe's (default: 1 / its subnets "
                             "per step, as the default sandwich schedule: the subnets' gradients add up)")
    parser.add_argument("--sandwich-subnets", type=int, default=4, help="subnets per sandwich step (default 4)")
    parser.add_argument("--batch", type=int, default=256,
                        help="the accuracy runs' batch (default 256; the recipe's rate, 0.2 at 256, scales with it)")
    parser.add_argument("--train-images", type=int, default=None,
                        help="use only the first N training images of --data (a tenth held out; default all)")
    parser.add_argument("--test-images", type=int, default=None,
                        help="test on the first N test images (default all)")
    parser.add_argument("--side-by-side", action="store_true",
                        help="train the from-scratch runs in a second process beside the supernet runs (the "
                             "epochs are planned for it); their log goes to OUT/scratch.log")
    parser.add_argument("--kernel-transform-lr", type=float, default=1.0,
                        help="the supernet runs' train.kernel_transform_lr: the elastic kernels' transform "
                             "matrices' rate relative to the phase's (0: centre crops; default 1)")
    parser.add_argument("--zero-init-residual", action="store_true",
                        help="the sandwich run starts every residual block as the identity (BigNAS)")
    parser.add_argument("--sandwich-labels", choices=("all", "largest"), default="all",
                        help="which subnets of the sandwich run learn from the labels (largest: the others from "
                             "the largest's outputs only, BigNAS's in-place distillation; default all)")
    parser.add_argument("--sandwich-dropout", choices=("all", "largest"), default="all",
                        help="which subnets of the sandwich run train with dropout (largest: BigNAS; default all)")
    parser.add_argument("--scratch-zero-init", action="store_true",
                        help="the from-scratch runs' residual blocks start as the identity too")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    gpu = args.device != "cpu" and torch.cuda.is_available()
    results: dict[str, Any] = {
        "command": " ".join(sys.argv), "torch": torch.__version__, "python": platform.python_version(),
        "device_name": torch.cuda.get_device_name(0) if gpu else f"CPU ({platform.processor() or platform.machine()})",
        "throughput": [], "errors": [],
    }

    def save() -> None:
        results["elapsed_s"] = round(time.perf_counter() - started, 1)
        write_report(args.out, results)

    batch = 16 if args.tiny else 256
    times: dict[str, float | None] = {}
    if "throughput" not in args.skip:
        print(f"throughput, batch {batch}, {results['device_name']}:", flush=True)
        n_random = 2 if args.tiny else 6
        tag = "bf16+cl" if gpu else "bf16"

        def record(row: dict) -> None:  # the ratios as the rows come: a check cut short keeps them
            results["throughput"].append(row)
            results["ratios"] = step_ratios(results["throughput"], tag, n_random)
            save()
        times = throughput(args.device, batch, warmup=1 if args.tiny else 3, repeats=1 if args.tiny else 6,
                           n_random=n_random, with_compile=args.compile and not args.tiny, record=record,
                           launch_bound=args.launch_bound)

    beside: subprocess.Popen | None = None
    if "accuracy" not in args.skip:
        try:
            data_dir = args.data
            with tempfile.TemporaryDirectory(prefix="hwnas-gpu-check-") as tmp:
                if is_packed(data_dir):
                    data_dir = unpack_folder(data_dir, Path(tmp) / "cifar10")
                data_cfg = DatasetConfig(kind="cifar10", path=str(data_dir), val_fraction=0.1,
                                         max_train_images=512 if args.tiny else args.train_images,
                                         max_test_images=100 if args.tiny else args.test_images)
                train_batch = batch if args.tiny else args.batch
                recipe = Recipe(batch_size=train_batch, lr=0.05 if args.tiny else 0.2 * train_batch / 256,
                                bn_images=32 if args.tiny else 2000,
                                val_images=32 if args.tiny else 1000, max_steps=2 if args.tiny else None,
                                kernel_transform_lr=args.kernel_transform_lr,
                                zero_init_residual=args.zero_init_residual, sandwich_labels=args.sandwich_labels,
                                sandwich_dropout=args.sandwich_dropout, scratch_zero_init=args.scratch_zero_init)
                data = load_dataset(data_cfg, 32, SEED)
                execution = Execution.resolve(args.device, "auto")
                data.to(execution.device)
                steps = data.steps_per_epoch(train_batch, 1) if not args.tiny else 2
                remaining = args.budget_s - (time.perf_counter() - started) - 25
                runs = tuple(r for r in ("ps", "sandwich", "scratch") if r not in args.skip)
                epochs = args.epochs or (4 if args.tiny else plan_epochs(
                    times, steps, remaining, runs, args.sandwich_subnets, args.side_by_side)) or 8
                space = get_space(SPACE)
                acc: dict[str, Any] = {"epochs": epochs, "train_images": len(data), "test_images": data.size("test"),
                                       "steps_per_epoch": steps, "recipe": dataclasses.asdict(recipe), "table": []}
                results["accuracy"] = acc
                rows = {name: {"subnet": name, "resolution": arch.resolution, "arch": str(arch_string(space, arch))}
                        for name, arch in claim_subnets(space)}
                acc["table"] = list(rows.values())
                print(f"accuracy: {epochs} epochs per run, {len(data)} training images, {steps} steps of "
                      f"{train_batch}, {data.size('test')} test images; {remaining:.0f} s left for training",
                      flush=True)
                save()
                if args.side_by_side and "scratch" not in args.skip:
                    beside = start_beside(args, epochs)
                sandwich_lr = sandwich_subnet_lr(recipe.lr, args.sandwich_subnets, args.sandwich_lr_factor)
                acc["sandwich_lr_factor"] = round(sandwich_lr / recipe.lr, 6)
                acc["sandwich_subnets"] = args.sandwich_subnets
                runs = [("progressive_shrinking", ps_phases(space, epochs, recipe.lr))] * ("ps" not in args.skip)
                runs += [("sandwich", (sandwich_phase(space, epochs, sandwich_lr, args.sandwich_subnets),))] * \
                    ("sandwich" not in args.skip)
                for strategy, phases in runs:
                    t0 = time.perf_counter()
                    path, metrics = train_supernet(strategy, phases, data_cfg, recipe, args.device,
                                                   Path(tmp) / strategy, compile_teacher=False)
                    _, supernet = load_supernet_file(path)
                    execution.module(supernet)
                    key = "ps" if strategy == "progressive_shrinking" else "sandwich"
                    acc[f"{key}_train_s"] = round(time.perf_counter() - t0, 1)
                    acc[f"{key}_images_per_s_by_phase"] = _phase_speeds(metrics)
                    acc[f"{key}_phases"] = [{"name": p.name, "epochs": p.epochs, "lr": p.lr} for p in phases]
                    for name, arch in claim_subnets(space):
                        rows[name][key] = subnet_accuracy(supernet, arch, data, "test", recipe.bn_images,
                                                          batch_size=500, seed=SEED,
                                                          execution=execution.for_shapes(True))
                    print(f"  {strategy}: {acc[f'{key}_train_s']:.0f} s; test " + ", ".join(
                        f"{n} {100 * rows[n][key]:.2f}%" for n in rows), flush=True)
                    save()
                if beside is None and "scratch" not in args.skip:
                    t0 = time.perf_counter()
                    for name, arch in claim_subnets(space):
                        net = train_scratch(arch, data, epochs, recipe, execution)
                        rows[name]["scratch"] = accuracy(net, data.eval_batches("test", 500), arch.resolution,
                                                         execution)
                        print(f"  scratch {name}: {100 * rows[name]['scratch']:.2f}%", flush=True)
                        save()
                    acc["scratch_train_s"] = round(time.perf_counter() - t0, 1)
        except Exception as exc:  # noqa: BLE001 - keep what was measured
            traceback.print_exc()
            results["errors"].append(f"accuracy: {type(exc).__name__}: {exc}")
        if beside is not None:  # the from-scratch runs went on in their own process (kept if the rest failed)
            merge_beside(beside, args.out, results)
    save()
    print((args.out / "gpu_check.md").read_text())
    return 1 if results["errors"] else 0


def arch_string(space: SearchSpace, arch: Arch) -> str:
    from search_spaces import arch_to_string

    return arch_to_string(space, arch)


if __name__ == "__main__":
    raise SystemExit(main())
