"""Issue 14: transfer between devices, active choice of the subnets to measure, accuracy as a curve, and the
fitting's thread limit, on synthetic devices (no timing: fast and exact)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from latency_predictors import LatencyError, accuracy, load_predictor, make_predictor
from latency_predictors.learned import fit_threads
from latency_predictors.metrics import accuracy_curve, learning_curve
from latency_predictors.workflow import choose_archs, macs_prior, sample_archs
from search_spaces import block_macs, encode_many, get_space, plan

SPACE = get_space("ofa_mbv3_cifar")


def device_a(archs, seed=0, noise=0.02):
    """A synthetic device with what MACs miss: a fixed cost per block, memory-bound depthwise convolutions (7x7
    slower), squeeze-excite; 2% multiplicative noise (``noise=0``: the truth)."""
    out = []
    for a in archs:
        t = 0.2
        for b in plan(SPACE, a).blocks:
            dw = b.mid_channels * b.kernel_size ** 2 * b.output_size ** 2 / 1e6
            t += (0.04 + 0.012 * block_macs(b) / 1e6 + 0.004 * dw * (1.5 if b.kernel_size == 7 else 1.0)
                  + 0.03 * (b.se_channels > 0))
        out.append(t)
    return np.array(out) * np.exp(noise * np.random.default_rng(seed).standard_normal(len(archs)))


def device_b(archs, seed=0, noise=0.02):
    """A smooth distortion of device A: a fixed overhead plus a power of A's latency."""
    a = device_a(archs, noise=0.0)
    return (0.4 + 1.3 * a ** 0.85) * np.exp(noise * np.random.default_rng(seed).standard_normal(len(archs)))


@pytest.fixture(scope="module")
def test_set():
    archs = sample_archs(SPACE, 300, 99)
    return archs, device_b(archs, noise=0.0)


@pytest.fixture(scope="module")
def predictor_a():
    train = sample_archs(SPACE, 300, 5)
    return make_predictor("residual", SPACE).fit(train, device_a(train, 2))


def _mean(results, key):
    return float(np.mean([r[key] for r in results]))


def test_transfer_from_10_samples_matches_own_predictor_from_50(predictor_a, test_set):
    test, y_test = test_set
    transfer10, own50 = [], []
    for draw in range(5):
        archs = sample_archs(SPACE, 50, 200 + draw)
        y = device_b(archs, 300 + draw)
        t = make_predictor("transfer", SPACE, source=predictor_a, source_device="a").fit(archs[:10], y[:10])
        transfer10.append(accuracy(t.predict(test), y_test))
        own50.append(accuracy(make_predictor("residual", SPACE).fit(archs, y).predict(test), y_test))
    assert _mean(transfer10, "spearman") >= _mean(own50, "spearman")
    assert _mean(transfer10, "within_10pct") >= _mean(own50, "within_10pct") - 0.005
    assert _mean(transfer10, "mape_pct") <= _mean(own50, "mape_pct") * 1.05


def test_transfer_round_trips_with_its_source_and_needs_one(predictor_a, tmp_path, test_set):
    test, _ = test_set
    archs = sample_archs(SPACE, 10, 7)
    fitted = make_predictor("transfer", SPACE, source=predictor_a, source_device="a").fit(archs, device_b(archs))
    fitted.save(tmp_path / "transfer.json")
    loaded = load_predictor(tmp_path / "transfer.json", SPACE)  # the source travels inside the file
    np.testing.assert_allclose(loaded.predict(test[:20]), fitted.predict(test[:20]), rtol=1e-12)
    assert loaded.source_device == "a" and loaded.source.kind == "residual"
    with pytest.raises(LatencyError, match="--from"):
        make_predictor("transfer", SPACE)


def device_c(archs, seed=0, noise=0.02):
    """A device that weighs arithmetic and per-block overhead differently from A: its latency is A's (which
    carries A's per-block costs) plus a term proportional to the MACs, which no power of A's latency gives."""
    from latency_predictors.layers import network_gmacs

    macs = network_gmacs(SPACE, archs)
    return (0.3 * device_a(archs, noise=0.0) + 40.0 * macs) * np.exp(
        noise * np.random.default_rng(seed).standard_normal(len(archs)))


def test_transfer_blends_the_source_with_macs_where_the_devices_weigh_arithmetic_differently(predictor_a, test_set):
    test, _ = test_set
    y_test = device_c(test, noise=0.0)
    archs = sample_archs(SPACE, 10, 11)
    t = make_predictor("transfer", SPACE, source=predictor_a, source_device="a").fit(archs, device_c(archs, 3))
    assert t.mode in ("blend", "blend_affine") and t.weights[0] > 0 and t.weights[1] > 0
    scaled = make_predictor("transfer", SPACE, source=predictor_a, source_device="a")
    scaled.fit(archs[:3], device_c(archs[:3], 3))  # under 4 samples: the scaled source alone
    assert scaled.mode == "scale"
    blended, alone = accuracy(t.predict(test), y_test), accuracy(scaled.predict(test), y_test)
    assert blended["within_10pct"] >= 0.95 and blended["mape_pct"] < alone["mape_pct"] / 2


def test_transfer_weighs_several_sources_by_cross_validation_and_round_trips(predictor_a, tmp_path, test_set):
    test, y_test = test_set
    noise = make_predictor("residual", SPACE).fit(train := sample_archs(SPACE, 40, 8),
                                                  np.random.default_rng(0).uniform(1, 5, len(train)))
    archs = sample_archs(SPACE, 12, 9)
    t = make_predictor("transfer", SPACE, source_device="a", candidates={"noise": noise, "good": predictor_a})
    t.fit(archs, device_b(archs, 4))
    assert t.source is predictor_a  # the heaviest member's source
    weights = {"good" if m.source is predictor_a else "noise": w for w, m in t.members}
    assert weights["good"] > 2 * weights.get("noise", 0.0) and abs(sum(weights.values()) - 1.0) < 1e-9
    alone = make_predictor("transfer", SPACE, source=predictor_a, source_device="a").fit(archs, device_b(archs, 4))
    both, good = accuracy(t.predict(test), y_test), accuracy(alone.predict(test), y_test)
    assert both["spearman"] > 0.97 and both["mape_pct"] < good["mape_pct"] * 1.5
    t.save(tmp_path / "transfer.json")
    loaded = load_predictor(tmp_path / "transfer.json", SPACE)
    np.testing.assert_allclose(loaded.predict(test[:20]), t.predict(test[:20]), rtol=1e-12)
    assert len(loaded.members) == len(t.members)
    again = t.fresh().fit(archs, device_b(archs, 4))  # the candidates travel with fresh(), for the curves
    np.testing.assert_allclose(again.predict(test[:20]), t.predict(test[:20]), rtol=1e-12)


def test_transfer_from_a_table_source_reads_that_devices_table(tmp_path):
    from latency_predictors import Device, build_table

    from .conftest import CountingMeasure

    table = build_table(SPACE, Device("local-cpu-1t-torch", "torch"), tmp_path / "t.json", CountingMeasure(),
                        resolutions=[24], progress=False)
    archs = sample_archs(SPACE, 8, 3, resolutions=[24])
    y = 2.0 * np.asarray(table.predict(SPACE, archs))
    fitted = make_predictor("transfer", SPACE, source=make_predictor("table", SPACE, table),
                            source_device="src").fit(archs, y)
    np.testing.assert_allclose(fitted.predict(archs), y, rtol=1e-9)  # the scale alone
    fitted.save(tmp_path / "p.json")
    with pytest.raises(LatencyError, match="'src'"):
        load_predictor(tmp_path / "p.json", SPACE)
    loaded = load_predictor(tmp_path / "p.json", SPACE, tables_of=lambda device: table if device == "src" else None)
    np.testing.assert_allclose(loaded.predict(archs), y, rtol=1e-9)


def test_choice_is_deterministic_spread_and_extends_an_earlier_set():
    chosen = choose_archs(SPACE, 20, seed=3)
    assert [a.arch_id for a in chosen] == [a.arch_id for a in choose_archs(SPACE, 20, seed=3)]
    assert len({a.arch_id for a in chosen}) == 20
    assert [a.arch_id for a in chosen] != [a.arch_id for a in choose_archs(SPACE, 20, seed=4)]
    pool = sample_archs(SPACE, 500, 3)
    macs = macs_prior(SPACE)
    pool_lp, lp = np.log(macs(pool)), np.log(macs(chosen))
    # One subnet in each twentieth of the pool's (log) prior range, ends included.
    strata = np.clip(np.searchsorted(np.quantile(pool_lp, np.linspace(0, 1, 21)), lp, side="right") - 1, 0, 19)
    assert sorted(strata.tolist()) == list(range(20))
    # Every choice in about its share of the pool (random picks of 20 stray further).
    share, got = encode_many(SPACE, pool).mean(0), encode_many(SPACE, chosen).mean(0)
    random_dev = np.mean([np.abs(encode_many(SPACE, sample_archs(SPACE, 20, s)).mean(0) - share).mean()
                          for s in range(10, 20)])
    assert np.abs(got - share).mean() < 0.6 * random_dev
    more = choose_archs(SPACE, 30, seed=3, keep=chosen)
    assert [a.arch_id for a in more[:20]] == [a.arch_id for a in chosen] and len({a.arch_id for a in more}) == 30
    assert [a.arch_id for a in choose_archs(SPACE, 10, seed=3, keep=chosen)] == [a.arch_id for a in chosen[:10]]


def test_active_choice_teaches_more_than_random_picks(test_set):
    """From 10 subnets (8 draws): measured here MAPE 3.3% against 3.8%, +-10% 99% against 96% (at 20 a tie,
    2.9% each; at 50 1.96% against 2.03%)."""
    test, y_test = test_set
    results = {"random": [], "active": []}
    for draw in range(8):
        for how, archs in (("random", sample_archs(SPACE, 10, draw)), ("active", choose_archs(SPACE, 10, draw))):
            fitted = make_predictor("residual", SPACE).fit(archs, device_b(archs, 50 + draw))
            results[how].append(accuracy(fitted.predict(test), y_test))
    assert _mean(results["active"], "mape_pct") <= _mean(results["random"], "mape_pct")
    assert _mean(results["active"], "within_10pct") >= _mean(results["random"], "within_10pct")


def test_curves_fall_with_samples_and_predict_the_gain(test_set):
    archs = sample_archs(SPACE, 80, 11)
    y = device_a(archs, 1)
    rows = accuracy_curve(lambda: make_predictor("ridge", SPACE), archs, y, (5, 10, 20, 50, 100), draws=3)
    assert [r["samples"] for r in rows] == [5, 10, 20, 50]  # 100 leaves nothing to test on
    assert rows[-1]["mape_pct"] < rows[0]["mape_pct"] and rows[-1]["spearman"] > rows[0]["spearman"]
    assert {"kendall", "within_5pct", "within_10pct", "test", "draws"} <= set(rows[0])
    curve = learning_curve(lambda: make_predictor("ridge", SPACE), archs, y)
    assert curve["slope"] < 0 and curve["gain_pct"] > 0
    assert curve["mape_pct_at_2n"] < curve["mape_pct_at_n"]
    assert [p["samples"] for p in curve["points"]] == sorted(p["samples"] for p in curve["points"])
    flat = learning_curve(lambda: make_predictor("flops", SPACE), archs, np.array(macs_prior(SPACE)(archs)))
    assert flat["gain_pct"] == pytest.approx(0.0, abs=1e-6)  # exact from any number: nothing to gain
    assert learning_curve(lambda: make_predictor("flops", SPACE), archs[:3], y[:3])["slope"] is None


def test_mlp_fit_on_1000_samples_is_single_threaded_and_quick():
    from threadpoolctl import threadpool_info

    archs = sample_archs(SPACE, 1000, 0)
    y = device_a(archs)
    with fit_threads():
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
    start = time.perf_counter()
    make_predictor("mlp", SPACE).fit(archs, y)
    # Under 5 s on an idle 2-core machine (3.5 s measured on a loaded one; 66 s with two OpenBLAS threads).
    assert time.perf_counter() - start < 15


def test_source_predictors_leave_out_flops_and_a_transfer_from_the_target(predictor_a, tmp_path):
    from latency_predictors import DeviceStore
    from latency_predictors.workflow import source_predictors

    store = DeviceStore(tmp_path)
    folder = store.predictor_dir(store.resolve("local-cpu-1t-ort").id, SPACE.name)
    store.resolve("local-cpu-1t-torch")
    archs = sample_archs(SPACE, 10, 3)
    predictor_a.save(folder / "residual.json")
    make_predictor("flops", SPACE).fit(archs, device_a(archs)).save(folder / "flops.json")
    make_predictor("transfer", SPACE, source=predictor_a, source_device="local-cpu-1t-torch").fit(
        archs, device_b(archs)).save(folder / "transfer.json")
    assert list(source_predictors(store, "local-cpu-1t-ort", SPACE)) == ["residual", "transfer"]
    # Back to the device it came from, that transfer would carry the target's own measurements: left out.
    assert list(source_predictors(store, "local-cpu-1t-ort", SPACE, target="local-cpu-1t-torch")) == ["residual"]
    assert list(source_predictors(store, "local-cpu-1t-ort", SPACE, "flops")) == ["flops"]
