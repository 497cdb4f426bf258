"""Latency-predictor accuracy and the issue-14 targets side by side: few samples, transfer, the curve.

Per device (``--devices``, default ``local-cpu-1t-torch local-cpu-1t-ort``) and space: build the lookup table,
fit every predictor on ``--fit`` subnets chosen actively (the second and later devices also get a ``transfer``
predictor started from the first device's), evaluate on ``--eval`` fresh subnets measured twice, with the
accuracy curve against 5-100 training samples cross-validated on everything measured. Then one table of the
targets: from 10 samples, the residual predictor's Spearman against its prior's (and >= 0.95); from 100
samples, the best share within +-10% (>= 95%); transfer from 10 samples against the device's own best from 50.

    .venv/bin/python experiments/benchmarks/predictor_accuracy.py --home /tmp/hwnas-bench          # real
    .venv/bin/python experiments/benchmarks/predictor_accuracy.py --synthetic                      # no timing

``--synthetic`` runs the same targets on two synthetic devices (B a smooth distortion of A; what the tests use)
in seconds. Real figures need a quiet machine: on a shared one the measurement's own repeatability floor
(printed beside them) is what bounds them. Everything is saved under ``--home``; an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from latency_predictors import (  # noqa: E402
    DeviceStore,
    MeasureConfig,
    NoisyMeasurementWarning,
    accuracy,
    build_table,
    configure_allocator,
    evaluate_predictors,
    format_report,
    get_backend,
    layer_measurer,
    make_predictor,
)
from latency_predictors.workflow import choose_archs, fit_device, format_fit, sample_archs  # noqa: E402
from search_spaces import block_macs, get_space, plan  # noqa: E402

SPACES = {"ofa_mbv3_cifar": None, "ofa_mbv3_w1.0": (160, 192, 224)}
OWN = ("residual", "table_linear", "ridge", "mlp", "table")


def _r(row, key, spec=".3f"):
    return "-" if row is None else format(row[key], spec)


def targets(space, device, report):
    """One line of the targets table from an eval report's curve."""
    prior_kind = "table" if "table" in report.curve else "flops"
    prior, few = report.at(prior_kind, 10), report.at("residual", 10)
    hundred = [report.at(k, 100) for k in OWN if report.at(k, 100)]
    best100 = max(hundred, key=lambda r: r["within_10pct"], default=None)
    return (f"| {space} | {device} | {_r(prior, 'spearman')} ({prior_kind}) | {_r(few, 'spearman')} | "
            f"{_r(best100, 'within_10pct', '.0%')} | "
            f"{_r(report.floor if 'n' in report.floor else None, 'within_10pct', '.0%')} |")


HEADER = ("| space | device | prior's rho (from any n) | residual rho from 10 | best +-10% from 100 | "
          "repeat +-10% (floor) |\n"
          "| --- | --- | ---: | ---: | ---: | ---: |")

TRANSFER_HEADER = ("| space | from -> to | transfer from 10: rho / +-10% (source it chose most) | to's own from 50, "
                   "no table | to's own from 50, with its table |\n| --- | --- | ---: | ---: | ---: |")


def _at(rows, n):
    return next((r for r in rows if r["samples"] == n), None)


def _best(rows_by_kind, n):
    """The best (Spearman, then +-10%) of several predictors' curves at ``n`` samples, with its kind."""
    at = [(k, _at(rows, n)) for k, rows in rows_by_kind.items() if _at(rows, n)]
    return max(at, key=lambda kr: (kr[1]["spearman"], kr[1]["within_10pct"]), default=(None, None))


def _pair(kind, row):
    return f"{_r(row, 'spearman')} / {_r(row, 'within_10pct', '.0%')} ({kind})" if row else "-"


def transfer_line(store, space, resolutions, config, source_id, device_id, report, draws):
    """Transfer from ``source_id`` to ``device_id`` against the target's own predictors, on the target's
    measured subnets: the transfer's curve picks its source among ``source_id``'s predictors inside every draw
    (as ``nas latency fit --from`` does); "no table" is the target's own table-free predictors (a new board with
    no lookup table measured: the case transfer is for), "with its table" its best from the eval report."""
    from collections import Counter

    from latency_predictors.metrics import accuracy_curve
    from latency_predictors.remote import MeasurementLog
    from latency_predictors.workflow import measured_pool, source_predictors

    log = MeasurementLog(store.measurements_path(device_id, space.name), space.name, device_id, config)
    pool = measured_pool(log, resolutions)
    y = np.array([log.latency_ms(a, 0) for a in pool])
    candidates = source_predictors(store, source_id, space, target=device_id)
    made = []

    def make_transfer():
        made.append(make_predictor("transfer", space, source_device=source_id, candidates=candidates))
        return made[-1]

    sizes = (10, 50)
    transfer = accuracy_curve(make_transfer, pool, y, sizes, draws=draws, seed=0)
    no_table = {k: accuracy_curve(lambda k=k: make_predictor(k, space), pool, y, sizes, draws=draws, seed=0)
                for k in ("residual", "ridge", "mlp")}
    with_table = {k: report.curve.get(k, []) for k in OWN}
    chosen = Counter(p.source.kind for p in made[:draws])  # the draws at 10 samples come first
    source_kind = chosen.most_common(1)[0][0] if chosen else "-"
    return (f"| {space.name} | {source_id} -> {device_id} | {_pair(source_kind, _at(transfer, 10))} | "
            f"{_pair(*_best(no_table, 50))} | {_pair(*_best(with_table, 50))} |")


def synthetic() -> int:
    """The targets on synthetic devices: A has what MACs miss (per-block cost, memory-bound 7x7 depthwise,
    squeeze-excite), B = 0.4 + 1.3 * A^0.85; 2% noise; 300 test subnets; 5 draws."""
    space = get_space("ofa_mbv3_cifar")

    def dev_a(archs, seed, noise=0.02):
        out = []
        for a in archs:
            t = 0.2
            for b in plan(space, a).blocks:
                dw = b.mid_channels * b.kernel_size ** 2 * b.output_size ** 2 / 1e6
                t += (0.04 + 0.012 * block_macs(b) / 1e6 + 0.004 * dw * (1.5 if b.kernel_size == 7 else 1.0)
                      + 0.03 * (b.se_channels > 0))
            out.append(t)
        return np.array(out) * np.exp(noise * np.random.default_rng(seed).standard_normal(len(archs)))

    def dev_b(archs, seed, noise=0.02):
        return (0.4 + 1.3 * dev_a(archs, 0, 0.0) ** 0.85) * np.exp(
            noise * np.random.default_rng(seed).standard_normal(len(archs)))

    test = sample_archs(space, 300, 99)
    y_test = dev_b(test, 1, 0.0)
    source = make_predictor("residual", space).fit(train := sample_archs(space, 300, 5), dev_a(train, 2))
    rows: dict[str, list] = {}
    for draw in range(5):
        for n in (5, 10, 20, 50, 100):
            for how in ("random", "active"):
                archs = sample_archs(space, n, draw) if how == "random" else choose_archs(space, n, draw)
                y = dev_b(archs, 50 + draw)
                rows.setdefault(f"residual {how} {n}", []).append(
                    accuracy(make_predictor("residual", space).fit(archs, y).predict(test), y_test))
                if how == "active":
                    for kind in ("flops", "ridge"):
                        rows.setdefault(f"{kind} {how} {n}", []).append(
                            accuracy(make_predictor(kind, space).fit(archs, y).predict(test), y_test))
                    t = make_predictor("transfer", space, source=source, source_device="A").fit(archs, y)
                    rows.setdefault(f"transfer {how} {n}", []).append(accuracy(t.predict(test), y_test))
    print("synthetic devices (ofa_mbv3_cifar, 300 test subnets, mean of 5 draws)")
    print("| predictor | choice | samples | Spearman | Kendall | within 5% | within 10% | MAPE % |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key, results in rows.items():
        kind, how, n = key.split()
        m = {k: float(np.mean([r[k] for r in results])) for k in results[0]}
        print(f"| {kind} | {how} | {n} | {m['spearman']:.3f} | {m['kendall']:.3f} | {m['within_5pct']:.0%} | "
              f"{m['within_10pct']:.0%} | {m['mape_pct']:.2f} |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default="/tmp/hwnas-bench", help="device data folder for this benchmark")
    parser.add_argument("--devices", nargs="+", default=["local-cpu-1t-torch", "local-cpu-1t-ort"],
                        help="measured devices; the second and later also get a transfer from the first")
    parser.add_argument("--spaces", nargs="+", default=list(SPACES))
    parser.add_argument("--resolutions", type=int, nargs="+", default=None, help="override the spaces' resolutions")
    parser.add_argument("--fit", type=int, default=100, help="subnets to fit on (chosen actively)")
    parser.add_argument("--eval", type=int, default=60, help="fresh subnets to evaluate on (measured twice)")
    parser.add_argument("--draws", type=int, default=5, help="draws per point of the accuracy curve")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--quantile", type=float, default=0.5)
    parser.add_argument("--clock", choices=("wall", "thread_cpu"), default="wall")
    parser.add_argument("--load-reference", action="store_true",
                        help="end-to-end timings relative to a reference subnet timed in the same rounds")
    parser.add_argument("--no-ray", action="store_true", help="measure in this process")
    parser.add_argument("--synthetic", action="store_true", help="the targets on synthetic devices (no timing)")
    args = parser.parse_args()
    if args.synthetic:
        return synthetic()

    from nas.latency_builders import static_builder

    warnings.simplefilter("ignore", NoisyMeasurementWarning)
    configure_allocator()
    store = DeviceStore(args.home)
    config = MeasureConfig(repeats=args.repeats, quantile=args.quantile, load_reference=args.load_reference,
                           clock=args.clock)
    builder = static_builder()
    lines, transfers = [], []
    for name in args.spaces:
        space = get_space(name)
        resolutions = tuple(args.resolutions) if args.resolutions else SPACES.get(name)
        reports = {}
        for i, device_id in enumerate(args.devices):
            device = store.refresh_metadata(store.resolve(device_id))
            source = args.devices[0] if i > 0 else None
            t0 = time.perf_counter()
            table = build_table(space, device, store.table_path(device.id, name),
                                layer_measurer(builder, get_backend(device.backend or "", device.threads), config,
                                               device.batch_size, space),
                                resolutions=resolutions, protocol=config, lock_path=store.lock_path(device.id))
            t1 = time.perf_counter()
            fit = fit_device(store, device, space, builder, args.fit, config, resolutions=resolutions,
                             use_ray=not args.no_ray, source=source)
            t2 = time.perf_counter()
            report = evaluate_predictors(store, device, space, builder, args.eval, config, resolutions=resolutions,
                                         use_ray=not args.no_ray, curve_draws=args.draws)
            t3 = time.perf_counter()
            print(format_fit(fit))
            print(format_report(report))
            print(f"table: {len(table.entries)} layers in {t1 - t0:.0f} s; fit: {t2 - t1:.0f} s; "
                  f"eval: {t3 - t2:.0f} s", flush=True)
            lines.append(targets(name, device.id, report))
            reports[device.id] = report
        for target in args.devices:
            transfers += [transfer_line(store, space, resolutions, config, source, target, reports[target],
                                        args.draws) for source in args.devices if source != target]
    print()
    print(f"fit on {args.fit} (active choice), evaluated on {args.eval} fresh subnets, curve cross-validated on all "
          f"measured ({args.draws} draws), repeats {args.repeats}, quantile {args.quantile}, load reference "
          f"{args.load_reference}, clock {args.clock}")
    print("targets: residual rho from 10 >= the prior's and >= 0.95; best +-10% from 100 >= 95%; transfer from 10 "
          ">= own from 50")
    print(HEADER)
    print("\n".join(lines))
    if transfers:
        print()
        print(f"transfer: curves cross-validated on the target's measured subnets ({args.draws} draws); the source "
              f"predictor chosen inside each draw")
        print(TRANSFER_HEADER)
        print("\n".join(transfers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
