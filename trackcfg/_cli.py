"""The ``trackcfg`` command line: ``init``, ``show``, ``check`` and ``ui``.

A thin adapter over the loader (``load_config``), the store rules (``resolve_store``) and,
for ``check`` on a database store, the backend.  ``trackcfg --help``, ``init`` and ``show``
never import mlflow; ``check`` imports it only to look the experiment up in a local or
database store, and ``ui`` only runs ``python -m mlflow server`` as a child process.

Exit codes: 0 success (``check``: a run would start), 1 a trackcfg error or a failed check
(one message on stderr, no traceback), 2 a usage error (click's).
"""

from __future__ import annotations

import base64
import contextlib
import enum
import json
import os
import signal
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import attrs
import click

from ._config import Source, TrackingConfig
from ._env import exported
from ._loading import DEFAULT_ENV, _project_name, _root_for, load_config
from ._store import StoreLocation, resolve_registry_uri, resolve_store
from .exceptions import TrackcfgError

if TYPE_CHECKING:
    import ssl
    import subprocess

# The network, SQLite, subprocess and TLS modules are imported by the commands that use them,
# not by `trackcfg --help` (~20 ms of its start-up).

__all__ = ["cli", "main", "mask_uri", "render_template", "run_checks", "serve_ui", "write_template"]

_F = TypeVar("_F", bound=Callable[..., Any])

TEMPLATE_DIR, TEMPLATE_NAME = "templates", "mlflow.yml"
MASK = "***"
DEFAULT_CHECK_TIMEOUT = 5.0
UI_START_TIMEOUT = 180.0
UI_STOP_TIMEOUT = 15.0
DEFAULT_UI_HOST = "127.0.0.1"
_DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


class TrackcfgErrorsGroup(click.Group):
    """Turns trackcfg's own errors into one line on stderr and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TrackcfgError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=TrackcfgErrorsGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """MLflow tracking configured by one mlflow.yml.

    PATH arguments accept an mlflow.yml file, a conf/ folder or a project folder; without
    one, the configuration is found from the current folder upward (conf/<env>/mlflow.yml
    over conf/base/mlflow.yml, else mlflow.yml). ENV defaults to $TRACKCFG_ENV, else
    "local".
    """


def main() -> None:
    """Console-script entry point (``trackcfg``)."""
    cli.main(prog_name="trackcfg")


def _path_argument(func: _F) -> _F:
    return click.argument(
        "path", required=False, type=click.Path(dir_okay=True, file_okay=True, path_type=Path)
    )(func)


def _env_option(func: _F) -> _F:
    return click.option(
        "--env",
        "env",
        metavar="ENV",
        default=None,
        help="Read conf/<ENV>/ over conf/base/ [default: $TRACKCFG_ENV, else local].",
    )(func)


# --------------------------------------------------------------------------------------------
# Shared helpers.


def _display_path(path: str | Path) -> str:
    """A path relative to the current folder when it lies below it: shorter to read."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def _where(source: Source) -> str | None:
    if source.kind == "file" and source.detail is not None:
        shown = _display_path(source.detail)
        return f"{shown}:{source.line}" if source.line else shown
    return source.detail


def _source_text(source: Source) -> str:
    where = _where(source)
    if source.kind == "file":
        return where or "file"
    if source.kind == "env":
        return f"env {where}"
    if source.kind == "override":
        return f"override {where}"
    return source.kind


def mask_uri(uri: str) -> str:
    """``scheme://user:secret@host`` → ``scheme://user:***@host``; other URIs unchanged."""
    parts = urllib.parse.urlsplit(uri)
    if not parts.netloc or "@" not in parts.netloc:
        return uri
    userinfo, _, host = parts.netloc.rpartition("@")
    user, has_password, _ = userinfo.partition(":")
    if not has_password:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _shown_value(key: str, value: Any) -> Any:
    if isinstance(value, str) and key.endswith("_uri"):
        return mask_uri(value)
    return _jsonable(value)


def _as_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    return json.dumps(value)


def _experiment_name(config: TrackingConfig, root: Path) -> str:
    return config.tracking.experiment.name or config.default_experiment_name or root.name


def _root(config: TrackingConfig) -> Path:
    # The loader always fills project_root; a config built in code is not seen here.
    return config.project_root or Path.cwd().resolve()


def _effective_env(env: str | None) -> str:
    return env or os.environ.get("TRACKCFG_ENV") or DEFAULT_ENV


# --------------------------------------------------------------------------------------------
# init


def render_template(experiment_name: str) -> str:
    """The commented ``mlflow.yml`` template with ``tracking.experiment.name`` filled in."""
    from importlib.resources import files
    from io import StringIO

    from ruamel.yaml import YAML
    from ruamel.yaml.representer import RoundTripRepresenter

    class _Representer(RoundTripRepresenter):
        """Writes ``null`` where ruamel would leave a value empty (the file documents it)."""

    _Representer.add_representer(
        type(None),
        lambda rep, _data: rep.represent_scalar("tag:yaml.org,2002:null", "null"),
    )
    text = (files("trackcfg") / TEMPLATE_DIR / TEMPLATE_NAME).read_text(encoding="utf-8")
    yaml = YAML(typ="rt", pure=True)
    yaml.Representer = _Representer
    yaml.preserve_quotes = True
    yaml.width = 4096
    data = yaml.load(text)
    data["tracking"]["experiment"]["name"] = experiment_name
    out = StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def write_template(folder: Path, env: str, *, force: bool = False) -> Path:
    """Write the template for the project in ``folder``: into ``conf/<env>/`` when ``folder``
    holds a ``conf/`` folder, else into ``folder``.  Refuses to overwrite unless ``force``."""
    folder = folder.resolve()
    conf = folder / "conf"
    target = conf / env / "mlflow.yml" if conf.is_dir() else folder / "mlflow.yml"
    if target.exists() and not force:
        raise click.ClickException(
            f"{_display_path(target)} exists already; not overwritten. "
            "Use --force to replace it with the template."
        )
    # The name a null experiment name stands for, by the loader's rule for this file.
    name = _project_name(_root_for(folder))
    text = render_template(name)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"cannot write {_display_path(target)}: {exc.strerror}") from exc
    return target


@cli.command()
@click.option(
    "--env",
    "env",
    metavar="ENV",
    default=None,
    help='With a conf/ folder: write conf/<ENV>/mlflow.yml [default: $TRACKCFG_ENV or "local"].',
)
@click.option("--force", is_flag=True, help="Overwrite an existing mlflow.yml.")
def init(env: str | None, force: bool) -> None:
    """Write a commented mlflow.yml for this project.

    Into conf/<ENV>/ when the current folder holds a conf/ folder (a Kedro project), else
    into the current folder. Every key is written with its default and a comment; the
    experiment name is the project's name. An existing file is kept unless --force.
    """
    cwd = Path.cwd()
    if env is not None and not (cwd / "conf").is_dir():
        click.echo(f"note: no conf/ folder here, --env {env} is not used", err=True)
    target = write_template(cwd, _effective_env(env), force=force)
    click.echo(f"wrote {_display_path(target)}")
    click.echo("next: edit it, then `trackcfg check` to see whether a run would start")


# --------------------------------------------------------------------------------------------
# show


def _show_data(config: TrackingConfig, env: str) -> dict[str, Any]:
    root = _root(config)
    location = resolve_store(config.server.mlflow_tracking_uri, root)
    credentials: dict[str, Any] | None = None
    if config.credentials is not None:
        credentials = {
            "name": config.credentials.name,
            "file": config.credentials.origin,
            "keys": dict.fromkeys(config.credentials.keys(), MASK),
        }
    return {
        "env": env,
        "project_root": str(root),
        "files": [str(f) for f in config.files],
        "keys": {
            key: {
                "value": _shown_value(key, value),
                "source": source.kind,
                "where": _where(source),
            }
            for key, value, source in config.provenance()
        },
        "resolved": {
            "tracking_uri": mask_uri(location.tracking_uri),
            "experiment_name": _experiment_name(config, root),
        },
        "credentials": credentials,
    }


@cli.command()
@_path_argument
@_env_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (shape below).")
def show(path: Path | None, env: str | None, as_json: bool) -> None:
    """Print the effective configuration and where each value came from.

    One line per key: the key, its value, and its source: "default", FILE:LINE,
    "env VARIABLE" or "override KEY". Credentials are listed by variable name only; their
    values are always shown as ***, and a password inside a URI is masked too.

    \b
    --json prints:
      {"env": "local", "project_root": "/abs/path", "files": ["/abs/.../mlflow.yml"],
       "keys": {"server.mlflow_tracking_uri":
                  {"value": "mlruns", "source": "file", "where": "conf/local/mlflow.yml:3"},
                ...},          # source: default | file | env | override
       "resolved": {"tracking_uri": "sqlite:///...", "experiment_name": "..."},
       "credentials": null or {"name": "...", "file": "/abs/credentials.yml",
                               "keys": {"AWS_SECRET_ACCESS_KEY": "***"}}}
    """
    env_name = _effective_env(env)
    config = load_config(path, env=env)
    data = _show_data(config, env_name)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    files = ", ".join(_display_path(f) for f in data["files"]) or "none (built-in defaults)"
    click.echo(f"env: {env_name}")
    click.echo(f"project root: {data['project_root']}")
    click.echo(f"files: {files}")
    click.echo("")
    rows = [
        (key, _as_text(item["value"]), _source_text(source))
        for (key, _value, source), item in zip(
            config.provenance(), data["keys"].values(), strict=True
        )
    ]
    rows.insert(0, ("KEY", "VALUE", "SOURCE"))
    key_width = max(len(r[0]) for r in rows)
    value_width = min(max(len(r[1]) for r in rows), 40)
    for key, value, source in rows:
        click.echo(f"{key:<{key_width}}  {value:<{value_width}}  {source}")
    click.echo("")
    resolved = data["resolved"]
    click.echo(f"tracking store: {resolved['tracking_uri']}")
    click.echo(f"experiment: {resolved['experiment_name']}")
    creds = data["credentials"]
    if creds is None:
        click.echo("credentials: none (server.credentials is null)")
    else:
        origin = f" from {_display_path(creds['file'])}" if creds["file"] else ""
        click.echo(f"credentials: entry {creds['name']!r}{origin}")
        for name in creds["keys"]:
            click.echo(f"  {name}={MASK}")


# --------------------------------------------------------------------------------------------
# check


class Status(enum.Enum):
    OK = "ok"
    FAIL = "FAIL"
    WARN = "warn"
    SKIP = "skip"


@attrs.frozen
class CheckItem:
    status: Status
    what: str
    detail: str
    fix: str | None = None

    def lines(self) -> list[str]:
        out = [f"[{self.status.value:^4}] {self.what}: {self.detail}"]
        if self.fix:
            out.append(f"       fix: {self.fix}")
        return out


@attrs.frozen
class _Lookup:
    """What the store says about the experiment (or run): ``found``/``deleted``/``id``;
    ``error`` when it could not be asked."""

    found: bool = False
    deleted: bool = False
    id: str | None = None
    error: str | None = None


def _writable(folder: Path) -> CheckItem | None:
    """None when ``folder`` exists and takes a file, or can be created; else the failure."""
    import tempfile

    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    shown = _display_path(folder)
    if not probe.is_dir():
        return CheckItem(
            Status.FAIL,
            "store",
            f"{_display_path(probe)} is not a folder, so {shown} cannot be used",
            "point server.mlflow_tracking_uri at a folder",
        )
    try:
        # A real write: os.access() says yes to root even on a read-only file system.
        with tempfile.TemporaryFile(dir=probe, prefix=".trackcfg-check-"):
            pass
    except OSError as exc:
        return CheckItem(
            Status.FAIL,
            "store",
            f"cannot write in {_display_path(probe)}: {exc.strerror}",
            "make the folder writable, or point server.mlflow_tracking_uri elsewhere",
        )
    return None


def _sqlite_tables(db: Path) -> set[str] | CheckItem:
    """The table names of an existing SQLite file, read-only (the store is left as it is)."""
    import sqlite3

    try:
        connection = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=2)
        try:
            rows = connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            return {str(row[0]) for row in rows}
        finally:
            connection.close()
    except sqlite3.Error as exc:
        return CheckItem(
            Status.FAIL,
            "store",
            f"{_display_path(db)} does not open as an SQLite database: {exc}",
            "move the file away, or point server.mlflow_tracking_uri at another store",
        )


def _check_local(location: StoreLocation) -> tuple[CheckItem, bool]:
    """The store line for a local store, and whether the experiment can be looked up."""
    uri = location.tracking_uri
    if location.legacy_file_store and location.local_folder is not None:
        failure = _writable(location.local_folder)
        if failure is not None:
            return failure, False
        return (
            CheckItem(
                Status.OK,
                "store",
                f"{_display_path(location.local_folder)} is an old-style MLflow file store "
                "(kept as one); writable",
            ),
            True,
        )
    db_text = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
    if not db_text or db_text.startswith(":memory:"):
        return (
            CheckItem(Status.WARN, "store", f"{uri} is an in-memory database: runs vanish at exit"),
            False,
        )
    db = Path(db_text)
    failure = _writable(db.parent)
    if failure is not None:
        return failure, False
    if not db.exists():
        return (
            CheckItem(
                Status.OK,
                "store",
                f"{_display_path(db)} does not exist yet; it is created at the first run "
                f"(folder {_display_path(db.parent)} writable)",
            ),
            False,
        )
    tables = _sqlite_tables(db)
    if isinstance(tables, CheckItem):
        return tables, False
    if "experiments" not in tables:
        return (
            CheckItem(
                Status.OK,
                "store",
                f"{_display_path(db)} opens (empty: MLflow sets it up at the first run)",
            ),
            False,
        )
    return CheckItem(Status.OK, "store", f"{_display_path(db)} opens (SQLite, MLflow store)"), True


def _backend_lookup(
    location: StoreLocation, env: Mapping[str, str], experiment: str | None, run_id: str | None
) -> _Lookup:
    """Ask the store through MLflow itself: used for local and database stores only, which
    answer without MLflow's long HTTP retry loop."""
    variables = dict(env)
    if location.legacy_file_store:
        variables["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        with exported(variables):
            from ._mlflow import MlflowBackend

            backend = MlflowBackend(location.tracking_uri)
            if run_id is not None:
                run = backend.get_run(run_id)
                if run is None:
                    return _Lookup()
                return _Lookup(found=True, deleted=run.deleted, id=run.experiment_id)
            assert experiment is not None
            found = backend.get_experiment(experiment)
            if found is None:
                return _Lookup()
            return _Lookup(found=True, deleted=found.deleted, id=found.id)
    except Exception as exc:  # the store's own error is the news: report it, do not crash
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return _Lookup(error=message)


def _http_headers(env: Mapping[str, str]) -> dict[str, str]:
    """MLflow's own client authentication variables, from the credentials entry or env."""
    headers = {"Accept": "application/json", "User-Agent": "trackcfg-check"}
    token = env.get("MLFLOW_TRACKING_TOKEN")
    user, password = env.get("MLFLOW_TRACKING_USERNAME"), env.get("MLFLOW_TRACKING_PASSWORD")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    elif user and password:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {pair}"
    return headers


def _ssl_context(env: Mapping[str, str]) -> ssl.SSLContext:
    import ssl

    if env.get("MLFLOW_TRACKING_INSECURE_TLS", "").strip().lower() in ("1", "true", "yes"):
        context = ssl._create_unverified_context()
    else:
        context = ssl.create_default_context(cafile=env.get("MLFLOW_TRACKING_SERVER_CERT_PATH"))
    return context


@attrs.frozen
class _HttpAnswer:
    status: int | None
    body: dict[str, Any] | None
    seconds: float
    error: str | None = None


def _http_get(
    url: str, env: Mapping[str, str], timeout: float, extra: Mapping[str, str] | None = None
) -> _HttpAnswer:
    """One GET, no retries: an answer, or the reason there is none, within ``timeout``."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={**_http_headers(env), **(extra or {})})
    started = time.monotonic()
    status: int | None = None
    raw = b""
    try:
        with urllib.request.urlopen(
            request, timeout=timeout, context=_ssl_context(env)
        ) as response:
            status = int(response.status)
            raw = response.read()
    except urllib.error.HTTPError as exc:
        status = int(exc.code)
        with contextlib.suppress(OSError):
            raw = exc.read()
    except urllib.error.URLError as exc:
        reason = exc.reason
        text = "no answer" if isinstance(reason, TimeoutError) else str(reason)
        return _HttpAnswer(None, None, time.monotonic() - started, text)
    except TimeoutError:
        return _HttpAnswer(None, None, time.monotonic() - started, "no answer")
    except OSError as exc:
        return _HttpAnswer(None, None, time.monotonic() - started, str(exc))
    body: dict[str, Any] | None = None
    with contextlib.suppress(ValueError):
        parsed = json.loads(raw.decode("utf-8", "replace")) if raw else None
        body = parsed if isinstance(parsed, dict) else None
    return _HttpAnswer(status, body, time.monotonic() - started)


def _http_lookup(
    uri: str,
    env: Mapping[str, str],
    experiment: str | None,
    run_id: str | None,
    timeout: float,
    extra: Mapping[str, str] | None = None,
) -> tuple[CheckItem, CheckItem | None, _Lookup | None]:
    """One REST call answers three questions: reachable? credentials accepted? found?"""
    base = uri.rstrip("/")
    if run_id is not None:
        query = urllib.parse.urlencode({"run_id": run_id})
        url = f"{base}/api/2.0/mlflow/runs/get?{query}"
    else:
        query = urllib.parse.urlencode({"experiment_name": experiment or ""})
        url = f"{base}/api/2.0/mlflow/experiments/get-by-name?{query}"
    shown = mask_uri(base)
    answer = _http_get(url, env, timeout, extra)
    if answer.status is None:
        return (
            CheckItem(
                Status.FAIL,
                "store",
                f"{shown} not reachable: {answer.error} (waited {answer.seconds:.1f} s, "
                f"--timeout {timeout:g})",
                "start the server, or fix server.mlflow_tracking_uri",
            ),
            None,
            None,
        )
    body = answer.body or {}
    reached = CheckItem(Status.OK, "store", f"{shown} answers ({answer.seconds:.2f} s)")
    if answer.status in (401, 403):
        return (
            reached,
            CheckItem(
                Status.FAIL,
                "credentials",
                f"the server refused them (HTTP {answer.status})",
                "name an entry holding MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD, in server.credentials",
            ),
            None,
        )
    if answer.status == 200 and run_id is not None and isinstance(body.get("run"), dict):
        info = body["run"].get("info", {})
        deleted = info.get("lifecycle_stage") == "deleted"
        return reached, None, _Lookup(True, deleted, str(info.get("experiment_id")))
    if answer.status == 200 and isinstance(body.get("experiment"), dict):
        exp = body["experiment"]
        deleted = exp.get("lifecycle_stage") == "deleted"
        return reached, None, _Lookup(True, deleted, str(exp.get("experiment_id")))
    if answer.status in (400, 404) and body.get("error_code") in (
        "RESOURCE_DOES_NOT_EXIST",
        "INVALID_PARAMETER_VALUE",
    ):
        return reached, None, _Lookup()
    return (
        CheckItem(
            Status.FAIL,
            "store",
            f"{shown} answered HTTP {answer.status}, not like an MLflow tracking server",
            "fix server.mlflow_tracking_uri (the server's base URL, without /api/...)",
        ),
        None,
        None,
    )


def _tcp_reachable(uri: str, timeout: float) -> CheckItem:
    import socket

    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.split("+")[0]
    shown = mask_uri(uri)
    try:
        host, port = parts.hostname, parts.port or _DB_PORTS.get(scheme)
    except ValueError as exc:
        return CheckItem(Status.FAIL, "store", f"{shown}: {exc}", "fix server.mlflow_tracking_uri")
    if not host or not port:
        return CheckItem(Status.SKIP, "store", f"{shown}: no host and port to try")
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        return CheckItem(
            Status.FAIL,
            "store",
            f"{host}:{port} not reachable: {reason} (waited {time.monotonic() - started:.1f} s)",
            "start the database, or fix server.mlflow_tracking_uri",
        )
    return CheckItem(Status.OK, "store", f"{host}:{port} accepts connections ({shown})")


def _headers_item(config: TrackingConfig) -> tuple[CheckItem | None, dict[str, str]]:
    """``server.request_header_provider``: importable, buildable, and the headers it gives
    (their names only: values may be tokens), which the server check then sends too."""
    spec = config.server.request_header_provider
    if not spec.type:
        return None, {}
    source = config.sources.get("server.request_header_provider.type")
    fix = "fix server.request_header_provider" + (f" ({source})" if source else "")
    from ._mlflow import build_header_provider, header_provider_class

    try:
        if spec.pass_context:
            header_provider_class(spec.type)
            return (
                CheckItem(
                    Status.OK,
                    "request headers",
                    f"{spec.type}: importable (built with the Kedro context under kedro run; "
                    "not built here)",
                ),
                {},
            )
        provider = build_header_provider(spec.type, dict(spec.init_kwargs))
        headers = dict(provider.request_headers()) if provider.in_context() else {}
    except Exception as exc:
        return CheckItem(Status.FAIL, "request headers", str(exc), fix), {}
    names = ", ".join(sorted(headers)) or "none right now (not in context)"
    return CheckItem(Status.OK, "request headers", f"{spec.type} adds: {names}"), headers


def _credentials_item(config: TrackingConfig) -> CheckItem:
    creds = config.credentials
    if creds is None:
        return CheckItem(Status.SKIP, "credentials", "none configured (server.credentials: null)")
    names = creds.keys()
    keys = ", ".join(f"{k}={MASK}" for k in names) or "no keys"
    origin = f" in {_display_path(creds.origin)}" if creds.origin else ""
    empty = [k for k, v in creds.as_env().items() if not v]
    if empty:
        return CheckItem(
            Status.WARN,
            "credentials",
            f"entry {creds.name!r}{origin}: {keys}; empty: {', '.join(empty)}",
        )
    return CheckItem(Status.OK, "credentials", f"entry {creds.name!r}{origin}: {keys}")


def _target_item(config: TrackingConfig, name: str, lookup: _Lookup | None) -> CheckItem:
    """What a session would do about the experiment, or the run it would continue."""
    settings = config.tracking.experiment
    run_id = config.tracking.run.id
    if lookup is None:
        what = f"run {run_id!r}" if run_id else f"experiment {name!r}"
        return CheckItem(Status.SKIP, "experiment", f"{what} not looked up (store not checked)")
    if lookup.error is not None:
        return CheckItem(Status.FAIL, "experiment", f"the store could not be read: {lookup.error}")
    if run_id:
        if not lookup.found or lookup.deleted:
            state = "is deleted" if lookup.found else "does not exist"
            return CheckItem(
                Status.FAIL,
                "run",
                f"run {run_id!r} (tracking.run.id) {state}",
                "set tracking.run.id: null to start a new run",
            )
        return CheckItem(
            Status.OK, "run", f"run {run_id!r} exists (experiment {lookup.id}); it is continued"
        )
    if not lookup.found:
        if settings.create:
            return CheckItem(
                Status.OK,
                "experiment",
                f"{name!r} does not exist; it will be created (tracking.experiment.create: true)",
            )
        return CheckItem(
            Status.FAIL,
            "experiment",
            f"{name!r} does not exist and tracking.experiment.create is false",
            "set tracking.experiment.create: true, create the experiment, or change "
            "tracking.experiment.name",
        )
    if lookup.deleted:
        if settings.restore_if_deleted:
            return CheckItem(
                Status.OK,
                "experiment",
                f"{name!r} (id {lookup.id}) is deleted; it will be restored "
                "(tracking.experiment.restore_if_deleted: true)",
            )
        return CheckItem(
            Status.FAIL,
            "experiment",
            f"{name!r} (id {lookup.id}) is deleted and tracking.experiment.restore_if_deleted "
            "is false",
            "set tracking.experiment.restore_if_deleted: true, restore the experiment, or "
            "change tracking.experiment.name",
        )
    return CheckItem(Status.OK, "experiment", f"{name!r} exists (id {lookup.id})")


def run_checks(
    path: Path | None, env: str | None, timeout: float, emit: Callable[[CheckItem], None]
) -> list[CheckItem]:
    """Every preflight check, each handed to ``emit`` as soon as it is known."""
    items: list[CheckItem] = []

    def add(item: CheckItem) -> None:
        items.append(item)
        emit(item)

    try:
        config = load_config(path, env=env)
    except TrackcfgError as exc:
        add(CheckItem(Status.FAIL, "config", str(exc), "fix the file and line named above"))
        return items
    files = ", ".join(_display_path(f) for f in config.files)
    add(
        CheckItem(
            Status.OK,
            "config",
            f"valid ({files})" if files else "valid (no mlflow.yml found: built-in defaults)",
        )
    )
    root = _root(config)
    location = resolve_store(config.server.mlflow_tracking_uri, root)
    credentials_env = config.credentials.as_env() if config.credentials else {}
    name = _experiment_name(config, root)
    run_id = config.tracking.run.id or None
    experiment = None if run_id else name
    scheme = urllib.parse.urlsplit(location.tracking_uri).scheme.split("+")[0].lower()

    lookup: _Lookup | None = None
    headers_item, extra_headers = _headers_item(config)
    if headers_item is not None:
        add(headers_item)
    credentials_item = _credentials_item(config)
    if location.is_local:
        store_item, can_look = _check_local(location)
        add(store_item)
        if can_look:
            lookup = _backend_lookup(location, credentials_env, experiment, run_id)
        elif store_item.status is not Status.FAIL and not location.legacy_file_store:
            lookup = _Lookup()  # a store created at the first run holds nothing yet
    elif scheme in ("http", "https"):
        http_env = {**os.environ, **credentials_env}
        store_item, refused, lookup = _http_lookup(
            location.tracking_uri, http_env, experiment, run_id, timeout, extra_headers
        )
        add(store_item)
        credentials_item = refused or credentials_item
    elif scheme in _DB_PORTS:
        store_item = _tcp_reachable(location.tracking_uri, timeout)
        add(store_item)
        if store_item.status is Status.OK:
            lookup = _backend_lookup(location, credentials_env, experiment, run_id)
    else:
        add(
            CheckItem(
                Status.SKIP,
                "store",
                f"{mask_uri(location.tracking_uri)}: trackcfg cannot check this kind of store",
            )
        )
    add(credentials_item)
    add(_target_item(config, name, lookup))
    if os.environ.get("TRACKCFG_DISABLE", "").strip().lower() in ("1", "true", "yes", "on"):
        add(CheckItem(Status.WARN, "tracking", "TRACKCFG_DISABLE is set: sessions log nothing"))
    return items


@cli.command()
@_path_argument
@_env_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=DEFAULT_CHECK_TIMEOUT,
    show_default=True,
    metavar="S",
    help="Seconds to wait for a tracking server or database; no retries.",
)
def check(path: Path | None, env: str | None, timeout: float) -> None:
    """Preflight: would a tracked run start with this configuration?

    \b
    Checks, printed as a list ([ ok ], [FAIL], [warn], [skip]):
      config       the files load and every key is valid
      store        local store: its folder is writable and the SQLite file opens;
                   http(s): the server answers one API call within --timeout
      credentials  the server.credentials entry exists (its keys are listed, masked)
      experiment   exists / is deleted / is missing, and what the settings make of it
                   (or: the run named by tracking.run.id exists)

    Exit status 0 when a run would start, 1 otherwise (the reason and the setting to
    change are printed). Nothing is created: a missing store is reported as "created at
    the first run".
    """
    items = run_checks(path, env, timeout, lambda item: click.echo("\n".join(item.lines())))
    failures = [item for item in items if item.status is Status.FAIL]
    if not failures:
        click.echo("a run would start")
        return
    first = failures[0]
    reason = first.detail.splitlines()[0]
    fix = f"; fix: {first.fix}" if first.fix else ""
    click.echo(f"Error: a run would not start: {first.what}: {reason}{fix}", err=True)
    raise SystemExit(1)


# --------------------------------------------------------------------------------------------
# ui


class _Stop(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: stop the server and exit 0."""


def _bind_probe(host: str, port: int) -> int:
    """Bind ``host:port`` for a moment (port 0: any free one) and return the port.

    Done before starting the server, so that another server already on the port cannot
    answer the health poll in its place.
    """
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise click.ClickException(
                f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port "
                "(or ui.port), or --host (or ui.host)"
            ) from exc
        bound: int = sock.getsockname()[1]
        return bound


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _browser_available() -> bool:
    if os.environ.get("BROWSER"):
        return True
    if sys.platform.startswith("linux") or "bsd" in sys.platform:
        # Without a display, webbrowser falls back to console browsers that take over the
        # terminal (and wait): not what a server command should do.
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def _open_browser(url: str) -> None:
    import webbrowser

    if not _browser_available():
        click.echo("no browser available; open the URL yourself", err=True)
        return
    try:
        opened = webbrowser.open_new_tab(url)
    except webbrowser.Error:
        opened = False
    if not opened:
        click.echo("could not open a browser; open the URL yourself", err=True)


def _healthy(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop_server(process: subprocess.Popen[bytes]) -> None:
    """Stop the server's whole process group (uvicorn workers included)."""
    import subprocess

    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, UI_STOP_TIMEOUT), (signal.SIGKILL, UI_STOP_TIMEOUT)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def _server_command(
    location: StoreLocation, registry_uri: str | None, host: str, port: int
) -> list[str]:
    command = [sys.executable, "-m", "mlflow", "server"]
    command += ["--backend-store-uri", location.tracking_uri]
    if registry_uri is not None:
        command += ["--registry-store-uri", registry_uri]
    artifact_root = location.artifact_root
    if artifact_root is None and location.legacy_file_store and location.local_folder:
        artifact_root = location.local_folder.as_uri()
    if artifact_root is not None:
        # The runs' files live in the local artifact folder: read them in place.
        command += ["--default-artifact-root", artifact_root, "--no-serve-artifacts"]
    command += ["--host", host, "--port", str(port), "--workers", "1"]
    return command


def _serve(
    config: TrackingConfig, location: StoreLocation, host: str, port: int, browser: bool
) -> None:
    import subprocess

    root = _root(config)
    if location.local_folder is not None:
        location.local_folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if config.credentials is not None:
        env.update(config.credentials.as_env())
    if location.legacy_file_store:
        env["MLFLOW_ALLOW_FILE_STORE"] = "true"
    # MLflow's GenAI job runner (several worker processes) doubles the start time and is of
    # no use for browsing runs; setting the variable yourself keeps your choice.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    registry = resolve_registry_uri(config.server.mlflow_registry_uri, root)
    command = _server_command(location, registry, host, port)
    url = f"http://{_url_host(host)}:{port}"

    def on_sigterm(_signum: int, _frame: FrameType | None) -> NoReturn:
        raise _Stop

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    process: subprocess.Popen[bytes] | None = None
    try:
        click.echo(f"starting the MLflow UI on {mask_uri(location.tracking_uri)} ...")
        process = subprocess.Popen(
            command, cwd=root, env=env, stdin=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + UI_START_TIMEOUT
        while process.poll() is not None or not _healthy(url):
            if process.poll() is not None:
                raise click.ClickException(
                    f"mlflow server exited with code {process.returncode} before it was ready "
                    "(its messages are above)"
                )
            if time.monotonic() > deadline:
                raise click.ClickException(
                    f"mlflow server not ready at {url} after {UI_START_TIMEOUT:.0f} s"
                )
            time.sleep(0.25)
        click.echo(f"MLflow UI: {url}  (mlflow server pid {process.pid}; Ctrl-C to stop)")
        if browser:
            _open_browser(url)
        code = process.wait()
        raise click.ClickException(f"mlflow server stopped by itself (exit code {code})")
    except KeyboardInterrupt:
        click.echo("stopping the MLflow UI", err=True)
    finally:
        if process is not None:
            _stop_server(process)
        signal.signal(signal.SIGTERM, previous)


@cli.command()
@_path_argument
@_env_option
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="[default: ui.port, else a free port]",
)
@click.option(
    "--host", default=None, help="Address to listen on [default: ui.host, else 127.0.0.1]."
)
@click.option("--no-browser", is_flag=True, help="Do not open a web browser.")
def ui(
    path: Path | None, env: str | None, port: int | None, host: str | None, no_browser: bool
) -> None:
    """Open the MLflow UI of the configured tracking store.

    Local stores (a folder such as mlruns, sqlite:///...) and databases: runs
    `mlflow server` on the store and its artifact folder, prints the URL once the server
    answers, opens a browser unless --no-browser, and serves until Ctrl-C or SIGTERM
    (exit 0). http(s) tracking servers: prints their URL and opens a browser.
    """
    serve_ui(load_config(path, env=env), port=port, host=host, browser=not no_browser)


def serve_ui(
    config: TrackingConfig,
    *,
    port: int | None = None,
    host: str | None = None,
    browser: bool = True,
) -> None:
    """What ``trackcfg ui`` does with a loaded configuration (shared with ``kedro trackcfg
    ui``): serve a local or database store until Ctrl-C/SIGTERM, or show an http(s) one."""
    location = resolve_store(config.server.mlflow_tracking_uri, _root(config))
    scheme = urllib.parse.urlsplit(location.tracking_uri).scheme.split("+")[0].lower()
    if scheme in ("http", "https"):
        url = location.tracking_uri.rstrip("/")
        click.echo(f"MLflow UI: {mask_uri(url)}")
        if browser:
            _open_browser(url)
        return
    if not (location.is_local or scheme in _DB_PORTS):
        raise click.ClickException(
            f"trackcfg ui cannot serve {mask_uri(location.tracking_uri)}; open that service's "
            "own UI (server.mlflow_tracking_uri)"
        )
    chosen_host = host or config.ui.host or DEFAULT_UI_HOST
    chosen_port = _bind_probe(chosen_host, (port if port is not None else config.ui.port) or 0)
    _serve(config, location, chosen_host, chosen_port, browser=browser)
