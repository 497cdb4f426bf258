from __future__ import annotations

import numpy as np
import pytest

from nas.accuracy import AccuracyCache, AccuracyPredictor, DirectEvaluator, fit_accuracy_predictor
from search_spaces import get_space, sample

from .conftest import ToyObjectives

SPACE = get_space("ofa_mbv3_cifar")


class CountingFactory:
    """Picklable factory: accuracy from the toy objective, counting the archs it evaluates."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self):
        toy = ToyObjectives()

        def fn(arch, split):
            self.seen.append(arch.arch_id)
            return float(toy.accuracy([arch])[0]) - (0.01 if split == "test" else 0.0)

        return fn


def test_cache_evaluates_each_arch_once_across_restarts(tmp_path):
    archs = sample(SPACE, 6, 0)
    factory = CountingFactory()
    first = DirectEvaluator(factory, AccuracyCache(tmp_path / "accuracy.jsonl"), workers=0)
    values = first.evaluate(archs + archs[:2])
    assert len(factory.seen) == 6 and values[6] == values[0]
    test = first.evaluate(archs[:2], split="test")
    assert np.allclose(test, values[:2] - 0.01)
    # A torn last line (a kill mid-write) is ignored; the next write starts on a fresh line.
    with open(tmp_path / "accuracy.jsonl", "a") as handle:
        handle.write('{"arch_id": "tor')
    again = DirectEvaluator(factory, AccuracyCache(tmp_path / "accuracy.jsonl"), workers=0)
    assert np.allclose(again.evaluate(archs), values[:6])
    assert len(factory.seen) == 8  # nothing evaluated again
    again.evaluate(sample(SPACE, 1, 99))
    assert len(AccuracyCache(tmp_path / "accuracy.jsonl")) == 9


def test_cache_keeps_the_accuracies_of_one_supernet(tmp_path):
    archs = sample(SPACE, 3, 0)
    path = tmp_path / "accuracy.jsonl"
    AccuracyCache(path).put_many([(archs[0], "val", 0.5)])  # a line from before the supernet field
    AccuracyCache(path, supernet="a").put_many([(archs[1], "val", 0.6)])
    assert AccuracyCache(path, supernet="a").get(archs[1].arch_id) == 0.6
    assert AccuracyCache(path, supernet="a").get(archs[0].arch_id) == 0.5  # older lines are read
    replaced = AccuracyCache(path, supernet="b")  # the run's supernet was replaced (a new import)
    assert replaced.get(archs[1].arch_id) is None and replaced.get(archs[0].arch_id) == 0.5


def test_predictor_fits_reports_and_round_trips(tmp_path):
    toy = ToyObjectives()
    predictor, report = fit_accuracy_predictor(SPACE, toy.accuracy, n_samples=60, holdout=0.25, seed=0,
                                               hidden=(32,))
    assert report.n_test == 15 and report.n_train == 47
    assert report.rmse < 0.05 and report.spearman > 0.2 and -1 <= report.kendall <= 1
    predictor.save(tmp_path / "p.json")
    loaded = AccuracyPredictor.load(tmp_path / "p.json")
    archs = sample(SPACE, 5, 7)
    assert np.allclose(loaded.predict(archs), predictor.predict(archs))
    with pytest.raises(RuntimeError):
        AccuracyPredictor(SPACE).predict(archs)
