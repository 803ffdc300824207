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

Also here: whether a URI depends on the project root at all (``depends_on_root``), and which
Python driver a database URI needs that is not installed (``missing_driver``), so that the
session and ``trackcfg check`` name the package to install instead of failing late inside
SQLAlchemy with a bare ``ModuleNotFoundError``.

A database URI gets its driver's connect timeout (``with_connect_timeout``) for the session's
backend and ``trackcfg check``: without one, a server that accepts the connection and never
answers holds them forever.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit, urlunsplit

import attrs

if TYPE_CHECKING:
    from ._config import TrackingConfig

from .exceptions import ConfigError, ConfigProblem

__all__ = [
    "MASK",
    "MissingDriver",
    "StoreLocation",
    "depends_on_root",
    "error_text",
    "is_local_path",
    "is_secret_name",
    "mask_text",
    "mask_uri",
    "missing_driver",
    "one_line",
    "resolve_registry_uri",
    "resolve_store",
    "same_store",
    "store_identity",
    "store_kind",
    "store_refusal",
    "with_connect_timeout",
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


#: Words that make a query parameter's value a secret, found anywhere in its name, any case:
#: ``password``, ``passwd``, ``pwd``, ``access_token``, ``api_key``, ``X-Amz-Signature``,
#: ``X-Amz-Credential``, ``sig`` (Azure SAS), ``client_secret``, ``sslkey``, ``auth`` ...
_SECRET_WORDS = (
    "pass",
    "pwd",
    "token",
    "secret",
    "key",
    "sig",
    "auth",
    "credential",
    "session",
    "cookie",
    "private",
    "bearer",
    "jwt",
)
#: What looks like a URI inside a message (an error from a store names its URL).
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")


def is_secret_name(name: str) -> bool:
    """Whether a query parameter (or any setting) called ``name`` holds a secret."""
    lowered = unquote(name).lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _mask_query(query: str) -> str:
    pairs = []
    for pair in re.split(r"([&;])", query):
        name, eq, _ = pair.partition("=")
        pairs.append(f"{name}={MASK}" if eq and is_secret_name(name) else pair)
    return "".join(pairs)


def mask_uri(uri: str) -> str:
    """``uri`` with every secret it may hold replaced by ``***``, for anything shown or stored:

    - a password: ``scheme://user:secret@host`` → ``scheme://user:***@host``;
    - a user name without a password, which is a token as often as a name
      (``https://TOKEN@host``) → ``https://***@host``;
    - the value of a query parameter whose name holds a secret word (``password``, ``token``,
      ``secret``, ``key``, ``sig``, ``auth`` ..., any case, anywhere in the name:
      ``access_token``, ``X-Amz-Signature``) → ``?password=***``;
    - a fragment → ``#***``.

    Everything else (scheme, host, port, path, other parameters) is kept, and masking twice
    changes nothing.  Never raises: the URI may be one MLflow refuses."""
    base, hash_sign, fragment = uri.partition("#")
    base, question, query = base.partition("?")
    scheme_end = base.find("://")
    if scheme_end >= 0 or base.startswith("//"):
        start = scheme_end + 3 if scheme_end >= 0 else 2
        slash = base.find("/", start)
        end = len(base) if slash < 0 else slash
        userinfo, at, host = base[start:end].rpartition("@")
        if at:
            user, colon, _ = userinfo.partition(":")
            masked = f"{user}:{MASK}" if colon else MASK
            base = f"{base[:start]}{masked}@{host}{base[end:]}"
    masked_query = f"?{_mask_query(query)}" if question else ""
    masked_fragment = f"#{MASK}" if hash_sign and fragment else hash_sign
    return f"{base}{masked_query}{masked_fragment}"


def mask_text(text: str) -> str:
    """``text`` (a store's error message) with every URI in it masked (``mask_uri``)."""
    return _URI_IN_TEXT.sub(lambda match: mask_uri(match.group(0)), text)


def one_line(text: str, limit: int = 500) -> str:
    """``text`` with its whitespace runs (line breaks included) as one space, cut to
    ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "\N{HORIZONTAL ELLIPSIS}"


def error_text(exc: BaseException, limit: int = 500) -> str:
    """What a store's error says, for a report: its own message on one line, every URI in it
    masked (it may name the store's URL with credentials), prefixed by its type."""
    said = one_line(mask_text(str(exc)), limit)
    return f"{type(exc).__name__}: {said}" if said else type(exc).__name__


def store_refusal(exc: BaseException) -> str:
    """How ``trackcfg sync`` reports a store error the backend does not translate (a
    refusal: MLflow's ``RestException``, an HTTP 500 with a body): the store's own words."""
    return (
        f"the store refused it ({error_text(exc)}); fix what it names, then run trackcfg sync "
        "again (what was sent is not sent twice)"
    )


#: Ports a URI may leave out, by scheme (its database dialect for ``postgresql+psycopg2``).
_DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
#: Query parameters that change how a store is reached, not which store it is.
_CONNECTION_PARAMS = frozenset({"connect_timeout"})


def store_identity(uri: str) -> str:
    """What names the store ``uri`` points at, for telling whether two URIs are the same
    store: scheme (a database's dialect, without its driver) and host in lower case, the
    loopback names (``localhost``, ``127.0.0.1``, ``::1``) as one, a default port left out,
    the path without a trailing ``/`` or repeated ``/``, query parameters sorted (a connect
    timeout left out); user names and every secret left out (``mask_uri``).  A bare path is
    compared as written."""
    masked = mask_uri(uri.strip())
    scheme = _scheme(masked)
    if scheme is None or masked in _BARE_SCHEMES:
        return masked
    try:
        parts = urlsplit(masked)
        port = parts.port
    except ValueError:  # not a URI urllib can read: compared as written
        return masked
    dialect = scheme.partition("+")[0] if scheme.partition("+")[0] in _DIALECT_DRIVERS else scheme
    host = (parts.hostname or "").lower()
    host = "localhost" if host in _LOOPBACK else host
    if port is not None and port != _DEFAULT_PORTS.get(dialect):
        host = f"{host}:{port}"
    path = re.sub("/{2,}", "/", parts.path).rstrip("/")
    if dialect in ("sqlite", "file"):
        path = posixpath.normpath(path) if path else path
    query = "&".join(
        sorted(
            pair
            for pair in re.split("[&;]", parts.query)
            if pair and pair.partition("=")[0] not in _CONNECTION_PARAMS
        )
    )
    return f"{dialect}://{host}{path}" + (f"?{query}" if query else "")


def same_store(uri: str, other: str) -> bool:
    """Whether two URIs (either of them masked or not) point at the same store: the one
    answer to "was this journal / offline run written for the configured store"."""
    return store_identity(uri) == store_identity(other)


def store_kind(uri: str) -> str:
    """What messages call the store ``uri`` names: a "tracking server" answers (or does not)
    over HTTP; a local store (SQLite) is slow or locked, never "did not answer"."""
    scheme = _scheme(uri)
    if scheme in ("http", "https"):
        return "tracking server"
    if scheme == "sqlite" or is_local_path(uri):
        return "local store"
    return "store"


def depends_on_root(uri: str) -> bool:
    """Whether ``resolve_store`` puts ``uri`` somewhere that depends on the project root: a
    relative bare path or ``file:`` path, or a relative ``sqlite:///`` file."""
    if uri in _BARE_SCHEMES:
        return False
    scheme = _scheme(uri)
    if scheme is None or scheme == "file":
        path = _file_uri_path(uri) if scheme == "file" else uri
        return not Path(path).expanduser().is_absolute()
    if scheme == "sqlite" and uri[len("sqlite:") :].startswith("///"):
        db = uri[len("sqlite:///") :]
        return bool(db) and not db.startswith(("/", ":memory:"))
    return False


# --------------------------------------------------------------------------------------------
# Database drivers.

#: SQLAlchemy's driver names (``postgresql+<driver>://``) → the module it imports and the
#: package that provides it.
_DRIVER_PACKAGES: dict[str, tuple[str, str]] = {
    "psycopg2": ("psycopg2", "psycopg2-binary"),
    "psycopg": ("psycopg", "psycopg[binary]"),
    "pg8000": ("pg8000", "pg8000"),
    "mysqldb": ("MySQLdb", "mysqlclient"),
    "pymysql": ("pymysql", "pymysql"),
    "mysqlconnector": ("mysql.connector", "mysql-connector-python"),
    "pyodbc": ("pyodbc", "pyodbc"),
    "pymssql": ("pymssql", "pymssql"),
}
#: The drivers of each database MLflow stores runs in, best known first.
_DIALECT_DRIVERS: dict[str, tuple[str, ...]] = {
    "postgresql": ("psycopg2", "psycopg", "pg8000"),
    "mysql": ("pymysql", "mysqldb", "mysqlconnector"),
    "mssql": ("pyodbc", "pymssql"),
}
#: SQLAlchemy's default drivers (2.0; 2.1 made ``psycopg`` the PostgreSQL one), used only
#: when SQLAlchemy itself cannot be asked.
_DEFAULT_DRIVERS = {"postgresql": "psycopg2", "mysql": "mysqldb", "mssql": "pyodbc"}


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # the parent package of a dotted name is missing
        return False


def _default_driver(uri: str, dialect: str) -> str:
    """The driver SQLAlchemy picks for ``dialect://`` (it changed between versions)."""
    try:
        from sqlalchemy.engine.url import make_url

        driver = make_url(uri).get_dialect().driver
    except Exception:  # not installed, or a URI SQLAlchemy cannot parse: it says so later
        return _DEFAULT_DRIVERS[dialect]
    return str(driver)


@attrs.frozen
class MissingDriver:
    """A database URI whose SQLAlchemy driver is not installed: what to install."""

    uri: str
    dialect: str
    driver: str
    module: str
    package: str
    explicit: bool
    """The URI names the driver (``mysql+pymysql://``) rather than taking SQLAlchemy's."""
    alternatives: tuple[str, ...] = ()
    """Other drivers of the same database that are installed."""

    @property
    def problem(self) -> str:
        how = (
            f"the driver it names, {self.driver}"
            if self.explicit
            else f"SQLAlchemy's default {self.dialect} driver, {self.driver}"
        )
        return (
            f"{mask_uri(self.uri)} needs {how} (Python module {self.module}), which is not "
            "installed here"
        )

    @property
    def fix(self) -> str:
        import shlex  # here: start-up (issue 24)

        fix = f"pip install {shlex.quote(self.package)}"
        if self.alternatives:
            names = ", ".join(f"{self.dialect}+{d}://" for d in self.alternatives)
            fix += f", or write the URI as {names} (installed)"
        elif self.dialect == "mysql" and self.driver != "pymysql":
            fix += ", or write the URI as mysql+pymysql:// and pip install pymysql"
        return fix

    def error(self, where: str | None) -> ConfigError:
        """The ``ConfigError`` a session raises, naming ``server.mlflow_tracking_uri``."""
        return ConfigError(
            [ConfigProblem("server.mlflow_tracking_uri", f"{self.problem}: {self.fix}", where)]
        )


def missing_driver(uri: str) -> MissingDriver | None:
    """For a ``postgresql``/``mysql``/``mssql`` URI whose driver module is not installed,
    what to install; ``None`` for every other URI, an installed driver, or a driver trackcfg
    does not know (SQLAlchemy reports those itself)."""
    scheme = _scheme(uri)
    if scheme is None:
        return None
    dialect, _, driver = scheme.partition("+")
    if dialect not in _DIALECT_DRIVERS:
        return None
    explicit = bool(driver)
    driver = driver or _default_driver(uri, dialect)
    known = _DRIVER_PACKAGES.get(driver)
    if known is None or _installed(known[0]):
        return None
    alternatives = tuple(
        d for d in _DIALECT_DRIVERS[dialect] if d != driver and _installed(_DRIVER_PACKAGES[d][0])
    )
    return MissingDriver(
        uri=uri,
        dialect=dialect,
        driver=driver,
        module=known[0],
        package=known[1],
        explicit=explicit,
        alternatives=alternatives,
    )


# --------------------------------------------------------------------------------------------
# Database connect timeouts.

#: The connect-timeout query parameter (seconds) of the drivers that have one bounding only
#: the connection (not every later read, which would cut a long query): libpq's for
#: psycopg2 and psycopg, which bounds the whole startup, a server that accepts the TCP
#: connection and never answers included; mysqlclient's and PyMySQL's (SQLAlchemy converts
#: it to an int).  Other drivers (pg8000, mysql-connector, MSSQL's) are left alone.
_CONNECT_TIMEOUT_PARAMS: dict[str, str] = {
    "postgresql": "connect_timeout",
    "postgresql+psycopg2": "connect_timeout",
    "postgresql+psycopg": "connect_timeout",
    "mysql": "connect_timeout",
    "mysql+mysqldb": "connect_timeout",
    "mysql+pymysql": "connect_timeout",
}


def with_connect_timeout(uri: str, seconds: int) -> str:
    """``uri`` with its driver's connect timeout set to ``seconds``, for a database URI whose
    driver has one (``_CONNECT_TIMEOUT_PARAMS``) and that does not set it already; every
    other URI unchanged.  ``postgresql+psycopg2://u@db/mlflow`` →
    ``postgresql+psycopg2://u@db/mlflow?connect_timeout=10``."""
    from urllib.parse import parse_qsl

    scheme = _scheme(uri)
    param = _CONNECT_TIMEOUT_PARAMS.get(scheme or "")
    if param is None:
        return uri
    parts = urlsplit(uri)
    if any(key == param for key, _ in parse_qsl(parts.query, keep_blank_values=True)):
        return uri  # the user's own value wins
    query = f"{parts.query}&" if parts.query else ""
    return urlunsplit(parts._replace(query=f"{query}{param}={max(1, int(seconds))}"))


def session_env(config: TrackingConfig, location: StoreLocation) -> dict[str, str]:
    """The variables a session exports for its store (and ``trackcfg sync``): the
    credentials, and for a server the session's HTTP budget instead of MLflow's minutes of
    retries."""
    env: dict[str, str] = {}
    if config.credentials is not None:
        env.update(config.credentials.as_env())
    if location.legacy_file_store:
        env["MLFLOW_ALLOW_FILE_STORE"] = "true"
    if not location.is_local:
        server = config.server
        env["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(server.request_timeout)
        env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(server.max_retries)
        env["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
        env["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = "0.5"
    return env
