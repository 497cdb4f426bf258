"""Front plots mark members by precision (circle fp32, triangle int8, square mixed), a legend entry each;
an fp32-only front is drawn as one series, as before."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest

from nas.fronts import get_front_store
from nas.plots import PRECISION_MARKERS, draw, plot_data
from nas.search import run_search
from nas.search_config import SearchConfig
from nas.search_paths import search_paths

from .conftest import ToyObjectives, stub_counts

INT8 = "p:i,i,i,i,i,i,i"
MIXED = "p:f,i,i,i,i,i,f"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("plots") / "run"
    toy = ToyObjectives()
    config = SearchConfig.parse({"n_trials": 12, "batch_size": 6, "population_size": 6}, ["dev"])
    run_search(config, path, toy.accuracy, {"dev": toy.latency()}, space="ofa_mbv3_cifar", counts_fn=stub_counts)
    return path


@pytest.fixture
def scatters(monkeypatch):
    """The keyword arguments of every ``Axes.scatter`` call while drawing."""
    from matplotlib.axes import Axes

    calls: list[dict] = []
    original = Axes.scatter

    def scatter(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "scatter", scatter)
    return calls


def _png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_fp32_front_is_one_series(run, tmp_path, scatters):
    data = plot_data(run)
    assert set(data.panels[0].front_precision) == {"fp32"}
    assert _png(draw(data, tmp_path / "fronts.png"))
    fronts = [c for c in scatters if str(c.get("label", "")).startswith("Pareto front")]
    assert len(fronts) == 1 and "marker" not in fronts[0]
    assert not any(str(c.get("label", "")).startswith(tuple(PRECISION_MARKERS)) for c in scatters)


def test_a_front_with_several_precisions_marks_each(run, tmp_path, scatters):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    store = get_front_store(search_paths(copy).fronts)
    front = store.front("dev")
    # Each member also at int8 (faster, a little less accurate); the most accurate also mixed.
    quantised = [replace(m, policy=INT8, predicted_latency_ms=0.4 * m.predicted_latency_ms,
                         val_accuracy=m.val_accuracy - 1e-3) for m in front]
    mixed = replace(front[-1], policy=MIXED, predicted_latency_ms=0.7 * front[-1].predicted_latency_ms,
                    val_accuracy=front[-1].val_accuracy - 5e-4)
    store.write_front("dev", [*front, *quantised, mixed])
    stored = store.front("dev")
    data = plot_data(copy)
    panel = data.panels[0]
    assert panel.front_precision == tuple(m.precision for m in stored)
    assert {"int8", "mixed"} <= set(panel.front_precision)
    assert _png(draw(data, tmp_path / "fronts.png"))
    marked = {c["label"].split(" (")[0]: c["marker"] for c in scatters if "marker" in c and c.get("label", "")
              .split(" (")[0] in PRECISION_MARKERS}
    present = set(panel.front_precision)
    assert marked == {p: PRECISION_MARKERS[p] for p in present}
    assert PRECISION_MARKERS == {"fp32": "o", "int8": "^", "mixed": "s"}
    counts = {c["label"].split(" (")[0]: int(c["label"].split("(")[1].rstrip(")")) for c in scatters
              if c.get("label", "").split(" (")[0] in PRECISION_MARKERS}
    assert counts == {p: panel.front_precision.count(p) for p in present}


def test_a_reference_subnet_measured_in_fp32_is_drawn_at_its_measured_latency(run, tmp_path):
    from nas.fronts import Measurement

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    store = get_front_store(search_paths(copy).fronts)
    refs = {r.name: r for r in store.references("dev")}
    smallest, largest = refs["smallest"], refs["largest"]
    # hardware in the loop measured the smallest in fp32 and the largest only in int8
    store.write_measurements([
        Measurement("dev", smallest.arch.arch_id, smallest.latency_ms, 0.5 * smallest.latency_ms),
        Measurement("dev", largest.arch.arch_id, largest.latency_ms, 0.3 * largest.latency_ms, policy=INT8),
    ])
    drawn = {name: lat for name, _, lat in plot_data(copy).panels[0].references}
    assert drawn["smallest"] == pytest.approx(0.5 * smallest.latency_ms)
    assert drawn["largest"] == pytest.approx(largest.latency_ms)  # its fp32 latency stays the predicted one
