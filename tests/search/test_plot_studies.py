"""``nas plot RUN`` reads the run's study as it was searched: in the space of the resolutions it searched (a
study searched at one resolution has no ``resolution`` parameter), the study its fronts were written from, and
it refuses in one line a journal that does not hold the study it looks for."""

from __future__ import annotations

import shutil

import pytest

from nas.cli import main
from nas.search import run_search
from nas.search_config import SearchConfig
from nas.search_paths import search_paths
from nas.study import load_study, study_trials
from search_spaces import get_space

from ..cli_helpers import fails_in_one_line
from .conftest import SPACE_NAME, ToyObjectives, stub_counts


def _search(path, **search) -> None:
    toy = ToyObjectives()
    config = SearchConfig.parse({"n_trials": 4, "batch_size": 4, "population_size": 4, **search}, ["dev"])
    run_search(config, path, toy.accuracy, {"dev": toy.latency()}, space=SPACE_NAME, counts_fn=stub_counts)


@pytest.fixture(scope="module")
def one_resolution(tmp_path_factory):
    path = tmp_path_factory.mktemp("plot_studies") / "run"
    _search(path, resolutions=[24])
    return path


def test_a_study_searched_at_one_resolution_decodes_in_the_full_space(one_resolution):
    table = study_trials(load_study(one_resolution), get_space(SPACE_NAME))
    assert len(table.archs) == 4 and {a.resolution for a in table.archs} == {24}


def test_nas_plot_draws_a_run_searched_at_one_resolution(one_resolution, tmp_path, capsys):
    out = tmp_path / "fronts.png"
    assert main(["plot", str(one_resolution), "--out", str(out)]) == 0, capsys.readouterr().err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_emptied_journal_is_refused_in_one_line(one_resolution, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(one_resolution, copy)
    search_paths(copy).journal.write_bytes(b"")
    fails_in_one_line(capsys, ["plot", copy], "no search study 'run'", "it holds none")


def test_a_journal_of_other_study_names_draws_the_fronts_study(tmp_path, capsys):
    """Neither study is named after the run: the plot draws the one the stored fronts were written from
    (it used to refuse, pointing at a search.study_name that `nas plot` cannot be given)."""
    from nas.plots import plot_data

    path = tmp_path / "run"
    _search(path, study_name="first")
    _search(path, study_name="second", n_trials=6)
    assert plot_data(path).n_trials == 6
    assert main(["plot", str(path), "--out", str(tmp_path / "fronts.png")]) == 0, capsys.readouterr().err
