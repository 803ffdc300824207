"""``server.offline: auto``: does the tracking server answer at all, asked once and quickly.

A session under ``auto`` asks this before MLflow does: MLflow retries a server that never
answers with backoff (``request_timeout`` x ``max_retries``, about 47 s with the defaults)
before giving up, while falling back offline needs only to know that nothing answers.
Standard library only; no mlflow.
"""

from __future__ import annotations

import time

from .exceptions import TrackingUnavailableError

__all__ = ["server_silence", "unavailable_cause"]


def server_silence(tracking_uri: str, timeout: float) -> str | None:
    """``server.offline: auto``: whether an http(s) tracking server answers at all, asked once
    (no retries) within ``timeout`` seconds in all: a TCP connect, then ``GET <uri>/health``
    (over TLS for https, certificate not checked: only an answer matters here).  None when it
    answers anything (any HTTP status: a refusal of the credentials is the session's to
    report), or when the URI is not http(s) or requests would go through a proxy; else what
    happened, for the warning.  Without it, a server that never answers would cost MLflow's
    whole budget (``request_timeout`` x ``max_retries``, with backoff) before falling back."""
    import socket
    import ssl
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(tracking_uri)
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None  # the session reports the URI itself
    if parts.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(host):
        return None  # the proxy is what answers; the session's own requests tell
    deadline = time.monotonic() + timeout
    try:
        connection = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        return f"connection refused: nothing listens on {host}:{port}"
    except socket.gaierror:
        return f"the host name {host!r} could not be resolved"
    except TimeoutError:
        return f"no connection within {timeout:g} s (server.request_timeout)"
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    sock: socket.socket = connection
    try:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        if parts.scheme == "https":
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            sock = context.wrap_socket(sock, server_hostname=host)
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
        shown_host = f"[{host}]" if ":" in host else host
        request = (
            f"GET {parts.path.rstrip('/')}/health HTTP/1.1\r\nHost: {shown_host}:{port}\r\n"
            "Connection: close\r\n\r\n"
        )
        sock.sendall(request.encode("ascii", "replace"))
        if sock.recv(1):
            return None
        return "it closed the connection without an answer"
    except TimeoutError:
        return f"no answer within {timeout:g} s (server.request_timeout)"
    except ssl.SSLError:
        return None  # something answers; a TLS problem is the session's to report
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    finally:
        sock.close()
        connection.close()


def unavailable_cause(exc: TrackingUnavailableError) -> str:
    """What happened, without the fix a ``TrackingUnavailableError`` ends with ("...; start
    the server"): falling back offline is what is done about it."""
    return str(exc).partition("; ")[0]
