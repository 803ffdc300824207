"""Credentials resolution: the entry that ``server.credentials`` names, taken from
``credentials.yml`` files or from Kedro's ``credentials`` config, and checked and converted by
one function, ``resolve_credentials``, so that both ways accept, convert and refuse the same:

- the entry maps variable names to plain values; a value that is a mapping or a list is
  refused (an environment variable holds text);
- ``null`` becomes ``""``, any other value its text: ``5432`` → ``"5432"``, ``1.5`` → ``"1.5"``,
  ``true`` → ``"True"``.

No message ever quotes a value: problems name the entry, its keys, the entries that exist, and
where they were looked for.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ._config import Credentials, Source
from ._discovery import CREDENTIALS_NAMES, first_existing, user_config_dir
from .exceptions import ConfigProblem

__all__ = ["CredentialsSource", "file_sources", "mapping_sources", "resolve_credentials"]

KEY = "server.credentials"

ReadYaml = Callable[[Path], tuple[Mapping[str, Any], Mapping[str, Source]]]
"""Reads one credentials file into its data and per-key sources, reporting problems itself."""


@attrs.frozen
class CredentialsSource:
    """One place entries are looked up in: a ``credentials.yml`` (which may not exist) or a
    mapping such as Kedro's ``credentials`` config."""

    label: str
    """How messages name the place."""
    entries: Mapping[str, Any] = attrs.field(factory=dict)
    file: str | None = None
    """The file read, if any: what ``Credentials.origin`` reports."""
    lines: Mapping[str, Source] = attrs.field(factory=dict)


def file_sources(folders: Sequence[Path], read: ReadYaml) -> Iterator[Iterator[CredentialsSource]]:
    """The ``credentials.yml`` of ``folders`` (later wins), then the user config dir's.

    Lazy: the user config dir's file is read only when ``folders`` lack the entry, so a
    broken file there does not fail a project that does not need it.  ``read`` is the
    loader's YAML reader (line numbers, secret-safe errors), passed in because the loader
    imports this module.
    """
    for group in (tuple(folders), (user_config_dir(),)):
        yield (_file_source(folder, read) for folder in group)


def _file_source(folder: Path, read: ReadYaml) -> CredentialsSource:
    file = first_existing(folder, CREDENTIALS_NAMES)
    if file is None:
        return CredentialsSource(str(folder / CREDENTIALS_NAMES[0]))
    data, lines = read(file)
    return CredentialsSource(str(file), data, str(file), lines)


def mapping_sources(
    entries: Mapping[str, Any], label: str = "the credentials config"
) -> list[list[CredentialsSource]]:
    """An already-loaded mapping of entries (Kedro's ``credentials``) as the only place."""
    return [[CredentialsSource(label, entries)]]


def resolve_credentials(
    name: str,
    sources: Iterable[Iterable[CredentialsSource]],
    *,
    where: str | None,
    problems: list[ConfigProblem],
) -> Credentials | None:
    """The entry ``name`` from the first group of ``sources`` that has it, merged across that
    group (later wins).  ``None``, with a problem appended, when it is missing or malformed.

    ``where`` is where ``server.credentials`` is set: the place a problem points at when the
    source has no file of its own.
    """
    looked_in: list[str] = []
    existing: set[str] = set()
    for group in sources:
        entry: dict[Any, Any] | None = None
        origin: CredentialsSource | None = None
        for source in group:
            looked_in.append(source.label)
            existing.update(str(key) for key in source.entries)
            if name not in source.entries:
                continue
            value = source.entries[name]
            if not isinstance(value, Mapping):
                line = source.lines.get(name)
                problems.append(
                    ConfigProblem(
                        KEY,
                        f"credentials entry {name!r} must map variable names to values",
                        str(line) if line is not None else source.file or where,
                    )
                )
                return None
            entry = {**(entry or {}), **value}
            origin = source
        if entry is not None and origin is not None:
            return _credentials(name, entry, origin.file, where, problems)
    found = ", ".join(sorted(existing)) if existing else "none"
    problems.append(
        ConfigProblem(
            KEY,
            f"no credentials entry named {name!r}; looked in {', '.join(looked_in)}; "
            f"entries there: {found}",
            where,
        )
    )
    return None


def _credentials(
    name: str,
    entry: Mapping[Any, Any],
    origin: str | None,
    where: str | None,
    problems: list[ConfigProblem],
) -> Credentials | None:
    bad = [str(key) for key, value in entry.items() if _nested(value)]
    if bad:
        problems.append(
            ConfigProblem(
                KEY,
                f"credentials entry {name!r}: {', '.join(bad)} must be plain values, "
                "not mappings or lists",
                origin or where,
            )
        )
        return None
    values = {str(key): "" if value is None else str(value) for key, value in entry.items()}
    return Credentials(name=name, values=values, origin=origin)


def _nested(value: object) -> bool:
    # Collection, not list/dict: Kedro may hand over OmegaConf's ListConfig/DictConfig.
    return isinstance(value, Collection) and not isinstance(value, (str, bytes))
