"""CPU training speed: the CIFAR-10 config's training step with 1 torch thread (the old default: one thread
per Ray worker) against the CPUs the worker is given (2 here), alternating in one process.

    .venv/bin/python experiments/benchmarks/cpu_threads.py --steps 8 --rounds 3

Each round trains ``--steps`` steps of the config's first phase (largest subnet, resolution drawn from
24/28/32, batch 32, augmentation on) and then ``--steps`` steps of its elastic-depth phase (2 subnets per
step plus the teacher's forward), once per thread count; the ratio is of the median round times.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from latency_predictors.measure import configure_allocator  # noqa: E402
from nas.config import load_config  # noqa: E402
from nas.data import load_dataset  # noqa: E402
from search_spaces import largest  # noqa: E402
from supernets import build, build_supernet  # noqa: E402
from supernets.training import Execution, Position, TrainJob  # noqa: E402
from supernets.training.loop import default_threads, make_optimizer, train_epoch  # noqa: E402


def training_bench(config_path: str) -> tuple[Any, Any, tuple, Any, TrainJob]:
    """``(config, space, phases, data, job)`` for timing a config's training steps in this process (steadier
    CPU timings first: ``configure_allocator``, ENVIRONMENT.md)."""
    configure_allocator()
    config = load_config(config_path)
    space = config.get_space()
    phases = config.train.resolved_phases(space)
    data = load_dataset(config.dataset, 32, config.seed)
    job = TrainJob(space=space, settings=config.train, phases=phases, seed=0, config_hash="bench",
                   latest_path="", teacher_path="", supernet_path="", metrics_path="", make_data=lambda: data,
                   progress=False)
    return config, space, phases, data, job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/cifar10_ofa_mbv3.yaml")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    config, space, phases, data, job = training_bench(args.config)
    supernet = build_supernet(space)
    teacher = build(space, largest(space)).eval()
    execution = Execution(torch.device("cpu"))
    cores = default_threads()
    times: dict[int, list[float]] = {1: [], cores: []}
    for r in range(args.rounds):
        for threads in times:
            torch.set_num_threads(threads)
            started = time.perf_counter()
            for phase_index in (0, 3):
                phase = phases[phase_index]
                optimizer = make_optimizer(supernet, phase, config.train)
                scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
                train_epoch(job, supernet, teacher if phase_index else None, phase, Position(phase_index, r),
                            data, optimizer, scheduler, args.steps, 0, 1, execution)
            times[threads].append(time.perf_counter() - started)
            print(f"round {r}: {threads} thread(s) {times[threads][-1]:.1f} s", flush=True)
    one, many = float(np.median(times[1])), float(np.median(times[cores]))
    print(f"median per round: 1 thread {one:.1f} s, {cores} threads {many:.1f} s; speed-up {one / many:.2f}x "
          f"({args.steps} steps of the full phase + {args.steps} of depth_2, batch {config.train.batch_size})")


if __name__ == "__main__":
    main()
