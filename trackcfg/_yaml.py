"""Reading YAML configuration files: ruamel's round-trip reader (it keeps line numbers), with
limits that make the worst input fail fast and clearly.

A file is read as bytes (refused past ``MAX_FILE_BYTES``), decoded as UTF-8, parsed with a
scanner, composer and constructor that count what they build (nodes, values once aliases
expand, nesting depth), and converted to plain dicts, lists and scalars with the line of every
value.  Tagged values (``!!python/object``, ``!Foo``, ``!!set`` …) are refused: a
configuration is plain data.  Every problem names the file and line.
"""

from __future__ import annotations

import datetime
import functools
import os
import stat
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from ._config import Source
from .exceptions import ConfigProblem

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_INTEGER",
    "MAX_TEXT",
    "MAX_VALUES",
    "TEXT_LIMITS",
    "Refused",
    "limited_classes",
    "read_yaml",
]

# Limits on what a configuration may hold: far above any real one (kedro-mlflow's mlflow.yml
# is 3 KB, 40 values, 4 levels deep), low enough that the worst file within them is read or
# refused in well under a second.
MAX_FILE_BYTES = 256 * 1024
"""A config or credentials file larger than this is refused unread."""
MAX_NODES = 2_000
"""Keys and values written in one file: parsing costs tens of microseconds per node, and the
largest real files (a credentials.yml of many entries) hold a few hundred."""
MAX_VALUES = 10_000
"""Values in one file once its aliases expand (``*name`` repeats all its anchor holds)."""
MAX_DEPTH = 50
"""Levels of nesting in one file."""
MAX_TEXT = 20_000
"""Characters of any text value: the longest text MLflow takes of anything a configuration
holds (an experiment tag value)."""
TEXT_LIMITS: typing.Final[Mapping[str, tuple[int, str]]] = types.MappingProxyType(
    {
        # MLflow's database stores keep a run name in a 250-character column (PostgreSQL
        # and MySQL refuse a longer one); experiment names are validated to 500 characters.
        "tracking.run.name": (250, "MLflow keeps at most 250 for a run name"),
        "tracking.experiment.name": (500, "MLflow accepts at most 500 for an experiment name"),
    }
)
"""Per-key limits tighter than ``MAX_TEXT``: characters, and whose limit it is."""
MAX_INTEGER = 2**63 - 1
"""The largest integer a value may be: MLflow's stores hold 64 bits, no setting means more."""


def _yaml() -> Any:
    """ruamel's round-trip reader, with the limits of this module's docstring."""
    from ruamel.yaml import YAML

    scanner, composer, constructor = limited_classes()
    yaml = YAML(typ="rt", pure=True)
    yaml.Scanner = scanner
    yaml.Composer = composer
    yaml.Constructor = constructor
    return yaml


class Refused(Exception):
    """A limit of this module was reached: ``message``, the 0-based ``line`` if known, and
    the dotted ``key`` where it was, if known."""

    def __init__(self, message: str, line: int | None = None, key: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.key = key


@functools.cache
def limited_classes() -> tuple[Any, Any, Any]:
    """ruamel's round-trip scanner, composer and constructor, bounded: built on first use,
    because ruamel is imported on first use."""
    from ruamel.yaml.composer import Composer
    from ruamel.yaml.constructor import RoundTripConstructor
    from ruamel.yaml.scanner import RoundTripScanner

    class LimitedScanner(RoundTripScanner):
        """Stops at the bracket that opens level ``MAX_DEPTH + 1`` of a flow collection: the
        scanner looks up to 1,024 characters ahead at every level it is in, so a line of
        ``[[[[...`` costs it seconds before the composer sees the first level."""

        def fetch_flow_collection_start(self, token_class: Any, to_push: Any) -> None:
            if self.flow_level >= MAX_DEPTH:
                raise Refused(
                    f"nested deeper than {MAX_DEPTH} levels; no configuration is that deep",
                    self.reader.line,
                )
            super().fetch_flow_collection_start(token_class, to_push)

    class LimitedComposer(Composer):
        """Stops before the work grows: past ``MAX_NODES`` nodes (each costs the parser
        tens of microseconds) or ``MAX_DEPTH`` levels (composing recurses)."""

        trackcfg_nodes = 0
        trackcfg_depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            self.trackcfg_nodes += 1
            if self.trackcfg_nodes > MAX_NODES:
                raise Refused(
                    f"holds more than {MAX_NODES:,} keys and values; no configuration is that "
                    "large",
                    self.parser.peek_event().start_mark.line,
                )
            if self.trackcfg_depth >= MAX_DEPTH:
                raise Refused(
                    f"nested deeper than {MAX_DEPTH} levels; no configuration is that deep",
                    self.parser.peek_event().start_mark.line,
                )
            self.trackcfg_depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self.trackcfg_depth -= 1

    class LimitedConstructor(RoundTripConstructor):
        """A value the constructor cannot build (a number with more digits than Python
        reads, a date that does not exist) is a problem on its line, not a ``ValueError``."""

        def construct_object(self, node: Any, deep: bool = False) -> Any:
            try:
                return super().construct_object(node, deep=deep)
            except ValueError as exc:
                raise Refused(_unbuildable(node, exc), node.start_mark.line) from exc

    return LimitedScanner, LimitedComposer, LimitedConstructor


def _unbuildable(node: Any, exc: ValueError) -> str:
    value = node.value if isinstance(node.value, str) else ""
    if str(node.tag).endswith(":int"):
        digits = sum(c.isdigit() for c in value)
        return (
            f"a number of {digits:,} digits; no setting takes one that long "
            "(quote it if it is text)"
        )
    # The reason, never the value: the file may hold credentials.
    return f"cannot read this value: {exc}"


@attrs.define
class _Budget:
    """Values still allowed in one file once aliases expand (``_plain``)."""

    values: int = MAX_VALUES


def _plain(
    node: Any,
    path: str,
    file: Path,
    sources: dict[str, Source],
    problems: list[ConfigProblem],
    budget: _Budget | None = None,
    depth: int = 0,
) -> Any:
    """ruamel's round-trip objects → plain Python, recording each key's line.

    An alias is the object it points at, so a value reached twice is converted twice: the
    budget of values bounds that ("billion laughs"), and the depth an alias inside what it
    points at.
    """
    from ruamel.yaml.comments import (
        CommentedMap,
        CommentedOrderedMap,
        CommentedSeq,
        CommentedSet,
        TaggedScalar,
    )

    budget = _Budget() if budget is None else budget
    budget.values -= 1
    if budget.values < 0:
        raise Refused(
            f"expands to more than {MAX_VALUES:,} values (an alias, *name, repeats everything "
            "its anchor holds); no configuration is that large",
            _line_of(node, path, sources),
            path,
        )
    if depth > MAX_DEPTH:
        raise Refused(
            f"nested deeper than {MAX_DEPTH} levels (an alias inside the value it names?)",
            _line_of(node, path, sources),
            path,
        )
    tag = _explicit_tag(node, (CommentedMap, CommentedSeq, CommentedSet, CommentedOrderedMap))
    if tag is not None:
        line = _line_of(node, path, sources)
        at = f"{file}:{line + 1}" if line is not None else str(file)
        problems.append(ConfigProblem(path, f"tagged values ({tag}) are not allowed", at))
        return None
    if isinstance(node, CommentedMap):
        out: dict[str, Any] = {}
        for key, value in node.items():
            child = f"{path}.{key}" if path else str(key)
            line = node.lc.key(key)[0] + 1
            sources[child] = Source("file", str(file), line)
            if not isinstance(key, str):
                problems.append(ConfigProblem(child, "keys must be strings", f"{file}:{line}"))
                continue
            out[key] = _plain(value, child, file, sources, problems, budget, depth + 1)
        return out
    if isinstance(node, CommentedSeq):
        return [_plain(v, path, file, sources, problems, budget, depth + 1) for v in node]
    if isinstance(node, TaggedScalar):
        where = sources.get(path)
        problems.append(
            ConfigProblem(path, f"tagged values ({node.tag.value}) are not allowed", str(where))
        )
        return None
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        if abs(node) > MAX_INTEGER:
            problems.append(
                ConfigProblem(
                    path,
                    f"a number above {MAX_INTEGER:,}; no setting takes one that large (quote "
                    "it if it is text)",
                    str(sources.get(path, file)),
                )
            )
            return None
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, datetime.date):
        # ruamel reads 2024-01-01 as a date (YAML 1.1's timestamps; Kedro's loader leaves it
        # text): text here too, which every key takes and JSON can show.
        return node.isoformat()
    return node


def _explicit_tag(node: Any, collections: tuple[type, ...]) -> str | None:
    """The tag written on a collection (``!!python/object:...``, ``!Foo``, ``!!set``,
    ``!!omap``), or ``None`` for a plain mapping or list; ``!!binary`` for bytes."""
    if isinstance(node, bytes):
        return "!!binary"
    if not isinstance(node, collections):
        return None
    name = type(node).__name__
    if name == "CommentedSet":
        return "!!set"
    if name == "CommentedOrderedMap":
        return "!!omap"
    tag = getattr(node, "tag", None)
    value = getattr(tag, "value", None)
    if value is None:
        return None
    text = str(value)
    return "!!" + text.removeprefix("tag:yaml.org,2002:") if text.startswith("tag:") else text


def _line_of(node: Any, path: str, sources: Mapping[str, Source]) -> int | None:
    """0-based line of ``node``: where its key is, else where the collection starts."""
    source = sources.get(path)
    if source is not None and source.line is not None:
        return source.line - 1
    lc = getattr(node, "lc", None)
    line = getattr(lc, "line", None)
    return line if isinstance(line, int) else None


def _read_bytes(file: Path, problems: list[ConfigProblem]) -> bytes | None:
    """The file's bytes, or ``None`` with a problem: not a regular file (a folder, a FIFO that
    would block), unreadable (a symlink loop, a dangling link), or over ``MAX_FILE_BYTES``."""
    try:
        info = os.stat(file)
        if stat.S_ISDIR(info.st_mode):
            problems.append(ConfigProblem("", "is a folder, not a file", str(file)))
            return None
        if not stat.S_ISREG(info.st_mode):
            problems.append(ConfigProblem("", "is not a regular file", str(file)))
            return None
        with open(file, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            data = b"" if size > MAX_FILE_BYTES else stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        link = " (a symbolic link)" if os.path.islink(file) else ""
        reason = exc.strerror or type(exc).__name__
        problems.append(ConfigProblem("", f"cannot read the file{link}: {reason}", str(file)))
        return None
    if size > MAX_FILE_BYTES or len(data) > MAX_FILE_BYTES:
        problems.append(
            ConfigProblem(
                "",
                f"the file is {max(size, len(data)):,} bytes; configuration files are limited "
                f"to {MAX_FILE_BYTES:,} bytes ({MAX_FILE_BYTES // 1024} KiB)",
                str(file),
            )
        )
        return None
    return data


def read_yaml(
    file: Path, problems: list[ConfigProblem], *, secret: bool = False
) -> tuple[dict[str, Any], dict[str, Source]]:
    """Read one YAML file into plain data and per-key sources; problems are appended.

    ``secret``: the file holds credentials, so a problem names the line but never quotes it.
    """
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    sources: dict[str, Source] = {}
    data = _read_bytes(file, problems)
    if data is None:
        return {}, sources
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        problems.append(
            ConfigProblem(
                "",
                "not UTF-8 text (a byte on this line is not); save it as UTF-8",
                f"{file}:{line}",
            )
        )
        return {}, sources
    try:
        raw = _yaml().load(text)
    except Refused as exc:
        where = f"{file}:{exc.line + 1}" if exc.line is not None else str(file)
        problems.append(ConfigProblem("", exc.message, where))
        return {}, sources
    except RecursionError:
        # MAX_DEPTH stops nesting first; this is the net under it (a small stack).
        problems.append(ConfigProblem("", "nested too deeply to read", str(file)))
        return {}, sources
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
    try:
        plain = _plain(raw, "", file, sources, problems)
    except Refused as exc:
        where = f"{file}:{exc.line + 1}" if exc.line is not None else str(file)
        problems.append(ConfigProblem(exc.key, exc.message, where))
        return {}, {}
    # None: the whole document was refused (a tagged mapping), with a problem.
    return (plain if isinstance(plain, dict) else {}), sources
