"""Search efficiency on predictor objectives: NSGA-II, TPE, random and Once-for-All's evolution, side by side.

For each space (``ofa_mbv3_cifar`` and ``ofa_mbv3_w1.0`` by default):

- latency: the space's measured lookup table on ``--device`` from the device store (``$HWNAS_HOME`` or
  ``--home``; build it with ``nas latency build --space S --device D``), predicted as the sum of its
  entries (``latency_predictors.TableSumPredictor``);
- accuracy: an accuracy MLP (``nas.accuracy.AccuracyPredictor``, the Once-for-All recipe) fitted on subnets
  with known accuracy. With ``--accuracy-run RUN`` those are subnets of a trained run evaluated directly
  (BN-recalibrated on ``--bn-images`` training images, accuracy on the first ``--val-images`` images of the
  validation split, both defaulting to the run's config; ``--eval-workers`` Ray actors; cached in
  ``RUN/search/accuracy.jsonl``). Without one, the labels are a documented proxy
  (``proxy_accuracy``): a saturating function of the subnet's MACs plus a fixed, seeded per-choice term,
  which is NOT a measured accuracy; the script prints which was used.

Every method searches the same objectives. Hypervolume (accuracy max, latency min) of the first 100, 500 and
2,000 evaluated subnets is reported against the hypervolume of a reference front: the non-dominated set of
everything every method evaluated plus a long NSGA-II run. The evolution searches under one latency budget
(the median latency of random subnets), as Once-for-All does for each budget; its row also gives the best
accuracy within that budget against the best within it on the NSGA-II front. The "whole front" time is the
default sampler's 2,000 trials through the real ``nas.search`` path (journal file storage), which gives every
budget at once.

The per-budget comparison of issue 13 (best-in-budget against a full Once-for-All evolution at five budgets, on
Once-for-All's w1.2 space with its Note10 tables, the whole front and its per-budget refinements timed together)
is ``budget_search.py``, which reuses this script's proxy labels, ``IndexedTableSum`` and, with
``--accuracy-run``, its direct labels (``run_labels``).

Run: ``.venv/bin/python experiments/benchmarks/search_efficiency.py [--home DIR] [--device ID]
[--accuracy-run RUN --mlp-samples N --bn-images B --val-images V]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
# One BLAS thread: the MLP's matrices are tiny, and threads only contend on a shared machine.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import optuna  # noqa: E402

from nas.accuracy import AccuracyPredictor, fit_accuracy_predictor  # noqa: E402
from nas.evolution import evolution_search  # noqa: E402
from nas.pareto import hypervolume_2d, pareto_indices  # noqa: E402
from nas.search import run_search  # noqa: E402
from nas.search_config import SearchConfig  # noqa: E402
from nas.study import optimize, study_trials  # noqa: E402
from search_spaces import Arch, SearchSpace, encode_many, get_space, sample  # noqa: E402

CHECKPOINTS = (100, 500, 2000)


class Memo:
    """Batched objective with a per-arch memo (samplers revisit subnets) and a call counter."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.memo: dict[Arch, float] = {}

    def __call__(self, archs):
        todo = [a for a in dict.fromkeys(archs) if a not in self.memo]
        if todo:
            for a, v in zip(todo, np.asarray(self.fn(todo), dtype=np.float64)):
                self.memo[a] = float(v)
        return np.array([self.memo[a] for a in archs])


class IndexedTableSum:
    """The table-sum latency of OFA-family archs, with the table's entries re-indexed by
    (resolution, stage, first block of the stage or not, kernel, expand) so that a prediction is about 20
    dictionary look-ups instead of a network plan. Checked equal to ``LookupTable.predict`` on random archs."""

    def __init__(self, space: SearchSpace, table) -> None:
        from latency_predictors.layers import network_layers
        from search_spaces import BlockArch, StageArch, plan

        if any(len(s.op_types) > 1 or len(s.width_mults) > 1 or len(s.se_ratios) > 1 or len(s.skips) > 1
               for s in space.stages):
            raise ValueError("IndexedTableSum covers spaces with kernel, expand, depth and resolution choices")
        self.space, self.fixed, self.blocks = space, {}, {}
        for r in space.resolutions:
            for k in space.stages[0].kernel_sizes:
                for e in space.stages[0].expand_ratios:
                    arch = Arch(space.name, r, tuple(
                        StageArch((BlockArch(k, e, spec.op_types[0], spec.se_ratios[0], spec.skips[0]),) *
                                  spec.max_depth) for spec in space.stages))
                    fixed = 0.0
                    for layer in network_layers(plan(space, arch)):
                        value = table.latency_ms(layer.key)
                        if layer.kind == "block" and layer.block.stage_index >= 0:
                            b = layer.block
                            self.blocks[(r, b.stage_index, min(b.block_index, 1), k, e)] = value
                        else:
                            fixed += value
                    self.fixed[r] = fixed
        check = sample(space, 30, 4242)
        exact = np.asarray(table.predict(space, check))
        if not np.allclose(self.predict(check), exact, rtol=1e-9, atol=1e-12):
            raise ValueError("IndexedTableSum differs from the table's own prediction")

    def predict(self, archs) -> np.ndarray:
        blocks = self.blocks
        out = np.empty(len(archs))
        for i, arch in enumerate(archs):
            r = arch.resolution
            total = self.fixed[r]
            for s, stage in enumerate(arch.stages):
                for j, block in enumerate(stage.blocks):
                    total += blocks[(r, s, min(j, 1), block.kernel_size, block.expand_ratio)]
            out[i] = total
        return out


def lut_latency(space: SearchSpace, device_id: str, home: str | None):
    from latency_predictors import DeviceStore, LookupTable, default_root

    store = DeviceStore(home or default_root())
    path = store.table_path(device_id, space.name)
    if not path.is_file():
        raise SystemExit(f"no lookup table for {space.name} on {device_id} in {store.root}; run "
                         f"`nas latency build --space {space.name} --device {device_id}` first")
    table = LookupTable.load(path)
    if not table.complete:
        raise SystemExit(f"the lookup table {path} is incomplete; run `nas latency build` again to finish it")
    return IndexedTableSum(space, table).predict, (f"lookup table {path} ({len(table.entries)} entries, "
                                                   f"measured on this machine; table sum)")


def proxy_accuracy(space: SearchSpace, seed: int = 0):
    """Proxy labels (not measured): 0.95 - 0.35 * sqrt(min_macs / macs) + 0.01 * (seeded linear term in the
    arch encoding, standardised over random subnets)."""
    from latency_predictors import network_macs
    from search_spaces import smallest

    min_macs = network_macs(space, smallest(space))
    w = np.random.default_rng(seed).normal(size=encode_many(space, sample(space, 1, 0)).shape[1])
    ref = encode_many(space, sample(space, 500, seed + 1)) @ w
    mu, sd = float(ref.mean()), float(ref.std()) or 1.0

    def fn(archs):
        macs = np.array([network_macs(space, a) for a in archs], dtype=np.float64)
        extra = (encode_many(space, archs) @ w - mu) / sd
        return 0.95 - 0.35 * np.sqrt(min_macs / macs) + 0.01 * extra

    return fn


def run_labels(space: SearchSpace, run_path: str | os.PathLike[str], bn_images: int | None = None,
               val_images: int | None = None, eval_workers: int = 2):
    """``(labels, what)``: ``labels(archs)`` evaluates each subnet of the trained run ``run_path`` directly
    (extracted from its supernet, batch norms recalibrated on ``bn_images`` training images, top-1 on the first
    ``val_images`` images of the validation split; both default to the run's config) on ``eval_workers`` Ray
    actors (0: in this process), cached in ``RUN/search/accuracy.jsonl``; ``what`` says so in words. One call
    of ``labels`` per evaluator: it closes the actors (and the Ray instance it started) when done."""
    import dataclasses
    import functools

    from nas.accuracy import AccuracyCache, DirectEvaluator, SupernetAccuracy
    from nas.config import load_config
    from nas.data import CIFAR10_ENV, load_dataset
    from nas.rundir import RunDir
    from nas.search_paths import search_paths

    run = RunDir(run_path)
    config = load_config(run.config_copy)
    if config.space != space.name:
        raise SystemExit(f"--accuracy-run trained {config.space}, not {space.name}")
    # A relative dataset path in the run's config is relative to where training ran (the repository
    # root); the Ray actors need it absolute. HWNAS_CIFAR10 wins when set.
    dataset = config.dataset
    if os.environ.get(CIFAR10_ENV) and dataset.kind == "cifar10":
        dataset = dataclasses.replace(dataset, path=os.environ[CIFAR10_ENV])
    elif dataset.path and not Path(dataset.path).is_absolute():
        dataset = dataclasses.replace(dataset, path=str(Path(dataset.path).resolve()))
    bn_images = bn_images or config.train.bn_recal_images
    val_images = val_images or config.train.max_val_images
    evaluator = DirectEvaluator(
        SupernetAccuracy(str(run.supernet_checkpoint),
                         functools.partial(load_dataset, dataset, max(space.resolutions), config.seed),
                         bn_images=bn_images, max_images=val_images),
        AccuracyCache(search_paths(run).accuracy_cache), workers=eval_workers)

    def labels(archs, chunk: int = 40):
        # In chunks, so progress is printed and each finished chunk is cached in the run (a killed
        # benchmark resumes from the cache; note the cache is keyed by arch and split only).
        out, t0 = [], time.perf_counter()
        for i in range(0, len(archs), chunk):
            out.append(evaluator.evaluate(archs[i:i + chunk]))
            print(f"  evaluated {min(i + chunk, len(archs))}/{len(archs)} subnets "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        evaluator.close()
        if eval_workers > 0:  # Ray's own processes would otherwise keep running beside what is timed next
            import ray

            ray.shutdown()
        return np.concatenate(out)

    what = (f"directly evaluated subnets of {run.root} (BN recalibrated on {bn_images} training images, "
            f"accuracy on {val_images or 'all'} validation images)")
    return labels, what


def accuracy_objective(space: SearchSpace, args) -> tuple[AccuracyPredictor, str]:
    if args.accuracy_run:
        labels, what = run_labels(space, args.accuracy_run, args.bn_images, args.val_images, args.eval_workers)
    else:
        labels, what = proxy_accuracy(space), "PROXY labels (saturating in MACs + seeded per-choice term)"
    start = time.perf_counter()
    predictor, report = fit_accuracy_predictor(space, labels, n_samples=args.mlp_samples, holdout=0.2, seed=0)
    return predictor, (f"accuracy MLP on {args.mlp_samples} random + largest + smallest {what}; "
                       f"{report.n_train} train / {report.n_test} held out: held-out RMSE {report.rmse:.4f}, "
                       f"Spearman {report.spearman:.3f}, Kendall {report.kendall:.3f} "
                       f"(labelled and fitted in {time.perf_counter() - start:.1f} s)")


def sampler_run(space, sampler: str, n: int, acc, lat, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(accuracy, latency) of every trial in order, and the wall time, through ``nas.study.optimize``."""
    config = SearchConfig(sampler=sampler, n_trials=n, seed=seed, devices=("dev",),
                          batch_size=50 if sampler != "tpe" else 10, population_size=50)
    study = optuna.create_study(directions=["maximize", "minimize"])
    start = time.perf_counter()
    optimize(study, space, config, acc, {"dev": lat})
    wall = time.perf_counter() - start
    table = study_trials(study, space)
    return table.accuracy, table.latency_ms[:, 0], wall


def add_label_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``run_labels`` beside ``--accuracy-run`` (this script's and ``budget_search.py``'s)."""
    parser.add_argument("--bn-images", type=int, default=None,
                        help="with --accuracy-run: BN recalibration images per subnet (default: the run's config)")
    parser.add_argument("--val-images", type=int, default=None,
                        help="with --accuracy-run: validation images per subnet (default: the run's config)")
    parser.add_argument("--eval-workers", type=int, default=2,
                        help="with --accuracy-run: Ray actors evaluating subnets (0: in this process)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spaces", nargs="+", default=["ofa_mbv3_cifar", "ofa_mbv3_w1.0"])
    parser.add_argument("--device", default="local-cpu-1t-ort")
    parser.add_argument("--home", default=None, help="device store (default $HWNAS_HOME or ~/.hwnas)")
    parser.add_argument("--accuracy-run", default=None, help="a trained run whose subnets label the MLP")
    parser.add_argument("--mlp-samples", type=int, default=400)
    add_label_arguments(parser)
    parser.add_argument("--reference-trials", type=int, default=10000)
    parser.add_argument("--generations", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    total_start = time.perf_counter()
    summary = []
    for name in args.spaces:
        space = get_space(name)
        lat_fn, lat_what = lut_latency(space, args.device, args.home)
        predictor, acc_what = accuracy_objective(space, args)
        print(f"\n## {name}\nlatency: {lat_what}\naccuracy: {acc_what}", flush=True)
        n = max(CHECKPOINTS)
        runs: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
        for sampler in ("nsga2", "tpe", "random"):
            acc, lat = Memo(predictor.predict), Memo(lat_fn)
            runs[sampler] = sampler_run(space, sampler, n, acc, lat, args.seed)
            print(f"  {sampler}: {n} trials in {runs[sampler][2]:.1f} s", flush=True)
        # The evolution's budget: the median latency of random subnets.
        lat = Memo(lat_fn)
        budget = float(np.median(lat(sample(space, 200, 12345))))
        acc = Memo(predictor.predict)
        evo = evolution_search(space, acc, Memo(lat_fn), budget, generations=args.generations, seed=args.seed)
        runs["evolution"] = (evo.accuracy, evo.latency_ms, evo.wall_s)
        print(f"  evolution: {args.generations} generations, {evo.accuracy_evaluations} accuracy and "
              f"{evo.latency_evaluations} latency evaluations in {evo.wall_s:.1f} s (budget {budget:.3f} ms)",
              flush=True)
        # Reference: a long NSGA-II run plus everything evaluated above.
        ref_run = sampler_run(space, "nsga2", args.reference_trials, Memo(predictor.predict), Memo(lat_fn),
                              args.seed + 1)
        print(f"  reference NSGA-II: {args.reference_trials} trials in {ref_run[2]:.1f} s", flush=True)
        all_acc = np.concatenate([r[0] for r in runs.values()] + [ref_run[0]])
        all_lat = np.concatenate([r[1] for r in runs.values()] + [ref_run[1]])
        rand = sample(space, 2000, 777)
        r_acc, r_lat = predictor.predict(rand), np.asarray(lat_fn(rand))
        ref_point = (float(r_acc.min()), float(r_lat.max()))
        hv_ref = hypervolume_2d(all_acc, all_lat, *ref_point)
        # The real default path: 2,000 NSGA-II trials through run_search with the journal file storage.
        with tempfile.TemporaryDirectory() as tmp:
            config = SearchConfig(n_trials=n, seed=args.seed, devices=("dev",), batch_size=50)
            start = time.perf_counter()
            run_search(config, tmp, Memo(predictor.predict), {"dev": Memo(lat_fn)}, space=space,
                       counts_fn=lambda s, a: type("C", (), {"params": 0, "macs": 0})())
            journal_wall = time.perf_counter() - start
        print("\n| method | HV@100 | HV@500 | HV@2000 | trials/s | wall (s) |")
        print("|---|---|---|---|---|---|")
        for method, (acc_v, lat_v, wall) in runs.items():
            cells = []
            for k in CHECKPOINTS:
                cells.append(f"{100 * hypervolume_2d(acc_v[:k], lat_v[:k], *ref_point) / hv_ref:.1f}%"
                             if len(acc_v) >= k else "n/a")
            rate = len(acc_v) / wall
            label = method if method != "evolution" else f"OFA evolution (1 budget, {len(acc_v)} evals)"
            print(f"| {label} | {' | '.join(cells)} | {rate:.0f} | {wall:.1f} |")
        front = pareto_indices(runs["nsga2"][0], runs["nsga2"][1])
        within = [i for i in front if runs["nsga2"][1][i] <= budget]
        nsga_best = float(runs["nsga2"][0][within].max()) if within else float("nan")
        print(f"\nAt the evolution's budget {budget:.3f} ms: evolution best accuracy {evo.best_accuracy:.4f} "
              f"({evo.accuracy_evaluations} evaluations, {evo.wall_s:.1f} s); NSGA-II front best "
              f"{nsga_best:.4f} (2,000 evaluations, every budget at once)")
        print(f"Whole front, default path (NSGA-II, journal storage, {n} trials): {journal_wall:.1f} s "
              f"({n / journal_wall:.0f} trials/s) vs OFA-style evolution for one budget: {evo.wall_s:.1f} s")
        hv2000 = hypervolume_2d(runs["nsga2"][0][:n], runs["nsga2"][1][:n], *ref_point) / hv_ref
        summary.append((name, hv2000, journal_wall, evo.wall_s))
    print("\n## targets")
    for name, hv, wall, evo_wall in summary:
        print(f"{name}: NSGA-II HV@2000 = {100 * hv:.1f}% of reference (target >= 98%: "
              f"{'met' if hv >= 0.98 else 'NOT met'}); whole front {wall:.1f} s vs evolution one budget "
              f"{evo_wall:.1f} s ({'met' if wall < evo_wall else 'NOT met'})")
    print(f"\ntotal wall time {time.perf_counter() - total_start:.0f} s; host {os.uname().nodename}, "
          f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
