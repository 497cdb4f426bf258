from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from latency_predictors import (
    DeviceStore,
    LatencyError,
    MeasureConfig,
    evaluate_predictors,
    fit_predictors,
    format_report,
    sample_archs,
)
from search_spaces import get_space

SPACE = get_space("ofa_mbv3_cifar")
TINY = MeasureConfig(warmup=1, repeats=3, retries=0, clock="thread_cpu")


@pytest.mark.slow
def test_fit_without_table_then_eval_on_fresh_subnets(tmp_path, builder):
    store = DeviceStore(tmp_path)
    device = store.resolve("local-cpu-1t-torch")
    with pytest.raises(LatencyError, match="no predictors or table"):
        evaluate_predictors(store, device, SPACE, builder, 3, TINY, resolutions=[24], use_ray=False,
                            progress=False)
    fitted = fit_predictors(store, device, SPACE, builder, 8, TINY, resolutions=[24], use_ray=False,
                            progress=False)
    assert set(fitted) == {"ridge", "mlp", "flops", "residual"}  # no table: table-free kinds (residual: MACs)
    report = evaluate_predictors(store, device, SPACE, builder, 4, TINY, resolutions=[24], use_ray=False,
                                 progress=False)
    assert report.n == 4 and set(report.predictors) == {"ridge", "mlp", "flops", "residual"}
    assert 0 <= report.repeatability["within_10pct"] <= 1
    fit_ids = set(json.loads(store.measurements_path(device.id, SPACE.name).with_suffix(".fit.json")
                             .read_text())["arch_ids"])
    with open(report.files["csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and not fit_ids & {r["arch_id"] for r in rows}
    assert Path(report.files["plot"]).stat().st_size > 0
    assert "repeat" in format_report(report)
    frame = report.frame()  # for programs: a DataFrame, a row per predictor and one for the repeat measurement
    assert set(frame.index) == {"ridge", "mlp", "flops", "residual", "(repeat)"}
    assert frame.loc["(repeat)", "within_10pct"] == report.repeatability["within_10pct"]
    assert {"spearman", "mape_pct"} <= set(frame.columns)


def test_sampled_archs_are_distinct_and_at_chosen_resolutions():
    archs = sample_archs(get_space("ofa_mbv3_w1.0"), 20, seed=0, resolutions=[160, 224])
    assert len({a.arch_id for a in archs}) == 20
    assert {a.resolution for a in archs} <= {160, 224}
