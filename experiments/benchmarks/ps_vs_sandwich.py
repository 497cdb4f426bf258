"""Progressive shrinking against the sandwich rule at equal epochs: test accuracy of the smallest and the
largest subnet (BN recalibrated), and of a few random ones, from two supernet runs of one config.

The progressive-shrinking run uses the config's phases; the sandwich run has one phase with every
dimension elastic, as many epochs as all phases together (or --sandwich-epochs), and 3
subnets per step (or --sandwich-subnets: largest, smallest, the rest random; in-place distillation), each at
the first phase's learning rate times --sandwich-lr-factor (default 1 / subnets, the sandwich rule's division
of a single network's rate; the tables recorded before 2026-11-27 used 1). Printed side by side.

    .venv/bin/python experiments/benchmarks/ps_vs_sandwich.py                  # digits, quickstart_progressive.yaml
    .venv/bin/python experiments/benchmarks/ps_vs_sandwich.py --config experiments/cifar10_ofa_mbv3.yaml \
        --epochs-scale 0.25
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nas.config import ExperimentConfig, load_config  # noqa: E402
from nas.data import load_dataset  # noqa: E402
from nas.rundir import RunDir, load_supernet  # noqa: E402
from search_spaces import largest, sample, smallest  # noqa: E402
from supernets.training import sandwich_phase, sandwich_subnet_lr, subnet_accuracy  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ofa_claim import ensure_trained  # noqa: E402

SUBNETS = 3


def sandwich_variant(config: ExperimentConfig, lr_factor: float | None = None, epochs: int | None = None,
                     subnets: int = SUBNETS) -> ExperimentConfig:
    """``lr_factor`` None: 1 / ``subnets``."""
    space = config.get_space()
    phases = config.train.resolved_phases(space)
    one = sandwich_phase(space, epochs or sum(p.epochs for p in phases),
                         sandwich_subnet_lr(phases[0].lr, subnets, lr_factor), subnets)
    train = dataclasses.replace(config.train, strategy="sandwich", phases=(one,), epochs_scale=1.0)
    return dataclasses.replace(config, name=f"{config.name}_sandwich", train=train)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/quickstart_progressive.yaml",
                        help="a progressive-shrinking config (its phases are one side; the sandwich run is derived)")
    parser.add_argument("--epochs-scale", type=float)
    parser.add_argument("--ps-run-dir", help="progressive-shrinking run (default runs/bench_ofa_claim_<name>)")
    parser.add_argument("--sandwich-run-dir", help="sandwich run (default runs/bench_sandwich_<name>)")
    parser.add_argument("--random", type=int, default=3, help="random subnets evaluated besides the extremes")
    parser.add_argument("--test-images", type=int, default=None)
    parser.add_argument("--sandwich-subnets", type=int, default=SUBNETS,
                        help="subnets per sandwich step: the largest, the smallest, and the rest random (default 3)")
    parser.add_argument("--sandwich-lr-factor", type=float, default=None,
                        help="each sandwich subnet's rate, as a fraction of the first phase's (default 1 / subnets)")
    parser.add_argument("--sandwich-epochs", type=int,
                        help="the sandwich run's epochs (default: all phases' epochs together)")
    args = parser.parse_args()
    if ((args.sandwich_lr_factor is not None and args.sandwich_lr_factor <= 0) or args.sandwich_subnets < 2
            or (args.sandwich_epochs is not None and args.sandwich_epochs < 1)):
        parser.error("--sandwich-lr-factor must be > 0, --sandwich-subnets >= 2 and --sandwich-epochs >= 1")
    torch.set_num_threads(1)
    config = load_config(args.config, epochs_scale=args.epochs_scale)
    if config.train.strategy != "progressive_shrinking":
        parser.error(f"{args.config} trains with {config.train.strategy!r}; give a progressive_shrinking config "
                     "(e.g. experiments/quickstart_progressive.yaml)")
    runs = {
        "progressive shrinking": (config, RunDir(args.ps_run_dir or f"runs/bench_ofa_claim_{config.name}")),
        "sandwich": (sandwich_variant(config, args.sandwich_lr_factor, args.sandwich_epochs, args.sandwich_subnets),
                     RunDir(args.sandwich_run_dir or f"runs/bench_sandwich_{config.name}")),
    }
    rows = {}
    for label, (cfg, run) in runs.items():
        seconds = ensure_trained(cfg, run)
        space, supernet = load_supernet(run)
        data = load_dataset(cfg.dataset, max(space.resolutions), cfg.seed)
        archs = {"smallest": smallest(space), "largest": largest(space)}
        archs.update({f"random_{i}": a for i, a in enumerate(sample(space, args.random, 123))})
        accs = {k: subnet_accuracy(supernet, a, data, "test", cfg.train.bn_recal_images, args.test_images,
                                   seed=cfg.seed) for k, a in archs.items()}
        phases = cfg.train.resolved_phases(space)
        steps = sum(p.epochs * p.subnets_per_step for p in phases)
        rows[label] = (accs, sum(p.epochs for p in phases), steps, seconds)
    print("| strategy | epochs | subnet-epochs | train s (this call) | smallest % | largest % | random mean % |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, (accs, epochs, steps, seconds) in rows.items():
        randoms = [v for k, v in accs.items() if k.startswith("random_")]
        print(f"| {label} | {epochs} | {steps} | {seconds:.0f} | {100 * accs['smallest']:.2f} | "
              f"{100 * accs['largest']:.2f} | {100 * float(np.mean(randoms)):.2f} |")
    ps, sw = rows["progressive shrinking"][0], rows["sandwich"][0]
    print(f"progressive shrinking - sandwich: smallest {100 * (ps['smallest'] - sw['smallest']):+.2f} points, "
          f"largest {100 * (ps['largest'] - sw['largest']):+.2f} points")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"benchmark wall time {time.perf_counter() - start:.0f} s")
