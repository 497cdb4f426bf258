"""The one way the project connects to Ray: attach to a cluster when one is named or running, else start a
local instance with the resources the caller needs.

It lives here for the same reason as ``_files``: training (``supernets``), latency measurement
(``latency_predictors``) and the search's accuracy actors (``nas``) all start Ray, and this is the one
package each of them may import. Ray itself is imported only when the function runs, so ``search_spaces``
still needs only the standard library and numpy.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ._files import short_text

__all__ = ["RAY_ADDRESS_FORMS", "RayAddressError", "connect_ray", "ray_address_problem",
           "ray_cluster_named_or_running", "set_ray_environment"]

RAY_ADDRESS_FORMS = "auto, local, HOST:PORT or ray://HOST:PORT (a port from 1 to 65535)"
"""The addresses ``ray.init`` takes, as the one-line errors list them."""

# HOST:PORT, optionally after ``ray://`` (Ray Client); an IPv6 host in brackets, as Ray writes it.
_ADDRESS = re.compile(r"(?:ray://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_][A-Za-z0-9._-]*):([0-9]{1,5})")


class RayAddressError(ValueError):
    """The Ray cluster an address names cannot be used: the address is malformed, or nothing answers there."""


def ray_address_problem(address: str) -> str | None:
    """Why ``address`` is not one ``ray.init`` takes (None: it is). The one address check: the config's
    ``ray.address`` and ``RAY_ADDRESS``."""
    if address in ("auto", "local"):
        return None
    match = _ADDRESS.fullmatch(address)
    if match is None or not 1 <= int(match.group(1)) <= 65535:
        return f"expected {RAY_ADDRESS_FORMS}"
    return None


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

    ``init_kwargs`` (``runtime_env``, ``log_to_driver``...) apply in every case. A malformed address (``address``
    or ``RAY_ADDRESS``), or a named cluster that refuses the connection, raises ``RayAddressError`` in one line.

    ``ray.init(num_cpus=...)`` is refused when it attaches to a running cluster, hence the order.
    ``set_ray_environment`` runs first.
    """
    set_ray_environment()
    import ray

    if ray.is_initialized():
        return False
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        named = "address" if address else "RAY_ADDRESS"
        problem = ray_address_problem(target)
        if problem:
            raise RayAddressError(f"{named} {target!r} is not allowed; {problem}"
                                  f"{'' if address else ' (or unset RAY_ADDRESS to start Ray here)'}")
        try:
            ray.init(address=target, **init_kwargs)
        except ConnectionError as exc:
            raise RayAddressError(f"cannot connect to the Ray cluster at {named} {target!r}: "
                                  f"{short_text(str(exc)) or type(exc).__name__}") from exc
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
