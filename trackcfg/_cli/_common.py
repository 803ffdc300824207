"""What more than one command of the ``trackcfg`` CLI uses.

Display helpers (paths shown relative to the current folder, ``mask_uri`` and ``MASK`` for
secrets), the experiment name and project root a configuration stands for, the database
schemes trackcfg knows the ports of, and the line of ``trackcfg check``'s report
(``CheckItem``), which its probes produce too.  The PATH argument and ``--env`` option are
declared with the commands, in ``commands``.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path

import attrs

from trackcfg._config import TrackingConfig
from trackcfg._discovery import DEFAULT_ENV
from trackcfg._store import MASK, mask_uri

__all__ = [
    "DB_PORTS",
    "MASK",
    "CheckItem",
    "Status",
    "display_path",
    "effective_env",
    "experiment_name",
    "mask_uri",
    "project_root",
    "setting_origin",
]

DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def display_path(path: str | Path) -> str:
    """A path relative to the current folder when it lies below it: shorter to read."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def setting_origin(config: TrackingConfig, key: str) -> str:
    """``key``, with where its value came from unless a default (``file:line`` with the
    file shown relative to the current folder): the setting a fix names."""
    source = config.sources.get(key)
    if source is None or source.kind == "default":
        return key
    if source.kind == "file" and source.detail is not None:
        shown = display_path(source.detail)
        return f"{key} ({shown}:{source.line})" if source.line else f"{key} ({shown})"
    return f"{key} ({source})"


def experiment_name(config: TrackingConfig, root: Path) -> str:
    return config.tracking.experiment.name or config.default_experiment_name or root.name


def project_root(config: TrackingConfig) -> Path:
    """The root a session of ``config`` would use (``_connect.config_root``)."""
    from trackcfg._connect import config_root

    return config_root(config)


def effective_env(env: str | None) -> str:
    return env or os.environ.get("TRACKCFG_ENV") or DEFAULT_ENV


class Status(enum.Enum):
    OK = "ok"
    FAIL = "FAIL"
    WARN = "warn"
    SKIP = "skip"


@attrs.frozen
class CheckItem:
    """One line of ``trackcfg check``'s report (and its fix, when it failed)."""

    status: Status
    what: str
    detail: str
    fix: str | None = None

    def lines(self) -> list[str]:
        out = [f"[{self.status.value:^4}] {self.what}: {self.detail}"]
        if self.fix:
            out.append(f"       fix: {self.fix}")
        return out
