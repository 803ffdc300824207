"""``trackcfg check``: would a tracked run start with this configuration?

The checks (config, request headers, store, credentials, experiment or run, TRACKCFG_DISABLE)
and their report.  The store is asked through the probes of ``probes``; what a session would
do about the experiment or run is decided by the session's own rules (``_rules``), so both
say the same thing in the same words.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import click

from trackcfg import _backend
from trackcfg._config import OfflineMode, ResumePolicy, TrackingConfig
from trackcfg._connect import plan_store
from trackcfg._loading import load_config
from trackcfg._rules import (
    TRUTHY,
    experiment_plan,
    keyed_run,
    offline_refusal,
    resume_refusal,
    run_intent,
)
from trackcfg._store import StoreLocation, missing_driver
from trackcfg.exceptions import ConfigError, TrackcfgError

from ._common import (
    DB_PORTS,
    MASK,
    CheckItem,
    Status,
    display_path,
    experiment_name,
    mask_uri,
    project_root,
    setting_origin,
)
from .commands import DEFAULT_CHECK_TIMEOUT
from .probes import (
    Lookup,
    backend_lookup,
    http_lookup,
    sqlite_tables,
    tcp_reachable,
    writable,
)

__all__ = [
    "DEFAULT_CHECK_TIMEOUT",
    "CheckItem",
    "Status",
    "check_and_report",
    "run_checks",
]


def _check_local(location: StoreLocation) -> tuple[CheckItem, bool]:
    """The store line for a local store, and whether the experiment can be looked up."""
    uri = location.tracking_uri
    if location.legacy_file_store and location.local_folder is not None:
        failure = writable(location.local_folder)
        if failure is not None:
            return failure, False
        return (
            CheckItem(
                Status.OK,
                "store",
                f"{display_path(location.local_folder)} is an old-style MLflow file store "
                "(kept as one); writable",
            ),
            True,
        )
    db_text = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
    if not db_text or db_text.startswith(":memory:"):
        return (
            CheckItem(
                Status.WARN,
                "store",
                f"{mask_uri(uri)} is an in-memory database: runs vanish at exit",
            ),
            False,
        )
    db = Path(db_text)
    failure = writable(db.parent)
    if failure is not None:
        return failure, False
    if not db.exists():
        return (
            CheckItem(
                Status.OK,
                "store",
                f"{display_path(db)} does not exist yet; it is created at the first run "
                f"(folder {display_path(db.parent)} writable)",
            ),
            False,
        )
    tables = sqlite_tables(db)
    if isinstance(tables, CheckItem):
        return tables, False
    if "experiments" not in tables:
        return (
            CheckItem(
                Status.OK,
                "store",
                f"{display_path(db)} opens (empty: MLflow sets it up at the first run)",
            ),
            False,
        )
    return CheckItem(Status.OK, "store", f"{display_path(db)} opens (SQLite, MLflow store)"), True


def _headers_item(config: TrackingConfig) -> tuple[CheckItem | None, dict[str, str]]:
    """``server.request_header_provider``: importable, buildable, and the headers it gives
    (their names only: values may be tokens), which the server check then sends too."""
    spec = config.server.request_header_provider
    if not spec.type:
        return None, {}
    source = config.sources.get("server.request_header_provider.type")
    fix = "fix server.request_header_provider" + (f" ({source})" if source else "")
    try:
        if spec.pass_context:
            _backend.header_provider_class(spec.type)
            return (
                CheckItem(
                    Status.OK,
                    "request headers",
                    f"{spec.type}: importable (built with the Kedro context under kedro run; "
                    "not built here)",
                ),
                {},
            )
        provider = _backend.build_header_provider(spec.type, dict(spec.init_kwargs))
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
    origin = f" in {display_path(creds.origin)}" if creds.origin else ""
    empty = [k for k, v in creds.as_env().items() if not v]
    if empty:
        return CheckItem(
            Status.WARN,
            "credentials",
            f"entry {creds.name!r}{origin}: {keys}; empty: {', '.join(empty)}",
        )
    return CheckItem(Status.OK, "credentials", f"entry {creds.name!r}{origin}: {keys}")


def _target_item(config: TrackingConfig, name: str, lookup: Lookup | None) -> CheckItem:
    """What a session would do about the experiment, or the run it would continue: the
    session's own rules (``_rules``) applied to what the store holds."""
    run_id = config.tracking.run.id
    if lookup is None:
        what = f"run {run_id!r}" if run_id else f"experiment {name!r}"
        return CheckItem(Status.SKIP, "experiment", f"{what} not looked up (store not checked)")
    if lookup.error is not None:
        return CheckItem(Status.FAIL, "experiment", f"the store could not be read: {lookup.error}")
    if run_id:
        # check does not know the params a run would log: only the run itself is checked.
        refusal = resume_refusal(
            run_id, lookup.run, {}, resume_running=config.tracking.run.resume_running
        )
        if refusal is not None:
            return CheckItem(Status.FAIL, "run", refusal.problem, refusal.fix)
        assert lookup.run is not None  # a missing run is refused
        return CheckItem(
            Status.OK,
            "run",
            f"run {run_id!r} exists (experiment {lookup.run.experiment_id}); it is continued",
        )
    plan = experiment_plan(name, lookup.experiment, config.tracking.experiment)
    if plan.refusal is not None:
        return CheckItem(Status.FAIL, "experiment", plan.refusal.problem, plan.refusal.fix)
    return CheckItem(Status.OK, "experiment", plan.summary)


def _keyed_item(config: TrackingConfig, lookup: Lookup | None) -> CheckItem | None:
    """Which run ``tracking.run.resume`` would continue (the session's own rule), or None
    when the config continues no run by key."""
    run = config.tracking.run
    if run.key is None or run.resume is ResumePolicy.NEVER or run.id:
        return None
    if lookup is None or lookup.error is not None or lookup.keyed is None:
        return CheckItem(Status.SKIP, "run", f"{run_intent(config)}; runs not looked up")
    # check does not know the params a run would log: only the runs are checked.
    decision = keyed_run(run.key, run.resume, lookup.keyed, {})
    if decision.refusal is not None:
        return CheckItem(Status.FAIL, "run", decision.refusal.problem, decision.refusal.fix)
    return CheckItem(Status.OK, "run", f"a start would {decision.summary}")


def run_checks(
    path: Path | None,
    env: str | None,
    timeout: float,
    emit: Callable[[CheckItem], None],
    *,
    load: Callable[[], TrackingConfig] | None = None,
) -> list[CheckItem]:
    """Every preflight check, each handed to ``emit`` as soon as it is known.  ``load``
    reads the config instead of ``load_config(path, env=env)`` (Kedro's config loader)."""
    items: list[CheckItem] = []

    def add(item: CheckItem) -> None:
        items.append(item)
        emit(item)

    try:
        config = load() if load is not None else load_config(path, env=env)
    except TrackcfgError as exc:
        add(CheckItem(Status.FAIL, "config", str(exc), _config_fix(path, exc)))
        return items
    files = ", ".join(display_path(f) for f in config.files)
    add(
        CheckItem(
            Status.OK,
            "config",
            f"valid ({files})" if files else "valid (no mlflow.yml found: built-in defaults)",
        )
    )
    root = project_root(config)
    plan = plan_store(config, root=root, inherit=False)
    location = plan.destination
    credentials_env = config.credentials.as_env() if config.credentials else {}
    name = experiment_name(config, root)
    run_id = config.tracking.run.id or None
    experiment = None if run_id else name
    key = config.tracking.run.key if config.tracking.run.resume is not ResumePolicy.NEVER else None
    scheme = urllib.parse.urlsplit(location.tracking_uri).scheme.split("+")[0].lower()

    lookup: Lookup | None = None
    headers_item, extra_headers = _headers_item(config)
    if headers_item is not None:
        add(headers_item)
    credentials_item = _credentials_item(config)
    mode = config.server.offline
    offline = plan.offline_location
    sync = f"upload them with `trackcfg sync {display_path(root)}`"
    if mode is not OfflineMode.NEVER and location.is_local:
        add(
            CheckItem(
                Status.SKIP,
                "offline",
                f"server.offline: {mode.value} has nothing to do: the store is local already",
            )
        )
    elif mode is OfflineMode.ALWAYS:
        # Like a session: the server is not contacted; its runs go to the offline store.
        add(
            CheckItem(
                Status.OK,
                "offline",
                f"always: runs go to {display_path(offline.local_folder or root)}, for "
                f"{mask_uri(location.tracking_uri)} (not contacted); {sync}",
            )
        )
        add(credentials_item)
        add(_offline_target(config, name, location, offline, "server.offline: always"))
        return _disable_item(items, add)
    silent: list[CheckItem] = []  # the server did not answer, under server.offline: auto

    def add_store(item: CheckItem) -> None:
        if mode is OfflineMode.AUTO and item.status is Status.FAIL:
            silent.append(item)  # a session would not fail: it would log offline
            item = CheckItem(Status.WARN, item.what, item.detail)
        add(item)

    if location.is_local:
        store_item, can_look = _check_local(location)
        add(store_item)
        if can_look:
            lookup = backend_lookup(location, credentials_env, experiment, run_id, key=key)
        elif store_item.status is not Status.FAIL and not location.legacy_file_store:
            lookup = Lookup()  # a store created at the first run holds nothing yet
    elif scheme in ("http", "https"):
        http_env = {**os.environ, **credentials_env}
        store_item, refused, lookup = http_lookup(
            location.tracking_uri, http_env, experiment, run_id, timeout, extra_headers
        )
        add_store(store_item)
        credentials_item = refused or credentials_item
    elif scheme in DB_PORTS:
        driver = missing_driver(location.tracking_uri)
        if driver is not None:
            # A session would stop there too (the same words): no server to probe for it.
            key = setting_origin(config, "server.mlflow_tracking_uri")
            add(CheckItem(Status.FAIL, "store", driver.problem, f"{driver.fix}; set by {key}"))
        else:
            store_item = tcp_reachable(location.tracking_uri, timeout)
            add_store(store_item)
            if store_item.status is Status.OK:
                lookup = backend_lookup(
                    location, credentials_env, experiment, run_id, timeout, key=key
                )
    else:
        add(
            CheckItem(
                Status.SKIP,
                "store",
                f"{mask_uri(location.tracking_uri)}: trackcfg cannot check this kind of store",
            )
        )
    if mode is OfflineMode.AUTO and not location.is_local:
        if silent:
            add(
                CheckItem(
                    Status.WARN,
                    "offline",
                    f"auto: the server does not answer now, so runs would go to "
                    f"{display_path(offline.local_folder or root)}; {sync}",
                )
            )
            add(credentials_item)
            add(_offline_target(config, name, location, offline, "server.offline: auto"))
            return _disable_item(items, add)
        add(
            CheckItem(
                Status.OK,
                "offline",
                "auto: the server answers now, so runs go to it (when it does not answer at "
                f"session start, to {display_path(offline.local_folder or root)})",
            )
        )
    add(credentials_item)
    add(_target_item(config, name, lookup))
    keyed = _keyed_item(config, lookup)
    if keyed is not None:
        add(keyed)
    return _disable_item(items, add)


def _disable_item(items: list[CheckItem], add: Callable[[CheckItem], None]) -> list[CheckItem]:
    if os.environ.get("TRACKCFG_DISABLE", "").strip().lower() in TRUTHY:
        add(CheckItem(Status.WARN, "tracking", "TRACKCFG_DISABLE is set: sessions log nothing"))
    return items


def _offline_target(
    config: TrackingConfig,
    name: str,
    destination: StoreLocation,
    offline: StoreLocation,
    why: str,
) -> CheckItem:
    """What an offline session would do: refuse a run that lives on the server, else the
    experiment in the offline store (the session's own rules)."""
    refusal = offline_refusal(
        mask_uri(destination.tracking_uri),
        why,
        run_id=config.tracking.run.id or None,
        named_run=None,
        online_parent=None,
        always=config.server.offline is OfflineMode.ALWAYS,
    )
    if refusal is not None:
        return CheckItem(Status.FAIL, "run", refusal.problem, refusal.fix)
    store_item, can_look = _check_local(offline)
    if store_item.status is Status.FAIL:
        return store_item
    lookup = backend_lookup(offline, {}, name, None) if can_look else Lookup()
    return _target_item(config, name, lookup)


def _config_fix(path: Path | None, exc: TrackcfgError) -> str | None:
    """What to do about a configuration that did not load: a missing file is created or
    named right; problems with a file and line are fixed there."""
    if path is not None and not path.exists():
        return "create it with `trackcfg init`, or pass the right path"
    problems = exc.problems if isinstance(exc, ConfigError) else ()
    if problems and all(problem.where is None for problem in problems):
        return None  # no file and line to fix: the message says what to do instead
    if len(problems) > 1:
        return "fix each file and line named above"
    return "fix the file and line named above"


def check_and_report(
    path: Path | None,
    env: str | None,
    timeout: float,
    *,
    load: Callable[[], TrackingConfig] | None = None,
) -> None:
    """``check``'s output and exit status (also ``kedro trackcfg check``'s; ``load``: see
    ``run_checks``)."""
    emit = lambda item: click.echo("\n".join(item.lines()))  # noqa: E731
    items = run_checks(path, env, timeout, emit, load=load)
    failures = [item for item in items if item.status is Status.FAIL]
    if not failures:
        click.echo("a run would start")
        return
    # The first failure in full: one line, or a configuration's problems one per line.
    first = failures[0]
    fix = ""
    if first.fix:
        fix = f"\nfix: {first.fix}" if "\n" in first.detail else f"; fix: {first.fix}"
    click.echo(f"Error: a run would not start: {first.what}: {first.detail}{fix}", err=True)
    raise SystemExit(1)
