"""Kedro hooks: each pipeline run (``kedro run``, ``KedroSession.run()``) is one
``TrackingSession``.

Installed with trackcfg, the hooks register themselves through the ``kedro.hooks`` entry point;
a project turns them off with ``DISABLE_HOOKS_FOR_PLUGINS = ("trackcfg",)`` in settings.py.
Each hook only translates Kedro's call into a session call:

- ``after_context_created``: ``conf/<env>/mlflow.yml`` (merged over ``conf/base``) read through
  the context's own config loader, so environments and resolvers (``${oc.env:...}``) work, and
  ``server.credentials`` picked from Kedro's ``credentials``. The store is not touched.
- ``before_pipeline_run``: a session named after the pipelines (``train+eval``;
  ``__default__``), with the pipeline's ``params:<x>`` inputs as params ``<x>`` and
  ``parameters`` as ``parameters`` (effective values, after ``--params``), tagged with what
  reproduces the run; entered, and shared with worker processes (``ParallelRunner``, any
  start method) through ``TRACKCFG_PARENT_RUN_ID``, ``MLFLOW_TRACKING_URI`` and
  ``MLFLOW_EXPERIMENT_ID``, set for the run's duration.
- ``before_node_run`` … ``after_node_run`` / ``on_node_error``: the run is MLflow's active
  run in the node's thread or worker process, so ``mlflow.log_metric(...)`` in a node lands
  in it.
- ``after_pipeline_run`` / ``on_pipeline_error``: the session ends FINISHED / FAILED; a
  ``PipelineML`` (``trackcfg.kedro.pipeline``) first logs its inference pipeline as the
  run's model (a failure to do so ends the run FAILED).

Ctrl-C and SIGTERM skip Kedro's end hooks (Kedro calls ``on_pipeline_error`` for an
``Exception`` only, and click turns the interrupt into "Aborted!" and exit code 1): the session
then ends KILLED at interpreter exit, or when the next pipeline starts in the same process (a
notebook).  After a SIGTERM the exit hands the signal on, so the process dies by it (exit
status 143) as it would without trackcfg.  While a pipeline runs, a SIGTERM that stops it also
stops the worker processes started since it began (``ParallelRunner``'s): the main thread
would otherwise wait in the executor's shutdown for their nodes to end and save outputs.
One pipeline runs at a time per process: the hooks instance holds the current run's state.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import os
import re
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

try:
    from kedro.framework.hooks import hook_impl
except ModuleNotFoundError as exc:  # trackcfg installed without its Kedro extra
    if exc.name is None or exc.name.partition(".")[0] != "kedro":
        raise
    raise ModuleNotFoundError(
        f'{__name__} needs Kedro, which is not installed: pip install "trackcfg[kedro]"',
        name=exc.name,
    ) from exc

from trackcfg.exceptions import ConfigError, ConfigProblem

# Kedro imports this module through the ``kedro.hooks`` entry point on every ``kedro``
# command (``kedro --help``, ``kedro new``, ``kedro ipython``): the session, the loader and
# the rest load when a hook first needs them (``kedro run``), not here (``import
# trackcfg.kedro`` +~20 ms over Kedro's own hook module, against ~90 ms when they loaded here).
if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from kedro.framework.context import KedroContext
    from kedro.io import CatalogProtocol
    from kedro.pipeline import Pipeline
    from kedro.pipeline.node import Node

    from trackcfg._config import TrackingConfig
    from trackcfg._env import EnvSnapshot
    from trackcfg._session import TrackingSession

__all__ = ["KedroConfigError", "TrackingHooks", "hooks", "kedro_env", "read_config"]

logger = logging.getLogger(__name__)

CONFIG_PATTERNS = ["mlflow*", "mlflow*/**", "**/mlflow*"]


RANDOM_NAME_RESOLVER = "km.random_name"
"""kedro-mlflow's resolver, which its ``mlflow.yml`` template suggests for ``run.name``."""


def read_config(context: KedroContext) -> TrackingConfig:
    """The project's tracking config, read through ``context``'s config loader.

    ``${km.random_name:}`` resolves to a new random run name each time (each pipeline run
    loads the context again); an interpolation Kedro's loader cannot resolve is a
    ``ConfigError`` naming the file."""
    from kedro.config import MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    from trackcfg._loading import config_from_mapping

    _register_random_name()
    loader = context.config_loader
    patterns = getattr(loader, "config_patterns", None)
    if isinstance(patterns, dict):
        patterns.setdefault("mlflow", CONFIG_PATTERNS)
    files = _config_files(context)
    file = files[-1] if files else None
    sections: dict[str, Any] = {}
    for key in ("mlflow", "credentials"):
        try:
            sections[key] = loader[key]
        except (MissingConfigException, KeyError):
            continue
        except OmegaConfBaseException as exc:
            # Credentials' messages may quote values: their error is named, never shown.
            what = f"{type(exc).__name__} in the credentials" if key == "credentials" else exc
            raise KedroConfigError(
                [
                    ConfigProblem(
                        "",
                        f"Kedro's config loader cannot read the {key!r} config: {what}",
                        str(file) if file is not None and key == "mlflow" else None,
                    )
                ]
            ) from exc
    try:
        return config_from_mapping(
            sections.get("mlflow") or {},
            file=file,
            root=context.project_path,
            credentials=sections.get("credentials") or {},
            files=files,
        )
    except ConfigError as exc:
        raise KedroConfigError(exc.problems) from exc


def _register_random_name() -> None:
    """Register ``km.random_name`` with OmegaConf unless a resolver of that name is there.

    OmegaConf's resolvers are one registry per process, which Kedro's own
    ``custom_resolvers`` also fill: registering one is done once and never undone, so it
    is not state to give back (``_state``).  A resolver the project registered itself
    (``CONFIG_LOADER_ARGS["custom_resolvers"]`` in settings.py, kedro-mlflow's hook) is
    kept; settings.py needs no change."""
    from omegaconf import OmegaConf

    from trackcfg._loading import random_run_name

    if OmegaConf.has_resolver(RANDOM_NAME_RESOLVER):
        return
    # register_new_resolver (OmegaConf 2.1 on, as Kedro requires): OmegaConf's own
    # ``register_resolver`` is its deprecated legacy API, which warned on every command.
    with contextlib.suppress(ValueError):  # registered by another thread meanwhile
        OmegaConf.register_new_resolver(RANDOM_NAME_RESOLVER, random_run_name)


class KedroConfigError(ConfigError, click.ClickException):
    """A ``ConfigError`` raised inside a Kedro command: click prints its problems (file:line,
    the fix) and exits with status 1, where any other exception leaving ``kedro run`` is
    printed as a traceback of hundreds of lines that hides them.  Still a ``ConfigError``
    for Python callers (``KedroSession.run()``)."""

    def __init__(self, problems: Sequence[ConfigProblem] | str) -> None:
        ConfigError.__init__(self, problems)
        click.ClickException.__init__(self, self.args[0])  # shown after "Error: "


def _config_files(context: KedroContext) -> list[Path]:
    """The ``mlflow.yml`` files that exist, base first, to name in errors (the last one
    where no line is known)."""
    loader = context.config_loader
    conf = Path(getattr(loader, "conf_source", context.project_path / "conf"))
    found = []
    for env in (getattr(loader, "base_env", "base"), kedro_env(context)):
        for name in ("mlflow.yml", "mlflow.yaml"):
            if env and (conf / env / name).is_file() and conf / env / name not in found:
                found.append(conf / env / name)
    return found


def kedro_env(context: KedroContext) -> str | None:
    """The environment ``context`` reads: ``--env``, else the loader's default (``local``)."""
    return context.env or getattr(context.config_loader, "default_run_env", None)


def _session_name(run_params: Mapping[str, Any]) -> str:
    return "+".join(run_params.get("pipeline_names") or ["__default__"])


def _pipeline_params(pipeline: Pipeline, catalog: CatalogProtocol[Any, Any]) -> dict[str, Any]:
    """``params:<x>`` inputs under ``<x>``, ``parameters`` under ``parameters``.  One missing
    from the catalog is left to the runner, which reports it better."""
    return {
        name.removeprefix("params:"): catalog.load(name)
        for name in sorted(pipeline.inputs())
        if (name == "parameters" or name.startswith("params:")) and name in catalog
    }


def _run_tags(run_params: Mapping[str, Any], env: str | None) -> dict[str, str]:
    """trackcfg's ``kedro.*`` tags, over kedro-mlflow's (``trackcfg.kedro._tags``)."""
    from trackcfg.kedro._tags import kedro_mlflow_tags

    tags = {
        **kedro_mlflow_tags(run_params),
        "kedro.command": _command_line(run_params),
        "kedro.version": str(run_params.get("kedro_version", "")),
        "kedro.session_id": str(run_params.get("run_id", "")),
    }
    if env:
        tags["kedro.env"] = env
    return tags


def _fit_tags(tags: Mapping[str, str], limit: int) -> tuple[dict[str, str], dict[str, str]]:
    """The run's tags within MLflow's tag ``limit``, and the texts to keep as artifacts.

    trackcfg makes these tags itself, so none may stop a run: one that is too long (a
    ``kedro run --params ...`` of thousands of characters) keeps its beginning and says so, and
    its whole text goes to the artifact ``kedro/<name>.txt`` (``kedro/command.txt``)."""
    from trackcfg._params import shorten

    fitted: dict[str, str] = {}
    texts: dict[str, str] = {}
    for key, value in tags.items():
        path = f"kedro/{key.removeprefix('kedro.')}.txt"
        fitted[key] = shorten(value, limit, artifact=path)
        if fitted[key] != value:
            texts[path] = value
            logger.info(
                "tag %r is %d characters long (MLflow's limit: %d); it holds the beginning, "
                "the whole text is the run's artifact %r",
                key,
                len(value),
                limit,
                path,
            )
    return fitted, texts


def _command_line(run_params: Mapping[str, Any]) -> str:
    """The ``kedro run`` command line, or for a run started in Python its equivalent."""
    import click

    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.find_root().info_name == "kedro":
        return shlex.join(["kedro", *sys.argv[1:]])
    words = ["kedro", "run"]

    def option(flag: str, values: Iterable[str] | None) -> None:
        if values:
            words.extend([flag, ",".join(values)])

    option("--pipelines", run_params.get("pipeline_names"))
    option("--env", [run_params["env"]] if run_params.get("env") else None)
    option("--params", [f"{k}={v}" for k, v in _dotted(run_params.get("runtime_params") or {})])
    option("--tags", run_params.get("tags"))
    option("--nodes", run_params.get("node_names"))
    option("--from-nodes", run_params.get("from_nodes"))
    option("--to-nodes", run_params.get("to_nodes"))
    option("--from-inputs", run_params.get("from_inputs"))
    option("--to-outputs", run_params.get("to_outputs"))
    option("--namespaces", run_params.get("namespaces"))
    versions = run_params.get("load_versions") or {}
    option("--load-versions", [f"{k}:{v}" for k, v in versions.items()])
    # Kedro records the runner instance's repr: keep its class, never the address.
    runner = re.fullmatch(r"<([\w.]+) object at 0x[0-9a-fA-F]+>", str(run_params.get("runner")))
    if runner and runner[1].rpartition(".")[2] != "SequentialRunner":
        option("--runner", [runner[1].removeprefix("kedro.runner.").rpartition(".")[2]])
    if run_params.get("only_missing_outputs"):
        words.append("--only-missing-outputs")
    return shlex.join(words)


def _dotted(params: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in params.items():
        if isinstance(value, Mapping) and value:
            out.extend(_dotted(value, f"{prefix}{key}."))
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _terminate(processes: Iterable[BaseProcess], *, wait: float = 0.0) -> None:
    """Send SIGTERM to ``processes`` (``Process.terminate``); wait up to ``wait`` seconds
    in all for them to end."""
    processes = list(processes)
    for process in processes:
        with contextlib.suppress(OSError, ValueError):  # gone already, or closed
            process.terminate()
    deadline = time.monotonic() + wait
    for process in processes:
        with contextlib.suppress(OSError, ValueError, AssertionError):
            process.join(max(deadline - time.monotonic(), 0.0))


class _SigtermRelay:
    """SIGTERM's handler while a pipeline runs: calls the handler it replaced (the sessions'
    trap, or the program's own), and when that raises, so that the main thread leaves the
    pipeline, terminates the processes started since the pipeline began before the exception
    goes on.

    Why: the signal reaches this process only.  ``ParallelRunner`` waits for its workers in
    ``ProcessPoolExecutor.shutdown(wait=True)`` on the way out, and the nodes they run would
    go on to their end and save their outputs.  A terminated worker makes the executor give up
    at once (its pool is broken).  A handler that returns (the program handles the signal and
    goes on) changes nothing.  ``multiprocessing.active_children()`` lists the runner's
    processes whatever the start method; those that were there before (the runner's manager,
    the program's own) are left alone."""

    def __init__(self, replaced: Callable[[int, FrameType | None], Any]) -> None:
        self.replaced = replaced
        self.stopped_by: BaseException | None = None
        self._owner = os.getpid()
        self._before = {child.pid for child in multiprocessing.active_children()}

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._owner:  # a forked worker that kept the handler
            self.replaced(signum, frame)
            return
        try:
            self.replaced(signum, frame)
        except BaseException as exc:
            self.stopped_by = exc
            _terminate(c for c in multiprocessing.active_children() if c.pid not in self._before)
            raise


class TrackingHooks:
    """Translates Kedro's hook calls into one ``TrackingSession`` per pipeline run."""

    def __init__(self) -> None:
        self._config: TrackingConfig | None = None
        self._env: str | None = None
        self._context: KedroContext | None = None
        self._session: TrackingSession | None = None
        self._nodes: dict[tuple[int, str], contextlib.AbstractContextManager[Any]] = {}
        self._relay: _SigtermRelay | None = None
        self._owner = os.getpid()  # the process whose pipeline run ``_session`` is
        self._disabled_env: EnvSnapshot | None = None  # TRACKCFG_DISABLE: a disabled run

    def current_session(self) -> TrackingSession | None:
        """The session of the pipeline running in this process (None in a worker process,
        which has the variables the session shared instead, or between pipeline runs)."""
        return self._session if os.getpid() == self._owner else None

    def current_config(self) -> TrackingConfig | None:
        """The project's tracking config, once a Kedro context was created here."""
        return self._config

    @hook_impl
    def after_context_created(self, context: KedroContext) -> None:
        self._config = read_config(context)
        self._env = kedro_env(context)
        self._context = context

    @hook_impl
    def after_catalog_created(
        self, catalog: CatalogProtocol[Any, Any], conf_catalog: dict[str, Any]
    ) -> None:
        # trackcfg's metric datasets without key/prefix take their catalog name (kedro-mlflow's).
        from trackcfg.kedro.datasets._naming import name_metric_datasets

        name_metric_datasets(catalog, conf_catalog)

    @hook_impl
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: CatalogProtocol[Any, Any]
    ) -> None:
        from trackcfg._backend import open_backend
        from trackcfg._env import EnvSnapshot
        from trackcfg._loading import load_config
        from trackcfg._session import TrackingSession

        self._end(KeyboardInterrupt())  # a previous run here never reached its end hooks
        config = self._config or load_config(run_params["project_path"], env=run_params["env"])
        name = _session_name(run_params)
        params = _pipeline_params(pipeline, catalog)
        tags = _run_tags(run_params, self._env or run_params.get("env"))

        def session_with(tags: Mapping[str, str]) -> TrackingSession:
            return TrackingSession(
                config,
                name=name,
                params=params,
                tags=tags,
                kedro_context=self._context,  # for request_header_provider.pass_context
            )

        session = session_with(tags)
        texts: dict[str, str] = {}
        if session.enabled:  # the limit is the installed mlflow's: asked for a tracked run only
            tags, texts = _fit_tags(tags, open_backend.limits().tag_value)
            session = session_with(tags)
        try:
            session.__enter__()
        except ConfigError as exc:  # e.g. params the param policy refuses: no traceback
            raise KedroConfigError(exc.problems) from exc
        self._session, self._nodes, self._owner = session, {}, os.getpid()
        # Registered after mlflow's exit handler (which would end the run FINISHED): runs first.
        atexit.register(self._interrupted)
        try:
            for path, text in texts.items():
                session.log_text(text, path)
            session.share_with_subprocesses()
            if not session.enabled:  # its datasets, here and in workers, log nothing either
                self._disabled_env = EnvSnapshot()
                self._disabled_env.set("TRACKCFG_DISABLE", "1")
        except BaseException as exc:
            self._end(exc)
            raise
        if session.enabled and threading.current_thread() is threading.main_thread():
            replaced = signal.getsignal(signal.SIGTERM)
            if callable(replaced):  # the sessions' trap (none where SIGTERM is ignored)
                self._relay = _SigtermRelay(replaced)
                signal.signal(signal.SIGTERM, self._relay)

    @hook_impl
    def before_node_run(self, node: Node) -> None:
        from trackcfg._workers import activate_inherited_run

        session = self._session
        activation = session.activate() if session is not None else activate_inherited_run()
        activation.__enter__()
        self._nodes[threading.get_ident(), node.name] = activation

    @hook_impl
    def after_node_run(self, node: Node) -> None:
        self._leave_node(node)

    @hook_impl
    def on_node_error(self, node: Node) -> None:
        self._leave_node(node)

    @hook_impl
    def after_pipeline_run(self, pipeline: Pipeline, catalog: CatalogProtocol[Any, Any]) -> None:
        session = self.current_session()
        if session is not None:  # a PipelineML's inference pipeline, as the run's model
            from trackcfg.kedro.pipeline._logging import log_pipeline_model

            try:
                log_pipeline_model(session, pipeline, catalog)
            except BaseException as exc:
                self._end(exc)
                raise
        self._end(None)

    @hook_impl
    def on_pipeline_error(self, error: Exception) -> None:
        self._end(error)

    def _leave_node(self, node: Node) -> None:
        activation = self._nodes.pop((threading.get_ident(), node.name), None)
        if activation is not None:
            activation.__exit__(None, None, None)

    def _interrupted(self) -> None:
        """At interpreter exit, the pipeline never reached its end hooks: the run ends KILLED.
        After a SIGTERM the session hands the signal on, and the process dies by it before
        the other exit handlers run: the processes multiprocessing would stop or wait for at
        exit (``ParallelRunner``'s manager) are terminated first."""
        from trackcfg._state import Terminated

        relay = self._relay
        stopped_by = relay.stopped_by if relay is not None else None
        if isinstance(stopped_by, Terminated):
            _terminate(multiprocessing.active_children(), wait=5.0)
            self._end(stopped_by)
        else:
            self._end(KeyboardInterrupt())

    def _end(self, error: BaseException | None) -> None:
        relay = self._relay
        self._relay = None
        if relay is not None:  # before the session gives the handler back
            replaced = relay.replaced
            with contextlib.suppress(ValueError):  # not the main thread: it is not ours to undo
                if signal.getsignal(signal.SIGTERM) is relay:
                    signal.signal(signal.SIGTERM, replaced)
        session, self._session, self._nodes = self._session, None, {}
        disabled_env, self._disabled_env = self._disabled_env, None
        if disabled_env is not None:
            disabled_env.restore()
        if session is None:
            return
        atexit.unregister(self._interrupted)
        if error is None:
            session.__exit__(None, None, None)
        else:
            session.__exit__(type(error), error, error.__traceback__)


hooks = TrackingHooks()
