"""The MLflow internals trackcfg relies on, in one place (pinned by
``test_mlflow_backend.py``):

- ``mlflow.tracking._tracking_service.utils._tracking_uri``: whether a tracking URI was set
  (``get_tracking_uri()`` cannot tell "unset" from a default), to give the state back;
- ``mlflow.tracking._model_registry.utils._registry_uri``: the same for the registry URI;
- ``mlflow.tracking.fluent._active_experiment_id``: so plain ``mlflow.start_run(nested=True)``
  inside a session lands in the session's experiment, without a ``set_experiment`` request;
- ``mlflow.tracking.fluent._active_run_stack``: to make a run that the session attached to
  (and must not end) active, and to take it off again without terminating it; and, while
  sessions are open, replaced by a stand-in with the same interface (``get``, ``set``,
  ``get_all_thread_values``, ``reset``; MLflow's functions look it up at each call and change
  the list ``get()`` returns in place) that gives each asyncio task or thread where a session
  placed a run a stack of its own (``_ContextRunStacks``);
- MLflow's SQLAlchemy store waiting up to 20 s on a locked SQLite file (its ``busy_timeout``)
  inside the C library, where Ctrl-C cannot interrupt it; the interrupt comes when the call
  returns, and the frames it unwinds hold the interrupted transaction (``_drop_interrupted``);
- ``MlflowClient.set_terminated`` fetching the run again (``GET runs/get``) only to print its
  "View run" link, which ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT`` turns off: the backend
  prints the same link from the run it holds and spares that request;
- ``mlflow.tracking.request_header.registry._request_header_provider_registry._registry``:
  the list of header-provider instances MLflow asks on every request, to add the configured
  ``server.request_header_provider`` for a session and take it off after (``register()``
  only takes a class it builds without arguments, and nothing removes);
- ``mlflow.utils.request_utils._get_request_session`` with the arguments
  ``mlflow.utils.rest_utils.http_request`` passes it by default: the cached
  ``requests.Session`` MLflow's REST calls use, to mount the quick-ACK adapter on it
  (``_transport.py``).  If it moves, trackcfg says so once at debug level and MLflow's client
  is used as it is;
- ``MlflowClient._tracking_client.store``: the client's tracking store, so that metric points
  for a local SQLite store are written with its own engine (``_sqlite_fast.py``); if it moves,
  they go through MLflow's ``log_batch`` as before.
"""

from __future__ import annotations

from typing import Any

import requests
from mlflow.tracking import _model_registry as _registry_pkg
from mlflow.tracking import _tracking_service as _tracking_pkg
from mlflow.tracking import fluent as _fluent

from trackcfg._transport import QuickAckMount, mount_quickack, not_used

__all__ = [
    "fluent_state",
    "header_providers",
    "mlflow_rest_sessions",
    "quickack_for",
    "registry_utils",
    "tracking_store",
    "tracking_utils",
]

# Typed as Any: we read and restore their module globals, which mlflow annotates as None.
tracking_utils: Any = _tracking_pkg.utils
registry_utils: Any = _registry_pkg.utils
fluent_state: Any = _fluent


def tracking_store(client: Any) -> Any:
    """The tracking store behind an ``MlflowClient``; None where it cannot be found."""
    return getattr(getattr(client, "_tracking_client", None), "store", None)


def mlflow_rest_sessions() -> list[requests.Session]:
    """The ``requests.Session`` MLflow's REST client uses with the current environment."""
    import inspect

    from mlflow import environment_variables as variables
    from mlflow.utils import request_utils, rest_utils

    env: Any = variables
    defaults = inspect.signature(rest_utils.http_request).parameters
    get_session: Any = request_utils._get_request_session
    session = get_session(
        env.MLFLOW_HTTP_REQUEST_MAX_RETRIES.get(),
        env.MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get(),
        env.MLFLOW_HTTP_REQUEST_BACKOFF_JITTER.get(),
        defaults["retry_codes"].default,
        defaults["raise_on_status"].default,
        env.MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER.get(),
    )
    if not isinstance(session, requests.Session):
        raise TypeError(f"expected a requests.Session, got {type(session).__name__}")
    return [session]


def quickack_for(tracking_uri: str) -> QuickAckMount | None:
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    try:
        sessions = mlflow_rest_sessions()
    except Exception as exc:
        not_used(f"MLflow's hook point changed ({type(exc).__name__}: {exc})")
        return None
    return mount_quickack(tracking_uri, sessions)


def header_providers() -> list[Any]:
    """The list of header-provider instances MLflow asks on every request."""
    from mlflow.tracking.request_header import registry

    providers: Any = registry._request_header_provider_registry._registry
    if not isinstance(providers, list):
        raise TypeError("MLflow's request header provider registry moved")
    return providers
