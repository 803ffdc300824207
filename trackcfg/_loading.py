"""Loading ``mlflow.yml``: layering, YAML reading, provenance, and errors that point at
file:line.

Layers, lowest to highest priority::

    built-in defaults < user file < project file(s) < TRACKCFG_<SECTION>__<KEY> < overrides

Each layer is flattened to ``dotted.key -> (value, Source)`` along the schema, merged, checked
against the schema (unknown keys, with a suggestion), then structured by the strict converter
of ``_convert``.  Every problem found on the way is collected and raised as ONE
``ConfigError``.  Which files are read is ``_discovery``'s business; the entry named by
``server.credentials`` is resolved by ``_credentials``.

YAML is read with ruamel.yaml's round-trip loader because it keeps line numbers; it builds
only plain YAML types (it derives from the safe constructor), and a value with an explicit
tag (``!!python/...``, ``!custom``) is refused.
"""

from __future__ import annotations

import difflib
import enum
import logging
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ._config import Credentials, Source, TrackingConfig
from ._convert import cattrs_module, converter, error_paths
from ._credentials import file_sources, mapping_sources, resolve_credentials
from ._discovery import (
    CONFIG_NAMES,
    DEFAULT_ENV,
    Located,
    find_project_root,
    first_existing,
    locate,
    project_name,
    user_config_dir,
)
from .exceptions import ConfigError, ConfigProblem

__all__ = ["ENV_PREFIX", "config_from_mapping", "load_config"]

logger = logging.getLogger(__name__)

ENV_PREFIX = "TRACKCFG_"
DEFAULT_SOURCE = Source("default")

_Leaves = dict[str, tuple[Any, Source]]


# --------------------------------------------------------------------------------------------
# The schema, derived once from the attrs classes.


def _schema() -> tuple[dict[str, Any], frozenset[str]]:
    """Every dotted path of the model → its type, and the paths that are sections."""
    fields: dict[str, Any] = {}
    sections: set[str] = set()

    def visit(cls: type, prefix: str) -> None:
        for f in attrs.fields(attrs.resolve_types(cls)):
            if f.name in _METADATA_FIELDS and cls is TrackingConfig:
                continue
            path = f"{prefix}{f.name}"
            fields[path] = f.type
            if isinstance(f.type, type) and attrs.has(f.type):
                sections.add(path)
                visit(f.type, f"{path}.")

    visit(TrackingConfig, "")
    return fields, frozenset(sections)


_METADATA_FIELDS = frozenset(
    {"project_root", "default_experiment_name", "credentials", "sources", "files"}
)
SCHEMA, SECTIONS = _schema()


def _accepts_none(tp: Any) -> bool:
    return type(None) in typing.get_args(tp)


def _suggest(path: str) -> str:
    parent, _, last = path.rpartition(".")
    siblings = [p.rpartition(".")[2] for p in SCHEMA if p.rpartition(".")[0] == parent]
    close = difflib.get_close_matches(last, siblings, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    where = f"'{parent}'" if parent else "the top level"
    return f"valid keys in {where}: {', '.join(sorted(siblings))}"


# --------------------------------------------------------------------------------------------
# Layers.


def _flatten_layer(data: Mapping[str, Any], sources: Mapping[str, Source]) -> _Leaves:
    """Nested mapping → leaves along the schema (a mapping under a section is recursed into)."""
    leaves: _Leaves = {}

    def visit(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            source = sources.get(path, DEFAULT_SOURCE)
            if path in SECTIONS and (value is None or (isinstance(value, Mapping) and not value)):
                # "run:" with every key commented out, or "run: {}": nothing set here.
                continue
            if path in SECTIONS and isinstance(value, Mapping):
                visit(value, f"{path}.")
            elif value is None and path in SCHEMA and not _accepts_none(SCHEMA[path]):
                # kedro-mlflow writes "mlflow_tracking_uri: null" for "not set": this layer
                # leaves the key to lower layers (or the default).
                continue
            else:
                leaves[path] = (value, source)

    visit(data, "")
    return leaves


def _merge(layers: Sequence[_Leaves]) -> _Leaves:
    merged: _Leaves = {}
    for layer in layers:
        for path, item in layer.items():
            # A later value replaces the whole subtree below it, and a subtree replaces a
            # scalar that stood where its section is.
            for old in [p for p in merged if p.startswith(f"{path}.")]:
                del merged[old]
            parts = path.split(".")
            for i in range(1, len(parts)):
                merged.pop(".".join(parts[:i]), None)
            merged[path] = item
    return merged


def _unflatten(leaves: Mapping[str, Any]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path, value in leaves.items():
        node = root
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return root


def _defaults_layer() -> _Leaves:
    converter = cattrs_module().Converter()
    data = converter.unstructure(TrackingConfig())
    for name in _METADATA_FIELDS:
        data.pop(name, None)
    return _flatten_layer(data, {})


# --------------------------------------------------------------------------------------------
# YAML files.


def _yaml() -> Any:
    from ruamel.yaml import YAML

    return YAML(typ="rt", pure=True)


def _plain(
    node: Any, path: str, file: Path, sources: dict[str, Source], problems: list[ConfigProblem]
) -> Any:
    """ruamel's round-trip objects → plain Python, recording each key's line."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar

    if isinstance(node, CommentedMap):
        out: dict[str, Any] = {}
        for key, value in node.items():
            child = f"{path}.{key}" if path else str(key)
            line = node.lc.key(key)[0] + 1
            sources[child] = Source("file", str(file), line)
            if not isinstance(key, str):
                problems.append(ConfigProblem(child, "keys must be strings", f"{file}:{line}"))
                continue
            out[key] = _plain(value, child, file, sources, problems)
        return out
    if isinstance(node, CommentedSeq):
        return [_plain(v, path, file, sources, problems) for v in node]
    if isinstance(node, TaggedScalar):
        where = sources.get(path)
        problems.append(
            ConfigProblem(path, f"tagged values ({node.tag.value}) are not allowed", str(where))
        )
        return None
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node


def _read_yaml(
    file: Path, problems: list[ConfigProblem], *, secret: bool = False
) -> tuple[dict[str, Any], dict[str, Source]]:
    """Read one YAML file into plain data and per-key sources; problems are appended.

    ``secret``: the file holds credentials, so a problem names the line but never quotes it.
    """
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    sources: dict[str, Source] = {}
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(ConfigProblem("", f"cannot read the file: {exc.strerror}", str(file)))
        return {}, sources
    try:
        raw = _yaml().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{file}:{mark.line + 1}" if mark is not None else str(file)
        what = str(exc.problem or exc.context)
        if exc.context and exc.context_mark is not None:
            what += f" ({exc.context} started on line {exc.context_mark.line + 1})"
        if secret:
            what = f"{type(exc).__name__} (details hidden: the file holds credentials)"
        problems.append(ConfigProblem("", f"malformed YAML: {what}", where))
        return {}, sources
    except YAMLError as exc:
        what = type(exc).__name__ if secret else str(exc)
        problems.append(ConfigProblem("", f"malformed YAML: {what}", str(file)))
        return {}, sources
    if raw is None:
        return {}, sources
    from ruamel.yaml.comments import CommentedMap

    if not isinstance(raw, CommentedMap):
        problems.append(
            ConfigProblem(
                "", f"expected a mapping at the top, got {type(raw).__name__}", f"{file}:1"
            )
        )
        return {}, sources
    data = _plain(raw, "", file, sources, problems)
    return data, sources


def _file_layer(file: Path, problems: list[ConfigProblem]) -> _Leaves:
    data, sources = _read_yaml(file, problems)
    return _flatten_layer(data, sources)


def _secret_reader(
    problems: list[ConfigProblem],
) -> Callable[[Path], tuple[dict[str, Any], dict[str, Source]]]:
    """How ``_credentials`` reads a credentials file: problems name lines, never quote them."""

    def read(file: Path) -> tuple[dict[str, Any], dict[str, Source]]:
        return _read_yaml(file, problems, secret=True)

    return read


# --------------------------------------------------------------------------------------------
# Environment variables and overrides.


def _parse_scalar(text: str) -> Any:
    """Environment values are YAML scalars: ``false`` is a bool, ``5000`` an int."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        value = YAML(typ="safe", pure=True).load(text)
    except YAMLError:
        return text
    if value is None and text.strip() not in ("", "null", "~", "Null", "NULL"):
        return text
    if isinstance(value, (str, int, float, bool, list)) or value is None:
        return value
    return text


def _is_text_field(path: str) -> bool:
    tp = SCHEMA.get(path)
    return tp is str or (tp is not None and set(typing.get_args(tp)) == {str, type(None)})


def _known_path(path: str) -> bool:
    return path in SCHEMA


def _env_layer(environ: Mapping[str, str], problems: list[ConfigProblem]) -> _Leaves:
    """``TRACKCFG_<SECTION>__<KEY>``; variables without a double underscore are not config
    keys (``TRACKCFG_ENV``, ``TRACKCFG_DISABLE`` …) and are left alone."""
    layer: _Leaves = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = ".".join(name[len(ENV_PREFIX) :].lower().split("__"))
        source = Source("env", name)
        if not _known_path(path):
            problems.append(ConfigProblem(path, f"unknown key; {_suggest(path)}", str(source)))
            continue
        text = environ[name]
        value = _parse_scalar(text)
        if _is_text_field(path) and value is not None:
            value = text  # NAME=1.10 is the name "1.10", not the number 1.1
        layer.update(_flatten_layer(_unflatten({path: value}), _all(path, source)))
    return layer


class _AllSources(dict[str, Source]):
    """Every path at or below ``prefix`` comes from one source (an env var, an override)."""

    def __init__(self, prefix: str, source: Source) -> None:
        super().__init__()
        self._prefix = prefix
        self._source = source

    def get(self, key: str, default: Any = None) -> Any:
        if not self._prefix or key == self._prefix or key.startswith(f"{self._prefix}."):
            return self._source
        return default


def _all(prefix: str, source: Source) -> _AllSources:
    return _AllSources(prefix, source)


def _override_layer(overrides: Mapping[str, Any], problems: list[ConfigProblem]) -> _Leaves:
    layer: _Leaves = {}
    for key, value in overrides.items():
        source = Source("override", key)
        if not isinstance(key, str) or not _known_path(key):
            problems.append(
                ConfigProblem(str(key), f"unknown key; {_suggest(str(key))}", str(source))
            )
            continue
        if isinstance(value, enum.Enum):
            value = value.value
        layer.update(_flatten_layer(_unflatten({key: value}), _all(key, source)))
    return layer


def _where(path: str, sources: Mapping[str, Source]) -> str | None:
    """The origin of ``path``'s value, or of the nearest section above it that was set."""
    while path:
        if path in sources and sources[path].kind != "default":
            return str(sources[path])
        path = path.rpartition(".")[0]
    return None


# --------------------------------------------------------------------------------------------
# Entry points.


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> TrackingConfig:
    """Load the effective configuration.

    ``path`` is an ``mlflow.yml`` file, a ``conf`` folder (``base/mlflow.yml`` then
    ``<env>/mlflow.yml`` merged on top), or a project folder holding ``conf/`` or
    ``mlflow.yml``. Without it, the current folder and its parents are searched up to the
    project root; nothing found means built-in defaults.  ``env`` defaults to
    ``TRACKCFG_ENV``, else ``local``.  ``overrides`` maps dotted keys
    (``"tracking.run.name"``) to values and wins over everything.

    Raises ``ConfigError`` listing every problem, each with its file and line.
    """
    environ = os.environ if environ is None else environ
    cwd_path = Path.cwd() if cwd is None else Path(cwd)
    env = env or environ.get("TRACKCFG_ENV") or DEFAULT_ENV
    located = locate(None if path is None else Path(path), env, cwd_path)
    if located is None:
        root = find_project_root(cwd_path) or cwd_path.resolve()
        located = Located((), root, ())
    elif path is not None and not located.files:
        raise ConfigError(
            [
                ConfigProblem(
                    "", f"no mlflow.yml in {', '.join(map(str, located.credential_folders))}"
                )
            ]
        )

    problems: list[ConfigProblem] = []
    layers: list[_Leaves] = []
    user_file = first_existing(user_config_dir(), CONFIG_NAMES)
    if user_file is not None:
        layers.append(_file_layer(user_file, problems))
    layers.extend(_file_layer(f, problems) for f in located.files)
    layers.append(_env_layer(environ, problems))
    layers.append(_override_layer(overrides or {}, problems))
    files = ((user_file,) if user_file else ()) + located.files
    return _build(layers, problems, located, files, environ)


def config_from_mapping(
    data: Mapping[str, Any],
    *,
    file: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str],
    credentials: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> TrackingConfig:
    """Validate an already-loaded mapping (e.g. from Kedro's config loader) with the same
    converter and messages as ``load_config``; ``file`` names it in errors.  ``credentials``
    is the mapping of credential entries to pick ``server.credentials`` from."""
    environ = os.environ if environ is None else environ
    problems: list[ConfigProblem] = []
    label = Source("file", str(file)) if file else Source("override", "<mapping>")
    layer = _flatten_layer(data, _all("", label))
    located = Located((), Path(root).resolve(), ())
    return _build(
        [layer, _env_layer(environ, problems)],
        problems,
        located,
        (Path(file),) if file else (),
        environ,
        credentials_mapping=credentials,
    )


def _build(
    layers: list[_Leaves],
    problems: list[ConfigProblem],
    located: Located,
    files: tuple[Path, ...],
    environ: Mapping[str, str],
    *,
    credentials_mapping: Mapping[str, Any] | None = None,
) -> TrackingConfig:
    merged = _merge([_defaults_layer(), *layers])

    # Unknown keys, with the line they stand on and the closest valid key.
    for path in list(merged):
        if path in SCHEMA:
            continue
        parts = path.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix not in SCHEMA:
                break
            if prefix not in SECTIONS:
                prefix = ""
                break
        if prefix:
            problems.append(
                ConfigProblem(prefix, f"unknown key; {_suggest(prefix)}", str(merged[path][1]))
            )
        del merged[path]

    # MLFLOW_TRACKING_URI only fills a tracking URI nobody set.
    uri_key = "server.mlflow_tracking_uri"
    current = merged.get(uri_key)
    if current is not None and current[1].kind == "default" and environ.get("MLFLOW_TRACKING_URI"):
        merged[uri_key] = (environ["MLFLOW_TRACKING_URI"], Source("env", "MLFLOW_TRACKING_URI"))

    sources = {path: source for path, (_value, source) in merged.items()}
    data = _unflatten({path: value for path, (value, _source) in merged.items()})

    config: TrackingConfig | None = None
    try:
        config = converter().structure(data, TrackingConfig)
    except Exception as exc:
        for path, message in error_paths(exc, suggest=_suggest):
            problems.append(ConfigProblem(path, message, _where(path, sources)))

    # Checked even when other keys are wrong, so one run of the loader reports everything.
    credentials: Credentials | None = None
    cred_name = merged.get("server.credentials", (None, DEFAULT_SOURCE))[0]
    if isinstance(cred_name, str) and cred_name:
        credentials = resolve_credentials(
            cred_name,
            (
                file_sources(located.credential_folders, _secret_reader(problems))
                if credentials_mapping is None
                else mapping_sources(credentials_mapping)
            ),
            where=_where("server.credentials", sources),
            problems=problems,
        )

    if problems or config is None:
        raise ConfigError(_dedupe(problems))
    return attrs.evolve(
        config,
        project_root=located.root,
        default_experiment_name=project_name(located.root),
        credentials=credentials,
        sources=types.MappingProxyType(sources),
        files=files,
    )


def _dedupe(problems: Sequence[ConfigProblem]) -> list[ConfigProblem]:
    seen: set[ConfigProblem] = set()
    out = []
    for p in problems:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out
