"""Supernet overhead: one training step of the supernet at an arch against the extracted static subnet.

For each space, on the same batch and in one process, interleaving the two: a training step (forward,
cross-entropy, backward, SGD step) of ``supernet(x, arch)`` and of ``extract(supernet, arch)``, at the
largest arch and at random archs; medians over repeats; ratios supernet / static. Then inference latency
(batch 1, eval, no grad) of the extracted subnet against ``build(space, arch)``: the two should be the
same network, so the ratio should be 1.00 +- 0.03.

Targets: ratio <= 1.03 at the largest arch, median <= 1.05 over random archs.

    .venv/bin/python experiments/benchmarks/supernet_overhead.py [--spaces a,b] [--repeats N] [--quick]

Times in the table are process CPU milliseconds (medians); ratios are medians of back-to-back pairs,
by CPU time and by wall-clock time.

``--ops`` counts instead of timing: the kernel launches one training step makes on CUDA, estimated on the CPU
from the tensor operations it dispatches (views launch nothing, a slice's backward two: ``LAUNCHES``), supernet
against static subnet at the same archs, and which operations the supernet adds. On a GPU whose steps are
bound by kernel launches (the H200 of experiments/cifar10_ofa_mbv3/README.md: ~140 GFLOP in ~33 ms) this
ratio is what the supernet's step costs there against the static network's, to first order.

    .venv/bin/python experiments/benchmarks/supernet_overhead.py --spaces ofa_mbv3_cifar --ops --random-archs 6

Input resolution: 128 for the ImageNet spaces (``mnasnet`` too, although its space fixes 224: the
supernet takes any input size), 32 for ``ofa_mbv3_cifar``.
"""

from __future__ import annotations

import ctypes

# Before any torch work: keep glibc from mapping and freeing large buffers on every step (ENVIRONMENT.md).
_libc = ctypes.CDLL("libc.so.6")
_libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
_libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD

import argparse  # noqa: E402
import collections  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from search_spaces import Arch, get_space, largest, list_spaces, sample  # noqa: E402
from supernets import build, build_supernet, extract  # noqa: E402

RESOLUTION = {"ofa_mbv3_cifar": 32}
DEFAULT_RESOLUTION = 128


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call. On a shared machine the CPU time is the steadier
    measure (with one thread it excludes the time other processes hold the cores)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def train_step(forward: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
               x: torch.Tensor, y: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(forward(x), y).backward()
    optimizer.step()


def compare(a: Callable[[], object], b: Callable[[], object], repeats: int, warmup: int) -> dict[str, float]:
    """Medians of ``a`` and ``b`` (CPU seconds) and medians of the per-repeat ratios a / b (CPU and wall).

    ``a`` and ``b`` run alternately (order swapped every repeat), so each ratio compares two runs measured
    back to back and slow drifts of a shared machine cancel.
    """
    for _ in range(warmup):
        a()
        b()
    times_a, times_b = [], []
    for r in range(repeats):
        if r % 2:
            times_b.append(timed(b))
            times_a.append(timed(a))
        else:
            times_a.append(timed(a))
            times_b.append(timed(b))
    return {
        "a": statistics.median(t[1] for t in times_a),
        "b": statistics.median(t[1] for t in times_b),
        "ratio_cpu": statistics.median(ta[1] / tb[1] for ta, tb in zip(times_a, times_b)),
        "ratio_wall": statistics.median(ta[0] / tb[0] for ta, tb in zip(times_a, times_b)),
    }


def bench_space(name: str, repeats: int, n_random: int, batch: int, seed: int) -> dict[str, list]:
    space = get_space(name)
    resolution = RESOLUTION.get(name, DEFAULT_RESOLUTION)
    torch.manual_seed(seed)
    supernet = build_supernet(space).train()
    super_opt = torch.optim.SGD(supernet.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, resolution, resolution)
    y = torch.randint(0, space.num_classes, (batch,))
    x1 = torch.randn(1, 3, resolution, resolution)
    archs: list[tuple[str, Arch]] = [("largest", largest(space))]
    archs += [(f"random{i}", a) for i, a in enumerate(sample(space, n_random, seed=seed))]
    rows = []
    print(f"\n{name}: batch {batch}, resolution {resolution}, threads {torch.get_num_threads()}", flush=True)
    print(f"{'arch':<9} {'static ms':>10} {'super ms':>10} {'train cpu':>9} {'train wall':>10} {'built ms':>9} "
          f"{'extract ms':>10} {'infer cpu':>9} {'infer wall':>10}", flush=True)
    for label, arch in archs:
        static = extract(supernet, arch).train()
        static_opt = torch.optim.SGD(static.parameters(), lr=1e-3, momentum=0.9)
        train = compare(
            lambda arch=arch: train_step(lambda inp: supernet(inp, arch), super_opt, x, y),
            lambda static=static, opt=static_opt: train_step(static, opt, x, y),
            repeats, warmup=2)
        static.eval()
        built = build(space, arch).eval()

        def infer(net: torch.nn.Module, n: int = 5) -> None:
            with torch.no_grad():
                for _ in range(n):
                    net(x1)

        inference = compare(
            lambda static=static: infer(static), lambda built=built: infer(built), max(repeats, 7), warmup=2)
        row = (label, train["b"] * 1e3, train["a"] * 1e3, train["ratio_cpu"], train["ratio_wall"],
               inference["b"] / 5 * 1e3, inference["a"] / 5 * 1e3, inference["ratio_cpu"], inference["ratio_wall"])
        rows.append(row)
        print(f"{row[0]:<9} {row[1]:>10.1f} {row[2]:>10.1f} {row[3]:>9.3f} {row[4]:>10.3f} {row[5]:>9.2f} "
              f"{row[6]:>10.2f} {row[7]:>9.3f} {row[8]:>10.3f}", flush=True)

    def med(values: list[float]) -> str:
        return f"{statistics.median(values):.3f}" if values else "nan"

    summary = (f"{name}: train ratio (cpu / wall) largest {rows[0][3]:.3f} / {rows[0][4]:.3f}, median random "
               f"{med([r[3] for r in rows[1:]])} / {med([r[4] for r in rows[1:]])}; inference extracted/built "
               f"median {med([r[7] for r in rows])} / {med([r[8] for r in rows])}")
    print(summary, flush=True)
    return {"rows": rows, "summary": [summary]}


# Kernels an operation launches on CUDA where it is not one: allocations none, a slice's backward two (it fills
# a zero gradient of the whole tensor, then copies the slice's gradient into it).
LAUNCHES = {"empty": 0, "empty_like": 0, "empty_strided": 0, "new_empty": 0, "new_empty_strided": 0,
            "_unsafe_view": 0, "slice_backward": 2, "select_backward": 2}


class _OpCounter(TorchDispatchMode):
    """Counts the operations that reach the kernels (after autograd), by name; views and detaches, which
    launch nothing, are left out."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if not func.is_view and func.overloadpacket is not torch.ops.aten.detach:
            self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def counted_ops(step: Callable[[], None]) -> collections.Counter[str]:
    """The operations of one call of ``step`` (after one uncounted call, so that optimizer state exists)."""
    step()
    with _OpCounter() as counter:
        step()
    return counter.counts


def step_ops(forward: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
             x: torch.Tensor, y: torch.Tensor) -> collections.Counter[str]:
    """The operations of one training step."""
    return counted_ops(lambda: train_step(forward, optimizer, x, y))


def launches(ops: collections.Counter[str]) -> int:
    """Kernel launches the operations ``ops`` make on CUDA (estimated: ``LAUNCHES``, else one each)."""
    return sum(LAUNCHES.get(op, 1) * count for op, count in ops.items())


def sandwich_ops(supernet: torch.nn.Module, optimizer: torch.optim.Optimizer, archs: list[Arch],
                 classes: int) -> collections.Counter[str]:
    """The operations of one sandwich step: one backward pass per arch (largest first), one optimizer step."""
    batches = [(torch.randn(2, 3, a.resolution, a.resolution), torch.randint(0, classes, (2,))) for a in archs]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        for arch, (x, y) in zip(archs, batches):
            F.cross_entropy(supernet(x, arch), y).backward()
        optimizer.step()

    return counted_ops(step)


def ops_space(name: str, n_random: int, seed: int) -> list[str]:
    """Launches per training step, supernet / static: at the largest, the smallest and random archs one
    subnet a step; then sandwich steps (largest, smallest, one random) against the three static steps."""
    from search_spaces import smallest

    space = get_space(name)
    torch.manual_seed(seed)
    supernet = build_supernet(space).train()
    # foreach: one operation for all parameters, as the optimizer runs on CUDA (per parameter on the CPU)
    super_opt = torch.optim.SGD(supernet.parameters(), lr=1e-3, momentum=0.9, foreach=True)
    archs: list[tuple[str, Arch]] = [("largest", largest(space)), ("smallest", smallest(space))]
    archs += [(f"random{i}", a) for i, a in enumerate(sample(space, n_random, seed=seed))]
    print(f"\n{name}: kernel launches per training step, estimated from its operations", flush=True)
    print(f"{'arch':<9} {'static':>7} {'supernet':>8} {'ratio':>6}", flush=True)
    extra: collections.Counter[str] = collections.Counter()
    static_launches: dict[str, int] = {}
    random_static = random_super = 0
    for label, arch in archs:
        x = torch.randn(2, 3, arch.resolution, arch.resolution)
        y = torch.randint(0, space.num_classes, (2,))
        static = extract(supernet, arch).train()
        static_ops = step_ops(static, torch.optim.SGD(static.parameters(), lr=1e-3, momentum=0.9, foreach=True),
                              x, y)
        super_ops = step_ops(lambda inp, arch=arch: supernet(inp, arch), super_opt, x, y)
        n_static, n_super = launches(static_ops), launches(super_ops)
        static_launches[label] = n_static
        print(f"{label:<9} {n_static:>7} {n_super:>8} {n_super / n_static:>6.3f}", flush=True)
        if label.startswith("random"):
            random_static, random_super = random_static + n_static, random_super + n_super
            extra.update(super_ops)
            extra.subtract(static_ops)
    added = ", ".join(f"{op} {count / n_random:+.0f}" for op, count in extra.most_common() if count)
    lines = [f"{name}: launches supernet / static at {n_random} random archs {random_super / random_static:.3f}; "
             f"operations added per step (mean): {added}"]
    print(lines[0], flush=True)
    print(f"sandwich steps (largest, smallest, random<i>): {'static x3':>9} {'plain':>6} {'in place':>8}", flush=True)
    totals = {"static": 0, "plain": 0, "in place": 0}
    for label, arch in archs[2:]:
        step = [archs[0][1], archs[1][1], arch]
        counts = {"static": static_launches["largest"] + static_launches["smallest"] + static_launches[label]}
        for mode, in_place in (("plain", False), ("in place", True)):
            supernet.set_in_place_grads(in_place)
            counts[mode] = launches(sandwich_ops(supernet, super_opt, step, space.num_classes))
        supernet.set_in_place_grads(False)
        print(f"  {label:<45} {counts['static']:>9} {counts['plain']:>6} {counts['in place']:>8}", flush=True)
        for key in totals:
            totals[key] += counts[key]
    lines.append(f"{name}: launches of a sandwich step / the three static steps: plain autograd "
                 f"{totals['plain'] / totals['static']:.3f}, gradients added in place "
                 f"{totals['in place'] / totals['static']:.3f}")
    print(lines[-1], flush=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spaces", default=",".join(list_spaces()), help="comma-separated space names")
    parser.add_argument("--repeats", type=int, default=9, help="timed steps per arch and model")
    parser.add_argument("--random-archs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="3 repeats, 2 random archs, batch 8")
    parser.add_argument("--ops", action="store_true",
                        help="count the operations of a training step instead of timing it (see above)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.random_archs, args.batch = 3, 2, 8
    torch.set_num_threads(args.threads)
    summaries = []
    if args.ops:
        for name in args.spaces.split(","):
            summaries += ops_space(name.strip(), args.random_archs, args.seed)
        print("\nsummary")
        print("\n".join(summaries))
        return 0
    for name in args.spaces.split(","):
        summaries += bench_space(name.strip(), args.repeats, args.random_archs, args.batch, args.seed)["summary"]
    print(f"\nload average at the end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print("summary (targets: train ratio <= 1.03 largest, <= 1.05 median random; inference 1.00 +- 0.03)")
    for line in summaries:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
