"""Hydra: each job a run, a sweep (``-m``) a parent run with a child per job.

Enable it in the app's config (needs ``pip install 'trackcfg[hydra]'``)::

    hydra:
      callbacks:
        trackcfg:
          _target_: trackcfg.hydra.TrackcfgCallback
          config: mlflow.yml        # default: discovered from the current folder

A single run is one run, named after the job, with the job's overrides as params, FAILED
when the task raised.  A multirun is one parent run for the sweep and one child run per
job, each with its own overrides as params.  Inside the task, ``mlflow.log_*`` logs into
the job's run; the job's resolved config is its artifact ``hydra/config.yaml``.

This adapter only translates Hydra's events into ``TrackingSession`` calls.  Jobs that
Hydra runs in other processes (``hydra/launcher=joblib``) find the sweep's run through the
worker environment contract (``TrackingSession.child_env``): the variables are exported for
the sweep's duration, and carried by the callback itself where a launcher pickles it.
"""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ._session import TrackingSession
from ._workers import PARENT_RUN_ENV

__all__ = ["TrackcfgCallback"]

CONFIG_ARTIFACT = "hydra/config.yaml"


def _override_params(overrides: list[str]) -> dict[str, str]:
    """``["lr=0.1", "+model.depth=3", "~seed"]`` → ``{"lr": "0.1", "model.depth": "3"}``:
    the value each override gives (a deletion gives none)."""
    params: dict[str, str] = {}
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and not key.startswith("~"):
            params[key.lstrip("+")] = value
    return params


def _job_overrides(config: DictConfig) -> list[str]:
    found = OmegaConf.select(config, "hydra.overrides.task", default=None)
    return [str(o) for o in found] if found is not None else []


def _resolved_yaml(config: DictConfig) -> str:
    """The task's config (the ``hydra`` node left out), interpolations resolved where they
    can be."""
    task = OmegaConf.masked_copy(config, [str(k) for k in config if k != "hydra"])
    try:
        return OmegaConf.to_yaml(task, resolve=True)
    except Exception:  # an interpolation that only resolves later (``???``, a custom resolver)
        return OmegaConf.to_yaml(task)


class TrackcfgCallback(Callback):
    """Hydra's callback for trackcfg; ``config`` is the path of ``mlflow.yml`` (relative to
    the folder Hydra was started in)."""

    def __init__(self, config: str | os.PathLike[str] | None = None) -> None:
        self._config = str(Path(config).resolve()) if config is not None else None
        self._sweep: TrackingSession | None = None
        self._sweep_pid: int | None = None
        self._job: TrackingSession | None = None
        self._worker_env: dict[str, str] = {}
        self._at_exit = False

    def __getstate__(self) -> dict[str, Any]:
        """What a launcher running jobs in other processes pickles: the config and the
        sweep's worker variables, never open sessions."""
        return {"config": self._config, "worker_env": self._worker_env}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(None)  # type: ignore[misc]
        self._config = state["config"]
        self._worker_env = dict(state["worker_env"])

    def _session(
        self, name: str, params: dict[str, str] | None = None, tags: dict[str, str] | None = None
    ) -> TrackingSession:
        if not self._at_exit:
            atexit.register(self._end_left_open)
            self._at_exit = True
        return TrackingSession.from_yaml(self._config, name=name, params=params, tags=tags)

    # ------------------------------------------------------------------ a sweep

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        name = str(OmegaConf.select(config, "hydra.job.name", default="sweep"))
        params = _override_params(_job_overrides(config))  # the sweep: lr=0.1,0.2
        sweep = self._session(name, params=params, tags={"trackcfg.hydra": "sweep"})
        sweep.__enter__()
        self._sweep, self._sweep_pid = sweep, os.getpid()
        sweep.share_with_subprocesses()  # launchers that start worker processes
        self._worker_env = sweep.child_env()
        if sweep.enabled:
            sweep.log_text(_resolved_yaml(config), CONFIG_ARTIFACT)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep, self._sweep = self._sweep, None
        self._worker_env = {}
        if sweep is not None:
            sweep.__exit__(None, None, None)

    # ------------------------------------------------------------------ a job

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        overrides = _job_overrides(config)
        params = _override_params(overrides)
        job = str(OmegaConf.select(config, "hydra.job.name", default="job"))
        number = OmegaConf.select(config, "hydra.job.num", default=None)
        sweep = self._sweep if self._sweep_pid == os.getpid() else None
        if sweep is not None:  # a job in the sweep's own process (Hydra's basic launcher)
            session = sweep.child(",".join(overrides) or f"{job}#{number}", params=params)
        else:
            # A worker process of the sweep (a reused one may hold an earlier sweep's).
            os.environ.update(self._worker_env)
            name = job
            if os.environ.get(PARENT_RUN_ENV) and overrides:
                name = ",".join(overrides)
            session = self._session(name, params=params)
        session.__enter__()
        self._job = session
        if session.enabled:
            session.log_text(_resolved_yaml(config), CONFIG_ARTIFACT)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        session, self._job = self._job, None
        if session is None:
            return
        if job_return.status is JobStatus.FAILED:
            error = job_return._return_value
            if isinstance(error, BaseException):
                session.__exit__(type(error), error, error.__traceback__)
                return
        session.__exit__(None, None, None)

    def _end_left_open(self) -> None:
        """At exit, runs Hydra never reported the end of (a job or sweep stopped by an
        exception Hydra does not catch) end with that exception's status (KILLED for Ctrl-C),
        FAILED when it is not known, instead of staying RUNNING."""
        error = getattr(sys, "last_value", None)  # set when an uncaught exception was printed
        if not isinstance(error, BaseException):
            error = RuntimeError("the Hydra job or sweep did not end")
        for session in (self._job, self._sweep):
            if session is not None:
                session.__exit__(type(error), error, None)
        self._job = self._sweep = None
