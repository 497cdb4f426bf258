"""How much faster int8 runs than fp32 in ONNX Runtime on this CPU, per subnet and per operator kind.

For the largest, the smallest and ``--random`` seeded random subnets of ``--space``: the subnet's deployed fp32
graph and its uniform int8 QDQ model (``nas.quantize.SubnetQuantizer``, as ``nas quantize`` and the precision
search build them; calibrated on random images, which shape only the ranges, not the timing), timed side by side
in one process (one thread, interleaved rounds, medians), then one profiled run of each (ONNX Runtime's
profiler) summed by operator: convolutions split into depthwise (by kernel size) and the rest, and the
quantise / dequantise / activation work that int8 adds around them.

    .venv/bin/python experiments/benchmarks/int8_speedup.py --space ofa_mbv3_cifar --random 8

Why: the precision targets of issue 15 (an int8 subnet 1.3x faster at the fp32 front's knee) are bounded by how
much faster int8 is at all on the device, whatever the supernet's training.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _session(model: bytes, profile_dir: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    if profile_dir is not None:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(profile_dir, "profile")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _conv_kinds(model) -> dict[str, str]:
    """Each fp32 convolution node's kind: ``dw<k>`` (depthwise, kernel k) or ``conv<k>``."""
    weights = {t.name: t for t in model.graph.initializer}
    kinds = {}
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        k = weights[node.input[1]].dims[2] if node.input[1] in weights else 0
        kinds[node.name] = f"{'dw' if group > 1 else 'conv'}{k}"
    return kinds


def _profile(model: bytes, feed: dict, kinds: dict[str, str], runs: int) -> dict[str, float]:
    """Microseconds per inference by operator (convolutions by kind where the node keeps its name)."""
    with tempfile.TemporaryDirectory(prefix="hwnas-prof-") as folder:
        session = _session(model, folder)
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    out: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        op, node = event["args"]["op_name"], event["name"][: -len("_kernel_time")]
        if "Conv" in op:  # a fused node keeps its module's path: .../blocks.3/depthwise/depthwise.2/Relu_output_0
            found = [(len(name), k) for name, k in kinds.items()
                     if node.startswith(name.rsplit("/", 2)[0] + "/")]
            op = f"{op}:{max(found)[1] if found else '?'}"
        out[op] += event["dur"] / runs
    return dict(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="ofa_mbv3_cifar")
    parser.add_argument("--random", type=int, default=8, help="random subnets besides the largest and smallest")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=60, help="inferences per round")
    args = parser.parse_args()

    from nas.latency_builders import static_builder
    from nas.quantize._images import ImageSet
    from nas.quantize._ptq import SubnetQuantizer
    from nas.query import Normalization
    from search_spaces import PrecisionPolicy, get_space, plan, random_arch
    from search_spaces._sampling import largest, smallest

    space = get_space(args.space)
    rng = np.random.default_rng(args.seed)
    archs = [("largest", largest(space)), ("smallest", smallest(space))]
    archs += [(f"random {i}", random_arch(space, rng)) for i in range(args.random)]
    norm = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "benchmark")
    rows, totals = [], collections.defaultdict(collections.Counter)
    print(f"{args.space}: fp32 vs uniform int8 (QDQ, per-channel int8 weights, uint8 activations), ONNX Runtime, "
          f"1 thread, batch 1; {args.rounds} interleaved rounds of {args.runs} inferences, medians", flush=True)
    for label, arch in archs:
        res = arch.resolution
        net = static_builder().network(space, arch).eval()
        calibration = ImageSet(rng.random((64, 3, res, res)).astype(np.float32), np.zeros(64, np.int64), "random")
        quantizer = SubnetQuantizer(net, plan(space, arch), res, norm, calibration)
        models = {"fp32": quantizer.fp32, "int8": quantizer.quantize(PrecisionPolicy.uniform(space, "int8"))}
        sessions = {k: _session(m) for k, m in models.items()}
        feed = {sessions["fp32"].get_inputs()[0].name: rng.random((1, 3, res, res)).astype(np.float32)}
        for session in sessions.values():
            for _ in range(20):
                session.run(None, feed)
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(args.rounds):
            for k, session in sessions.items():
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    session.run(None, feed)
                    times[k].append(time.perf_counter() - t0)
        fp32, int8 = (float(np.median(times[k])) * 1e3 for k in ("fp32", "int8"))
        rows.append((label, res, fp32, int8))
        kinds = _conv_kinds(quantizer.fp32_model)
        for k, model in models.items():
            totals[k].update(_profile(model, feed, kinds, 30))
        print(f"  {label:10s} {res:3d} px  fp32 {fp32:6.3f} ms  int8 {int8:6.3f} ms  speed-up {fp32 / int8:.2f}x",
              flush=True)
    ratios = np.array([f / i for _, _, f, i in rows])
    print(f"speed-up int8 / fp32: median {np.median(ratios):.2f}x, range {ratios.min():.2f}-{ratios.max():.2f}x "
          f"over {len(rows)} subnets")
    print("\nwhere the time goes, summed over the subnets (us per inference; convolutions by kind: dw<k> depthwise "
          "k x k, conv<k> the others, squeeze-excite's included in conv1)")
    print("| precision | operator | us | share |\n| --- | --- | ---: | ---: |")
    for k, counter in totals.items():
        total = sum(counter.values())
        for op, us in counter.most_common(10):
            print(f"| {k} | {op} | {us:.0f} | {us / total:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
