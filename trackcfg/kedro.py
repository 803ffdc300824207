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
- ``after_pipeline_run`` / ``on_pipeline_error``: the session ends FINISHED / FAILED.

Ctrl-C and SIGTERM skip Kedro's end hooks: the session then ends KILLED at interpreter exit, or
when the next pipeline starts in the same process (a notebook).  One pipeline runs at a time
per process: the hooks instance holds the current run's state.
"""

from __future__ import annotations

import atexit
import contextlib
import re
import shlex
import sys
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kedro.framework.hooks import hook_impl

from ._loading import config_from_mapping, load_config
from ._session import TrackingSession
from ._workers import activate_inherited_run

if TYPE_CHECKING:
    from kedro.framework.context import KedroContext
    from kedro.io import CatalogProtocol
    from kedro.pipeline import Pipeline
    from kedro.pipeline.node import Node

    from ._config import TrackingConfig

__all__ = ["TrackingHooks", "hooks", "read_config"]

CONFIG_PATTERNS = ["mlflow*", "mlflow*/**", "**/mlflow*"]


def read_config(context: KedroContext) -> TrackingConfig:
    """The project's tracking config, read through ``context``'s config loader."""
    from kedro.config import MissingConfigException

    loader = context.config_loader
    patterns = getattr(loader, "config_patterns", None)
    if isinstance(patterns, dict):
        patterns.setdefault("mlflow", CONFIG_PATTERNS)
    sections: dict[str, Any] = {}
    for key in ("mlflow", "credentials"):
        with contextlib.suppress(MissingConfigException, KeyError):
            sections[key] = loader[key]
    return config_from_mapping(
        sections.get("mlflow") or {},
        file=_config_file(context),
        root=context.project_path,
        credentials=sections.get("credentials") or {},
    )


def _config_file(context: KedroContext) -> Path | None:
    """The most specific ``mlflow.yml`` that exists, to name in errors."""
    loader = context.config_loader
    conf = Path(getattr(loader, "conf_source", context.project_path / "conf"))
    for env in (_env_name(context), getattr(loader, "base_env", "base")):
        for name in ("mlflow.yml", "mlflow.yaml"):
            if env and (conf / env / name).is_file():
                return conf / env / name
    return None


def _env_name(context: KedroContext) -> str | None:
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
    tags = {
        "kedro.command": _command_line(run_params),
        "kedro.version": str(run_params.get("kedro_version", "")),
        "kedro.session_id": str(run_params.get("run_id", "")),
    }
    if env:
        tags["kedro.env"] = env
    return tags


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


class TrackingHooks:
    """Translates Kedro's hook calls into one ``TrackingSession`` per pipeline run."""

    def __init__(self) -> None:
        self._config: TrackingConfig | None = None
        self._env: str | None = None
        self._context: KedroContext | None = None
        self._session: TrackingSession | None = None
        self._nodes: dict[tuple[int, str], contextlib.AbstractContextManager[Any]] = {}

    @hook_impl
    def after_context_created(self, context: KedroContext) -> None:
        self._config = read_config(context)
        self._env = _env_name(context)
        self._context = context

    @hook_impl
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: CatalogProtocol[Any, Any]
    ) -> None:
        self._end(KeyboardInterrupt())  # a previous run here never reached its end hooks
        config = self._config or load_config(run_params["project_path"], env=run_params["env"])
        session = TrackingSession(
            config,
            name=_session_name(run_params),
            params=_pipeline_params(pipeline, catalog),
            tags=_run_tags(run_params, self._env or run_params.get("env")),
            kedro_context=self._context,  # for request_header_provider.pass_context
        )
        session.__enter__()
        self._session, self._nodes = session, {}
        session.share_with_subprocesses()
        # Registered after mlflow's exit handler (which would end the run FINISHED): runs first.
        atexit.register(self._interrupted)

    @hook_impl
    def before_node_run(self, node: Node) -> None:
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
    def after_pipeline_run(self) -> None:
        self._end(None)

    @hook_impl
    def on_pipeline_error(self, error: Exception) -> None:
        self._end(error)

    def _leave_node(self, node: Node) -> None:
        activation = self._nodes.pop((threading.get_ident(), node.name), None)
        if activation is not None:
            activation.__exit__(None, None, None)

    def _interrupted(self) -> None:
        self._end(KeyboardInterrupt())

    def _end(self, error: BaseException | None) -> None:
        session, self._session, self._nodes = self._session, None, {}
        if session is None:
            return
        atexit.unregister(self._interrupted)
        if error is None:
            session.__exit__(None, None, None)
        else:
            session.__exit__(type(error), error, error.__traceback__)


hooks = TrackingHooks()
