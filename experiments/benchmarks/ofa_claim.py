"""The Once-for-All claim, measured: subnets inherited from the supernet (BN recalibrated, no retraining)
against the same subnets trained from scratch for as many epochs as the whole supernet run, side by side.

Three subnets: small (every choice smallest), medium (depth 3, kernel 5, expand 4, middle resolution),
large (every choice largest). Target: inherited >= from-scratch - 0.5 point for all three.

    .venv/bin/python experiments/benchmarks/ofa_claim.py --scratch-lr 0.05     # quickstart (digits, sandwich)
    .venv/bin/python experiments/benchmarks/ofa_claim.py --config experiments/cifar10_ofa_mbv3.yaml \
        --epochs-scale 0.25 --run-dir runs/cifar10_reduced                    # reuse a trained run
    # from-scratch side beside a running `nas train` (one core each), then the supernet side when it is done:
    .venv/bin/python experiments/benchmarks/ofa_claim.py --config experiments/cifar10_ofa_mbv3.yaml \
        --run-dir runs/cifar10_full --part scratch --test-images 2000
    .venv/bin/python experiments/benchmarks/ofa_claim.py --config experiments/cifar10_ofa_mbv3.yaml \
        --run-dir runs/cifar10_full --part inherited --test-images 2000 --bn-images 500

The supernet run trains (or resumes, or is reused when finished) through ``nas train``'s code path on Ray.
From-scratch training uses the same data, batch size, steps per epoch, label smoothing and a cosine
schedule from the first phase's learning rate (or ``--scratch-lr``, required for a sandwich config: its
phase rate is each subnet's share of summed gradients, not a single network's), at the subnet's own
resolution.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from nas.config import ExperimentConfig, load_config  # noqa: E402
from nas.data import ImageData, load_dataset  # noqa: E402
from nas.io import atomic_write_json  # noqa: E402
from nas.rundir import RunDir, load_supernet  # noqa: E402
from nas.training import train  # noqa: E402
from search_spaces import Arch, BlockArch, SearchSpace, StageArch, get_space, largest, smallest  # noqa: E402
from supernets import build  # noqa: E402
from supernets.training import Execution, accuracy, resize, subnet_accuracy  # noqa: E402


def medium(space: SearchSpace) -> Arch:
    """Depth, kernel and expand ratio at the middle option of each stage, the middle resolution."""
    def mid(values: tuple) -> object:
        return values[len(values) // 2]

    stages = tuple(
        StageArch(blocks=(BlockArch(kernel_size=mid(s.kernel_sizes), expand_ratio=mid(s.expand_ratios),
                                    op_type=s.op_types[-1], se_ratio=s.se_ratios[-1], skip=s.skips[-1]),)
                  * mid(s.depths), width_mult=s.width_mults[-1])
        for s in space.stages)
    return Arch(space=space.name, resolution=mid(space.resolutions), stages=stages)


def ensure_trained(config: ExperimentConfig, run: RunDir) -> float:
    """Train the supernet unless the run is finished; returns the wall time spent here (s)."""
    started = time.perf_counter()
    train(config, run, progress=False)  # raises when it stops (RetryableError: run again to continue)
    return time.perf_counter() - started


def train_from_scratch(space: SearchSpace, arch: Arch, config: ExperimentConfig, data: ImageData,
                       epochs: int, lr: float, seed: int = 0, execution: Execution | None = None,
                       zero_init: bool = False) -> torch.nn.Module:
    """``build(space, arch)`` trained for ``epochs`` epochs with the supernet run's data settings, at peak rate
    ``lr``, on ``execution`` (default: the CPU in the default memory format); ``zero_init``: its residual blocks
    start as the identity, as the supernet's under ``train.zero_init_residual``."""
    settings = config.train
    execution = execution or Execution(torch.device("cpu"))
    torch.manual_seed(seed)
    net = execution.module(build(space, arch, zero_init_residual=zero_init))
    steps = data.steps_per_epoch(settings.batch_size, 1)
    if settings.max_steps_per_epoch:
        steps = min(steps, settings.max_steps_per_epoch)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=settings.momentum, nesterov=True,
                                weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps)
    for epoch in range(epochs):
        net.train()
        for _, (x, y) in zip(range(steps), data.train_batches(settings.batch_size, seed * 1000 + epoch)):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(net(resize(execution.batch(x), arch.resolution)), y,
                            label_smoothing=settings.label_smoothing).backward()
            optimizer.step()
            schedule.step()
    return net.eval()


def subnets(space: SearchSpace) -> tuple[tuple[str, Arch], ...]:
    return (("small", smallest(space)), ("medium", medium(space)), ("large", largest(space)))


def load_results(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {"inherited": {}, "scratch": {}}


def run_scratch(config: ExperimentConfig, space: SearchSpace, data: ImageData, epochs: int, test_images: int | None,
                results: dict, path: Path, lr: float, execution: Execution | None = None,
                zero_init: bool = False) -> None:
    """Train each subnet from scratch unless ``results`` has it (with the same ``zero_init``); saved after each
    subnet (resumable)."""
    for name, arch in subnets(space):
        if name in results["scratch"] and results["scratch"][name].get("zero_init", False) == zero_init:
            continue
        started = time.perf_counter()
        net = train_from_scratch(space, arch, config, data, epochs, lr, config.seed, execution, zero_init)
        seconds = time.perf_counter() - started
        acc = accuracy(net, data.eval_batches("test", 200, test_images), arch.resolution, execution)
        results["scratch"][name] = {"accuracy": acc, "seconds": seconds, "epochs": epochs, "lr": lr,
                                    **({"zero_init": True} if zero_init else {})}
        atomic_write_json(path, results)
        print(f"scratch {name}: {100 * acc:.2f}% in {seconds:.0f} s", flush=True)


def run_inherited(config: ExperimentConfig, run: RunDir, data: ImageData, bn_images: int, test_images: int | None,
                  results: dict, path: Path) -> None:
    """Evaluate each subnet as inherited from the trained supernet (BN recalibrated)."""
    space, supernet = load_supernet(run)
    for name, arch in subnets(space):
        acc = subnet_accuracy(supernet, arch, data, "test", bn_images, test_images, seed=config.seed)
        results["inherited"][name] = {"accuracy": acc, "bn_images": bn_images}
        atomic_write_json(path, results)
        print(f"inherited {name}: {100 * acc:.2f}%", flush=True)


def print_table(space: SearchSpace, results: dict) -> None:
    print("| subnet | resolution | inherited % | from scratch % | inherited - scratch (points) | scratch s |")
    print("| --- | --- | --- | --- | --- | --- |")
    worst = float("inf")
    for name, arch in subnets(space):
        inherited, scratch = results["inherited"][name]["accuracy"], results["scratch"][name]
        diff = 100 * (inherited - scratch["accuracy"])
        worst = min(worst, diff)
        print(f"| {name} | {arch.resolution} | {100 * inherited:.2f} | {100 * scratch['accuracy']:.2f} | "
              f"{diff:+.2f} | {scratch['seconds']:.0f} |")
    print(f"worst inherited - scratch: {worst:+.2f} points; target >= -0.5: {'met' if worst >= -0.5 else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/quickstart.yaml")
    parser.add_argument("--epochs-scale", type=float)
    parser.add_argument("--run-dir", help="supernet run folder (default: runs/bench_ofa_claim_<name>)")
    parser.add_argument("--bn-images", type=int, default=None, help="BN recalibration images")
    parser.add_argument("--test-images", type=int, default=None, help="cap on test images")
    parser.add_argument("--part", choices=("all", "scratch", "inherited"), default="all",
                        help="scratch: only the from-scratch trainings (no supernet needed, so they can run beside "
                             "`nas train`); inherited: only the supernet side; all: both, then the table")
    parser.add_argument("--results", help="results JSON, kept between parts (default: RUN_DIR/ofa_claim.json)")
    parser.add_argument("--scratch-lr", type=float, default=None,
                        help="peak learning rate of the from-scratch trainings (default: the config's first phase's; "
                             "give a single network's rate when the config's is a sandwich rate for summed gradients)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one core, beside nas train)")
    parser.add_argument("--channels-last", action="store_true",
                        help="train from scratch in channels-last, as nas train does on the CPU (1.9x faster there)")
    parser.add_argument("--scratch-zero-init", action="store_true",
                        help="the from-scratch networks' residual blocks start as the identity (as the supernet's "
                             "under train.zero_init_residual)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    execution = Execution.resolve("cpu", "fp32", args.channels_last)
    config = load_config(args.config, epochs_scale=args.epochs_scale)
    if args.scratch_lr is None and config.train.strategy == "sandwich" and args.part != "inherited":
        parser.error(f"{args.config} trains with the sandwich rule, whose phase rate is each subnet's share of "
                     "summed gradients; give --scratch-lr, a single network's rate (0.05 for the shipped CPU configs)")
    run = RunDir(args.run_dir or f"runs/bench_ofa_claim_{config.name}")
    path = Path(args.results) if args.results else run.root / "ofa_claim.json"
    results = load_results(path)
    space = get_space(config.space)
    phases = config.train.resolved_phases(space)
    epochs = sum(p.epochs for p in phases)
    data = load_dataset(config.dataset, max(space.resolutions), config.seed)
    bn_images = args.bn_images if args.bn_images is not None else config.train.bn_recal_images
    print(f"supernet run {run.root}: {epochs} epochs; from-scratch: {epochs} epochs each; test split "
          f"{min(data.size('test'), args.test_images or 10**9)} images; BN recalibration on {bn_images} training "
          f"images", flush=True)
    if args.part in ("all", "scratch"):
        lr = args.scratch_lr if args.scratch_lr is not None else phases[0].lr
        run_scratch(config, space, data, epochs, args.test_images, results, path, lr, execution,
                    args.scratch_zero_init)
    if args.part in ("all", "inherited"):
        train_s = ensure_trained(config, run)
        print(f"supernet training here: {train_s:.0f} s", flush=True)
        run_inherited(config, run, data, bn_images, args.test_images, results, path)
    if all(name in results[part] for part in ("inherited", "scratch") for name, _ in subnets(space)):
        print_table(space, results)


if __name__ == "__main__":
    main()
