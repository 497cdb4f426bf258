"""Best subnet per latency budget: hwnas's whole front (NSGA-II + per-budget refinement) against Once-for-All's
evolution run once per budget, side by side in one run (issue 13).

Objectives, the same for both:
- latency: Once-for-All's own Samsung Note10 lookup tables for the w1.2 supernet (``../shared/data/ofa_note10_lut``
  or ``--lut``), imported with hwnas's importer, predicted as the sum of a subnet's entries: for the evolution per
  arch (``IndexedTableSum``, memoised, as before), for hwnas the table compiled into a gather-and-sum
  (``LookupTable.compile``, ``nas.scoring``); both checked equal to the table's own prediction;
- accuracy: hwnas's accuracy MLP (``nas.accuracy.AccuracyPredictor``) fitted on ``--mlp-samples`` random subnets
  labelled by the documented proxy of ``search_efficiency.py`` (a saturating function of MACs plus a seeded
  per-choice term: NOT a measured accuracy; it stands in for Once-for-All's ImageNet predictor, which cannot be
  downloaded here).

Budgets: ``--budgets`` ms, default five spread over the latency range (the 10th-90th percentiles of random
subnets at the searched resolutions 160-224). hwnas: one ``nas.search.run_search`` (2,000 NSGA-II trials, then
``nas.refine`` per budget: batched island evolution + knapsack + local search on genomes, scored in batches by
``nas.scoring``, until it stops improving; ``--refine-evaluations`` caps it), the whole front and every budget in
one call; the answer for a budget is what ``nas query`` returns, the most accurate front member within it.
Once-for-All: ``nas.evolution.evolution_search`` with its defaults (population 100, 25% parents, 50 mutations +
50 crossovers, 500 generations, 50,100 evaluations) once per budget.

Also printed: the cheap objectives' throughput, end to end (archs -> genomes -> MLP accuracy + table latency, one
call each per batch) and on genomes alone, on ``--rate-subnets`` random subnets.

Other spaces and real labels: ``--space S --home DIR --device ID`` takes the latency from that device's measured
lookup table of ``S`` in the device store (``DIR``; compiled and per-arch sums as above, both checked against the
table's own prediction; the table's resolutions), and ``--accuracy-run RUN`` fits the MLP on ``--mlp-samples``
random subnets (plus the largest and the smallest, a fifth held out, its RMSE and Spearman printed) of the trained
run ``RUN`` evaluated directly (BN recalibration + validation top-1, ``search_efficiency.run_labels``, cached in
``RUN/search/accuracy.jsonl``) instead of the proxy; either works without the other. Budgets are then rounded to
three significant digits of the median random latency, and the search's device is ``ID``.

Run: ``.venv/bin/python experiments/benchmarks/budget_search.py [--generations 500] [--seed 0]``, or e.g.
``... --space ofa_mbv3_cifar --home DIR --device local-cpu-1t-ort --accuracy-run runs/quickstart
--mlp-samples 200``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "experiments" / "benchmarks"))
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from search_efficiency import IndexedTableSum, Memo, add_label_arguments, proxy_accuracy, run_labels  # noqa: E402

from nas.accuracy import AccuracyPredictor, fit_accuracy_predictor  # noqa: E402
from nas.evolution import evolution_search  # noqa: E402
from nas.fronts import get_front_store  # noqa: E402
from nas.refine import REFINED_ATTR  # noqa: E402
from nas.scoring import genome_scorer  # noqa: E402
from nas.search import run_search  # noqa: E402
from nas.search_config import SearchConfig  # noqa: E402
from nas.search_paths import search_paths  # noqa: E402
from nas.study import load_study  # noqa: E402
from search_spaces import get_space, sample  # noqa: E402
from search_spaces._genome import genomes_of  # noqa: E402

W12 = "ofa_mbv3_w1.2"
RESOLUTIONS = (160, 176, 192, 208, 224)  # the Note10 default's


def store_table(space_name: str, home: str | None, device_id: str):
    """``(space, table, what)``: the measured lookup table of ``space_name`` on ``device_id`` in the device store
    ``home`` (default ``$HWNAS_HOME`` or ``~/.hwnas``), the space limited to the table's resolutions."""
    from latency_predictors import DeviceStore, default_root
    from latency_predictors.workflow import load_table

    base = get_space(space_name)
    store = DeviceStore(home or default_root())
    table = load_table(store, store.get(device_id), base)
    if table is None:
        raise SystemExit(f"no lookup table of {base.name} on {device_id} in {store.root}; run "
                         f"`nas latency build --space {base.name} --device {device_id}` first")
    if not table.complete:
        raise SystemExit(f"the lookup table of {base.name} on {device_id} in {store.root} is incomplete; run "
                         f"`nas latency build` again to finish it")
    space = dataclasses.replace(base, resolutions=tuple(r for r in base.resolutions if r in table.resolutions))
    what = (f"{device_id} lookup table of {base.name} ({len(table.entries)} entries, {table.source}, "
            f"{store.table_path(device_id, base.name)}), table sum at resolutions "
            f"{', '.join(map(str, space.resolutions))}")
    return space, table, what


def per_arch_latency(space, table):
    """The evolution's per-arch table sum: ``IndexedTableSum`` (checked equal to the table's prediction) where
    it covers the space's choices, else the table's own ``predict``."""
    try:
        return IndexedTableSum(space, table).predict
    except ValueError as exc:
        if "differs" in str(exc):
            raise
        return lambda archs: table.predict(space, archs)


def budget_decimals(latencies: np.ndarray) -> int:
    """Decimals that keep three significant digits of the median latency (at least 1)."""
    return max(1, 2 - int(np.floor(np.log10(float(np.median(latencies))))))


def rate_scoring(space, mlp, compiled, table, n: int, seed: int) -> None:
    """Print the cheap objectives' throughput (subnets/s), end to end and on genomes, checked against the
    per-arch predictions on a sample."""
    archs = sample(space, n, seed + 5)
    acc_g, fast_acc = genome_scorer(space, mlp)
    lat_g, fast_lat = genome_scorer(space, compiled)
    assert fast_acc and fast_lat
    check = archs[:200]
    genomes = genomes_of(space, check)
    assert np.allclose(acc_g(genomes), mlp.predict(check), rtol=0, atol=1e-12)
    assert np.allclose(lat_g(genomes), table.predict(space, check), rtol=1e-12, atol=0)
    best = {}
    for _ in range(3):
        t0 = time.perf_counter()
        g = genomes_of(space, archs)
        t1 = time.perf_counter()
        acc_g(g)
        lat_g(g)
        t2 = time.perf_counter()
        best["end"] = min(best.get("end", np.inf), t2 - t0)
        best["genomes"] = min(best.get("genomes", np.inf), t2 - t1)
    t0 = time.perf_counter()
    mlp.predict(archs[:2000])
    table.predict(space, archs[:2000])
    per_arch = 2000 / (time.perf_counter() - t0)
    print(f"cheap objectives (MLP accuracy + table latency) on {n} random subnets, best of 3: "
          f"{n / best['end']:,.0f} subnets/s end to end (archs -> genomes -> one call each), "
          f"{n / best['genomes']:,.0f} subnets/s on genomes; per arch (encode_many + LookupTable.predict): "
          f"{per_arch:,.0f} subnets/s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default=W12,
                        help=f"searched space (default {W12}: Note10 tables of --lut, unless --home/--device)")
    parser.add_argument("--lut", type=Path, default=REPO.parent / "shared" / "data" / "ofa_note10_lut")
    parser.add_argument("--home", default=None,
                        help="device store holding --device's measured table of --space (default $HWNAS_HOME)")
    parser.add_argument("--device", default=None, help="device id of the measured table (e.g. local-cpu-1t-ort)")
    parser.add_argument("--accuracy-run", default=None,
                        help="a trained run of --space whose directly evaluated subnets label the MLP (not the proxy)")
    add_label_arguments(parser)
    parser.add_argument("--budgets", type=float, nargs="+", default=None)
    parser.add_argument("--n-trials", type=int, default=2000)
    parser.add_argument("--refine-evaluations", type=int, default=None,
                        help="accuracy evaluations per budget at most (default: the config's, 1,000,000)")
    parser.add_argument("--rate-subnets", type=int, default=20000)
    parser.add_argument("--generations", type=int, default=500)
    parser.add_argument("--mlp-samples", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from latency_predictors import Device, import_ofa_tables

    note10 = args.space == W12 and args.home is None and args.device is None
    default = note10 and not args.accuracy_run  # the Note10 + proxy run, printed as it always was
    if note10:
        space = dataclasses.replace(get_space(W12), resolutions=RESOLUTIONS)
        table = import_ofa_tables(args.lut, get_space(W12), Device(id="note10", backend=None))
        device_id, lat_what = "note10", f"Note10 tables ({len(table.entries)} entries, {args.lut}), table sum"
    else:
        if args.device is None:
            parser.error(f"--space {args.space} needs --device ID: a device with a measured lookup table of it in "
                         f"--home (or $HWNAS_HOME)")
        space, table, lat_what = store_table(args.space, args.home, args.device)
        device_id = args.device
    latency = Memo(IndexedTableSum(space, table).predict if note10 else per_arch_latency(space, table))
    compiled = table.compile(space)
    if not default:
        print(f"settings: space {space.name}, seed {args.seed}, {args.n_trials} NSGA-II trials + refinement "
              f"(at most {1_000_000 if args.refine_evaluations is None else args.refine_evaluations:,} evaluations "
              f"per budget), OFA evolution {args.generations} generations per budget\nlatency: {lat_what}", flush=True)
    if args.accuracy_run:
        run_fn, what = run_labels(space, args.accuracy_run, args.bn_images, args.val_images, args.eval_workers)
        measured: list[np.ndarray] = []

        def labels(archs):
            measured.append(np.asarray(run_fn(archs), dtype=np.float64))
            return measured[-1]

        started = time.perf_counter()
        mlp, report = fit_accuracy_predictor(space, labels, n_samples=args.mlp_samples, holdout=0.2,
                                             seed=args.seed)
        y = measured[0]
        print(f"accuracy: MEASURED labels, {what}: {args.mlp_samples} random subnets (seed {args.seed}) + largest + "
              f"smallest, top-1 {100 * y.min():.1f}-{100 * y.max():.1f}% (mean {100 * y.mean():.1f}%); accuracy "
              f"MLP on {report.n_train}, {report.n_test} held out: held-out RMSE {report.rmse:.4f}, Spearman "
              f"{report.spearman:.3f}, Kendall {report.kendall:.3f} (labelled and fitted in "
              f"{time.perf_counter() - started:.1f} s)", flush=True)
    else:
        proxy = proxy_accuracy(space, args.seed)
        train = sample(space, args.mlp_samples, args.seed + 7)
        mlp = AccuracyPredictor(space, seed=args.seed).fit(train, proxy(train))
        if not default:
            print(f"accuracy: accuracy MLP on {args.mlp_samples} PROXY labels (saturating in MACs + seeded "
                  f"per-choice term; NOT a measured accuracy)", flush=True)
    accuracy = Memo(mlp.predict)
    rate_scoring(space, mlp, compiled, table, args.rate_subnets, args.seed)
    random_lat = latency(sample(space, 2000, args.seed + 99))
    decimals = 1 if default else budget_decimals(random_lat)
    budgets = args.budgets or [round(float(b), decimals) for b in np.percentile(random_lat, [10, 30, 50, 70, 90])]
    if default:
        print(f"objectives: Note10 tables ({len(table.entries)} entries), accuracy MLP on {args.mlp_samples} proxy "
              f"labels; random subnets {random_lat.min():.1f}-{random_lat.max():.1f} ms; budgets {budgets} ms",
              flush=True)
    else:
        where = "--budgets" if args.budgets else "10th-90th percentiles of random subnets"
        print(f"random subnets {random_lat.min():.{decimals + 1}f}-{random_lat.max():.{decimals + 1}f} ms; "
              f"budgets {budgets} ms ({where})", flush=True)

    with tempfile.TemporaryDirectory(prefix="hwnas-budgets-") as folder:
        config = SearchConfig(n_trials=args.n_trials, seed=args.seed, devices=(device_id,), accuracy="predictor",
                              batch_size=100, population_size=100, budgets_ms=tuple(budgets),
                              refine_evaluations=args.refine_evaluations)
        started = time.perf_counter()
        lines: list[str] = []
        run_search(config, folder, mlp, {device_id: compiled}, space=space, log=lines.append)
        ours_s = time.perf_counter() - started
        front = get_front_store(search_paths(folder).fronts).front(device_id)
        refined = {t.user_attrs[REFINED_ATTR]: t for t in load_study(folder).get_trials()
                   if REFINED_ATTR in t.user_attrs}
    ours = {b: max((m.val_accuracy for m in front if m.latency_ms <= b), default=float("nan")) for b in budgets}
    print(f"hwnas: {args.n_trials} trials + refinement of {len(budgets)} budgets, whole front in {ours_s:.1f} s "
          f"(refinement evaluations per budget: "
          f"{', '.join(str(t.user_attrs['refine_evaluations']) for t in refined.values())})", flush=True)
    for line in lines:
        print(f"  {line}", flush=True)

    rows = []
    for n, budget in enumerate(budgets):
        evo = evolution_search(space, accuracy, latency, budget, generations=args.generations, seed=args.seed + n)
        rows.append((budget, evo.best_accuracy, ours[budget], evo.accuracy_evaluations, evo.wall_s))
        print(f"  evolution at {budget} ms: {100 * evo.best_accuracy:.2f}% after {evo.accuracy_evaluations} "
              f"evaluations in {evo.wall_s:.1f} s", flush=True)

    print("\n| budget (ms) | OFA evolution best | hwnas best (front + refinement) | hwnas - evolution (points) |")
    print("|---|---|---|---|")
    for budget, evo_best, ours_best, _, _ in rows:
        print(f"| {budget:g} | {100 * evo_best:.2f}% | {100 * ours_best:.2f}% | {100 * (ours_best - evo_best):+.2f} |")
    evo_times = [r[4] for r in rows]
    print(f"\ntime: hwnas whole front, all {len(budgets)} budgets {ours_s:.1f} s; OFA evolution per budget "
          f"{min(evo_times):.1f}-{max(evo_times):.1f} s (mean {np.mean(evo_times):.1f} s, {rows[0][3]} evaluations "
          f"each); ratio hwnas / one evolution budget {ours_s / np.mean(evo_times):.2f}")
    worst = min(100 * (r[2] - r[1]) for r in rows)
    print(f"target (>= evolution - 0.05 point at every budget): {'met' if worst >= -0.05 else 'NOT met'} "
          f"(worst {worst:+.2f}); front faster than one evolution budget: "
          f"{'met' if ours_s < np.mean(evo_times) else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
