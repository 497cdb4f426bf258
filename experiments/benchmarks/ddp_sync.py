"""Gradient sync across ranks: DistributedDataParallel(find_unused_parameters=True) against one all-reduce
per step (``train.gradient_sync: step``), side by side on 2 CPU ranks (gloo, one thread each).

    .venv/bin/python experiments/benchmarks/ddp_sync.py --steps 6 --rounds 3 --subnets 2

Each rank trains the same random subnets of ``ofa_mbv3_cifar`` (elastic kernel, depth and expand ratio;
``--subnets`` per step, their gradients summed) on its own synthetic batch. Printed: seconds per step of
each mode (median of rounds, rounds alternate) and the largest parameter difference between the two modes
after the same steps from the same weights (after one step they differ by float rounding, ~1e-7; the
difference then grows step by step, as any reordering of float sums does in training).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from search_spaces import get_space  # noqa: E402
from supernets import build_supernet  # noqa: E402
from supernets.training import make_phase, step_archs  # noqa: E402
from supernets.training.distributed import wrap_for_ranks  # noqa: E402


def train(mode: str, rank: int, world: int, steps: int, subnets: int, batch: int) -> tuple[float, torch.Tensor]:
    space = get_space("ofa_mbv3_cifar")
    torch.manual_seed(0)
    supernet = build_supernet(space)
    model, sync = wrap_for_ranks(supernet, world, mode, torch.device("cpu"))
    optimizer = torch.optim.SGD(supernet.parameters(), lr=0.05, momentum=0.9)
    phase = make_phase("p", 1, 0.05, {"kernel_sizes": [3, 5, 7], "depths": [2, 3, 4], "expand_ratios": [3, 4, 6]},
                       subnets_per_step=subnets)
    rng = np.random.default_rng(1)  # the same subnets on every rank
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    started = time.perf_counter()
    for _ in range(steps):
        x, y = torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)
        optimizer.zero_grad(set_to_none=True)
        for arch in step_archs(space, phase, "progressive_shrinking", rng, 32):
            F.cross_entropy(model(x, arch), y).backward()
        if sync is not None:
            sync()
        optimizer.step()
    seconds = (time.perf_counter() - started) / steps
    return seconds, torch.cat([p.detach().flatten() for p in supernet.parameters()])


def worker(rank: int, world: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    times: dict[str, list[float]] = {"ddp": [], "step": []}
    final = {}
    for _ in range(args.rounds):
        for mode in times:
            dist.barrier()
            seconds, params = train(mode, rank, world, args.steps, args.subnets, args.batch)
            times[mode].append(seconds)
            final[mode] = params
    if rank == 0:
        torch.save({"times": times, "diff": float((final["ddp"] - final["step"]).abs().max())}, out)
    dist.barrier()  # both ranks done before either tears gloo down (else: "terminate called", SIGABRT)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--subnets", type=int, default=2, help="subnets per step (2 in the depth/expand phases)")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(29500 + os.getpid() % 1000)
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.pt")
        mp.spawn(worker, args=(2, args, out), nprocs=2, join=True)
        result = torch.load(out, weights_only=True)
    ddp, step = (float(np.median(result["times"][m])) for m in ("ddp", "step"))
    print(f"2 CPU ranks (gloo, 1 thread each), batch {args.batch} per rank, {args.subnets} subnets per step, "
          f"{args.steps} steps x {args.rounds} rounds")
    print(f"DDP find_unused_parameters: {ddp:.3f} s/step; one all-reduce per step: {step:.3f} s/step; "
          f"ratio step/ddp {step / ddp:.3f}")
    print(f"largest parameter difference between the two after the same steps: {result['diff']:.2e}")


if __name__ == "__main__":
    main()
