"""CPU training speed by precision and memory format: the CIFAR-10 config's training step in fp32 and bf16
(autocast), each in the default memory format and channels-last, alternating in one process.

    .venv/bin/python experiments/benchmarks/cpu_precision.py --steps 6 --rounds 3

Each round trains ``--steps`` steps of the config's first phase (largest subnet, resolution drawn from
24/28/32, batch 32, augmentation on: shapes fixed but for the resolution) and then ``--steps`` steps of its
elastic-depth phase (2 new subnets per step plus the teacher's forward), once per variant, with the threads
the config gives a worker. The ratios are of median round times to fp32's. bf16 pays off only on CPUs with
native bf16 kernels (AVX-512 BF16 or AMX); the script prints what this one has.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from cpu_threads import training_bench  # noqa: E402

from search_spaces import largest, sample  # noqa: E402
from supernets import build, build_supernet  # noqa: E402
from supernets.training import Execution, Position  # noqa: E402
from supernets.training.device import cpu_bf16_native  # noqa: E402
from supernets.training.evaluate import subnet_accuracy  # noqa: E402
from supernets.training.loop import default_threads, make_optimizer, train_epoch  # noqa: E402

# (name, precision, channels-last for fixed shapes, channels-last while subnets vary)
VARIANTS = (
    ("fp32", "fp32", False, False),
    ("fp32 channels-last", "fp32", True, True),
    ("bf16", "bf16", False, False),
    ("bf16 channels-last", "bf16", True, True),
    ("bf16 channels-last fixed shapes only", "bf16", True, False),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/cifar10_ofa_mbv3.yaml")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--eval-subnets", type=int, default=3,
                        help="random subnets evaluated per round and variant (extract, BN recalibration on the "
                             "config's bn_recal_images, the validation split up to max_val_images)")
    parser.add_argument("--elastic-phase", type=int, default=3,
                        help="index of the elastic phase to time (default 3: depth_2 of the CIFAR-10 config)")
    args = parser.parse_args()
    config, space, phases, data, job = training_bench(args.config)
    threads = config.train.threads_per_worker or min(config.ray.cpus_per_worker or 1, default_threads())
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16 "
          f"{cpu_bf16_native()}, {threads} thread(s); {args.steps} steps of {phases[0].name} + {args.steps} of "
          f"{phases[args.elastic_phase].name}, batch {config.train.batch_size}", flush=True)
    torch.manual_seed(0)
    supernet = build_supernet(space)
    teacher = build(space, largest(space)).eval()
    times: dict[str, list[float]] = {name: [] for name, *_ in VARIANTS}
    eval_times: dict[str, list[float]] = {name: [] for name, *_ in VARIANTS}
    accuracies: dict[str, list[float]] = {name: [] for name, *_ in VARIANTS}
    eval_archs = sample(space, args.eval_subnets, seed=5)
    for r in range(args.rounds):
        snapshot = copy.deepcopy(supernet)  # every variant of a round evaluates these weights
        for name, precision, fixed_cl, elastic_cl in VARIANTS:
            execution = Execution(torch.device("cpu"), precision, fixed_cl, elastic_cl)
            execution.module(teacher)
            started = time.perf_counter()
            for phase_index in (0, args.elastic_phase):
                phase = phases[phase_index]
                varying = any(dimension != "resolutions" for dimension, _ in phase.elastic)
                phase_execution = execution.for_shapes(varying)
                phase_execution.module(supernet)
                optimizer = make_optimizer(supernet, phase, config.train)
                scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
                train_epoch(job, supernet, teacher if phase_index else None, phase, Position(phase_index, r),
                            data, optimizer, scheduler, args.steps, 0, 1, phase_execution)
            times[name].append(time.perf_counter() - started)
            started = time.perf_counter()
            execution.for_shapes(True).module(snapshot)
            accs = [subnet_accuracy(snapshot, arch, data, "val", config.train.bn_recal_images,
                                    config.train.max_val_images, seed=0, execution=execution.for_shapes(True))
                    for arch in eval_archs]
            eval_times[name].append(time.perf_counter() - started)
            accuracies[name] = accs
            print(f"round {r}: {name:<38} train {times[name][-1]:6.1f} s, evaluate {eval_times[name][-1]:5.1f} s",
                  flush=True)
    base, eval_base = float(np.median(times["fp32"])), float(np.median(eval_times["fp32"]))
    print(f"median per round (speed-up over fp32); evaluation of {len(eval_archs)} subnets, last round's "
          "validation accuracies (the weights at the round's start, in every variant)")
    for name, values in times.items():
        median, eval_median = float(np.median(values)), float(np.median(eval_times[name]))
        accs = ", ".join(f"{100 * a:.1f}" for a in accuracies[name])
        print(f"  {name:<38} train {median:6.1f} s {base / median:5.2f}x   evaluate {eval_median:5.1f} s "
              f"{eval_base / eval_median:5.2f}x   [{accs}]")


if __name__ == "__main__":
    main()
