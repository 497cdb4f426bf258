"""Shared test set-up: every test module starts without a Ray connection, whatever the one before did."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _no_ray_left_between_modules():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(autouse=True, scope="session")
def _private_hwnas_home(tmp_path_factory):
    """Device data goes to a temporary folder, never the user's ~/.hwnas (tests may set their own)."""
    import os

    previous = os.environ.get("HWNAS_HOME")
    os.environ["HWNAS_HOME"] = str(tmp_path_factory.mktemp("hwnas_home"))
    yield
    if previous is None:
        os.environ.pop("HWNAS_HOME", None)
    else:
        os.environ["HWNAS_HOME"] = previous
