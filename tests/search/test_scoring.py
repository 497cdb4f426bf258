"""Vectorised cheap objectives (issue 13): genomes, batched encoding, counts, compiled lookup tables and
``nas.scoring.genome_scorer`` give exactly (or to 1e-9) what the per-arch functions give."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from latency_predictors import Device, LookupTable, MissingEntryError, enumerate_layers
from latency_predictors.learned import TableLinearPredictor, TableSumPredictor
from nas.accuracy import AccuracyPredictor
from nas.errors import UsageError
from nas.scoring import genome_scorer
from nas.study import as_batch_fn
from search_spaces import arch_counts, encode_many, get_space, list_spaces, sample
from search_spaces._counts import genome_counts
from search_spaces._encoding import encode_genomes
from search_spaces._genome import archs_of, canonical, gene_layout, genomes_of, random_genomes

SPACES = list_spaces()


def _random(space, n=150, seed=0):
    genomes = random_genomes(space, n, np.random.default_rng(seed))
    return genomes, archs_of(space, genomes)


def _table(space, seed=0, drop=()):
    rng = np.random.default_rng(seed)
    entries = {key: {"ms": float(rng.uniform(0.01, 2.0)), "kind": layer.kind}
               for key, layer in enumerate_layers(space).items() if key not in drop}
    return LookupTable(space=space.name, device=Device(id="dev", backend=None), resolutions=space.resolutions,
                       entries=entries, complete=not drop)


@pytest.mark.parametrize("name", SPACES)
def test_genomes_round_trip_and_canonical_form(name):
    space = get_space(name)
    archs = sample(space, 100, seed=3)
    genomes = genomes_of(space, archs)
    assert genomes.shape == (100, gene_layout(space).length)
    assert archs_of(space, genomes) == archs
    # Any genome (inactive slots arbitrary) maps to its arch's canonical genome.
    raw, raw_archs = _random(space)
    assert (canonical(space, raw) == genomes_of(space, raw_archs)).all()
    assert archs_of(space, canonical(space, raw)) == raw_archs
    with pytest.raises(ValueError, match="gene"):
        bad = raw[:1].copy()
        bad[0, -1] = gene_layout(space).cardinality[-1]
        archs_of(space, bad)


@pytest.mark.parametrize("name", SPACES)
def test_batched_encoding_and_counts_equal_the_per_arch_ones(name):
    space = get_space(name)
    genomes, archs = _random(space, seed=1)
    assert np.array_equal(encode_genomes(space, genomes), encode_many(space, archs))
    params, macs = genome_counts(space, genomes)
    counts = [arch_counts(space, a) for a in archs]
    assert params.tolist() == [c.params for c in counts]
    assert macs.tolist() == [c.macs for c in counts]


@pytest.mark.parametrize("name", SPACES)
def test_compiled_table_equals_the_table_sum(name):
    space = get_space(name)
    table = _table(space)
    compiled = table.compile(space)
    genomes, archs = _random(space, seed=2)
    exact = np.asarray(table.predict(space, archs))
    np.testing.assert_allclose(compiled.predict_genomes(genomes), exact, rtol=1e-12, atol=0)
    np.testing.assert_allclose(compiled.predict(archs), exact, rtol=1e-12, atol=0)


def test_compiled_table_refuses_a_missing_entry_as_the_table_does():
    space = get_space("ofa_mbv3_cifar")
    arch = sample(space, 1, seed=4)[0]
    from latency_predictors import layer_keys

    table = _table(space, drop={layer_keys(space, arch)[3]})
    with pytest.raises(MissingEntryError, match="no entry for layer"):
        table.predict_arch(space, arch)
    with pytest.raises(MissingEntryError, match="no entry for layer"):
        table.compile(space).predict([sample(space, 1, seed=5)[0], arch])


def test_scorers_equal_the_objectives_own_predictions():
    full = get_space("ofa_mbv3_cifar")
    space = dataclasses.replace(full, resolutions=full.resolutions[1:])  # a search limited to some resolutions
    train = sample(full, 60, seed=6)
    mlp = AccuracyPredictor(full, hidden=(16, 16), seed=0).fit(train, np.linspace(0.3, 0.9, len(train)))
    table = _table(full, seed=3)
    linear = TableLinearPredictor(full, table)
    linear.scale, linear.offset = 1.7, 0.25
    genomes, archs = _random(space, seed=7)
    for objective, expected in ((mlp, mlp.predict(archs)), (table.compile(space), table.predict(space, archs)),
                                (TableSumPredictor(full, table), table.predict(space, archs)),
                                (linear, linear.predict(archs))):
        for wrapped in (objective, as_batch_fn(objective)):
            score, vectorised = genome_scorer(space, wrapped)
            assert vectorised, type(objective).__name__
            np.testing.assert_allclose(score(genomes), expected, rtol=1e-9, atol=1e-12)
    # Anything else: through its batch function on the genomes' archs.
    score, vectorised = genome_scorer(space, as_batch_fn(lambda a: [x.num_blocks for x in a]))
    assert not vectorised
    assert score(genomes).tolist() == [a.num_blocks for a in archs]


def test_ofa_predictor_scorer_equals_its_predict_and_refuses_uncovered_resolutions():
    from nas.ofa_zoo import OFAAccuracyPredictor

    space = get_space("ofa_mbv3_w1.2")
    rng = np.random.default_rng(0)
    sizes = (128, 24, 24, 24, 1)
    layers = [(rng.normal(size=(o, i)) / np.sqrt(i), rng.normal(size=o) * 0.1) for i, o in zip(sizes, sizes[1:])]
    predictor = OFAAccuracyPredictor.from_layers(space, layers, resolutions=(160, 176, 192, 208, 224))
    covered = dataclasses.replace(space, resolutions=predictor.resolutions)
    genomes, archs = _random(covered, seed=8)
    score, vectorised = genome_scorer(covered, predictor)
    assert vectorised
    np.testing.assert_allclose(score(genomes), predictor.predict(archs), rtol=1e-9, atol=1e-12)
    score, _ = genome_scorer(space, predictor)
    outside = genomes_of(space, [dataclasses.replace(archs[0], resolution=space.resolutions[0])])
    with pytest.raises(UsageError, match="does not cover resolution"):
        score(outside)


def test_a_batch_of_archs_is_scored_in_one_call_each():
    """Not a speed test (the machine is shared; budget_search.py prints the rate): 5,000 archs, one call each."""
    space = get_space("ofa_mbv3_cifar")
    mlp = AccuracyPredictor(space, hidden=(16,), seed=0).fit(sample(space, 40, 1), np.linspace(0, 1, 40))
    archs = sample(space, 5000, seed=9)
    acc, _ = genome_scorer(space, mlp)
    lat, _ = genome_scorer(space, _table(space).compile(space))
    genomes = genomes_of(space, archs)
    assert acc(genomes).shape == lat(genomes).shape == (5000,)
