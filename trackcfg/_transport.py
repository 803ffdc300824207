"""Quick ACKs for the tracking server's HTTP connections, scoped to one session.

Why: a default ``mlflow server`` (uvicorn, several workers) never sets ``TCP_NODELAY`` on its
sockets and writes each response in two parts (headers, then body).  Nagle's algorithm holds
the small body back until the client ACKs the headers, and the client kernel, on a
keep-alive connection, delays that ACK by ~40 ms: every request costs ~50 ms instead of a
few.  Setting ``TCP_QUICKACK`` on the client socket after the request is written and before
the response is read (it is a one-shot mode on Linux, so on every request) makes the kernel
ACK at once.

How, without a process-wide patch: MLflow sends its REST calls through a cached
``requests.Session``; for the session's lifetime we mount on it, for the tracking server's
URL prefix only, an adapter that behaves exactly like MLflow's (same class, retries, pool and
socket options) but whose connections set ``TCP_QUICKACK`` before reading each response.
MLflow keys its cached sessions by process id, so a forked worker gets new sessions, hence
new adapters and connections of its own (pinned by a test).  ``unmount()`` puts the adapters
back as they were (once the last of several sessions open
at once in threads ends).  Our adapter and its idle keep-alive connections are kept for the
next session, like MLflow's own pool keeps them between runs.  Where ``TCP_QUICKACK`` does not exist
(macOS, Windows) nothing is mounted.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import socket
from typing import Any

import attrs
import requests
import urllib3
from requests.adapters import BaseAdapter, HTTPAdapter

from . import _state

__all__ = ["QUICKACK", "QuickAckMount", "QuickAckSlot", "mount_quickack", "not_used"]

logger = logging.getLogger(__name__)


def not_used(why: str) -> None:
    """Say once per process, at debug level, why MLflow's client is used as it is."""
    if why not in _state.said_once:
        _state.said_once.add(why)
        logger.debug("quick-ACK transport not used: %s; MLflow's HTTP client used as is", why)


QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


def _quickack(sock: Any) -> None:
    if sock is None or QUICKACK is None:
        return
    with contextlib.suppress(OSError):  # a closed or non-TCP socket: nothing to speed up
        sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)


class _QuickAckHTTPConnection(urllib3.connection.HTTPConnection):
    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        _quickack(self.sock)
        return super().getresponse(*args, **kwargs)


class _QuickAckHTTPSConnection(urllib3.connection.HTTPSConnection):
    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        _quickack(self.sock)
        return super().getresponse(*args, **kwargs)


class _QuickAckHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _QuickAckHTTPConnection


class _QuickAckHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _QuickAckHTTPSConnection


def _quickack_adapter(original: HTTPAdapter) -> HTTPAdapter:
    """A fresh adapter of the same class and settings whose pools quick-ACK."""
    adapter = copy.copy(original)
    # The copy must not share the original's pools: build its own pool manager.
    adapter.init_poolmanager(
        original._pool_connections,
        original._pool_maxsize,
        block=original._pool_block,
    )
    adapter.proxy_manager = {}
    adapter.poolmanager.pool_classes_by_scheme = {
        "http": _QuickAckHTTPPool,
        "https": _QuickAckHTTPSPool,
    }
    return adapter


@attrs.define(eq=False)
class QuickAckSlot:
    """Our adapter for one URL prefix of one ``requests.Session``, and who uses it now."""

    base: HTTPAdapter  # the adapter MLflow's session would use (ours copies its settings)
    adapter: HTTPAdapter  # ours; kept, with its idle connections, between sessions
    previous: BaseAdapter | None = None  # what was mounted at exactly this prefix before
    users: int = 0


def _acquire(session: requests.Session, prefix: str) -> QuickAckSlot | None:
    """Mount our adapter at ``prefix`` (or count one more user of the mounted one).

    Sessions open at once (threads) share one mount; the last to end takes it off.  The
    adapter outlives its mount so that the next session reuses its pooled connections (as
    MLflow's own client does between runs), instead of opening new ones (and, for https,
    doing a new TLS handshake) per session."""
    with _state.quickack_lock:
        slots = _state.quickack_slots.setdefault(session, {})
        slot = slots.get(prefix)
        if slot is not None and slot.users > 0:
            slot.users += 1
            return slot
        current = session.get_adapter(prefix)
        if not isinstance(current, HTTPAdapter):
            not_used(f"MLflow's session uses a {type(current).__name__}, not an HTTPAdapter")
            return None
        if slot is None or slot.base is not current:
            if slot is not None:
                slot.adapter.close()
            slot = slots[prefix] = QuickAckSlot(base=current, adapter=_quickack_adapter(current))
        slot.previous = session.adapters.get(prefix)
        session.mount(prefix, slot.adapter)
        slot.users = 1
        return slot


def _release(session: requests.Session, prefix: str, slot: QuickAckSlot) -> None:
    with _state.quickack_lock:
        slot.users -= 1
        if slot.users > 0 or session.adapters.get(prefix) is not slot.adapter:
            return
        if slot.previous is None:
            del session.adapters[prefix]
        else:
            session.adapters[prefix] = slot.previous
        slot.previous = None


@attrs.define
class QuickAckMount:
    """Quick-ACK adapters in use for one URL prefix on some ``requests.Session`` objects."""

    prefix: str
    _held: list[tuple[requests.Session, QuickAckSlot]] = attrs.field(factory=list)

    def add(self, session: requests.Session) -> None:
        if any(s is session for s, _ in self._held):
            return
        slot = _acquire(session, self.prefix)
        if slot is not None:
            self._held.append((session, slot))

    @property
    def sessions(self) -> int:
        return len(self._held)

    def unmount(self) -> None:
        """Give MLflow's sessions back their own adapters (once no other trackcfg session
        uses the mount)."""
        for session, slot in reversed(self._held):
            _release(session, self.prefix, slot)
        self._held.clear()


def mount_quickack(base_url: str, sessions: list[requests.Session]) -> QuickAckMount | None:
    """Mount quick-ACK adapters for ``base_url`` on ``sessions``; ``None`` where the platform
    has no ``TCP_QUICKACK`` (then requests go exactly as MLflow sends them)."""
    if QUICKACK is None:
        not_used("TCP_QUICKACK is not available on this platform")
        return None
    mount = QuickAckMount(prefix=base_url.rstrip("/") + "/")
    for session in sessions:
        mount.add(session)
    return mount
