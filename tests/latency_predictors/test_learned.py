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
    # ``transfer`` starts from another device's predictor (here that device's table, read back by device id).
    source = make_predictor("table", SPACE, table) if kind == "transfer" else None
    predictor = make_predictor(kind, SPACE, table, source=source, source_device="other").fit(archs, y)
    test_archs, _ = _data(10, 1)
    before = predictor.predict(test_archs)
    assert before.shape == (10,) and before.dtype == np.float64 and np.isfinite(before).all()
    path = tmp_path / f"{kind}.json"
    predictor.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == "hwnas-latency-predictor" and data["kind"] == kind
    loaded = load_predictor(path, SPACE, table, tables_of=lambda device: table if device == "other" else None)
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


# --- the residual predictor: a scaled prior, corrected only where cross-validation says it helps (issue 14) ---


def _device_with_structure(archs, seed, noise=0.01):
    """A synthetic device: MACs-proportional, 30% slower per extra block beyond the minimum depth (what MACs
    miss), with multiplicative noise."""
    rng = np.random.default_rng(seed)
    base = np.array([0.02 * network_macs(SPACE, a) / 1e6 * (1 + 0.3 * (a.num_blocks - 10) / 10) for a in archs])
    return base * np.exp(noise * rng.standard_normal(len(archs)))


def _log_mse(pred, y):
    return float(np.mean(np.log(pred / y) ** 2))


def test_residual_with_few_samples_is_the_scaled_prior_and_learns_with_more():
    train = [replace(a, resolution=24) for a in sample(SPACE, 100, seed=3)]
    test = [replace(a, resolution=24) for a in sample(SPACE, 200, seed=4)]
    y_train, y_test = _device_with_structure(train, 0), _device_with_structure(test, 1)
    prior = make_predictor("flops", SPACE, None)
    for n in (1, 3):
        fitted = make_predictor("residual", SPACE, None).fit(train[:n], y_train[:n])
        assert fitted.alpha is None  # too few samples to cross-validate a correction: the prior, scaled
        scaled = prior.fit(train[:n], y_train[:n])
        # Equal to the prior up to how the scale is estimated (geometric vs least-squares mean ratio).
        assert spearman(fitted.predict(test), y_test) == pytest.approx(spearman(scaled.predict(test), y_test))
    # From 5 samples (of ten draws of them) never worse than its scaled prior on held-out subnets.
    for seed in range(10):
        few = [replace(a, resolution=24) for a in sample(SPACE, 5, seed=100 + seed)]
        y_few = _device_with_structure(few, seed)
        fitted = make_predictor("residual", SPACE, None).fit(few, y_few)
        fitted_prior_only = make_predictor("residual", SPACE, None).fit(few[:3], y_few[:3])
        fitted_prior_only.scale = fitted.scale  # the same scaled prior, without the correction
        assert _log_mse(fitted.predict(test), y_test) <= _log_mse(fitted_prior_only.predict(test), y_test) + 1e-12
    many = make_predictor("residual", SPACE, None).fit(train, y_train)
    assert many.alpha is not None  # the depth effect is learnable: the correction is on
    only_prior = make_predictor("residual", SPACE, None).fit(train[:3], y_train[:3])
    assert _log_mse(many.predict(test), y_test) < 0.5 * _log_mse(only_prior.predict(test), y_test)
    assert spearman(many.predict(test), y_test) > spearman(only_prior.predict(test), y_test)


def test_residual_switches_the_correction_off_when_features_explain_nothing():
    train = [replace(a, resolution=24) for a in sample(SPACE, 60, seed=5)]
    rng = np.random.default_rng(9)
    # Exactly MACs-proportional up to pure noise: any correction would fit the noise.
    y = np.array([0.02 * network_macs(SPACE, a) / 1e6 for a in train]) * np.exp(0.05 * rng.standard_normal(60))
    fitted = make_predictor("residual", SPACE, None).fit(train, y)
    test = [replace(a, resolution=24) for a in sample(SPACE, 100, seed=6)]
    exact = np.array([0.02 * network_macs(SPACE, a) / 1e6 for a in test])
    assert _log_mse(fitted.predict(test), exact) < 0.01  # within about 10% of the truth everywhere


def test_residual_uses_the_table_as_its_prior(table, tmp_path):
    archs, y = _data(30, 0)
    fitted = make_predictor("residual", SPACE, table).fit(archs, y)
    assert fitted.prior_kind == "table"
    fitted.save(tmp_path / "r.json")
    with pytest.raises(LatencyError, match="lookup table"):
        load_predictor(tmp_path / "r.json", SPACE, None).predict(archs[:2])
    np.testing.assert_allclose(load_predictor(tmp_path / "r.json", SPACE, table).predict(archs),
                               fitted.predict(archs), rtol=1e-12)
