"""Where a configured tracking URI really points: a pure function of the URI and the root.

Rules (the current directory never matters):

- a bare path (``mlruns``, ``./runs``, ``/data/mlruns``) or a ``file:`` URI is a *local store
  folder*: trackcfg keeps ``<folder>/mlflow.db`` (SQLite) and ``<folder>/artifacts/`` in it,
  because MLflow 3 refuses the old file store unless opted in.  A folder that already holds
  an old file store (experiment folders with ``meta.yaml``, no ``mlflow.db``) keeps being used
  as one, with ``MLFLOW_ALLOW_FILE_STORE`` set for the session;
- ``sqlite:///relative.db`` resolves against the project root; ``sqlite:////abs.db`` and
  ``sqlite://`` (in memory) are kept;
- anything else (``http(s)://``, ``postgresql://``, ``databricks`` …) is kept as it is.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import attrs

__all__ = [
    "MASK",
    "StoreLocation",
    "is_local_path",
    "mask_uri",
    "resolve_registry_uri",
    "resolve_store",
]

STORE_DB = "mlflow.db"
# URIs MLflow accepts without a colon; never folder names.
_BARE_SCHEMES = frozenset({"databricks", "databricks-uc", "uc"})
ARTIFACTS = "artifacts"
MASK = "***"


@attrs.frozen(kw_only=True)
class StoreLocation:
    tracking_uri: str
    """The resolved URI, usable as-is with ``MlflowClient(tracking_uri=...)``."""
    local_folder: Path | None = None
    """The local store folder to create before use, for a bare path or ``file:`` URI."""
    artifact_root: str | None = None
    """Where artifacts of experiments trackcfg creates go, for local stores (a file URI)."""
    legacy_file_store: bool = False
    """The folder is an existing old-style file store, used as one."""

    @property
    def is_local(self) -> bool:
        return self.local_folder is not None or self.tracking_uri.startswith("sqlite:")


def _scheme(uri: str) -> str | None:
    head, sep, _ = uri.partition(":")
    # A one-letter "scheme" is a Windows drive letter, not a URI scheme.
    if sep and len(head) > 1 and head.replace("+", "").replace("-", "").replace(".", "").isalnum():
        return head.lower()
    return None


def is_local_path(uri: str) -> bool:
    """True for a bare path or a ``file:`` URI."""
    if uri in _BARE_SCHEMES:
        return False
    scheme = _scheme(uri)
    return scheme is None or scheme == "file"


def _file_uri_path(uri: str) -> str:
    rest = unquote(uri[len("file:") :])
    if rest.startswith("//"):
        rest = rest[2:]
        # file://host/path: only an empty or localhost host is a local path.
        host, _, path = rest.partition("/")
        if host in ("", "localhost"):
            return "/" + path
        return "//" + rest
    return rest


def _absolute(path: str, root: Path) -> Path:
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = root / candidate
    # normpath-like without touching the file system (the folder may not exist yet).
    parts: list[str] = []
    for part in candidate.parts:
        if part == "..":
            if len(parts) > 1:
                parts.pop()
        elif part != ".":
            parts.append(part)
    return Path(*parts)


def _holds_legacy_file_store(folder: Path) -> bool:
    if (folder / STORE_DB).exists() or not folder.is_dir():
        return False
    return any(child.is_dir() and (child / "meta.yaml").is_file() for child in folder.iterdir())


def resolve_store(uri: str, root: Path) -> StoreLocation:
    """Resolve the configured tracking URI against the project root ``root`` (absolute)."""
    scheme = _scheme(uri)
    if uri in _BARE_SCHEMES:
        return StoreLocation(tracking_uri=uri)
    if scheme is None or scheme == "file":
        path = _file_uri_path(uri) if scheme == "file" else uri
        folder = _absolute(path, root)
        if _holds_legacy_file_store(folder):
            return StoreLocation(
                tracking_uri=folder.as_uri(),
                local_folder=folder,
                artifact_root=None,
                legacy_file_store=True,
            )
        return StoreLocation(
            tracking_uri=f"sqlite:///{folder / STORE_DB}",
            local_folder=folder,
            artifact_root=(folder / ARTIFACTS).as_uri(),
        )
    if scheme == "sqlite":
        rest = uri[len("sqlite:") :]
        if rest.startswith("///"):
            db = rest[3:]
            if db and not db.startswith("/") and not db.startswith(":memory:"):
                absolute = _absolute(db, root)
                return StoreLocation(
                    tracking_uri=f"sqlite:///{absolute}",
                    artifact_root=(absolute.parent / ARTIFACTS).as_uri(),
                )
            if db.startswith("/"):
                return StoreLocation(
                    tracking_uri=uri, artifact_root=(Path(db).parent / ARTIFACTS).as_uri()
                )
        return StoreLocation(tracking_uri=uri)
    return StoreLocation(tracking_uri=uri)


def resolve_registry_uri(uri: str | None, root: Path) -> str | None:
    """A registry URI resolves like a tracking URI; ``None`` lets MLflow use the tracking URI."""
    if uri is None:
        return None
    return resolve_store(uri, root).tracking_uri


def mask_uri(uri: str) -> str:
    """``scheme://user:secret@host`` → ``scheme://user:***@host``; other URIs unchanged."""
    parts = urlsplit(uri)
    if not parts.netloc or "@" not in parts.netloc:
        return uri
    userinfo, _, host = parts.netloc.rpartition("@")
    user, has_password, _ = userinfo.partition(":")
    if not has_password:
        return uri
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))
