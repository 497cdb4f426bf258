from __future__ import annotations

import numpy as np
import pytest

from nas.pareto import hypervolume_2d, knee_point, non_dominated_mask, pareto_indices


def test_non_dominated_on_known_points():
    acc = [0.5, 0.6, 0.55, 0.7, 0.7, 0.4]
    lat = [1.0, 2.0, 2.5, 3.0, 4.0, 0.5]
    # 0.55@2.5 is dominated by 0.6@2.0; 0.7@4.0 by 0.7@3.0.
    assert non_dominated_mask(acc, lat).tolist() == [True, True, False, True, False, True]
    assert pareto_indices(acc, lat).tolist() == [5, 0, 1, 3]


def test_duplicates_are_kept_and_empty_input():
    assert non_dominated_mask([0.5, 0.5], [1.0, 1.0]).tolist() == [True, True]
    assert non_dominated_mask([], []).tolist() == []


def test_hypervolume_known_values():
    # One point: a rectangle (0.8 - 0.0) x (10 - 2).
    assert hypervolume_2d([0.8], [2.0], 0.0, 10.0) == pytest.approx(6.4)
    # Staircase: (2..5) x 0.5 + (5..10) x 0.9 = 1.5 + 4.5.
    assert hypervolume_2d([0.5, 0.9], [2.0, 5.0], 0.0, 10.0) == pytest.approx(6.0)
    # Dominated and out-of-reference points add nothing.
    assert hypervolume_2d([0.5, 0.9, 0.4, 0.99], [2.0, 5.0, 6.0, 11.0], 0.0, 10.0) == pytest.approx(6.0)
    assert hypervolume_2d([], [], 0.0, 1.0) == 0.0


def test_hypervolume_matches_grid_estimate():
    rng = np.random.default_rng(0)
    acc, lat = rng.random(30), rng.random(30)
    xs, ys = np.meshgrid(np.linspace(0, 1, 801)[:-1] + 1 / 1600, np.linspace(0, 1, 801)[:-1] + 1 / 1600)
    covered = np.zeros(xs.shape, dtype=bool)
    for a, t in zip(acc, lat):
        covered |= (xs >= t) & (ys <= a)
    assert hypervolume_2d(acc, lat, 0.0, 1.0) == pytest.approx(covered.mean(), abs=3e-3)


def test_knee_point_picks_the_bend():
    acc = [0.1, 0.8, 0.85, 0.9]
    lat = [1.0, 2.0, 6.0, 10.0]
    assert knee_point(acc, lat) == 1
    assert knee_point([0.5], [1.0]) == 0
