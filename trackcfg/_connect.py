"""Where a session's run lives, decided once: the one answer to "which store".

``plan_store(config)`` is pure (no I/O but reading the environment it is given): from the
configuration and the project root it decides the configured store (``destination``), the
registry, whether a top-level session logs offline (``server.offline``, or a worker of an
offline parent), and the offline store (the project's local store, or the offline parent's).
Every entry point asks it: the session, the Kedro datasets, ``trackcfg check``, ``show``,
``sync`` and the offline upload. A second computation of any of these is the bug to look
for (a dataset that looked its run up in another project's store was one).

``Connection`` acts on a plan for a top-level session: it joins the process-wide settings
(``join_process_settings``, which ``trackcfg sync`` uses too), creates the local store folder
and opens the backend, in the plan's store; under ``server.offline: auto``, when the server is
silent or fails before a run exists, ``fall_back`` gives all of that back and connects to the
offline store instead, in one step.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from . import _state
from ._backend import Backend, BackendFactory
from ._config import TrackingConfig
from ._discovery import find_project_root
from ._headers import header_provider
from ._loading import notice_cwd_root
from ._offline import unavailable_cause
from ._rules import Offline, offline_decision, offline_refusal
from ._store import (
    StoreLocation,
    mask_uri,
    missing_driver,
    resolve_registry_uri,
    resolve_store,
    session_env,
    with_connect_timeout,
)
from ._workers import inherited_offline_destination, inherited_parent
from .exceptions import TrackingUnavailableError

__all__ = [
    "OFFLINE_STORE",
    "Connection",
    "StorePlan",
    "config_root",
    "join_process_settings",
    "offline_store",
    "plan_store",
]

logger = logging.getLogger(__name__)

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


def join_process_settings(
    config: TrackingConfig,
    location: StoreLocation,
    registry_uri: str | None,
    *,
    kedro_context: Any = None,
    offline: bool = False,
    context_optional: bool = False,
) -> _state.SharedSettings:
    """Join the process-wide settings for the store ``location``: the environment the config
    exports (credentials), MLflow's tracking and registry URI, and the header provider
    (``server.request_header_provider``; none offline: no request reaches the server).  The
    session and ``trackcfg sync`` both join this way; ``_state.leave_settings`` leaves.
    ``context_optional``: a provider that wants Kedro's context is built without one
    (``sync`` outside Kedro) instead of refused."""
    headers = config.server.request_header_provider
    if offline:
        headers = attrs.evolve(headers, type=None)
    elif headers.type and headers.pass_context and kedro_context is None and context_optional:
        headers = attrs.evolve(headers, pass_context=False)
        config = attrs.evolve(
            config, server=attrs.evolve(config.server, request_header_provider=headers)
        )
    wanted = headers if headers.type else None
    return _state.join_settings(
        session_env(config, location),
        (connect_uri(config, location), registry_uri),
        wanted,
        (lambda: header_provider(config, kedro_context)) if wanted is not None else None,
    )


def connect_uri(config: TrackingConfig, location: StoreLocation) -> str:
    """The URI a backend connects with: a database store's driver gets
    ``server.request_timeout`` as its connect timeout."""
    return with_connect_timeout(location.tracking_uri, config.server.request_timeout)


class Connection:
    """A top-level session's place: the store it logs into (the plan's, or the offline
    store), its share of the process-wide settings, and its backend.

    ``open()`` connects where the plan says (step 3 of ``TrackingSession``);
    ``fall_back(why)`` is ``server.offline: auto`` giving up on a silent server before a run
    exists: what the attempt set is given back, and the offline store is connected;
    ``close()`` gives everything back.  ``name`` and ``sync_command`` are for messages."""

    def __init__(
        self,
        config: TrackingConfig,
        plan: StorePlan,
        factory: BackendFactory,
        *,
        name: str,
        sync_command: str,
        kedro_context: Any = None,
    ) -> None:
        self.config = config
        self.plan = plan
        self._factory = factory
        self._name = name
        self._sync_command = sync_command
        self._kedro_context = kedro_context
        self.backend: Backend | None = None
        self.location: StoreLocation = plan.location
        self.offline: str | None = None  # the destination (masked) when it logs offline
        self.may_fall_back = False  # server.offline: auto, and no run exists yet
        self._shared: _state.SharedSettings | None = None

    @property
    def offline_store(self) -> str:
        """The offline store as messages name it: its folder (``<root>/mlruns``)."""
        location = self.location
        return str(location.local_folder or mask_uri(location.tracking_uri))

    def open(self) -> Backend:
        """Connect in the store ``server.offline`` decides: the configured one, or the
        offline store (``always``, a worker of an offline parent, or ``auto`` and the server
        silent)."""
        plan = self.plan
        if plan.offline is Offline.YES:
            inherited = plan.inherited_destination is not None
            backend = self._connect_offline(
                "its parent logs offline" if inherited else "server.offline: always",
                always=not inherited,
            )
            if not inherited:
                logger.info(
                    "session %r logs offline into %s for %s (server.offline: always); upload "
                    "its run later with: %s",
                    self._name,
                    self.offline_store,
                    self.offline,
                    self._sync_command,
                )
            return backend
        self.location = plan.destination
        if plan.offline is Offline.NO:
            return self._connect_to(self.location)
        silence = self._factory.silence(
            self.location.tracking_uri, self.config.server.request_timeout
        )
        if silence is not None:
            return self.fall_back(silence)
        try:
            backend = self._connect_to(self.location)
        except TrackingUnavailableError as exc:  # a database store that does not answer
            return self.fall_back(unavailable_cause(exc))
        self.may_fall_back = True
        return backend

    def fall_back(self, silence: str) -> Backend:
        """``server.offline: auto`` and the server did not answer: give back what the attempt
        set (process settings, environment, backend), then log offline, said once."""
        self.may_fall_back = False
        self.close()
        backend = self._connect_offline(
            f"it did not answer at session start: {silence}", always=False
        )
        server = self.offline or ""
        logger.warning(
            "%s %s did not answer at session start (%s); session %r logs "
            "offline into %s (server.offline: auto); upload its run later with: %s",
            "tracking server" if server.startswith(("http://", "https://")) else "store",
            server,
            silence,
            self._name,
            self.offline_store,
            self._sync_command,
        )
        return backend

    def share_store(self, experiment_id: str | None) -> None:
        """Point MLflow's process-wide state at the store and experiment (``_state``)."""
        if self._shared is not None and self.backend is not None:
            _state.share_store(self._shared, self.backend, experiment_id)

    def leave_settings(self) -> None:
        """Give back the connection's share of the process-wide settings (the last one out
        restores them)."""
        shared, self._shared = self._shared, None
        if shared is not None:
            _state.leave_settings(shared)

    def close(self, *, close_backend: bool = True) -> None:
        """Leave the process settings, then close the backend (not in a forked child: the
        backend is its parent's)."""
        backend, self.backend = self.backend, None
        try:
            self.leave_settings()
        finally:
            if backend is not None and close_backend:
                backend.close()

    def _connect_offline(self, why: str, *, always: bool) -> Backend:
        """Log into the offline store, after refusing what cannot be done offline (a run to
        continue or attach to lives on the server) before anything is created."""
        plan = self.plan
        destination = plan.offline_destination
        parent = inherited_parent()
        refusal = offline_refusal(
            destination,
            why,
            run_id=self.config.tracking.run.id or None,
            named_run=None if parent else _state.orchestrator_run_id(),
            online_parent=parent if plan.inherited_destination is None else None,
            always=always,
        )
        if refusal is not None:
            raise refusal.error()
        self.offline = destination
        self.location = plan.offline_location
        return self._connect_to(self.location, offline=True)

    def _connect_to(self, location: StoreLocation, *, offline: bool = False) -> Backend:
        config = self.config
        missing = missing_driver(location.tracking_uri)
        if missing is not None:  # else SQLAlchemy's bare ModuleNotFoundError, seconds later
            source = config.sources.get("server.mlflow_tracking_uri")
            raise missing.error(str(source) if source and source.kind != "default" else None)
        if config.project_root is None and find_project_root(Path.cwd()) is None:
            notice_cwd_root(self.plan.root, config.server.mlflow_tracking_uri)  # built in code
        # Offline, the offline store is the registry too: no request reaches the server.
        registry = self.plan.registry_for(offline=offline)
        self._shared = join_process_settings(
            config, location, registry, kedro_context=self._kedro_context, offline=offline
        )
        tracking_uri = connect_uri(config, location)
        if location.local_folder is not None:
            location.local_folder.mkdir(parents=True, exist_ok=True)
            if location.artifact_root is not None:  # experiment 0's artifacts go there too
                self._factory.prepare_local_store(tracking_uri, location.artifact_root)
        self.backend = self._factory(tracking_uri, registry)
        return self.backend
