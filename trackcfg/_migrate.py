"""``kedro trackcfg migrate``: a kedro-mlflow project's catalog moved over to trackcfg.

Text work only (no mlflow, no Kedro): the ``type:`` values naming one of kedro-mlflow 2.0.3's
seven datasets, in every spelling Kedro resolves (``kedro_mlflow.io.artifacts.
MlflowArtifactDataset`` and its module path ``...artifacts.mlflow_artifact_dataset.
MlflowArtifactDataset``), become ``trackcfg.kedro.datasets.<same class>``, in the files Kedro
reads as the catalog (``conf/<env>/catalog*``, ``conf/<env>/catalog*/**``,
``conf/<env>/**/catalog*``; ``.yml``, ``.yaml``, ``.json``; hidden files and folders skipped,
as Kedro skips them).

Each file is parsed with ruamel (for the position of every value) and only the characters of
the old class path are replaced in the file's text: comments, quoting, anchors, flow style,
line endings and everything else stay byte for byte.  Every file is parsed before any is
written; a malformed one stops the migration with its file and line and nothing written.  A
file is replaced atomically (a temporary file renamed over it).

Only ``type:`` values change (a ``metadata:`` string equal to a class path stays).  In the
project's Python files, the imports of what trackcfg has under the same names
(``pipeline_ml_factory``, ``KedroPipelineModel``, the datasets) are pointed at trackcfg's
modules (``_migrate_imports``).  Before anything is written, every folder a file is written
in is tried: one that refuses a new file stops the migration with nothing written.

What cannot be carried over is listed, never changed: other imports of the ``kedro_mlflow``
package, ``kedro mlflow`` commands where a command starts in scripts and docs, the
``kedro-mlflow`` dependency, and ``kedro_mlflow`` values this module does not know.  Names
that merely start with ``kedro_mlflow`` (a ``kedro_mlflow_tutorial`` package) and prose are
not kedro-mlflow's.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from .exceptions import TrackcfgError

__all__ = [
    "DATASETS",
    "SPELLINGS",
    "Change",
    "Leftover",
    "Migration",
    "MigrationError",
    "apply",
    "plan",
    "render",
]

NEW_MODULE = "trackcfg.kedro.datasets"

DATASETS: Mapping[str, tuple[str, str]] = {
    # class: (kedro_mlflow.io subpackage, module file)
    "MlflowArtifactDataset": ("artifacts", "mlflow_artifact_dataset"),
    "MlflowMetricDataset": ("metrics", "mlflow_metric_dataset"),
    "MlflowMetricHistoryDataset": ("metrics", "mlflow_metric_history_dataset"),
    "MlflowMetricsHistoryDataset": ("metrics", "mlflow_metrics_history_dataset"),
    "MlflowModelTrackingDataset": ("models", "mlflow_model_tracking_dataset"),
    "MlflowModelLocalFileSystemDataset": ("models", "mlflow_model_local_filesystem_dataset"),
    "MlflowModelRegistryDataset": ("models", "mlflow_model_registry_dataset"),
}
"""kedro-mlflow 2.0.3's catalog datasets: where each is defined and exported."""

SPELLINGS: Mapping[str, str] = {
    spelling: f"{NEW_MODULE}.{name}"
    for name, (package, module) in DATASETS.items()
    for spelling in (
        f"kedro_mlflow.io.{package}.{name}",
        f"kedro_mlflow.io.{package}.{module}.{name}",
    )
}
"""Every ``type:`` Kedro resolves to one of kedro-mlflow's datasets -> trackcfg's."""

CATALOG_SUFFIXES = (".yml", ".yaml", ".json")
"""The files Kedro's config loader reads (the others matching the patterns are ignored)."""

# Folders of a project never searched for code, scripts or dependencies.
_SKIPPED_FOLDERS = frozenset(
    {
        ".git",
        ".hg",
        ".nox",
        ".tox",
        ".venv",
        ".trackcfg",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        ".ipynb_checkpoints",
        "__pycache__",
        "node_modules",
        "mlruns",
        "data",
        "build",
        "dist",
        "site-packages",
    }
)
_SCRIPT_SUFFIXES = frozenset(
    {".sh", ".bash", ".zsh", ".ps1", ".bat", ".cmd", ".py", ".ipynb", ".yml", ".yaml", ".toml"}
    | {".cfg", ".ini", ".md", ".rst", ".txt", ".mk"}
)
_SCRIPT_NAMES = frozenset({"Makefile", "Dockerfile", "Justfile", "justfile", "Procfile"})
_DEPENDENCY_NAMES = re.compile(
    r"^(requirements.*\.(txt|in)|pyproject\.toml|setup\.py|setup\.cfg|Pipfile|"
    r"environment.*\.ya?ml|conda.*\.ya?ml)$"
)
_MAX_SCANNED_BYTES = 2 * 1024 * 1024

_CLASS_PATH = re.compile(r"^kedro_mlflow(\.[A-Za-z_]\w*)+$")
# `kedro mlflow` where a command starts (a line, `$ `, `- `, `run:`, after `&&`, `;`, `|`, a
# backquote or a quote), as itself or with one of kedro-mlflow's subcommands: never prose.
_KEDRO_MLFLOW_COMMAND = re.compile(
    r"(?:^|[;&|`(\"']|\$|^\s*-|\brun:)\s*kedro\s+mlflow"
    r"(?:\s+(?P<sub>init|ui|modelify)\b|\s*(?=$|[;&|`)\"']|\s--?\w))"
)
# A class path of the kedro_mlflow package (not kedro_mlflow_tutorial, not kedro_mlflow prose).
_KEDRO_MLFLOW_PATH = re.compile(r"(?<![\w.])kedro_mlflow\.[A-Za-z_]")
_KEDRO_MLFLOW_PACKAGE = re.compile(r"(?<![\w.-])kedro[-_.]mlflow(?![\w-])", re.IGNORECASE)
_COMMAND_ADVICE = {
    "init": "use `kedro trackcfg init`",
    "ui": "use `kedro trackcfg ui`",
}


class MigrationError(TrackcfgError):
    """A catalog file cannot be migrated (malformed YAML, not UTF-8, unreadable): nothing
    was written."""


@attrs.frozen
class Change:
    """One ``type:`` value rewritten: ``file`` (relative to the project), 1-based ``line``."""

    file: str
    line: int
    old: str
    new: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.old} -> {self.new}"


@attrs.frozen
class Leftover:
    """Something of kedro-mlflow's that ``migrate`` does not carry over, and what to do."""

    file: str
    line: int
    what: str
    advice: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.what}: {self.advice}"


@attrs.frozen
class Migration:
    """What ``migrate`` changes (``changes``), the new text of each changed file
    (``texts``, absolute paths) and what it leaves to the user (``leftovers``)."""

    root: Path
    catalogs: tuple[str, ...]
    changes: tuple[Change, ...]
    leftovers: tuple[Leftover, ...]
    texts: Mapping[Path, str] = attrs.field(repr=False)


# --------------------------------------------------------------------------------------------
# Planning.


def plan(root: Path, conf_source: Path | None = None, src: Path | None = None) -> Migration:
    """Read the project at ``root`` (its configuration in ``conf_source``, default
    ``root/conf``; its code in ``src``, default ``root/src``) and work out the migration;
    nothing is written.  Raises :class:`MigrationError` naming every catalog file that
    cannot be read, with its line."""
    del src  # Python code is searched in the whole project (scripts, notebooks' .py too)
    root = root.resolve()
    conf = (conf_source if conf_source is not None else root / "conf").resolve()
    catalogs = catalog_files(conf)
    changes: list[Change] = []
    leftovers: list[Leftover] = []
    texts: dict[Path, str] = {}
    problems: list[str] = []
    for file in catalogs:
        shown = _shown(file, root)
        try:
            text = _read_text(file)
            new_text, file_changes, file_leftovers = _rewrite(text, shown)
        except _Unreadable as exc:
            where = f"{shown}:{exc.line}" if exc.line is not None else shown
            problems.append(f"{where}: {exc.message}")
            continue
        changes.extend(file_changes)
        leftovers.extend(file_leftovers)
        if new_text != text:
            texts[file] = new_text
    if problems:
        listed = "\n".join(f"  {p}" for p in problems)
        raise MigrationError(
            f"cannot migrate: {len(problems)} catalog file(s) cannot be read, so nothing was "
            f"changed; fix them and run again:\n{listed}"
        )
    catalog_set = set(catalogs)
    leftovers.extend(_other_conf_mentions(conf, root, catalog_set))
    code_texts, code_changes, code_leftovers = _code_changes(root, conf)
    texts.update(code_texts)
    changes.extend(code_changes)
    project = [*code_leftovers, *_project_leftovers(root, conf)]
    leftovers.extend(sorted(project, key=lambda left: (left.file, left.line)))
    return Migration(
        root=root,
        catalogs=tuple(_shown(f, root) for f in catalogs),
        changes=tuple(changes),
        leftovers=tuple(leftovers),
        texts=texts,
    )


def catalog_files(conf: Path) -> list[Path]:
    """The catalog files Kedro's ``OmegaConfigLoader`` reads in every environment of
    ``conf`` (its default patterns ``catalog*``, ``catalog*/**``, ``**/catalog*``), sorted."""
    found: set[Path] = set()
    if not conf.is_dir():
        return []
    for env in sorted(conf.iterdir()):
        if env.name.startswith(".") or not env.is_dir():
            continue
        for file in _walk(env):
            relative = file.relative_to(env).parts
            if any(part.startswith(".") for part in relative):
                continue
            if file.suffix not in CATALOG_SUFFIXES:
                continue
            if relative[-1].startswith("catalog") or relative[0].startswith("catalog"):
                found.add(file)
    return sorted(found)


def _walk(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if path.is_file():
                yield path


def _shown(file: Path, root: Path) -> str:
    try:
        return file.relative_to(root).as_posix()
    except ValueError:
        return str(file)


@attrs.define
class _Unreadable(Exception):
    message: str
    line: int | None = None


def _read_text(file: Path) -> str:
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise _Unreadable(f"cannot read the file: {exc.strerror or type(exc).__name__}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise _Unreadable("not UTF-8 text (Kedro reads catalogs as UTF-8)", line) from exc


def _rewrite(text: str, shown: str) -> tuple[str, list[Change], list[Leftover]]:
    """``text`` with every kedro-mlflow class path among its values replaced in place."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    # ruamel's marks count characters after a byte-order mark it drops.
    offset = 1 if text.startswith("\ufeff") else 0
    try:
        root = YAML(typ="rt", pure=True).compose(text[offset:])
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = str(exc.problem or exc.context)
        if exc.context and exc.context_mark is not None and exc.problem:
            what += f" ({exc.context} started on line {exc.context_mark.line + 1})"
        raise _Unreadable(
            f"malformed YAML: {what}", None if mark is None else mark.line + 1
        ) from exc
    except YAMLError as exc:
        raise _Unreadable(f"malformed YAML: {exc}") from exc
    except RecursionError as exc:
        raise _Unreadable("nested too deeply to read") from exc
    replacements: dict[int, tuple[str, str]] = {}
    leftovers: list[Leftover] = []
    for node in _value_scalars(root):
        value = node.value
        if not _CLASS_PATH.match(value):
            continue
        start, end = node.start_mark.index + offset, node.end_mark.index + offset
        line = text.count("\n", 0, start) + 1
        new = SPELLINGS.get(value)
        if new is None:
            leftovers.append(
                Leftover(
                    shown,
                    line,
                    f"{value!r} is not one of kedro-mlflow 2.0.3's datasets",
                    "left as it is; change it by hand (trackcfg.kedro.datasets has "
                    + ", ".join(DATASETS)
                    + ")",
                )
            )
            continue
        # The value as written: after any anchor or tag, inside quotes or a block scalar.
        at = text.rfind(value, start, end)
        if at < 0:
            leftovers.append(
                Leftover(
                    shown,
                    line,
                    f"{value} is written with escapes",
                    f"change it by hand to {new}",
                )
            )
            continue
        replacements[at] = (value, new)
    changes: list[Change] = []
    pieces: list[str] = []
    done = 0
    for at in sorted(replacements):
        old, new = replacements[at]
        pieces += [text[done:at], new]
        done = at + len(old)
        changes.append(Change(shown, text.count("\n", 0, at) + 1, old, new))
    pieces.append(text[done:])
    return "".join(pieces), changes, leftovers


def _value_scalars(root: Any) -> Iterator[Any]:
    """Every scalar node of the document that is the value of a ``type`` key (at any depth:
    an artifact dataset's ``dataset: {type: ...}`` too), each node once (an alias is the
    node of its anchor).  Other values (``metadata:``) are never changed."""
    from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

    seen: set[int] = set()
    stack = [] if root is None else [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, MappingNode):
            for key, value in node.value:
                if not isinstance(key, ScalarNode):
                    stack.append(key)
                elif key.value == "type" and isinstance(value, ScalarNode):
                    if isinstance(value.value, str) and id(value) not in seen:
                        seen.add(id(value))
                        yield value
                    continue
                stack.append(value)
        elif isinstance(node, SequenceNode):
            stack.extend(node.value)


# --------------------------------------------------------------------------------------------
# What is left to the user.


def _other_conf_mentions(conf: Path, root: Path, catalogs: set[Path]) -> Iterator[Leftover]:
    """``kedro_mlflow`` class paths in configuration files that are not catalogs (a
    ``globals.yml`` whose values a catalog interpolates): listed, not changed."""
    if not conf.is_dir():
        return
    for file in _walk(conf):
        if file in catalogs or file.suffix not in CATALOG_SUFFIXES:
            continue
        for number, line in _lines(file):
            code = line.split("#", 1)[0]
            if _KEDRO_MLFLOW_PATH.search(code):
                yield Leftover(
                    _shown(file, root),
                    number,
                    "names kedro_mlflow outside a catalog file",
                    "left as it is; change it by hand (" + _hint(code) + ")",
                )


def _project_leftovers(root: Path, conf: Path) -> Iterator[Leftover]:
    for file in _project_files(root, conf):
        shown = _shown(file, root)
        is_dependency = _DEPENDENCY_NAMES.match(file.name) is not None
        for number, line in _lines(file):
            if is_dependency and _KEDRO_MLFLOW_PACKAGE.search(line.split("#", 1)[0]):
                yield Leftover(
                    shown,
                    number,
                    "the kedro-mlflow dependency",
                    "remove it (and `pip uninstall kedro-mlflow`): with both plugins "
                    "installed, both track every run",
                )
                continue
            match = _KEDRO_MLFLOW_COMMAND.search(line)
            if match is not None:
                sub = match.group("sub") or ""
                command = f"kedro mlflow {sub}".strip()
                advice = _COMMAND_ADVICE.get(sub, "trackcfg has no such command")
                yield Leftover(shown, number, f"`{command}`", advice)


def _code_changes(root: Path, conf: Path) -> tuple[dict[Path, str], list[Change], list[Leftover]]:
    """The project's Python files with their kedro-mlflow imports pointed at trackcfg
    (``_migrate_imports``), and the ``kedro_mlflow`` imports left to the user."""
    from ._migrate_imports import rewrite_imports

    texts: dict[Path, str] = {}
    changes: list[Change] = []
    leftovers: list[Leftover] = []
    for file in _project_files(root, conf):
        if file.suffix != ".py":
            continue
        try:
            if file.stat().st_size > _MAX_SCANNED_BYTES:
                continue
            text = file.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if "kedro_mlflow" not in text:
            continue
        new_text, rewritten, kept = rewrite_imports(text)
        shown = _shown(file, root)
        changes.extend(Change(shown, c.line, c.old, c.new) for c in rewritten)
        leftovers.extend(
            Leftover(shown, k.line, "imports kedro_mlflow", _import_advice(k.statement))
            for k in kept
        )
        if new_text != text:
            texts[file] = new_text
    return texts, changes, leftovers


def _hint(code: str) -> str:
    for spelling, new in SPELLINGS.items():
        if spelling in code:
            return f"{spelling} -> {new}"
    return "see trackcfg.kedro.datasets"


def _import_advice(line: str) -> str:
    names = [name for name in DATASETS if name in line]
    if names:
        return f"import {', '.join(names)} from {NEW_MODULE} instead"
    if "MlflowHook" in line:
        return "remove it: trackcfg's hooks register themselves (entry point kedro.hooks)"
    return "kedro-mlflow will be gone: replace or remove it by hand"


def _within(file: Path, folder: Path) -> bool:
    try:
        file.relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _project_files(root: Path, conf: Path) -> Iterator[Path]:
    """The project's code, scripts and dependency files (not ``conf``, data, environments,
    caches or version control)."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in _SKIPPED_FOLDERS
            and (not d.startswith(".") or d in {".github", ".gitlab", ".circleci"})
            and here / d != conf
            and not (here / d / "pyvenv.cfg").exists()
        )
        for name in sorted(filenames):
            path = here / name
            suffix = path.suffix.lower()
            if (
                suffix in _SCRIPT_SUFFIXES
                or name in _SCRIPT_NAMES
                or name.startswith("Dockerfile")
                or name == ".gitlab-ci.yml"
                or _DEPENDENCY_NAMES.match(name)
            ):
                yield path


def _lines(file: Path) -> Iterator[tuple[int, str]]:
    try:
        if not file.is_file() or file.stat().st_size > _MAX_SCANNED_BYTES:
            return
        text = file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    if "mlflow" not in text and "pipeline_ml_factory" not in text:
        return
    yield from enumerate(text.splitlines(), start=1)


# --------------------------------------------------------------------------------------------
# Writing and saying what was done.


def apply(migration: Migration) -> None:
    """Write every changed file, each atomically (a temporary file in its folder, renamed
    over it; a symbolic link's target is what is replaced), keeping its mode.  Every file
    and folder is checked writable first: ``MigrationError`` naming the first that is not,
    and nothing written."""
    for file in migration.texts:
        target = file.resolve()
        if not _can_write_in(target.parent):
            shown = _shown(file, migration.root)
            where = "" if target == file else f" (a symbolic link to {target})"
            raise MigrationError(
                f"cannot migrate: {shown}{where} cannot be rewritten, its folder "
                f"{target.parent} is not writable; nothing was changed"
            )
    for file, text in migration.texts.items():
        target = file.resolve()
        mode = target.stat().st_mode & 0o7777
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as stream:
                stream.write(text.encode("utf-8"))
                stream.flush()
                os.fsync(stream.fileno())
            os.chmod(temporary, mode)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def _can_write_in(folder: Path) -> bool:
    """Whether a file can be made in ``folder`` (what ``apply`` does): tried, since
    permissions, read-only mounts and immutable folders all answer only then."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".trackcfg-migrate-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    Path(probe).unlink(missing_ok=True)
    return True


def render(migration: Migration, *, dry_run: bool) -> str:
    """What ``kedro trackcfg migrate`` prints."""
    lines = [str(change) for change in migration.changes]
    catalogs = set(migration.catalogs)
    catalog_changes = [c for c in migration.changes if c.file in catalogs]
    code_changes = [c for c in migration.changes if c.file not in catalogs]
    files = len({change.file for change in catalog_changes})
    count = len(catalog_changes)
    types = f"{count} kedro-mlflow dataset type{'s' if count != 1 else ''}"
    in_files = f"in {files} catalog file{'s' if files != 1 else ''}"
    if not migration.catalogs:
        lines.append("No catalog files found (conf/<env>/catalog*.yml).")
    elif not count:
        lines.append(
            f"No kedro-mlflow dataset types in the {len(migration.catalogs)} catalog file"
            f"{'s' if len(migration.catalogs) != 1 else ''}."
        )
    elif dry_run:
        lines.append(f"Would change {types} {in_files} (--dry-run: nothing written).")
    else:
        lines.append(f"Changed {types} {in_files}.")
    if code_changes:
        n, f = len(code_changes), len({c.file for c in code_changes})
        verb = "Would point" if dry_run else "Pointed"
        lines.append(
            f"{verb} {n} kedro_mlflow import{'s' if n != 1 else ''} in {f} Python file"
            f"{'s' if f != 1 else ''} at trackcfg.kedro.pipeline / trackcfg.kedro.datasets."
        )
    for file in migration.texts:
        target = file.resolve()
        if target != file:
            verb = "would write" if dry_run else "wrote"
            lines.append(f"{_shown(file, migration.root)} is a symbolic link: {verb} {target}")
    if migration.leftovers:
        lines.append("")
        lines.append("Not carried over (do it by hand):")
        lines.extend(f"  {leftover}" for leftover in migration.leftovers)
    return "\n".join(lines)
