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

Run: ``.venv/bin/python experiments/benchmarks/budget_search.py [--generations 500] [--seed 0]``.
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

from search_efficiency import IndexedTableSum, Memo, proxy_accuracy  # noqa: E402

from nas.accuracy import AccuracyPredictor  # noqa: E402
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

RESOLUTIONS = (160, 176, 192, 208, 224)


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
    parser.add_argument("--lut", type=Path, default=REPO.parent / "shared" / "data" / "ofa_note10_lut")
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

    space = dataclasses.replace(get_space("ofa_mbv3_w1.2"), resolutions=RESOLUTIONS)
    table = import_ofa_tables(args.lut, get_space("ofa_mbv3_w1.2"), Device(id="note10", backend=None))
    latency = Memo(IndexedTableSum(space, table).predict)
    compiled = table.compile(space)
    proxy = proxy_accuracy(space, args.seed)
    train = sample(space, args.mlp_samples, args.seed + 7)
    mlp = AccuracyPredictor(space, seed=args.seed).fit(train, proxy(train))
    accuracy = Memo(mlp.predict)
    rate_scoring(space, mlp, compiled, table, args.rate_subnets, args.seed)
    random_lat = latency(sample(space, 2000, args.seed + 99))
    budgets = args.budgets or [round(float(b), 1) for b in np.percentile(random_lat, [10, 30, 50, 70, 90])]
    print(f"objectives: Note10 tables ({len(table.entries)} entries), accuracy MLP on {args.mlp_samples} proxy "
          f"labels; random subnets {random_lat.min():.1f}-{random_lat.max():.1f} ms; budgets {budgets} ms",
          flush=True)

    with tempfile.TemporaryDirectory(prefix="hwnas-budgets-") as folder:
        config = SearchConfig(n_trials=args.n_trials, seed=args.seed, devices=("note10",), accuracy="predictor",
                              batch_size=100, population_size=100, budgets_ms=tuple(budgets),
                              refine_evaluations=args.refine_evaluations)
        started = time.perf_counter()
        lines: list[str] = []
        run_search(config, folder, mlp, {"note10": compiled}, space=space, log=lines.append)
        ours_s = time.perf_counter() - started
        front = get_front_store(search_paths(folder).fronts).front("note10")
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
