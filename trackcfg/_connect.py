"""Where a session's run lives, decided once: the one answer to "which store".

``plan_store(config)`` is pure (no I/O but reading the environment it is given): from the
configuration and the project root it decides the configured store (``destination``), the
registry, whether a top-level session logs offline (``server.offline``, or a worker of an
offline parent), and the offline store (the project's local store, or the offline parent's).
Every entry point asks it: the session, the Kedro datasets, ``trackcfg check``, ``show``,
``sync`` and the offline upload. A second computation of any of these is the bug to look
for (a dataset that looked its run up in another project's store was one).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import attrs

from ._config import TrackingConfig
from ._discovery import find_project_root
from ._rules import Offline, offline_decision
from ._store import StoreLocation, mask_uri, resolve_registry_uri, resolve_store
from ._workers import inherited_offline_destination

__all__ = ["OFFLINE_STORE", "StorePlan", "config_root", "offline_store", "plan_store"]

#: The project's local store, where offline runs go (under the project root).
OFFLINE_STORE = "mlruns"


def config_root(config: TrackingConfig, cwd: Path | None = None) -> Path:
    """The project root every relative path or URI of ``config`` resolves against: the
    loader's (``config.project_root``); for a config built in code, the project holding the
    current folder, else the current folder itself."""
    if config.project_root is not None:
        return config.project_root
    cwd = Path.cwd() if cwd is None else cwd
    return find_project_root(cwd) or cwd.resolve()


def offline_store(root: Path) -> StoreLocation:
    """The project's local store, where its offline runs are logged and found by sync."""
    return resolve_store(OFFLINE_STORE, root)


@attrs.frozen(kw_only=True)
class StorePlan:
    """Which store a top-level session of ``config`` logs into, and why."""

    root: Path
    destination: StoreLocation
    """The configured store (``server.mlflow_tracking_uri``, resolved against ``root``)."""
    registry_uri: str | None
    """The configured registry, resolved (None: MLflow uses the tracking URI)."""
    offline: Offline
    """``server.offline`` applied to the destination (``Offline.YES`` for a worker of an
    offline parent, whatever its own config says)."""
    inherited_destination: str | None
    """The server an offline parent's run is for (``TRACKCFG_OFFLINE_DESTINATION``)."""
    offline_location: StoreLocation
    """Where an offline run goes: the project's local store, or an offline parent's."""

    @property
    def location(self) -> StoreLocation:
        """Where the session starts: the offline store when it is offline for sure, else the
        destination (``Offline.TRY`` may still fall back to ``offline_location``)."""
        return self.offline_location if self.offline is Offline.YES else self.destination

    @property
    def offline_destination(self) -> str:
        """The server an offline run is for, as shown and tagged (masked)."""
        return self.inherited_destination or mask_uri(self.destination.tracking_uri)

    def registry_for(self, *, offline: bool) -> str | None:
        """The registry of a session in the destination, or offline (the offline store is
        the registry too: no request reaches the server)."""
        return None if offline else self.registry_uri


def plan_store(
    config: TrackingConfig,
    *,
    root: Path | None = None,
    environ: Mapping[str, str] | None = None,
    inherit: bool = True,
) -> StorePlan:
    """The store plan of a top-level session of ``config``.  ``inherit=False`` ignores an
    offline parent's variables (a catalog's ``run_id`` is looked up by the config alone)."""
    environ = os.environ if environ is None else environ
    root = config_root(config) if root is None else root
    server = config.server
    destination = resolve_store(server.mlflow_tracking_uri, root)
    inherited = inherited_offline_destination(environ) if inherit else None
    if inherited is not None:
        offline_location = resolve_store(environ["MLFLOW_TRACKING_URI"].strip(), root)
    else:
        offline_location = offline_store(root)
    return StorePlan(
        root=root,
        destination=destination,
        registry_uri=resolve_registry_uri(server.mlflow_registry_uri, root),
        offline=offline_decision(
            server.offline,
            destination_is_local=destination.is_local,
            inherited_destination=inherited,
        ),
        inherited_destination=inherited,
        offline_location=offline_location,
    )
