"""Reading journals a writer (``_journal.Journal``) left: parsing records, torn lines skipped
and counted (``_journal``'s docstring has the format), the lock a reader takes before it sends
one (``claimed``), and the small edits a reader makes (acknowledgements, the end of a torn
tail).  Used by ``trackcfg sync`` (``_sync``) and by the buffer reading back what it spilled.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import attrs

from ._journal import FORMAT_VERSION, SUFFIX, JournalRecord, blobs_folder, lock_file, run_id_of
from .exceptions import RunError

__all__ = [
    "JournalContents",
    "JournalFormatError",
    "append_line",
    "claimed",
    "cut_torn_tail",
    "inside_blobs",
    "parse_line",
    "pending_journals",
    "read_header",
    "read_journal",
    "records_from",
]

logger = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class JournalContents:
    """What a journal file holds, as ``trackcfg sync`` needs it."""

    path: Path
    header: Mapping[str, Any]
    records: Sequence[JournalRecord]  # those not acknowledged yet, in order
    acked: int
    end: tuple[str, int] | None  # (status, end time in ms) when the session ended
    done: bool
    torn: bool  # the last line was cut short (a crash mid-write); it was skipped
    skipped: int = 0  # lines in the middle that were not whole records (a full disk)

    @property
    def run_id(self) -> str:
        return str(self.header["run_id"])

    @property
    def tracking_uri(self) -> str:
        return str(self.header.get("tracking_uri", ""))

    @property
    def ends_run(self) -> bool:
        return bool(self.header.get("ends_run", True))


def parse_line(line: bytes) -> tuple[dict[str, Any] | None, bool]:
    """A journal line's data (None: not a whole line), and whether a torn piece was skipped
    (module docstring: a record glued onto a torn piece is recovered)."""
    data = _parse(line)
    if data is not None:
        return data, False
    start = line.find(b'{"', 1)
    while start != -1:
        data = _parse(line[start:])
        if data is not None:
            return data, True
        start = line.find(b'{"', start + 1)
    return None, True


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if "s" in data:
        try:
            JournalRecord.from_json(data)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
    return data


def records_from(
    path: Path, offset: int, room: int, end: int | None = None
) -> tuple[list[JournalRecord], int | None]:
    """Records starting at byte ``offset`` (up to byte ``end``), up to ``room`` entities
    (at least one record); with the offset of the first one not returned (None: none left).
    A line that is not a whole record is skipped."""
    records: list[JournalRecord] = []
    entities = 0
    with open(path, "rb") as handle:
        handle.seek(offset)
        position = offset
        for line in handle:
            if not line.endswith(b"\n") or (end is not None and position >= end):
                break  # being written right now, or past the span asked for
            data, _ = parse_line(line)
            if data is not None and "s" in data:
                record = _absolute(JournalRecord.from_json(data), path)
                if records and entities + record.size > room:
                    return records, position
                records.append(record)
                entities += record.size
            position += len(line)
    return records, None


class JournalFormatError(RunError):
    """A journal this trackcfg cannot read (another format version, or not a journal)."""


def read_journal(path: Path) -> JournalContents:
    """Parse a journal; ``JournalFormatError`` for another format version or a file that is
    not a journal.  A torn last line is skipped (``torn``)."""
    with open(path, "rb") as handle:
        raw = handle.read()
    lines = raw.split(b"\n")
    torn = bool(lines and lines[-1])  # no newline at the very end: cut short
    complete = lines[:-1]
    if not complete:
        if torn:
            raise JournalFormatError(f"{path} holds no complete header line: not a journal")
        raise JournalFormatError(f"{path} is empty: not a journal")
    try:
        header = json.loads(complete[0])
    except ValueError as exc:
        raise JournalFormatError(f"{path} does not start with a journal header") from exc
    if not isinstance(header, dict) or "trackcfg_journal" not in header:
        raise JournalFormatError(f"{path} does not start with a journal header")
    version = header["trackcfg_journal"]
    if version != FORMAT_VERSION:
        raise JournalFormatError(
            f"{path} was written in journal format {version!r}; this trackcfg reads format "
            f"{FORMAT_VERSION}: sync it with the trackcfg version that wrote it"
        )
    if str(header.get("run_id")) != run_id_of(path):
        raise JournalFormatError(
            f"{path} names run {header.get('run_id')!r} in its header but run "
            f"{run_id_of(path)!r} in its file name: refused (a journal is named after its run)"
        )
    records: list[JournalRecord] = []
    acked = 0
    end: tuple[str, int] | None = None
    done = False
    skipped = 0
    for number, line in enumerate(complete[1:], start=2):
        data, piece = parse_line(line) if line.strip() else (None, False)
        if piece and data is not None:
            skipped += 1  # a torn piece, with a whole record glued onto it
        try:
            if data is None:
                raise ValueError("not a whole journal line")
            if "s" in data:
                records.append(JournalRecord.from_json(data))
            elif "ack" in data:
                acked = max(acked, int(data["ack"]))
            elif "end" in data:
                end = (str(data["end"]), int(data["at"]))
            elif data.get("done"):
                done = True
        except (ValueError, TypeError, KeyError):
            if line.strip():
                skipped += 1
                logger.debug("%s:%d: not a whole journal line; skipped", path, number)
    pending = [_absolute(r, path) for r in records if r.seq > acked]
    return JournalContents(
        path=path,
        header=header,
        records=pending,
        acked=acked,
        end=end,
        done=done,
        torn=torn,
        skipped=skipped,
    )


def _absolute(record: JournalRecord, journal: Path) -> JournalRecord:
    """Artifact copies as absolute paths: named relative to the journal's folder, or (older
    journals) by an absolute path, found again in the journal's own blobs folder when the
    project moved since."""
    if not record.artifacts:
        return record
    blobs = blobs_folder(journal)
    found = []
    for file, where in record.artifacts:
        place = Path(file)
        if not place.is_absolute():
            place = journal.parent / place
        elif blobs.name in place.parts and not place.exists():
            parts = place.parts
            place = blobs.joinpath(*parts[len(parts) - parts[::-1].index(blobs.name) :])
        found.append((str(place), where))
    return attrs.evolve(record, artifacts=tuple(found))


def inside_blobs(journal: Path, file: str) -> bool:
    """Whether ``file`` (resolved: no symlink out) is inside the journal's own blobs folder."""
    try:
        real = Path(file).resolve(strict=True)
        own = blobs_folder(journal).resolve(strict=True)
    except OSError:
        return False
    return real.is_relative_to(own) and real != own


@contextlib.contextmanager
def claimed(path: Path) -> Iterator[bool]:
    """Hold the journal's lock for the block; yields False (and holds nothing) when a live
    writer holds it, or the file is gone."""
    handle = _locked_as_named(path)
    try:
        yield handle is not None
    finally:
        if handle is not None:
            handle.close()


def _locked_as_named(path: Path) -> IO[bytes] | None:
    """An open handle of the file ``path`` names now, its lock held; None when a live
    writer holds it or the file is gone.

    The lock is taken on what was opened, the contents read by name: a writer that compacts
    its journal puts a new, locked file in place and then closes (unlocks) the old one, so a
    lock won on the old file between the two says nothing of the new one.  Held locks are
    checked against the file the name leads to, and taken again when it changed."""
    while True:
        try:
            # Read-only: "a" would create again a journal its session has just deleted.
            handle = open(path, "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            return None
        if not lock_file(handle, blocking=False):
            handle.close()
            return None
        try:
            now = os.stat(path)
        except FileNotFoundError:
            handle.close()
            return None
        held = os.fstat(handle.fileno())
        if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
            return handle
        handle.close()  # replaced since it was opened: lock what the name leads to now


def read_header(path: Path) -> Mapping[str, Any] | None:
    """A journal's header (its first line), without reading the rest; None when the file
    is gone or does not start with one."""
    try:
        with open(path, "rb") as handle:
            header = json.loads(handle.readline())
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) else None


def cut_torn_tail(path: Path) -> None:
    """Drop a torn last line, so that lines appended after it stay whole."""
    with open(path, "rb+") as handle:
        raw = handle.read()
        if raw and not raw.endswith(b"\n"):
            handle.truncate(raw.rfind(b"\n") + 1)


def append_line(path: Path, data: Mapping[str, Any]) -> None:
    """Append one control line (``ack``/``end``/``done``) as ``trackcfg sync`` goes; a line
    the disk cannot take whole is cut back (``OSError``)."""
    line = (json.dumps(dict(data)) + "\n").encode("utf-8")
    with open(path, "ab", buffering=0) as handle:
        size = os.fstat(handle.fileno()).st_size
        try:
            done = 0
            while done < len(line):
                written = handle.write(line[done:])
                if not written:
                    raise OSError(errno.ENOSPC, f"could not append to {path}")
                done += written
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(handle.fileno(), size)
            raise


def pending_journals(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(folder.glob(f"*{SUFFIX}"))
