"""fp32 vs uniform int8 vs sensitivity-guided mixed precision, side by side on one trained run.

For each subnet: extract it from the run's supernet, recalibrate its batch norms, calibrate ONNX Runtime's
static quantisation (QDQ) on training images with MinMax, Entropy and Percentile and keep the most accurate
on the validation split; then the fastest policy within each accuracy-loss bound (``--max-loss``, points of
validation top-1; sensitivity order, bisection, measured latency). Reported: validation and test top-1, and
latency in ONNX Runtime CPU, 1 thread, batch 1 (``thread_cpu`` clock, all models of a subnet timed
interleaved in one series). Prints a markdown table; ``--json FILE`` keeps everything.

    .venv/bin/nas train experiments/quantize_smoke.yaml          # about 12 minutes on 2 cores
    .venv/bin/python experiments/benchmarks/quantization.py experiments/quantize_smoke.yaml
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from latency_predictors.measure import MeasureConfig, NoisyMeasurementWarning  # noqa: E402
from nas.config import load_config  # noqa: E402
from nas.io import atomic_write_json  # noqa: E402
from nas.quantize import choose_method, latencies_ms, prepare_subnet, search_policy, top1  # noqa: E402
from nas.rundir import RunDir  # noqa: E402
from search_spaces import PrecisionPolicy, arch_from_string, largest, policy_to_string, random_arch, smallest  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="experiment config of a trained run")
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--arch", nargs="+", default=["smallest", "random:1", "random:2", "largest"],
                        help="arch strings, smallest, largest or random:SEED")
    parser.add_argument("--max-loss", type=float, nargs="+", default=[0.5, 1.0], help="bounds in top-1 points")
    parser.add_argument("--granularity", choices=("stage", "block"), default="stage")
    parser.add_argument("--front", default=None, metavar="DEVICE",
                        help="instead of --arch: members of this device's fp32 front in the run's study (up to "
                             "--members, spread over its latency range), with the policies the run's precision "
                             "search tried on them ('search N' rows, where they differ from uniform and guided)")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--json", default=None, help="write every number to this JSON file")
    args = parser.parse_args()

    warnings.simplefilter("ignore", NoisyMeasurementWarning)
    config = load_config(args.config)
    space, run = config.get_space(), RunDir.for_config(config, args.run_dir)
    measure = MeasureConfig(warmup=10, repeats=args.repeats, clock="thread_cpu", quantile=0.25)
    search_measure = MeasureConfig(warmup=5, repeats=max(10, args.repeats // 3), clock="thread_cpu", quantile=0.25)
    named = {"smallest": smallest, "largest": largest}
    rows, results = [], []
    texts = list(args.arch)
    searched: dict[str, list] = {}  # arch id -> the precision search's policies for it (with --front)
    if args.front is not None:  # the fp32 front of the run's study (what search.precisions: [fp32] stores)
        from nas.search import front_members
        from nas.study import load_study, study_trials
        from search_spaces import arch_to_string

        if args.front not in config.search.devices:
            parser.error(f"--front {args.front!r} is not a device of the config: {', '.join(config.search.devices)}")
        k = list(config.search.devices).index(args.front)
        every = study_trials(load_study(run, config.search), config.search.restrict(space))
        table = every.fp32()
        front = front_members(table.archs, table.accuracy, table.latency_ms[:, k],
                              config.search.budgets.get(args.front))
        picks = sorted({round(i * (len(front) - 1) / max(args.members - 1, 1)) for i in range(args.members)})
        texts = [arch_to_string(space, table.archs[front[i]]) for i in picks]
        # The precision search's own choices for these subnets (its trials: uniform int8, per-stage mixes).
        for i in range(len(every.archs)):
            if every.policy(i) is not None:
                searched.setdefault(every.archs[i].arch_id, []).append(every.policy(i))
    for text in texts:
        if text in named:
            arch = named[text](space)
        elif text.startswith("random:"):
            arch = random_arch(space, int(text.split(":")[1]))
        else:
            arch = arch_from_string(space, text)
        started = time.perf_counter()
        prepared = prepare_subnet(config, run, arch, calibration=args.calibration_images)
        quantizer, val, test = prepared.quantizer, prepared.val, prepared.test
        choice = choose_method(quantizer, space, val)
        models = {"fp32": (PrecisionPolicy.uniform(space, "fp32"), None),
                  "int8": (PrecisionPolicy.uniform(space, "int8"), None)}
        searches = {}
        for bound in args.max_loss:
            found = search_policy(quantizer, space, arch, val, bound, choice.method, args.granularity, search_measure)
            searches[bound] = found.to_dict()
            models[f"guided<= {bound:g}"] = (found.policy, bound)
        for j, policy in enumerate(searched.get(arch.arch_id, [])):
            if all(policy != other for other, _ in models.values()):
                models[f"search {j + 1}"] = (policy, None)
        blobs = {name: quantizer.quantize(policy, choice.method) for name, (policy, _) in models.items()}
        timed = dict(zip(blobs, latencies_ms(list(blobs.values()), arch.resolution, measure)))
        entry = {"arch": prepared.arch_string, "method": choice.to_dict(), "searches": searches, "models": {}}
        for name, (policy, _bound) in models.items():
            acc_val, acc_test = top1(blobs[name], val), top1(blobs[name], test)
            entry["models"][name] = {"policy": policy_to_string(policy), "val": acc_val, "test": acc_test,
                                     "latency_ms": timed[name].latency_ms, "spread": timed[name].spread}
        fp32 = entry["models"]["fp32"]
        for name, m in entry["models"].items():
            rows.append(f"| {prepared.arch_string[:38]} | {name} | `{m['policy']}` | {100 * m['val']:.2f} | "
                        f"{100 * m['test']:.2f} | {100 * (fp32['test'] - m['test']):+.2f} | {m['latency_ms']:.3f} | "
                        f"{fp32['latency_ms'] / m['latency_ms']:.2f}x |")
        entry["seconds"] = time.perf_counter() - started
        methods = ", ".join(f"{k} {100 * v:.2f}% (KL {choice.kl[k]:.4f})" for k, v in choice.accuracy.items())
        print(f"{prepared.arch_string}: calibration {choice.method} chosen on {choice.images}: {methods}; "
              f"{entry['seconds']:.0f} s", file=sys.stderr)
        results.append(entry)
    print(f"run {run.root}; ONNX Runtime CPU, 1 thread, batch 1, thread_cpu clock, 25th percentile of "
          f"{args.repeats} interleaved runs")
    print("| subnet | model | policy | val top-1 % | test top-1 % | test loss (points) | latency ms | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    if args.json:
        atomic_write_json(args.json, {"run": str(run.root), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
