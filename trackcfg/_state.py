"""Global state department: every piece of process-wide mutable state trackcfg keeps.

No other module of trackcfg holds mutable state at module level.  What lives here is per
process by nature, because MLflow, the operating system or ``requests`` keep it so:

- **shared settings**: MLflow's tracking/registry URI, the ``MLFLOW_*`` and credential
  variables and the configured request header provider (added to MLflow's process-wide
  registry).  Top-level sessions open at once in several threads share them: the first to open
  sets them, the last to close gives them back (``join_settings`` / ``leave_settings``);
- **the SIGTERM trap**: one handler for all open sessions, installed by the first and taken
  off by the last (``trap_sigterm`` / ``release_sigterm``), so sessions ending in any order
  leave the handler as it was before the first;
- **quick-ACK mounts**: the adapters ``_transport`` mounts on MLflow's ``requests`` sessions,
  per session and URL prefix, kept (with their idle connections) between trackcfg sessions,
  and the notes it says once per process.

A forked child starts with none of it: its parent's open sessions are not its own
(``_after_fork_in_child``).  See docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import weakref
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import attrs

from ._env import EnvSnapshot
from .exceptions import RunError

if TYPE_CHECKING:
    import requests

    from ._backend import Backend
    from ._transport import QuickAckSlot

__all__ = [
    "MLFLOW_ENV",
    "SharedSettings",
    "Terminated",
    "join_settings",
    "leave_settings",
    "quickack_lock",
    "quickack_slots",
    "release_sigterm",
    "said_once",
    "share_store",
    "trap_sigterm",
]

#: Variables a session may change (MLflow sets some of them itself), given back at the end.
MLFLOW_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_RUN_ID",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_ALLOW_FILE_STORE",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
)


# ---------------------------------------------------------------------------- shared settings


@attrs.define
class SharedSettings:
    """What the top-level sessions open at once in this process set process-wide."""

    env: dict[str, str]
    uris: tuple[str, str | None]
    headers: object  # what identifies the request header provider (None: none)
    thread: str
    saved: EnvSnapshot
    provider: Any = None  # the header provider added to MLflow's registry
    users: int = 1
    store_token: object | None = None
    restore_store: Callable[[object], None] | None = None
    remove_provider: Callable[[Any], None] | None = None


_settings_lock = threading.Lock()
_settings: SharedSettings | None = None


def join_settings(
    env: dict[str, str],
    uris: tuple[str, str | None],
    headers: object = None,
    make_provider: Callable[[], Any] | None = None,
) -> SharedSettings:
    """Apply a top-level session's process-wide settings, or share the open sessions' ones.

    The first session to open saves what was there and sets its values; later ones, while any
    is open, must need the very same values and share them (else they are refused before
    creating anything: their requests would go out with the other session's URI or
    credentials); the last to close puts everything back (``leave_settings``).
    ``make_provider`` builds the configured request header provider (``headers`` identifies
    it), which the first session adds to MLflow's registry and the last takes off."""
    global _settings
    with _settings_lock:
        if _settings is None:
            # Before anything changes: a provider that cannot be built changes nothing.
            provider = make_provider() if make_provider is not None else None
            remove_provider = None
            if provider is not None:
                from ._backend import add_header_provider, remove_header_provider

                add_header_provider(provider)
                remove_provider = remove_header_provider
            saved = EnvSnapshot()
            saved.remember(*MLFLOW_ENV)
            for key, value in env.items():
                saved.set(key, value)
            _settings = SharedSettings(
                env=dict(env),
                uris=uris,
                headers=headers,
                thread=threading.current_thread().name,
                saved=saved,
                provider=provider,
                remove_provider=remove_provider,
            )
            return _settings
        differ = sorted(
            k for k in env.keys() | _settings.env.keys() if env.get(k) != _settings.env.get(k)
        )
        if headers != _settings.headers:
            differ.insert(0, "server.request_header_provider")
        if uris != _settings.uris:
            differ.insert(0, "the tracking/registry URI")
        if differ:
            raise RunError(
                f"another trackcfg session is open in this process (thread "
                f"{_settings.thread!r}) with other process-wide settings ({', '.join(differ)}); "
                "MLflow keeps these per process, so sessions open at once in several threads "
                "must share them: use the same server and credentials, child() sessions of one "
                "session, or processes"
            )
        _settings.users += 1
        return _settings


def share_store(shared: SharedSettings, backend: Backend, experiment_id: str | None) -> None:
    """Point MLflow's process-wide state at the store (first session only; later ones share
    it, and plain ``mlflow.start_run()`` calls use the first session's experiment)."""
    with _settings_lock:
        if shared.restore_store is None:
            shared.store_token = backend.use_store(experiment_id)
            shared.restore_store = backend.restore_store


def leave_settings(shared: SharedSettings) -> None:
    """One session fewer; the last one puts MLflow's state and the environment back."""
    global _settings
    with _settings_lock:
        if shared is not _settings:  # a forked child leaving a session its parent opened
            return
        shared.users -= 1
        if shared.users > 0:
            return
        _settings = None
    try:
        if shared.restore_store is not None:
            shared.restore_store(shared.store_token)
    finally:
        shared.saved.restore()
        if shared.provider is not None and shared.remove_provider is not None:
            shared.remove_provider(shared.provider)


# ---------------------------------------------------------------------------- SIGTERM


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by the sessions' SIGTERM trap."""


@attrs.define
class _SigtermTrap:
    previous: Any  # the handler the trap replaced, put back by the last user
    users: int = 0


_sigterm: _SigtermTrap | None = None


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated("SIGTERM received; the open tracked runs end KILLED")


def trap_sigterm() -> bool:
    """Make SIGTERM raise ``Terminated`` while any session holds the trap; False (nothing
    held) outside the main thread or where SIGTERM is ignored."""
    global _sigterm
    if threading.current_thread() is not threading.main_thread():
        return False
    if _sigterm is not None:
        _sigterm.users += 1
        return True
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_IGN:
        return False
    signal.signal(signal.SIGTERM, _on_sigterm)
    _sigterm = _SigtermTrap(previous=previous, users=1)
    return True


def release_sigterm() -> bool:
    """One holder fewer; the last puts back the handler the trap replaced and returns True
    (it is then the one to hand a received SIGTERM on to that handler)."""
    global _sigterm
    trap = _sigterm
    if trap is None:  # a forked child: the trap was its parent's
        return False
    trap.users -= 1
    if trap.users > 0:
        return False
    _sigterm = None
    signal.signal(signal.SIGTERM, trap.previous)
    return True


# ---------------------------------------------------------------------------- quick ACKs

#: Per ``requests.Session`` (weakly: MLflow may drop its cached sessions), per URL prefix.
quickack_slots: weakref.WeakKeyDictionary[requests.Session, dict[str, QuickAckSlot]] = (
    weakref.WeakKeyDictionary()
)
quickack_lock = threading.Lock()
#: Debug notes said already (each once per process: why quick ACKs are not used).
said_once: set[str] = set()


# ---------------------------------------------------------------------------- fork


def _after_fork_in_child() -> None:
    """A forked process starts with no open session of its own: the parent's sessions'
    settings are simply its inherited environment (and its new sessions may use others),
    SIGTERM does what it did before the parent's first session, and its HTTP connections are
    its own (MLflow keys its ``requests`` sessions by process id)."""
    global _settings, _settings_lock, _sigterm, quickack_lock
    _settings_lock = threading.Lock()
    _settings = None
    quickack_lock = threading.Lock()
    trap, _sigterm = _sigterm, None
    if trap is not None:
        with contextlib.suppress(ValueError, OSError):  # not forked from the main thread
            signal.signal(signal.SIGTERM, trap.previous)


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)
