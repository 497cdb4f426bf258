"""Latency-predictor accuracy on this machine: table sum, corrected table, learned regressors, FLOPs.

For ``ofa_mbv3_cifar`` (all resolutions) and ``ofa_mbv3_w1.0`` (resolutions 160, 192, 224), batch 1,
device ``local-cpu-1t-torch`` by default: build the lookup table, fit the predictors on ``--fit`` measured
subnets, evaluate them on ``--eval`` fresh subnets (each measured twice, for repeatability), print a
markdown table. Targets for the best predictor: >= 95% of subnets within +-10% and Spearman >= 0.95.

    .venv/bin/python experiments/benchmarks/predictor_accuracy.py --home /tmp/hwnas-bench

Everything is saved under ``--home`` as it goes, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from latency_predictors import (  # noqa: E402
    DeviceStore,
    MeasureConfig,
    NoisyMeasurementWarning,
    build_table,
    configure_allocator,
    evaluate_predictors,
    fit_predictors,
    format_report,
    get_backend,
    layer_measurer,
)
from nas.latency_builders import static_builder  # noqa: E402
from search_spaces import get_space  # noqa: E402

SPACES = {"ofa_mbv3_cifar": None, "ofa_mbv3_w1.0": (160, 192, 224)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default="/tmp/hwnas-bench", help="device data folder for this benchmark")
    parser.add_argument("--device", default="local-cpu-1t-torch")
    parser.add_argument("--spaces", nargs="+", default=list(SPACES))
    parser.add_argument("--fit", type=int, default=150, help="measured subnets to fit on")
    parser.add_argument("--eval", type=int, default=100, help="fresh subnets to evaluate on")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--quantile", type=float, default=0.5)
    parser.add_argument("--clock", choices=("wall", "thread_cpu"), default="wall")
    parser.add_argument("--load-reference", action="store_true",
                        help="end-to-end timings relative to a reference subnet timed in the same rounds")
    args = parser.parse_args()

    warnings.simplefilter("ignore", NoisyMeasurementWarning)
    configure_allocator()
    store = DeviceStore(args.home)
    device = store.refresh_metadata(store.resolve(args.device))
    config = MeasureConfig(repeats=args.repeats, quantile=args.quantile, load_reference=args.load_reference,
                           clock=args.clock)
    builder = static_builder()
    rows = []
    for name in args.spaces:
        space = get_space(name)
        resolutions = SPACES.get(name)
        t0 = time.perf_counter()
        table = build_table(space, device, store.table_path(device.id, name),
                            layer_measurer(builder, get_backend(device.backend or "", device.threads), config,
                                           device.batch_size, space),
                            resolutions=resolutions, protocol=config, lock_path=store.lock_path(device.id))
        t1 = time.perf_counter()
        fit_predictors(store, device, space, builder, args.fit, config, resolutions=resolutions)
        t2 = time.perf_counter()
        report = evaluate_predictors(store, device, space, builder, args.eval, config, resolutions=resolutions,
                                     fit_n=args.fit)
        t3 = time.perf_counter()
        print(format_report(report))
        print(f"table: {len(table.entries)} layers in {t1 - t0:.0f} s; fit: {t2 - t1:.0f} s; "
              f"eval: {t3 - t2:.0f} s", flush=True)
        best = report.best()
        for kind, r in [*report.predictors.items(), ("repeatability", report.repeatability)]:
            rows.append((name, kind + (" (best)" if kind == best else ""), r))
    print()
    print(f"device {device.id}, fit on {args.fit}, evaluated on {args.eval} fresh subnets, "
          f"repeats {args.repeats}, quantile {args.quantile}, load reference {args.load_reference}, clock {args.clock}")
    print("| space | predictor | MAPE % | RMSE ms | within 5% | within 10% | Spearman | Kendall |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, kind, r in rows:
        print(f"| {name} | {kind} | {r['mape_pct']:.2f} | {r['rmse_ms']:.3f} | {r['within_5pct']:.0%} | "
              f"{r['within_10pct']:.0%} | {r['spearman']:.3f} | {r['kendall']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
