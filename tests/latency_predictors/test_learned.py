from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from latency_predictors import (
    PREDICTOR_KINDS,
    LatencyError,
    accuracy,
    build_table,
    kendall,
    load_predictor,
    make_predictor,
    network_macs,
    spearman,
)
from search_spaces import get_space, sample

from .conftest import CountingMeasure

SPACE = get_space("ofa_mbv3_cifar")


def _data(n, seed):
    archs = [replace(a, resolution=24) for a in sample(SPACE, n, seed=seed)]
    rng = np.random.default_rng(seed)
    # A synthetic "device": latency from MACs and depth, with 1% noise.
    y = np.array([0.3 + 0.02 * network_macs(SPACE, a) / 1e6 + 0.05 * a.num_blocks for a in archs])
    return archs, y * (1 + 0.01 * rng.standard_normal(n))


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    from latency_predictors import Device

    path = tmp_path_factory.mktemp("lut") / "t.json"
    return build_table(SPACE, Device("local-cpu-1t-torch", "torch"), path, CountingMeasure(), resolutions=[24],
                       progress=False)


@pytest.mark.parametrize("kind", list(PREDICTOR_KINDS))
def test_predictor_contract_fit_predict_save_load(kind, table, tmp_path):
    archs, y = _data(40, 0)
    predictor = make_predictor(kind, SPACE, table).fit(archs, y)
    test_archs, _ = _data(10, 1)
    before = predictor.predict(test_archs)
    assert before.shape == (10,) and before.dtype == np.float64 and np.isfinite(before).all()
    path = tmp_path / f"{kind}.json"
    predictor.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == "hwnas-latency-predictor" and data["kind"] == kind
    loaded = load_predictor(path, SPACE, table)
    np.testing.assert_allclose(loaded.predict(test_archs), before, rtol=1e-12)


@pytest.mark.parametrize("kind", ["ridge", "mlp", "flops"])
def test_fitting_from_measurements_alone(kind):
    archs, y = _data(80, 0)
    test_archs, test_y = _data(30, 1)
    predictor = make_predictor(kind, SPACE, None).fit(archs, y)
    result = accuracy(predictor.predict(test_archs), test_y)
    assert result["mape_pct"] < 15
    if kind != "flops":
        assert result["spearman"] > 0.8


def test_table_kinds_need_a_table():
    with pytest.raises(LatencyError, match="needs a lookup table"):
        make_predictor("table_linear", SPACE, None)
    with pytest.raises(LatencyError, match="allowed"):
        make_predictor("gbm", SPACE, None)


def test_table_linear_absorbs_scale_and_offset(table):
    archs, _ = _data(20, 0)
    sums = np.array(table.predict(SPACE, archs))
    predictor = make_predictor("table_linear", SPACE, table).fit(archs, 1.3 * sums + 0.2)
    np.testing.assert_allclose(predictor.predict(archs), 1.3 * sums + 0.2, rtol=1e-9)


def test_rank_correlations():
    a = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert spearman(a, [2, 4, 6, 8, 10]) == pytest.approx(1.0)
    assert kendall(a, [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    try:
        from scipy import stats
    except ImportError:
        return
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(30), rng.standard_normal(30)
    y[3] = y[4]
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])
    assert kendall(x, y) == pytest.approx(stats.kendalltau(x, y)[0])
