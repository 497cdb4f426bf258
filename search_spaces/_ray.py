"""The one way the project connects to Ray: attach to a cluster when one is named or running, else start a
local instance with the resources the caller needs.

It lives here for the same reason as ``_files``: training (``supernets``), latency measurement
(``latency_predictors``) and the search's accuracy actors (``nas``) all start Ray, and this is the one
package each of them may import. Ray itself is imported only when the function runs, so ``search_spaces``
still needs only the standard library and numpy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["connect_ray", "ray_cluster_named_or_running", "set_ray_environment"]


def set_ray_environment() -> None:
    """Ray's environment knobs, unless the user set them: no auth token for a local instance, Ray Train
    reports that do not block ~2 s each, and normal CPU priority for workers (Ray's default nice 15 starves
    them on a shared machine)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    os.environ.setdefault("RAY_worker_niceness", "0")


def connect_ray(address: str | None = None, *, num_cpus: int | None = None,
                resources: dict[str, float] | None = None, **init_kwargs: Any) -> bool:
    """Make sure this process is connected to Ray; returns True when this call connected it.

    - already connected: nothing happens (False);
    - ``address``, else ``RAY_ADDRESS``, names a cluster: attach to it (resources come from its nodes);
    - a cluster started on this machine with ``ray start``: attach to it;
    - otherwise start a local instance with ``num_cpus`` and ``resources`` (no dashboard).

    ``init_kwargs`` (``runtime_env``, ``log_to_driver``...) apply in every case.

    ``ray.init(num_cpus=...)`` is refused when it attaches to a running cluster, hence the order.
    ``set_ray_environment`` runs first.
    """
    set_ray_environment()
    import ray

    if ray.is_initialized():
        return False
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        ray.init(address=target, **init_kwargs)
        return True
    if _local_cluster_file().is_file():  # a cluster of this machine (`ray start`)
        try:
            ray.init(address="auto", **init_kwargs)
            return True
        except ConnectionError:
            pass  # a stale record of a cluster that is gone
    ray.init(num_cpus=num_cpus, resources=resources or None, include_dashboard=False, **init_kwargs)
    return True


def ray_cluster_named_or_running(address: str | None = None, connected: bool = True) -> bool:
    """True when ``connect_ray`` would attach rather than start: a cluster is named (``address`` or
    ``RAY_ADDRESS``), this process is connected already (unless ``connected`` is False: then only a named
    cluster or one ``ray start`` began counts), or ``ray start`` left this machine's record."""
    import sys

    if address or os.environ.get("RAY_ADDRESS") or _local_cluster_file().is_file():
        return True
    if not connected:
        return False
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def _local_cluster_file() -> Path:
    """Where ``ray start`` records the address of this machine's cluster."""
    return Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
