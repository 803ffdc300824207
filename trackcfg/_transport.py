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
``unmount()`` puts the adapters back as they were.  Where ``TCP_QUICKACK`` does not exist
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

__all__ = ["QUICKACK", "QuickAckMount", "mount_quickack"]

logger = logging.getLogger(__name__)

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


@attrs.define
class QuickAckMount:
    """Adapters mounted for one URL prefix on some ``requests.Session`` objects."""

    prefix: str
    _mounted: list[tuple[requests.Session, HTTPAdapter, BaseAdapter | None]] = attrs.field(
        factory=list
    )

    def add(self, session: requests.Session) -> None:
        if any(s is session for s, _, _ in self._mounted):
            return
        previous = session.adapters.get(self.prefix)
        current = session.get_adapter(self.prefix)
        if not isinstance(current, HTTPAdapter):
            logger.debug("quick-ACK not used: %s is not an HTTPAdapter", type(current).__name__)
            return
        adapter = _quickack_adapter(current)
        session.mount(self.prefix, adapter)
        self._mounted.append((session, adapter, previous))

    @property
    def sessions(self) -> int:
        return len(self._mounted)

    def unmount(self) -> None:
        for session, adapter, previous in reversed(self._mounted):
            if session.adapters.get(self.prefix) is adapter:
                if previous is None:
                    del session.adapters[self.prefix]
                else:
                    session.adapters[self.prefix] = previous
            adapter.close()
        self._mounted.clear()


def mount_quickack(base_url: str, sessions: list[requests.Session]) -> QuickAckMount | None:
    """Mount quick-ACK adapters for ``base_url`` on ``sessions``; ``None`` where the platform
    has no ``TCP_QUICKACK`` (then requests go exactly as MLflow sends them)."""
    if QUICKACK is None:
        logger.debug("TCP_QUICKACK is not available here: MLflow's HTTP client used as is")
        return None
    mount = QuickAckMount(prefix=base_url.rstrip("/") + "/")
    for session in sessions:
        mount.add(session)
    return mount
