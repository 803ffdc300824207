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
tag (``!!python/...``, ``!custom``, ``!!set``, ``!!omap``, on a scalar or a collection) is
refused.

A file is hostile input as much as a mistake: reading one is bounded before any work grows
with it.  A file over ``MAX_FILE_BYTES`` is not parsed; parsing stops past ``MAX_NODES``
keys and values or ``MAX_DEPTH`` levels of nesting (the parser's cost grows with the nodes: a
few hundred thousand take minutes); aliases expand to ``MAX_VALUES`` values at most (a "billion
laughs" file of a few hundred bytes expands to billions); bytes that are not UTF-8, numbers
longer than Python reads and other unreadable values are problems with their file and line,
like any other.  Text values are limited to what MLflow takes (``TEXT_LIMITS``), else to
``MAX_TEXT`` characters.

``${km.random_name:}`` (kedro-mlflow's resolver) as the whole value of a text key is
replaced by a new random run name (``random_run_name``) each time a configuration is loaded,
as Kedro's config loader does with the resolver ``trackcfg.kedro`` registers.
"""

from __future__ import annotations

import enum
import logging
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from . import _state
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
from ._store import depends_on_root, resolve_store
from ._yaml import (
    MAX_INTEGER,
    MAX_TEXT,
    MAX_VALUES,
    TEXT_LIMITS,
    Refused,
    limited_classes,
    read_yaml,
)
from .exceptions import ConfigError, ConfigProblem

__all__ = ["ENV_PREFIX", "config_from_mapping", "load_config", "notice_cwd_root"]

logger = logging.getLogger(__name__)

ENV_PREFIX = "TRACKCFG_"
DEFAULT_SOURCE = Source("default")

_Leaves = dict[str, tuple[Any, Source]]

MAX_PROBLEMS = 50
"""Problems listed in one ``ConfigError``; more are counted, not listed."""
RANDOM_NAME = "${km.random_name:}"
"""kedro-mlflow's resolver: as a whole text value, a new random run name at each load."""


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
    import difflib  # here: only a misspelt key needs it (start-up, issue 24)

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


def _file_layer(file: Path, problems: list[ConfigProblem]) -> _Leaves:
    data, sources = read_yaml(file, problems)
    return _flatten_layer(data, sources)


def _secret_reader(
    problems: list[ConfigProblem],
) -> Callable[[Path], tuple[dict[str, Any], dict[str, Source]]]:
    """How ``_credentials`` reads a credentials file: problems name lines, never quote them."""

    def read(file: Path) -> tuple[dict[str, Any], dict[str, Source]]:
        return read_yaml(file, problems, secret=True)

    return read


# --------------------------------------------------------------------------------------------
# Environment variables and overrides.


def _parse_scalar(text: str) -> Any:
    """Environment values are YAML scalars: ``false`` is a bool, ``5000`` an int."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    yaml = YAML(typ="safe", pure=True)
    yaml.Composer = limited_classes()[1]
    try:
        value = yaml.load(text)
    except (YAMLError, ValueError, RecursionError, Refused):
        # Not a YAML value this reader takes (a 5,000-digit number, nesting past MAX_DEPTH):
        # the text itself, which the key's type then accepts or refuses.
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
        if key in self:  # a line found for it (config_from_mapping's ``files``)
            return self[key]
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
    root_is_cwd = False
    if located is None:
        found = find_project_root(cwd_path)
        root_is_cwd = found is None
        located = Located((), found or cwd_path.resolve(), ())
    elif path is not None and not located.files:
        folders = ", ".join(map(str, located.credential_folders))
        raise ConfigError(
            [
                ConfigProblem(
                    "",
                    f"no mlflow.yml in {folders}; write one with `trackcfg init`, or pass the "
                    "right path",
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
    config = _build(layers, problems, located, files, environ)
    if root_is_cwd:
        notice_cwd_root(located.root, config.server.mlflow_tracking_uri)
    return config


def notice_cwd_root(root: Path, tracking_uri: str) -> None:
    """Say once per process and folder, as a warning, that the store is in ``root`` only
    because the program started there: no config file, ``pyproject.toml`` or ``.git`` was
    found at or above it, so that folder is the project root.  Nothing to say when the store
    does not depend on the root (an absolute path, a server)."""
    if not depends_on_root(tracking_uri):
        return
    if root in _state.cwd_root_notices:
        return
    _state.cwd_root_notices.add(root)
    location = resolve_store(tracking_uri, root)
    store = location.local_folder or location.tracking_uri.removeprefix("sqlite:///")
    logger.warning(
        "no mlflow.yml, pyproject.toml or .git in %s or above: it is the project root, so "
        "runs go to %s, which depends on the folder the program starts in; to pin it, add a "
        "pyproject.toml, .git or mlflow.yml to the project folder, or set "
        "server.mlflow_tracking_uri to an absolute path",
        root,
        store,
    )


def config_from_mapping(
    data: Mapping[str, Any],
    *,
    file: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str],
    credentials: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    files: Sequence[Path] = (),
) -> TrackingConfig:
    """Validate an already-loaded mapping (e.g. from Kedro's config loader) with the same
    converter and messages as ``load_config``; ``file`` names it in errors.  ``credentials``
    is the mapping of credential entries to pick ``server.credentials`` from.  ``files``: the
    YAML files the mapping was merged from, in order; a key is named at its line in the last
    one that sets it (else as ``file``)."""
    environ = os.environ if environ is None else environ
    problems: list[ConfigProblem] = []
    label = Source("file", str(file)) if file else Source("override", "<mapping>")
    sources = _all("", label)
    for merged_from in files:
        # Only for the lines: the loader that gave ``data`` read these files already.
        sources.update(read_yaml(merged_from, [])[1])
    layer = _flatten_layer(data, sources)
    located = Located((), Path(root).resolve(), ())
    return _build(
        [layer, _env_layer(environ, problems)],
        problems,
        located,
        tuple(files) or ((Path(file),) if file else ()),
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
                ConfigProblem(
                    _shortened(prefix), f"unknown key; {_suggest(prefix)}", str(merged[path][1])
                )
            )
        del merged[path]

    # MLFLOW_TRACKING_URI only fills a tracking URI nobody set.
    uri_key = "server.mlflow_tracking_uri"
    current = merged.get(uri_key)
    if current is not None and current[1].kind == "default" and environ.get("MLFLOW_TRACKING_URI"):
        merged[uri_key] = (environ["MLFLOW_TRACKING_URI"], Source("env", "MLFLOW_TRACKING_URI"))

    # kedro-mlflow's ${km.random_name:}; values no user means (a 50 MB run name), refused
    # before anything copies, converts or quotes them.
    for path, (value, source) in list(merged.items()):
        if value == RANDOM_NAME and _is_text_field(path):
            merged[path] = (random_run_name(), source)
            continue
        refusal = _oversized(path, value)
        if refusal is not None:
            problems.append(ConfigProblem(path, refusal, str(source)))
            del merged[path]

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
        raise ConfigError(_capped(_dedupe(problems)))
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


def _capped(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    """The first ``MAX_PROBLEMS`` problems, and how many more there are: a file of thousands
    of wrong keys gives a message one can read."""
    if len(problems) <= MAX_PROBLEMS:
        return problems
    more = len(problems) - MAX_PROBLEMS
    return [*problems[:MAX_PROBLEMS], ConfigProblem("", f"... and {more:,} more problems")]


def _shortened(text: str, limit: int = 100) -> str:
    """``text`` cut to ``limit`` characters for a message (a key may be a 200 KB line)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _oversized(path: str, value: Any) -> str | None:
    """Why ``value`` of ``path`` is more than any setting takes, or ``None``.

    Text: ``TEXT_LIMITS`` or ``MAX_TEXT`` characters; integers: ``MAX_INTEGER``; a list or
    mapping (``init_kwargs``, experiment tags): the same for everything in it, and at most
    ``MAX_VALUES`` values however its parts are shared.
    """
    limit, whose = TEXT_LIMITS.get(path, (MAX_TEXT, f"no setting takes more than {MAX_TEXT:,}"))
    if isinstance(value, str):
        return f"is {len(value):,} characters long; {whose}" if len(value) > limit else None
    stack: list[Any] = [value]
    seen = 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            return f"holds more than {MAX_VALUES:,} values; no setting takes that many"
        if isinstance(item, str):
            if len(item) > MAX_TEXT:
                return (
                    f"holds a text of {len(item):,} characters; no setting takes more than "
                    f"{MAX_TEXT:,}"
                )
        elif isinstance(item, int) and not isinstance(item, bool):
            if abs(item) > MAX_INTEGER:
                return f"holds a number above {MAX_INTEGER:,}; no setting takes one that large"
        elif isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return None


# --------------------------------------------------------------------------------------------
# ${km.random_name:}: adjective-noun-number, like the names MLflow gives runs (at most 20
# characters).  Drawn with ``secrets``: a program that seeds ``random`` for reproducibility
# still gets a new name per run.

_ADJECTIVES = (
    "able", "amber", "bold", "brave", "brisk", "calm", "clever", "cosmic", "crisp", "dapper",
    "eager", "early", "fancy", "fair", "gentle", "glad", "golden", "grand", "happy", "honest",
    "jolly", "keen", "kind", "lively", "lucky", "mellow", "merry", "misty", "modest", "nimble",
    "noble", "polite", "proud", "quick", "quiet", "rapid", "silent", "smart", "steady", "sunny",
    "swift", "tidy", "upbeat", "vivid", "warm", "wise", "witty", "zesty",
)  # fmt: skip
_NOUNS = (
    "badger", "bear", "beaver", "bison", "carp", "cat", "cod", "crane", "crow", "deer",
    "dove", "eagle", "eel", "elk", "falcon", "ferret", "finch", "fox", "frog", "gecko",
    "goat", "goose", "hare", "hawk", "heron", "ibis", "jay", "koala", "lark", "lemur",
    "lion", "lynx", "mole", "moose", "newt", "otter", "owl", "panda", "pike", "puffin",
    "quail", "raven", "robin", "seal", "shrew", "snail", "stork", "swan", "tiger", "toad",
    "trout", "vole", "wasp", "whale", "wolf", "wren", "yak", "zebra",
)  # fmt: skip


def random_run_name() -> str:
    """A new ``adjective-noun-number`` run name (``brisk-otter-417``)."""
    import secrets  # here: start-up (issue 24)

    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{secrets.randbelow(1000)}"
