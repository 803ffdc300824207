"""The real backend: the only package that imports mlflow.

Only ``_backend`` imports it (the one door; docs/architecture.md), when a session starts,
never by ``import trackcfg``.  MLflow errors are translated here, by error code (never by
message text), into trackcfg's own.  One concept a module:

- ``_client``: ``MlflowBackend``, the ``Backend`` on MLflow's client;
- ``_errors``: MLflow's and the transport's errors translated at the door (a table of causes);
- ``_stacks``: MLflow's active-run stack per asyncio task or thread while sessions are open;
- ``_internals``: every MLflow internal relied on, listed and reached in one place;
- ``_links``: the "View run" lines;
- ``_headers``: ``server.request_header_provider`` in MLflow's registry;
- ``_local_store``: experiment 0 of a local store keeps its artifacts in the store;
- ``_models``: flavors, ``log_model``/``save_model``/``load_model`` for the Kedro datasets.

SQLite's locks, which need no mlflow, are ``trackcfg/_sqlite_locks.py``.
"""

from __future__ import annotations

from ._client import MlflowBackend, mlflow_limits
from ._headers import (
    add_header_provider,
    build_header_provider,
    header_provider_class,
    remove_header_provider,
)
from ._local_store import prepare_local_store
from ._models import (
    current_run,
    flavor_module,
    infer_signature,
    load_model,
    log_model,
    python_model_class,
    save_model,
)

__all__ = [
    "MlflowBackend",
    "add_header_provider",
    "build_header_provider",
    "current_run",
    "flavor_module",
    "header_provider_class",
    "infer_signature",
    "load_model",
    "log_model",
    "mlflow_limits",
    "prepare_local_store",
    "python_model_class",
    "remove_header_provider",
    "save_model",
]
