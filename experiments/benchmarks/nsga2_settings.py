"""NSGA-II settings against the hypervolume target, over several seeds: can tuning reach 98% at 2,000 trials?

Companion of ``search_efficiency.py`` (same objectives: the space's measured lookup table and an accuracy
MLP on proxy labels or on the cached evaluations of a trained run). Every variant runs 2,000 trials through
``nas.study.optimize`` for each seed; the reference front is the non-dominated set of everything evaluated
here plus a 6,000-trial NSGA-II run, the reference point the worst accuracy and worst latency of 2,000
random subnets (as in ``search_efficiency.py``). Prints mean, min and max HV share at 500 and 2,000 trials,
and where along the front the default run falls short of the reference.

Variants:

- ``pop50``: the default (Optuna's NSGA-II, population 50, mutation probability 1/#params);
- ``pop30``, ``pop20``: smaller populations, more generations;
- ``pop20_local_dedup``: population 20 with a neighbour mutation (a mutated block moves one step in kernel
  or expand ratio, a depth or resolution one step) and children that decode to an already evaluated subnet
  redrawn (up to 20 times), as pymoo's duplicate elimination does.

    .venv/bin/python experiments/benchmarks/nsga2_settings.py --home DIR [--labels proxy|RUN] [--seeds 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import optuna  # noqa: E402
from search_efficiency import Memo, lut_latency, proxy_accuracy  # noqa: E402

from nas.accuracy import AccuracyCache, fit_accuracy_predictor  # noqa: E402
from nas.pareto import hypervolume_2d, pareto_indices  # noqa: E402
from nas.search_config import SearchConfig  # noqa: E402
from nas.search_params import block_variants, decode_params, search_params  # noqa: E402
from nas.search_paths import search_paths  # noqa: E402
from nas.study import optimize, study_trials  # noqa: E402
from search_spaces import SearchSpace, get_space, sample  # noqa: E402

VARIANTS = {
    "pop50": {"population": 50},
    "pop30": {"population": 30},
    "pop20": {"population": 20},
    "pop20_local_dedup": {"population": 20, "local": True},
}


class LocalDedupChildren:
    """NSGA-II child generation: Optuna's uniform crossover, then per parameter (probability 1/#params) a
    move to a neighbouring value; a child whose subnet was already evaluated is drawn again."""

    def __init__(self, space: SearchSpace, seed: int, attempts: int = 20) -> None:
        from optuna.samplers._lazy_random_state import LazyRandomState
        from optuna.samplers.nsgaii import UniformCrossover
        from optuna.samplers.nsgaii._child_generation_strategy import NSGAIIChildGenerationStrategy

        self.space, self.attempts = space, attempts
        self.params = search_params(space)
        self.crossover = NSGAIIChildGenerationStrategy(crossover=UniformCrossover(0.5), crossover_prob=0.9,
                                                       swapping_prob=0.5, mutation_prob=0.0,
                                                       rng=LazyRandomState(seed))
        self.rng = np.random.RandomState(seed + 1)
        self.seen: set[str] = set()
        self.read = 0

    def neighbours(self, name: str, value):
        values = self.params[name]
        if name == "resolution" or not name.split(".")[1].startswith("b"):
            i = values.index(value)
            return [values[j] for j in (i - 1, i + 1) if 0 <= j < len(values)]
        spec = self.space.stages[int(name.split(".")[0][1:])]
        variants = block_variants(spec)
        here = variants[value]

        def steps(block) -> int:
            return (abs(spec.kernel_sizes.index(block.kernel_size) - spec.kernel_sizes.index(here.kernel_size))
                    + abs(spec.expand_ratios.index(block.expand_ratio) - spec.expand_ratios.index(here.expand_ratio)))

        return [token for token, block in variants.items() if steps(block) == 1]

    def child(self, study, search_space, parents) -> dict:
        params = self.crossover(study, search_space, parents)
        p = 1.0 / max(1, len(params))
        for name, value in list(params.items()):
            if self.rng.rand() < p:
                options = self.neighbours(name, value)
                params[name] = options[self.rng.randint(len(options))] if options else value
        return params

    def __call__(self, study, search_space, parents) -> dict:
        trials = study.get_trials(deepcopy=False)
        for trial in trials[self.read:]:
            if len(trial.params) == len(self.params):
                self.seen.add(decode_params(self.space, trial.params).arch_id)
        self.read = len(trials)
        params = self.child(study, search_space, parents)
        for _ in range(self.attempts):
            if len(params) < len(self.params):
                return params
            arch_id = decode_params(self.space, params).arch_id
            if arch_id not in self.seen:
                self.seen.add(arch_id)
                return params
            params = self.child(study, search_space, parents)
        return params


def run(space: SearchSpace, variant: dict, seed: int, n: int, acc, lat) -> tuple[np.ndarray, np.ndarray, float]:
    pop = variant["population"]
    extra = {"child_generation_strategy": LocalDedupChildren(space, seed)} if variant.get("local") else {}
    sampler = optuna.samplers.NSGAIISampler(population_size=pop, seed=seed, **extra)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    config = SearchConfig(n_trials=n, seed=seed, devices=("dev",), batch_size=pop, population_size=pop)
    start = time.perf_counter()
    optimize(study, space, config, Memo(acc), {"dev": Memo(lat)}, sampler=sampler)
    table = study_trials(study, space)
    return table.accuracy, table.latency_ms[:, 0], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="ofa_mbv3_cifar")
    parser.add_argument("--device", default="local-cpu-1t-ort")
    parser.add_argument("--home", default=None, help="device store with the space's lookup table")
    parser.add_argument("--labels", default="proxy",
                        help="'proxy', or a trained run whose search/accuracy.jsonl holds evaluated subnets")
    parser.add_argument("--mlp-samples", type=int, default=None, help="default: 400 proxy, 130 for a run")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = get_space(args.space)
    lat_fn, lat_what = lut_latency(space, args.device, args.home)
    if args.labels == "proxy":
        labels, n_mlp = proxy_accuracy(space), args.mlp_samples or 400
    else:
        cache = AccuracyCache(search_paths(args.labels).accuracy_cache)

        def labels(archs):
            values = [cache.get(a.arch_id) for a in archs]
            if any(v is None for v in values):
                raise SystemExit(f"{args.labels}: not every labelled subnet is in the accuracy cache; run "
                                 f"search_efficiency.py --accuracy-run {args.labels} first")
            return np.array(values)

        n_mlp = args.mlp_samples or 130
    predictor, report = fit_accuracy_predictor(space, labels, n_samples=n_mlp, holdout=0.2, seed=0)
    print(f"{space.name}; latency: {lat_what}\naccuracy MLP on {n_mlp} subnets ({args.labels} labels): held-out "
          f"RMSE {report.rmse:.4f}, Spearman {report.spearman:.3f}", flush=True)
    rand = sample(space, 2000, 777)
    ref_point = (float(predictor.predict(rand).min()), float(np.asarray(lat_fn(rand)).max()))
    reference = run(space, VARIANTS["pop50"], 1000, 6000, predictor.predict, lat_fn)
    results = {}
    for name in args.variants:
        results[name] = [run(space, VARIANTS[name], seed, 2000, predictor.predict, lat_fn)
                         for seed in range(args.seeds)]
        print(f"  {name}: {args.seeds} seeds done", flush=True)
    all_acc = np.concatenate([reference[0]] + [r[0] for rs in results.values() for r in rs])
    all_lat = np.concatenate([reference[1]] + [r[1] for rs in results.values() for r in rs])
    hv_ref = hypervolume_2d(all_acc, all_lat, *ref_point)
    print(f"\nreference: {len(all_acc)} evaluated subnets; reference point accuracy {ref_point[0]:.4f}, "
          f"latency {ref_point[1]:.3f} ms\n")
    print("| variant | HV@500 mean (min-max) | HV@2000 mean (min-max) | wall s per run |")
    print("|---|---|---|---|")
    for name, rs in results.items():
        cells = []
        for k in (500, 2000):
            hv = [100 * hypervolume_2d(r[0][:k], r[1][:k], *ref_point) / hv_ref for r in rs]
            cells.append(f"{np.mean(hv):.1f}% ({min(hv):.1f}-{max(hv):.1f})")
        print(f"| {name} | {' | '.join(cells)} | {np.mean([r[2] for r in rs]):.1f} |")
    if "pop50" in results:
        acc, lat, _ = results["pop50"][0]
        front = pareto_indices(all_acc, all_lat)
        points = sorted(zip(all_lat[front], all_acc[front]))
        print("\nWhere the default (pop50, seed 0) falls short: best accuracy within each latency of the "
              "reference front")
        print("| latency ms | reference | default | gap (points) |\n|---|---|---|---|")
        for q in np.linspace(0, len(points) - 1, 10).astype(int):
            budget, best = points[q]
            ours = acc[lat <= budget]
            mine = float(ours.max()) if ours.size else float("nan")
            print(f"| {budget:.3f} | {best:.4f} | {mine:.4f} | {100 * (mine - best):+.2f} |")


if __name__ == "__main__":
    main()
