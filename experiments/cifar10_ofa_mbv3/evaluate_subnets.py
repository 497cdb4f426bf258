"""Test accuracy of the largest, the smallest and N random subnets of a trained run, without retraining
(each subnet extracted and its batch norms recalibrated on training images).

    .venv/bin/python experiments/cifar10_ofa_mbv3/evaluate_subnets.py runs/cifar10_reduced \
        --config experiments/cifar10_ofa_mbv3.yaml --random 5 --bn-images 500 --test-images 2000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from nas.config import load_config  # noqa: E402
from nas.data import load_dataset  # noqa: E402
from nas.rundir import load_supernet  # noqa: E402
from search_spaces import (  # noqa: E402
    arch_counts,  # noqa: E402
    arch_to_string,
    largest,
    sample,
    smallest,
)
from supernets.training import subnet_accuracy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--config", required=True, help="the run's config (for the dataset)")
    parser.add_argument("--random", type=int, default=5)
    parser.add_argument("--seed", type=int, default=2026, help="seed of the random subnets")
    parser.add_argument("--bn-images", type=int, default=2000)
    parser.add_argument("--test-images", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config(args.config)
    space, supernet = load_supernet(args.run)
    data = load_dataset(config.dataset, max(space.resolutions), config.seed)
    archs = [("largest", largest(space)), ("smallest", smallest(space))]
    archs += [(f"random_{i}", a) for i, a in enumerate(sample(space, args.random, args.seed))]
    n_test = min(data.size("test"), args.test_images or 10**9)
    print(f"run {args.run}: test accuracy on {n_test} test images, BN recalibrated on {args.bn_images} "
          f"training images")
    print("| subnet | resolution | MMACs | test accuracy % | arch |")
    print("| --- | --- | --- | --- | --- |")
    started = time.perf_counter()
    for name, arch in archs:
        acc = subnet_accuracy(supernet, arch, data, "test", args.bn_images, args.test_images, seed=config.seed)
        macs = arch_counts(space, arch).macs / 1e6
        print(f"| {name} | {arch.resolution} | {macs:.0f} | {100 * acc:.2f} | `{arch_to_string(space, arch)}` |",
              flush=True)
    print(f"evaluation wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
