"""Hostile and broken configurations (issue 16, items 4, 5, 6, 13 and 15): each is one clear
``ConfigError`` (or a failed check) with its file and line, quickly, never a hang, a raw
Python error or a traceback.

What could hang or eat memory on a regression (YAML bombs, huge files, a database that never
answers) runs in a child process under a memory limit, with a generous timeout as a
watchdog: a regression fails the test instead of taking the machine.
"""

from __future__ import annotations

import json
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import line_of, project_folder, read_runs, store_uri, subprocess_env, write

from trackcfg import ConfigError, TrackingSession, TrackingUnavailableError, load_config

WATCHDOG = 90.0
"""Seconds a child process may take before the test fails: never reached when things work."""
MEMORY_LIMIT = 2 * 1024**3
"""Address space of a child process: an alias bomb expanding without bound stops there."""
QUICK = 10.0
"""Seconds within which a refusal must come (typically 0.1-0.3 s; generous for a loaded
machine): before these fixes the same cases took minutes or never ended."""

RANDOM_NAME = re.compile(r"[a-z]+-[a-z]+-\d{1,3}")


# --------------------------------------------------------------------------------------------
# Helpers.


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_child(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """``python *args`` under the memory limit and the watchdog; the result and its seconds."""
    started = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, *args],
            cwd=cwd,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=WATCHDOG,
            check=False,
            preexec_fn=_limit_memory,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{args} still running after {WATCHDOG:g} s: {exc.stderr!r:.2000}")
    return result, time.monotonic() - started


LOAD_SCRIPT = """
import json, sys, time
import trackcfg
started = time.monotonic()
try:
    trackcfg.load_config(sys.argv[1] if len(sys.argv) > 1 else None)
    outcome = {"type": None, "message": None}
except Exception as exc:
    outcome = {"type": type(exc).__name__, "message": str(exc)}
outcome["seconds"] = time.monotonic() - started
print(json.dumps(outcome))
"""


def load_in_child(cwd: Path, *path: str) -> dict[str, Any]:
    """``load_config(path)`` in a child process: the error's type and text, and the time."""
    result, _ = run_child("-c", LOAD_SCRIPT, *path, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome: dict[str, Any] = json.loads(result.stdout)
    return outcome


def trackcfg_cli(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    return run_child("-m", "trackcfg", *args, cwd=cwd)


def assert_config_error_output(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """The CLI's way to report a bad configuration: ``Error: ...`` on stderr, exit code 1,
    no traceback."""
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.startswith("Error: invalid trackcfg configuration"), result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


def alias_bomb(levels: int = 9) -> str:
    """A "billion laughs" mlflow.yml of a few hundred bytes: 9**levels strings once
    expanded, under a key the loader reads (a header provider's init_kwargs)."""
    lines = ["server:", "  request_header_provider:", "    init_kwargs:"]
    lines.append('      l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]')
    for i in range(1, levels):
        lines.append(f"      l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


BOMB_PROBLEM = (
    "'server.request_header_provider.init_kwargs.l4': expands to more than 10,000 values "
    "(an alias, *name, repeats everything its anchor holds); no configuration is that large"
)
"""Where the expansion passes the limit: 10 + 91 + 820 + 7,381 values in l0 to l3."""


class SilentDatabase:
    """A TCP server on 127.0.0.1 that accepts every connection and never says a word, like a
    database host whose server process hangs.  ``answer_ssl_request``: it answers
    PostgreSQL's SSL request ("N", no TLS) first, then goes silent, like a server that hangs
    after the first exchange.  ``accepted`` holds the monotonic time of each connection."""

    def __init__(self, *, answer_ssl_request: bool = False) -> None:
        self.answer_ssl_request = answer_ssl_request
        self.accepted: list[float] = []
        self._connections: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def uri(self, dialect: str = "postgresql+psycopg2") -> str:
        return f"{dialect}://alice:pw-do-not-print@127.0.0.1:{self.port}/mlflow"

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:  # closed
                return
            self.accepted.append(time.monotonic())
            self._connections.append(connection)
            if self.answer_ssl_request:
                threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    @staticmethod
    def _answer(connection: socket.socket) -> None:
        try:
            if connection.recv(8)[4:] == (80877103).to_bytes(4, "big"):
                connection.sendall(b"N")
            while connection.recv(65536):  # the startup packet: never answered
                pass
        except OSError:
            return

    def close(self) -> None:
        self._listener.close()
        for connection in self._connections:
            connection.close()


@pytest.fixture
def silent_database() -> Iterator[SilentDatabase]:
    server = SilentDatabase()
    yield server
    server.close()


@pytest.fixture
def hanging_database() -> Iterator[SilentDatabase]:
    server = SilentDatabase(answer_ssl_request=True)
    yield server
    server.close()


# --------------------------------------------------------------------------------------------
# Item 4: YAML bombs, huge files, values no user means.


def test_an_alias_bomb_is_refused_by_load_config_within_a_second(tmp_path: Path) -> None:
    config = write(project_folder(tmp_path / "proj") / "mlflow.yml", alias_bomb())
    assert config.stat().st_size < 1000

    outcome = load_in_child(tmp_path, str(config))

    assert outcome["type"] == "ConfigError", outcome
    assert outcome["message"] == (
        f"invalid trackcfg configuration: {config}:{line_of(config, 'l4:')}: {BOMB_PROBLEM}"
    )
    assert outcome["seconds"] < QUICK


@pytest.mark.parametrize("command", [["show"], ["check", "--timeout", "2"]])
def test_an_alias_bomb_fails_show_and_check_quickly(tmp_path: Path, command: list[str]) -> None:
    project = project_folder(tmp_path / "proj")
    config = write(project / "mlflow.yml", alias_bomb())

    result, seconds = trackcfg_cli(*command, cwd=project)

    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"{config}:{line_of(config, 'l4:')}: {BOMB_PROBLEM}" in result.stdout + result.stderr
    assert seconds < QUICK + 5  # a Python start and the CLI's imports on top


def test_a_50_mb_config_file_is_refused_unread(tmp_path: Path) -> None:
    project = project_folder(tmp_path / "proj")
    config = project / "mlflow.yml"
    with config.open("w", encoding="utf-8") as stream:
        stream.write("tracking:\n  run:\n    name: ")
        for _ in range(50):
            stream.write("x" * 1024 * 1024)
        stream.write("\n")

    outcome = load_in_child(project)

    assert outcome["type"] == "ConfigError", outcome
    size = config.stat().st_size
    assert (
        f"{config}: (top level): the file is {size:,} bytes; configuration files are "
        "limited to 262,144 bytes (256 KiB)"
    ) in outcome["message"]
    assert outcome["seconds"] < QUICK


def test_a_file_of_many_keys_is_refused_at_the_limit_quickly(tmp_path: Path) -> None:
    """Under the size limit, the parser's time grows with the keys (a 1 MiB file of short
    lines took it 10 s): it stops past 2,000 keys and values."""
    project = project_folder(tmp_path / "proj")
    config = write(project / "mlflow.yml", "".join(f"k{i}: v\n" for i in range(20_000)))
    assert config.stat().st_size < 256 * 1024

    outcome = load_in_child(project)

    assert outcome["type"] == "ConfigError", outcome
    assert "holds more than 2,000 keys and values" in outcome["message"]
    assert outcome["message"].count("\n") < 5  # one problem, not 20,000 unknown keys
    assert outcome["seconds"] < QUICK


def test_a_50_mb_run_name_is_refused_naming_the_key() -> None:
    name = "x" * 50_000_000
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        load_config(overrides={"tracking.run.name": name})
    assert time.monotonic() - started < QUICK
    assert str(caught.value) == (
        "invalid trackcfg configuration: override 'tracking.run.name': "
        "'tracking.run.name': is 50,000,000 characters long; MLflow keeps at most 250 for a "
        "run name"
    )


def test_names_longer_than_mlflow_takes_are_refused_with_their_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = project_folder(tmp_path / "proj")
    config = write(
        project / "mlflow.yml",
        f"""\
        tracking:
          experiment:
            name: {"e" * 501}
          run:
            name: {"r" * 251}
        """,
    )
    monkeypatch.setenv("TRACKCFG_UI__HOST", "h" * 100_000)

    with pytest.raises(ConfigError) as caught:
        load_config(project)

    assert [str(p) for p in caught.value.problems] == [
        f"{config}:3: 'tracking.experiment.name': is 501 characters long; MLflow accepts at "
        "most 500 for an experiment name",
        f"{config}:5: 'tracking.run.name': is 251 characters long; MLflow keeps at most 250 "
        "for a run name",
        "env TRACKCFG_UI__HOST: 'ui.host': is 100,000 characters long; no setting takes more "
        "than 20,000",
    ]
    assert len(str(caught.value)) < 2000  # no value quoted


def test_a_run_name_at_the_limit_loads() -> None:
    config = load_config(overrides={"tracking.run.name": "r" * 250})
    assert config.tracking.run.name == "r" * 250


# --------------------------------------------------------------------------------------------
# Item 5: a database that accepts the connection and never answers.


def test_check_fails_within_its_timeout_on_a_database_that_never_answers(
    tmp_path: Path, silent_database: SilentDatabase
) -> None:
    project = project_folder(
        tmp_path / "proj", config=f"server:\n  mlflow_tracking_uri: {silent_database.uri()}\n"
    )

    result, seconds = trackcfg_cli("check", "--timeout", "2", cwd=project)

    assert result.returncode == 1, result.stderr[-3000:]
    port = silent_database.port
    assert (
        f"[FAIL] store: 127.0.0.1:{port} accepts connections but does not answer as "
        "PostgreSQL does: no answer"
    ) in result.stdout
    assert "--timeout 2)" in result.stdout
    assert "Error: a run would not start: store:" in result.stderr
    assert "pw-do-not-print" not in result.stdout + result.stderr
    assert silent_database.accepted  # it was asked
    assert seconds < 2 + QUICK


def test_check_fails_within_its_timeout_on_a_database_that_hangs_after_its_first_answer(
    tmp_path: Path, hanging_database: SilentDatabase
) -> None:
    """The database answers the probe, then hangs at the login: the driver's own lookup
    gives up after --timeout (MLflow's would retry for minutes), and MLflow is not asked."""
    project = project_folder(
        tmp_path / "proj", config=f"server:\n  mlflow_tracking_uri: {hanging_database.uri()}\n"
    )

    result, seconds = trackcfg_cli("check", "--timeout", "2", cwd=project)

    assert result.returncode == 1, result.stderr[-3000:]
    assert f"[ ok ] store: 127.0.0.1:{hanging_database.port} answers as PostgreSQL" in (
        result.stdout
    )
    # The driver's "timeout expired" (libpq's connect_timeout), or check's own, a second
    # later, on a machine too busy for the driver's timer to come first.
    assert re.search(
        r"\[FAIL\] experiment: the store could not be read: (.* timeout expired|no answer to "
        r"a table listing within --timeout 2 \(waited 3\.\d s\))\n",
        result.stdout,
    ), result.stdout
    assert "pw-do-not-print" not in result.stdout + result.stderr
    assert len(hanging_database.accepted) == 2  # the probe, the driver's login: no retries
    assert seconds < 2 + QUICK


@pytest.fixture
def empty_postgres_database() -> Iterator[str]:
    """A new, empty database on the TRACKCFG_TEST_POSTGRES_URL server (the session-wide
    one of conftest is filled by other tests), dropped afterwards; its SQLAlchemy URI."""
    import importlib
    import secrets
    import urllib.parse

    base = os.environ.get("TRACKCFG_TEST_POSTGRES_URL", "").strip()
    if not base:
        pytest.skip("TRACKCFG_TEST_POSTGRES_URL is not set: no PostgreSQL server to use")
    psycopg2: Any = importlib.import_module("psycopg2")
    name = f"trackcfg_empty_{secrets.token_hex(6)}"
    admin = psycopg2.connect(base)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {name}")
        parts = urllib.parse.urlsplit(base)
        yield urllib.parse.urlunsplit(parts._replace(scheme="postgresql+psycopg2", path=f"/{name}"))
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def test_check_on_an_empty_postgres_database_sets_nothing_up(
    tmp_path: Path, empty_postgres_database: str
) -> None:
    """MLflow's lookup would create its tables (seconds of migrations) in an empty database:
    check lists the tables through the driver and stops there, as for an empty SQLite."""
    import sqlalchemy

    project = project_folder(
        tmp_path / "proj", config=f"server:\n  mlflow_tracking_uri: {empty_postgres_database}\n"
    )

    result, _ = trackcfg_cli("check", "--timeout", "5", cwd=project)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ ok ] experiment: 'proj' does not exist; it will be created" in result.stdout
    engine = sqlalchemy.create_engine(empty_postgres_database)
    try:
        assert sqlalchemy.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------------
# Item 6: wrong bytes, deep nesting, long numbers.


def test_a_mlflow_yml_that_is_not_utf8_names_its_file_and_line(tmp_path: Path) -> None:
    project = project_folder(tmp_path / "proj")
    config = project / "mlflow.yml"
    config.write_bytes(b"tracking:\n  run:\n    name: caf\xe9\n")

    with pytest.raises(ConfigError) as caught:
        load_config(project)

    assert str(caught.value) == (
        f"invalid trackcfg configuration: {config}:3: (top level): not UTF-8 text (a byte on "
        "this line is not); save it as UTF-8"
    )


def test_a_credentials_yml_that_is_not_utf8_names_its_file_and_line(tmp_path: Path) -> None:
    project = project_folder(tmp_path / "proj", config="server:\n  credentials: db\n")
    credentials = project / "credentials.yml"
    credentials.write_bytes(b"db:\n  PGPASSWORD: s3cr\xe9t\n")

    with pytest.raises(ConfigError) as caught:
        load_config(project)

    assert (
        f"{credentials}:2: (top level): not UTF-8 text (a byte on this line is not); save it "
        "as UTF-8"
    ) in str(caught.value)
    assert "s3cr" not in str(caught.value)


def test_10000_levels_of_nesting_are_refused_with_the_file_and_line(tmp_path: Path) -> None:
    project = project_folder(tmp_path / "proj")
    config = write(
        project / "mlflow.yml", "ui:\n  host: x\nserver: " + "[" * 10_000 + "]" * 10_000 + "\n"
    )

    outcome = load_in_child(project)

    assert outcome["type"] == "ConfigError", outcome
    assert outcome["message"] == (
        f"invalid trackcfg configuration: {config}:3: (top level): nested deeper than 50 "
        "levels; no configuration is that deep"
    )
    assert outcome["seconds"] < QUICK


def test_a_5000_digit_integer_is_refused_with_the_file_and_line(tmp_path: Path) -> None:
    project = project_folder(tmp_path / "proj")
    config = write(project / "mlflow.yml", f"server:\n  request_timeout: {'9' * 5000}\n")

    with pytest.raises(ConfigError) as caught:
        load_config(project)

    assert str(caught.value) == (
        f"invalid trackcfg configuration: {config}:2: (top level): a number of 5,000 digits; "
        "no setting takes one that long (quote it if it is text)"
    )


def test_a_5000_digit_integer_in_a_variable_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRACKCFG_SERVER__REQUEST_TIMEOUT", "9" * 5000)

    with pytest.raises(ConfigError) as caught:
        load_config()

    assert str(caught.value) == (
        "invalid trackcfg configuration: env TRACKCFG_SERVER__REQUEST_TIMEOUT: "
        "'server.request_timeout': expected an integer, got a number of 5,000 digits"
    )


def test_a_large_integer_within_pythons_limit_is_refused_too(tmp_path: Path) -> None:
    project = project_folder(tmp_path / "proj")
    config = write(project / "mlflow.yml", f"ui:\n  port: {'9' * 4000}\n")

    with pytest.raises(ConfigError) as caught:
        load_config(project)

    assert str(caught.value) == (
        f"invalid trackcfg configuration: {config}:2: 'ui.port': a number above "
        "9,223,372,036,854,775,807; no setting takes one that large (quote it if it is text)"
    )


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"tracking:\n  run:\n    name: caf\xe9\n", ":3: (top level): not UTF-8 text"),
        (b"server: " + b"[" * 10_000 + b"]" * 10_000 + b"\n", ":1: (top level): nested deeper"),
        (b"server:\n  request_timeout: " + b"9" * 5000 + b"\n", ":2: (top level): a number of"),
    ],
    ids=["latin-1", "nesting", "digits"],
)
def test_the_cli_prints_one_error_line_never_a_traceback(
    tmp_path: Path, content: bytes, needle: str
) -> None:
    project = project_folder(tmp_path / "proj")
    (project / "mlflow.yml").write_bytes(content)

    result, _ = trackcfg_cli("show", cwd=project)

    assert_config_error_output(result, f"{project / 'mlflow.yml'}{needle}")


def test_a_date_is_its_text_as_under_kedro_and_show_prints_it(tmp_path: Path) -> None:
    """ruamel reads 2024-01-01 as a date: a run name was refused for it, and `show` died on
    one in init_kwargs (a date is not JSON).  Kedro's loader keeps the text; so does this one."""
    project = project_folder(
        tmp_path / "proj",
        config=(
            "server:\n  request_header_provider:\n    init_kwargs:\n      since: 2001-12-14\n"
            "tracking:\n  run:\n    name: 2024-01-01\n"
        ),
    )
    assert load_config(project).tracking.run.name == "2024-01-01"

    result, _ = trackcfg_cli("show", "--json", cwd=project)

    assert result.returncode == 0, result.stderr[-3000:]
    keys = json.loads(result.stdout)["keys"]
    assert keys["server.request_header_provider.init_kwargs"]["value"] == {"since": "2001-12-14"}


# --------------------------------------------------------------------------------------------
# Item 13: a broken mlflow.yml found by discovery; tagged collections.


def _looping_link(path: Path) -> Path:
    os.symlink(path.name, path)  # a link to itself
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p.mkdir(), "is a folder, not a file"),
        (_looping_link, "cannot read the file (a symbolic link): "),
        (lambda p: os.symlink("gone.yml", p), "cannot read the file (a symbolic link): "),
    ],
    ids=["folder", "symlink-loop", "dangling-link"],
)
@pytest.mark.parametrize("place", ["mlflow.yml", "conf/local/mlflow.yml", "conf/base/mlflow.yml"])
def test_a_broken_mlflow_yml_found_by_discovery_is_an_error_not_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make: Any, reason: str, place: str
) -> None:
    project = project_folder(tmp_path / "proj")
    (project / "conf" / "base").mkdir(parents=True)
    (project / "conf" / "local").mkdir()
    broken = project / place
    make(broken)
    monkeypatch.chdir(project)

    with pytest.raises(ConfigError) as caught:
        load_config()

    assert f"{broken}: (top level): {reason}" in str(caught.value)


def test_a_broken_mlflow_yml_named_explicitly_says_the_same(tmp_path: Path) -> None:
    project = project_folder(tmp_path / "proj")
    broken = _looping_link(project / "mlflow.yml")

    with pytest.raises(ConfigError) as caught:
        load_config(broken)

    assert f"{broken}: (top level): cannot read the file (a symbolic link): " in str(caught.value)


def test_a_broken_mlflow_yml_in_the_user_config_dir_is_an_error(
    tmp_path: Path, user_config_dir: Path
) -> None:
    (user_config_dir / "mlflow.yml").mkdir()
    project = project_folder(tmp_path / "proj", config="ui:\n  port: 5000\n")

    with pytest.raises(ConfigError, match="is a folder, not a file"):
        load_config(project)


@pytest.mark.parametrize(
    ("key", "value", "tag"),
    [
        ("server.request_header_provider.init_kwargs", "!!python/object:os.system {}", None),
        ("server.request_header_provider.init_kwargs", "!Foo {a: 1}", "!Foo"),
        ("server.request_header_provider.init_kwargs", "!!omap [a: 1]", "!!omap"),
        ("server.request_header_provider.init_kwargs", "!!set {a: null}", "!!set"),
        ("tracking.disable_tracking.pipelines", "!Foo [train]", "!Foo"),
        ("tracking.disable_tracking.pipelines", "!!python/tuple [train]", None),
        ("tracking.experiment.create_experiment_kwargs.tags", "!!binary aGVsbG8=", "!!binary"),
    ],
)
def test_tagged_collections_are_refused_with_their_file_and_line(
    tmp_path: Path, key: str, value: str, tag: str | None
) -> None:
    *sections, last = key.split(".")
    text = "".join(f"{'  ' * i}{s}:\n" for i, s in enumerate(sections))
    text += f"{'  ' * len(sections)}{last}: {value}\n"
    project = project_folder(tmp_path / "proj", config=text)
    config = project / "mlflow.yml"

    with pytest.raises(ConfigError) as caught:
        load_config(project)

    shown = tag or value.split(" ")[0]
    assert [str(p) for p in caught.value.problems] == [
        f"{config}:{len(sections) + 1}: '{key}': tagged values ({shown}) are not allowed"
    ]


def test_a_tagged_document_is_refused(tmp_path: Path) -> None:
    project = project_folder(
        tmp_path / "proj", config="!!python/object/apply:os.system\nui:\n  port: 5000\n"
    )
    with pytest.raises(ConfigError, match=r"mlflow.yml:1: \(top level\): tagged values"):
        load_config(project)


# --------------------------------------------------------------------------------------------
# Item 15: kedro-mlflow's ${km.random_name:} outside Kedro (the Kedro run: test_kedro.py).

KM_RANDOM_NAME = """\
server:
  mlflow_tracking_uri: mlruns
tracking:
  run:
    name: "${km.random_name:}"
"""


def test_a_script_session_gets_a_random_run_name_for_km_random_name(
    tmp_path: Path, migrated_sqlite_db: Path
) -> None:
    project = project_folder(tmp_path / "proj", config=KM_RANDOM_NAME, store=migrated_sqlite_db)

    for _ in range(2):
        with TrackingSession.from_yaml(project / "mlflow.yml", name="script"):
            pass

    names = [run.info.run_name for run in read_runs(store_uri(project))]
    assert len(names) == 2
    assert all(RANDOM_NAME.fullmatch(name) for name in names), names
    assert names[0] != names[1]


def test_show_and_check_agree_with_a_run_on_km_random_name(
    tmp_path: Path, migrated_sqlite_db: Path
) -> None:
    project = project_folder(tmp_path / "proj", config=KM_RANDOM_NAME, store=migrated_sqlite_db)

    shown, _ = trackcfg_cli("show", "--json", cwd=project)
    checked, _ = trackcfg_cli("check", cwd=project)

    assert shown.returncode == 0, shown.stderr
    name = json.loads(shown.stdout)["keys"]["tracking.run.name"]
    assert RANDOM_NAME.fullmatch(name["value"]), name
    assert name["where"] == "mlflow.yml:5"
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "[ ok ] config: valid" in checked.stdout
    assert checked.stdout.rstrip().endswith("a run would start")


def test_km_random_name_only_as_a_whole_text_value(tmp_path: Path) -> None:
    project = project_folder(
        tmp_path / "proj",
        config='tracking:\n  run:\n    name: "nightly-${km.random_name:}"\n',
    )
    assert load_config(project).tracking.run.name == "nightly-${km.random_name:}"


def test_a_session_on_a_database_that_never_answers_fails_within_its_timeout(
    tmp_path: Path, silent_database: SilentDatabase
) -> None:
    """MLflow alone retries creating its engine for ~100 s, then raises SQLAlchemy's error;
    the session connects once first, within server.request_timeout, and says so."""
    file = (
        project_folder(
            tmp_path / "proj",
            config=(
                f"server:\n  mlflow_tracking_uri: {silent_database.uri()}\n  request_timeout: 2\n"
            ),
        )
        / "mlflow.yml"
    )
    config = load_config(file)
    session = TrackingSession(config, name="train")
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError) as info:  # noqa: SIM117
        with session:
            pytest.fail("the block must not run")
    seconds = time.monotonic() - started

    message = str(info.value)
    assert message.startswith(
        f"database store postgresql+psycopg2://alice:***@127.0.0.1:{silent_database.port}/"
        "mlflow?connect_timeout=2 did not accept a connection (OperationalError: "
    )
    assert "raise server.request_timeout" in message
    assert "pw-do-not-print" not in message
    assert silent_database.accepted
    assert seconds < 2 * 2 + 20  # one connect timeout (x2 for libpq's host retries) + slack
