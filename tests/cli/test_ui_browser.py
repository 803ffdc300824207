"""``trackcfg ui`` seen in a real browser: the printed URL shows the configured experiment's
runs, and a Hydra sweep is one parent run with its jobs as child runs.

One ``trackcfg ui --no-browser --port P`` subprocess serves a project's SQLite store that
holds one run (made with a ``TrackingSession``) and, where hydra-core is installed, the runs of
a real Hydra multirun of three jobs (``python app.py -m lr=...`` with
``trackcfg.hydra.TrackcfgCallback``); headless Chromium (Debian's ``chromium``) renders the
pages (MLflow's UI is a React single-page app: a run's name is on the page only once its
JavaScript has fetched the runs) and the rendered DOM must hold what a user reads there.
On failure, the DOM and a screenshot are kept in the test's ``tmp_path`` and named in the
message.  The last test stops the UI with SIGHUP (a closed terminal).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from helpers import REPO, TRACKING_SETTINGS, project_folder, run_python, store_uri, subprocess_env

CHROMIUM = Path("/usr/bin/chromium")
RUN_NAME = "browsed-run-q7z"
EXPERIMENT = "browsed-experiment"
UI_URL_TIMEOUT = 240.0  # watchdog: mlflow import + server start, 20-65 s on a loaded 2 cores
BROWSER_TIMEOUT = 120.0  # watchdog for one Chromium process
# Virtual time Chromium gives the page's scripts; it does not advance while requests are
# pending, so a slow server makes the dump later, not emptier.
VIRTUAL_TIME_BUDGET_MS = 15000
URL_LINE = re.compile(r"^MLflow UI: (\S+)  \(mlflow server pid (\d+);", re.MULTILINE)
# A Hydra app as a user writes one: the callback enabled in its config, three jobs swept.
HYDRA_APP = """\
import hydra


@hydra.main(version_base=None, config_path=".", config_name="config")
def main(cfg):
    return cfg.lr


if __name__ == "__main__":
    main()
"""
HYDRA_CONFIG = """\
lr: 0.01
hydra:
  callbacks:
    trackcfg:
      _target_: trackcfg.hydra.TrackcfgCallback
      config: mlflow.yml
"""
SWEEP = ("lr=0.1", "lr=0.2", "lr=0.3")  # Hydra's jobs, each named after its overrides


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@attrs.define
class BrowsedUi:
    """The running ``trackcfg ui`` and the run its store holds."""

    process: subprocess.Popen[bytes]
    port: int
    folder: Path
    run_id: str
    experiment_id: str
    sweep_error: str | None
    """Why the Hydra sweep made no runs (hydra-core missing, the app failed), else None."""

    def stdout(self) -> str:
        return (self.folder / "ui-stdout.log").read_text(errors="replace")

    def stderr(self) -> str:
        return (self.folder / "ui-stderr.log").read_text(errors="replace")

    def url_and_server_pid(self, timeout: float = UI_URL_TIMEOUT) -> tuple[str, int]:
        """The URL ``trackcfg ui`` printed once its server answered, and the server's pid."""
        deadline = time.monotonic() + timeout
        while (found := URL_LINE.search(self.stdout())) is None:
            if self.process.poll() is not None:
                pytest.fail(f"trackcfg ui exited early:\n{self.stdout()}\n{self.stderr()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no URL after {timeout:.0f} s:\n{self.stderr()[-3000:]}")
            time.sleep(0.2)
        return found.group(1), int(found.group(2))


@pytest.fixture(scope="module")
def browsed_ui(
    tmp_path_factory: pytest.TempPathFactory, migrated_sqlite_db: Path
) -> Iterator[BrowsedUi]:
    """A project whose store holds the run ``RUN_NAME``, served by ``trackcfg ui``."""
    from trackcfg import TrackingSession

    folder = project_folder(
        tmp_path_factory.mktemp("browsed"),
        name="browsed",
        config=f"tracking:\n  experiment:\n    name: {EXPERIMENT}\n",
        store=migrated_sqlite_db,
    )
    xdg = tmp_path_factory.mktemp("browsed-xdg")
    with pytest.MonkeyPatch.context() as mp:
        # As hermetic as the function-scoped tests (conftest's _hermetic_env, not active yet).
        for name in [k for k in os.environ if k.startswith(TRACKING_SETTINGS)]:
            mp.delenv(name)
        mp.setenv("XDG_CONFIG_HOME", str(xdg))
        mp.chdir(folder)
        with TrackingSession.from_yaml(folder / "mlflow.yml", name=RUN_NAME) as session:
            session.log_metrics({"loss": 0.5})
    assert session.run_id is not None
    assert session.experiment_id is not None

    env = subprocess_env(drop=TRACKING_SETTINGS, XDG_CONFIG_HOME=str(xdg))
    sweep_error = _hydra_sweep(folder, env)
    port = _free_port()
    with (
        (folder / "ui-stdout.log").open("wb") as out,
        (folder / "ui-stderr.log").open("wb") as err,
    ):
        process = subprocess.Popen(
            [sys.executable, "-m", "trackcfg", "ui", "--no-browser", "--port", str(port)],
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    ui = BrowsedUi(process, port, folder, session.run_id, session.experiment_id, sweep_error)
    try:
        yield ui
    finally:
        server = URL_LINE.search(ui.stdout())
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if server is not None and _alive(int(server.group(2))):
            with contextlib.suppress(ProcessLookupError):  # left behind: do not leak it
                os.killpg(int(server.group(2)), signal.SIGKILL)


def _hydra_sweep(folder: Path, env: dict[str, str]) -> str | None:
    """Runs a Hydra multirun of the jobs ``SWEEP`` in ``folder`` into its store, as a user
    does (``python app.py -m ...``); returns why it made no runs, or None."""
    try:
        import hydra  # noqa: F401
    except ImportError:
        return "hydra-core is not installed (pip install 'trackcfg[hydra]')"
    (folder / "app.py").write_text(HYDRA_APP, encoding="utf-8")
    (folder / "config.yaml").write_text(HYDRA_CONFIG, encoding="utf-8")
    swept = run_python(
        "app.py",
        "-m",
        "lr=" + ",".join(o.partition("=")[2] for o in SWEEP),
        cwd=folder,
        env=env,
        timeout=300,
    )
    if swept.returncode != 0:
        return f"the Hydra sweep failed (exit {swept.returncode}):\n{swept.stderr[-3000:]}"
    return None


@pytest.fixture(scope="module", autouse=True)
def _start_ui_early(request: pytest.FixtureRequest) -> None:
    """The server takes 13-60 s to start: launch it with this module's first test."""
    if any(
        "browsed_ui" in getattr(item, "fixturenames", ())
        for item in request.session.items
        if getattr(item, "module", None) is request.module
    ):
        request.getfixturevalue("browsed_ui")


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with a profile of its own (instances running at once never share
    one), as root (no sandbox), without a GPU."""
    command = [
        str(CHROMIUM),
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1400,900",
        f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
        *args,
    ]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=BROWSER_TIMEOUT,
        check=False,
        env=subprocess_env(),
        stdin=subprocess.DEVNULL,
    )


def test_ui_prints_the_url_of_the_experiments_runs(browsed_ui: BrowsedUi) -> None:
    url, _server_pid = browsed_ui.url_and_server_pid()
    assert (
        url == f"http://127.0.0.1:{browsed_ui.port}/#/experiments/{browsed_ui.experiment_id}/runs"
    )
    assert "MLflow's home page" not in browsed_ui.stderr()


def test_the_printed_url_shows_the_run_in_chromium(browsed_ui: BrowsedUi, tmp_path: Path) -> None:
    url, _server_pid = browsed_ui.url_and_server_pid()
    _rendered(tmp_path, url, RUN_NAME)


def _rendered(tmp_path: Path, url: str, expected: str) -> str:
    """The DOM Chromium renders at ``url``; the test fails, keeping the DOM and a screenshot,
    unless ``expected`` is in it."""
    if not CHROMIUM.is_file():
        pytest.skip(
            f"{CHROMIUM} not found: this test opens the UI in headless Chromium "
            "(Debian: apt-get install chromium; .ci/run installs it)"
        )
    tmp_path.mkdir(parents=True, exist_ok=True)
    dumped = _chromium(tmp_path, "--dump-dom", url)
    dom = tmp_path / "dom.html"
    dom.write_text(dumped.stdout)
    if expected in dumped.stdout:
        return dumped.stdout
    screenshot = tmp_path / "ui.png"
    shot = _chromium(tmp_path, f"--screenshot={screenshot}", url)
    pytest.fail(
        f"{expected!r} not on the page {url} (Chromium exit {dumped.returncode}); "
        f"rendered DOM: {dom}; screenshot: {screenshot if screenshot.is_file() else 'none'} "
        f"(Chromium exit {shot.returncode}); Chromium's stderr:\n{dumped.stderr[-2000:]}",
        pytrace=False,
    )


def test_a_hydra_sweep_is_one_parent_run_listing_its_three_jobs(
    browsed_ui: BrowsedUi, tmp_path: Path
) -> None:
    """#27: ``python app.py -m lr=0.1,0.2,0.3`` is, in the UI, one run (named after the app)
    whose page lists three child runs, one per job, each name a link to that job's run."""
    if browsed_ui.sweep_error is not None:
        if browsed_ui.sweep_error.startswith("hydra-core"):
            pytest.skip(browsed_ui.sweep_error)
        pytest.fail(browsed_ui.sweep_error, pytrace=False)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store_uri(browsed_ui.folder))
    runs = client.search_runs([browsed_ui.experiment_id])
    (parent,) = [r for r in runs if r.info.run_name == "app"]
    children = {
        r.info.run_id: r.info.run_name
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert sorted(children.values()) == list(SWEEP)  # the store: the premise of the page
    url, _server_pid = browsed_ui.url_and_server_pid()
    experiment = f"#/experiments/{browsed_ui.experiment_id}"

    # The experiment's runs table: the sweep is one top-level row, named after the app.
    table = _rendered(tmp_path / "table", url, f'runs/{parent.info.run_id}"')
    link = re.search(rf'href="{experiment}/runs/{parent.info.run_id}"><span[^>]*>([^<]*)<', table)
    assert link is not None, "the sweep's run has no row"
    assert link.group(1) == "app"

    # The parent run's page: "Child runs", each job's name linking to its own run.
    page = _rendered(
        tmp_path / "parent",
        f"{url.rpartition('#')[0]}{experiment}/runs/{parent.info.run_id}",
        "Child runs",
    )
    listed = page.split("Child runs", 1)[1].split("key-value-", 1)[0]
    shown = dict(re.findall(rf'<a href="{experiment}/runs/([0-9a-f]{{32}})">([^<]+)</a>', listed))
    assert shown == children, f"the parent run's page lists {shown}, the store has {children}"


def test_ui_stops_on_sighup(browsed_ui: BrowsedUi) -> None:
    """A closed terminal (SIGHUP): the server, in a session of its own, stops too."""
    _url, server_pid = browsed_ui.url_and_server_pid()
    browsed_ui.process.send_signal(signal.SIGHUP)
    assert browsed_ui.process.wait(timeout=60) == 0
    assert "stopping the MLflow UI" in browsed_ui.stderr()
    deadline = time.monotonic() + 30
    while _alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)  # the server's exit status goes to its parent, which has exited
    assert not _alive(server_pid), f"mlflow server (pid {server_pid}) still running"


def test_the_demos_view_commands_run_as_printed(tmp_path: Path, migrated_sqlite_db: Path) -> None:
    """`python3 -m nox -s demo` ends with how to view the run: each command must run in the
    shell that started nox, where nox's virtualenv is not on PATH."""
    project = project_folder(tmp_path / "demo-project", name="demo", store=migrated_sqlite_db)
    (project / "examples").mkdir()
    for name in ("demo.py", "mlflow.yml"):
        shutil.copy(REPO / "examples" / name, project / "examples" / name)
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    env = subprocess_env(drop=TRACKING_SETTINGS, PATH=path, NOX_CURRENT_SESSION="demo")
    done = run_python("examples/demo.py", cwd=project, env=env, timeout=240)
    assert done.returncode == 0, done.stderr
    assert "view it (" in done.stdout, done.stdout
    shown = done.stdout.split("view it (", 1)[1].splitlines()[1:]
    commands = [line.strip() for line in shown if line.startswith("  ")]
    assert commands[0] == "python3 -m nox -s ui"
    assert (
        'session.run("trackcfg", "ui", "examples/mlflow.yml"' in (REPO / "noxfile.py").read_text()
    )
    assert len(commands) == 2, done.stdout
    ran = subprocess.run(
        [*shlex.split(commands[1]), "--help"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, f"{commands[1]}: {ran.stderr}"
    assert "Usage: trackcfg ui [OPTIONS] [PATH]" in ran.stdout
