"""``trackcfg show``: the effective configuration, each key with its value and source."""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from trackcfg._config import Source, TrackingConfig
from trackcfg._connect import plan_store
from trackcfg._rules import run_intent

from ._common import (
    MASK,
    display_path,
    experiment_name,
    mask_uri,
    project_root,
)

__all__ = ["print_config"]


def _where(source: Source) -> str | None:
    if source.kind == "file" and source.detail is not None:
        shown = display_path(source.detail)
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


def _show_data(config: TrackingConfig, env: str) -> dict[str, Any]:
    root = project_root(config)
    location = plan_store(config, root=root, inherit=False).destination
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
            "experiment_name": experiment_name(config, root),
            "run": run_intent(config),
        },
        "credentials": credentials,
    }


def print_config(config: TrackingConfig, env_name: str, *, as_json: bool) -> None:
    """``show``'s output for ``config`` (also ``kedro trackcfg show``'s, read through Kedro)."""
    data = _show_data(config, env_name)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    files = ", ".join(display_path(f) for f in data["files"]) or "none (built-in defaults)"
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
    click.echo(f"run: {resolved['run']}")
    creds = data["credentials"]
    if creds is None:
        click.echo("credentials: none (server.credentials is null)")
    else:
        origin = f" from {display_path(creds['file'])}" if creds["file"] else ""
        click.echo(f"credentials: entry {creds['name']!r}{origin}")
        for name in creds["keys"]:
            click.echo(f"  {name}={MASK}")
