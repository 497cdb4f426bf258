"""The Once-for-All claim, measured: subnets inherited from the supernet (BN recalibrated, no retraining)
against the same subnets trained from scratch for as many epochs as the whole supernet run, side by side.

Three subnets: small (every choice smallest), medium (depth 3, kernel 5, expand 4, middle resolution),
large (every choice largest). Target: inherited >= from-scratch - 0.5 point for all three.

    .venv/bin/python experiments/benchmarks/ofa_claim.py                       # quickstart (digits)
    .venv/bin/python experiments/benchmarks/ofa_claim.py --config experiments/cifar10_ofa_mbv3.yaml \
        --epochs-scale 0.25 --run-dir runs/cifar10_reduced                    # reuse a trained run

The supernet run trains (or resumes, or is reused when finished) through ``nas train``'s code path on Ray.
From-scratch training uses the same data, batch size, steps per epoch, label smoothing and a cosine
schedule from the first phase's learning rate, at the subnet's own resolution.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from nas.commands.train import train  # noqa: E402
from nas.config import ExperimentConfig, load_config  # noqa: E402
from nas.data import ImageData, load_dataset  # noqa: E402
from nas.rundir import RunDir, load_supernet  # noqa: E402
from search_spaces import Arch, BlockArch, SearchSpace, StageArch, largest, smallest  # noqa: E402
from supernets import build  # noqa: E402
from supernets.training import accuracy, resize, subnet_accuracy  # noqa: E402


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
    if train(config, run, progress=False) != 0:
        raise SystemExit(f"training of {run.root} failed")
    return time.perf_counter() - started


def train_from_scratch(space: SearchSpace, arch: Arch, config: ExperimentConfig, data: ImageData,
                       epochs: int, seed: int = 0) -> torch.nn.Module:
    """``build(space, arch)`` trained for ``epochs`` epochs with the supernet run's data settings."""
    settings = config.train
    torch.manual_seed(seed)
    net = build(space, arch)
    steps = data.steps_per_epoch(settings.batch_size, 1)
    if settings.max_steps_per_epoch:
        steps = min(steps, settings.max_steps_per_epoch)
    lr = settings.resolved_phases(space)[0].lr
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=settings.momentum, nesterov=True,
                                weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps)
    for epoch in range(epochs):
        net.train()
        for _, (x, y) in zip(range(steps), data.train_batches(settings.batch_size, seed * 1000 + epoch)):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(net(resize(x, arch.resolution)), y,
                            label_smoothing=settings.label_smoothing).backward()
            optimizer.step()
            schedule.step()
    return net.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/quickstart.yaml")
    parser.add_argument("--epochs-scale", type=float)
    parser.add_argument("--run-dir", help="supernet run folder (default: runs/bench_ofa_claim_<name>)")
    parser.add_argument("--bn-images", type=int, default=None, help="BN recalibration images")
    parser.add_argument("--test-images", type=int, default=None, help="cap on test images")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config(args.config, epochs_scale=args.epochs_scale)
    run = RunDir(args.run_dir or f"runs/bench_ofa_claim_{config.name}")
    train_s = ensure_trained(config, run)
    space, supernet = load_supernet(run)
    epochs = sum(p.epochs for p in config.train.resolved_phases(space))
    data = load_dataset(config.dataset, max(space.resolutions), config.seed)
    bn_images = args.bn_images if args.bn_images is not None else config.train.bn_recal_images
    print(f"supernet run {run.root}: {epochs} epochs ({train_s:.0f} s here); from-scratch: {epochs} epochs "
          f"each; test split {min(data.size('test'), args.test_images or 10**9)} images; BN recalibration "
          f"on {bn_images} training images")
    print("| subnet | resolution | inherited % | from scratch % | inherited - scratch (points) | scratch s |")
    print("| --- | --- | --- | --- | --- | --- |")
    worst = float("inf")
    for name, arch in (("small", smallest(space)), ("medium", medium(space)), ("large", largest(space))):
        inherited = subnet_accuracy(supernet, arch, data, "test", bn_images, args.test_images, seed=config.seed)
        started = time.perf_counter()
        scratch_net = train_from_scratch(space, arch, config, data, epochs, config.seed)
        scratch_s = time.perf_counter() - started
        scratch = accuracy(scratch_net, data.eval_batches("test", 200, args.test_images), arch.resolution)
        diff = 100 * (inherited - scratch)
        worst = min(worst, diff)
        print(f"| {name} | {arch.resolution} | {100 * inherited:.2f} | {100 * scratch:.2f} | {diff:+.2f} | "
              f"{scratch_s:.0f} |", flush=True)
    print(f"worst inherited - scratch: {worst:+.2f} points; target >= -0.5: {'met' if worst >= -0.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
