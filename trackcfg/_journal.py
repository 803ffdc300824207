"""The local journal of a buffered run: every logging call, appended before the call returns.

One file per session, ``<journal_dir>/<run_id>.<random>.journal``, JSON lines:

- line 1, the header: ``{"trackcfg_journal": 1, "run_id", "experiment_id", "tracking_uri"
  (masked: never a password), "host", "pid", "created"}``;
- a record per logging call: ``{"s": seq, "p": {params}, "t": {tags}, "m": [[key, value,
  timestamp, step], ...], "a": [[file, artifact_path], ...]}`` (keys absent when empty;
  ``file`` is relative to the journal's folder, ``<run_id>.<random>.blobs/<n>/<name>``, so a
  journal moved with its project still names its copies; older journals hold absolute paths,
  still read);
- ``{"ack": seq}``: every record up to ``seq`` is on the server (appended by the sender);
- ``{"end": status, "at": ms}``: the session ended with that status, not yet sent;
- ``{"done": true}``: the run's end is on the server too; the file is then deleted.

Artifacts are copied at call time into the journal's blobs folder beside it (its name with
``.blobs`` for ``.journal``), so what the journal names exists even if the caller deletes its
file; ``trackcfg sync`` uploads nothing from outside that folder.  The file is created 0600,
the blobs folder 0700 (a journal holds what a run logged), and its header must name the run
its file name names.  The writer holds an exclusive ``flock`` on
the file for the session's lifetime: ``trackcfg sync`` takes a journal only when it gets the
lock, i.e. when its writer is gone (ended or killed).  Appends are plain ``write`` calls
(no ``fsync``): the data survives the process being killed (SIGKILL, the OOM killer), not
the machine losing power.

Torn lines.  An append the disk cannot take whole (full, quota, I/O error) is cut back to the
line before it, so the next append starts a line of its own; where even the cut fails, the
next append starts with a newline.  A reader skips and counts any line that is not a whole
record (a torn last line: a crash mid-write; a torn line in the middle: a full disk under a
writer without the cut, or a cut that failed) and keeps every whole record around it; a
record glued onto a torn piece (``{"s":4,"m":[[...{"s":5,...}``) is recovered.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import attrs

from ._records import MetricPoint
from .exceptions import RunError

__all__ = [
    "FORMAT_VERSION",
    "Journal",
    "JournalRecord",
    "blobs_folder",
    "check_folder",
    "copy_artifact",
    "lock_file",
    "open_journal",
    "remove",
    "run_id_of",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SUFFIX = ".journal"
#: Acknowledged bytes a journal with nothing else in it is compacted from.
_SMALL = 16 * 1024

#: One encoder for every record: ``json.dumps(..., separators=...)`` builds a new one per
#: call, a third of the cost of journaling a ``log_metrics`` call.
_encode_compact = json.JSONEncoder(separators=(",", ":")).encode
_json_string = json.encoder.encode_basestring_ascii  # what json.dumps uses for a str
_float_repr = float.__repr__  # what json.dumps uses for a finite float


@attrs.frozen(kw_only=True)
class JournalRecord:
    """One logging call's data."""

    seq: int
    params: Mapping[str, str] = attrs.field(factory=dict)
    tags: Mapping[str, str] = attrs.field(factory=dict)
    metrics: Sequence[MetricPoint] = ()
    artifacts: Sequence[tuple[str, str | None]] = ()  # (file, artifact_path)

    @property
    def size(self) -> int:
        """How many entities it holds (what ``max_buffered`` counts)."""
        return len(self.params) + len(self.tags) + len(self.metrics) + len(self.artifacts) or 1

    def to_json(self) -> str:
        if not (self.params or self.tags or self.artifacts):
            # A training loop's every step: written here exactly as json.dumps writes it,
            # in half its time.
            if not self.metrics:
                return f'{{"s":{self.seq}}}'
            points = []
            for m in self.metrics:
                value = m.value
                number = (
                    _float_repr(value)
                    if type(value) is float and value - value == 0  # finite
                    else _encode_compact(value)  # NaN, infinities, ints: as json.dumps writes
                )
                points.append(f"[{_json_string(m.key)},{number},{m.timestamp},{m.step}]")
            return f'{{"s":{self.seq},"m":[{",".join(points)}]}}'
        data: dict[str, Any] = {"s": self.seq}
        if self.params:
            data["p"] = dict(self.params)
        if self.tags:
            data["t"] = dict(self.tags)
        if self.metrics:
            data["m"] = [[m.key, m.value, m.timestamp, m.step] for m in self.metrics]
        if self.artifacts:
            data["a"] = [list(a) for a in self.artifacts]
        return _encode_compact(data)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JournalRecord:
        return cls(
            seq=int(data["s"]),
            params={str(k): str(v) for k, v in data.get("p", {}).items()},
            tags={str(k): str(v) for k, v in data.get("t", {}).items()},
            metrics=tuple(
                MetricPoint(key=str(k), value=float(v), timestamp=int(ts), step=int(step))
                for k, v, ts, step in data.get("m", ())
            ),
            artifacts=tuple((str(f), None if p is None else str(p)) for f, p in data.get("a", ())),
        )


def journal_path(folder: Path, run_id: str) -> Path:
    """A new journal's file: one per session, so that sessions logging into one run (a
    session attached to another's run) each keep their own."""
    return folder / f"{run_id}.{uuid.uuid4().hex[:12]}{SUFFIX}"


def copy_artifact(source: Path, target: Path) -> None:
    """A file, or a folder with everything in it (MLflow logs both)."""
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copyfile(source, target)


def run_id_of(journal: Path) -> str:
    """The run a journal file belongs to, from its name (its header says it too)."""
    return journal.name.split(".", 1)[0]


def blobs_folder(journal: Path) -> Path:
    return journal.with_suffix(".blobs")


def lock_file(handle: IO[Any], *, blocking: bool) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; sync relies on the end record
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError:
        return False
    return True


@attrs.define(eq=False)
class Journal:
    """The writer's side: appends records and acknowledgements; thread-safe by its caller
    (the buffer holds its lock around every append)."""

    path: Path
    _handle: IO[bytes]  # unbuffered: each write() is one write(2)
    _seq: int = 0
    _blob_count: int = 0
    offset: int = 0  # bytes written so far: where the next line starts
    _cut_failed: bool = False  # a torn piece could not be cut back
    _header_size: int = 0
    _scanned: tuple[int, int] = (0, 0)  # (offset, seq): every record before offset <= seq

    def append(
        self,
        *,
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        metrics: Sequence[MetricPoint] = (),
        artifacts: Sequence[tuple[str, str | None]] = (),
    ) -> JournalRecord:
        self._seq += 1
        record = JournalRecord(
            seq=self._seq,
            params=dict(params or {}),
            tags=dict(tags or {}),
            metrics=tuple(metrics),
            artifacts=tuple(artifacts),
        )
        self.write(record)
        return record

    def write(self, record: JournalRecord) -> None:
        """Append ``record``; ``OSError`` when the disk cannot take it (cut back)."""
        if record.artifacts:  # named relative to the journal's folder (module docstring)
            relative = tuple((self.recorded(Path(f)), where) for f, where in record.artifacts)
            self._write(attrs.evolve(record, artifacts=relative).to_json())
        else:
            self._write(record.to_json())

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def keep_file(self, source: Path, name: str) -> Path:
        """A copy of ``source`` named ``name`` in the run's blob folder (artifacts are
        uploaded later: the caller may change or delete its file meanwhile); ``OSError``
        when the disk cannot take it (nothing half-written is left)."""
        target = self._blob_place(name)
        try:
            copy_artifact(source, target)
        except OSError:
            shutil.rmtree(target.parent, ignore_errors=True)
            raise
        return target

    def keep_text(self, text: str, name: str) -> Path:
        target = self._blob_place(name)
        try:
            target.write_text(text, encoding="utf-8")
        except OSError:
            shutil.rmtree(target.parent, ignore_errors=True)
            raise
        return target

    def _blob_place(self, name: str) -> Path:
        self._blob_count += 1
        blobs = blobs_folder(self.path)
        blobs.mkdir(mode=0o700, exist_ok=True)
        folder = blobs / str(self._blob_count)
        folder.mkdir(mode=0o700)
        return folder / name

    def recorded(self, kept: Path) -> str:
        """How a record names a kept copy: relative to the journal's folder when it is in
        the blobs folder (the only place ``trackcfg sync`` uploads from)."""
        if kept.is_relative_to(blobs_folder(self.path)):
            return os.path.relpath(kept, self.path.parent)
        return str(kept)

    def ack(self, seq: int) -> None:
        self._write(json.dumps({"ack": seq}))

    def end(self, status: str, at_ms: int) -> None:
        self._write(json.dumps({"end": status, "at": at_ms}))

    def compact(self, acked: int, worth: int = 0) -> tuple[int, int] | None:
        """Drop what the server acknowledged (every record up to ``acked``): the file is
        rewritten as its header, ``{"ack": acked}`` and the lines after the last acknowledged
        record, then put in place of the old one by ``rename`` (a crash leaves one or the
        other whole), when the acknowledged part is at least ``worth`` bytes (or a few KiB
        when it is all of it).  Returns ``(old, new)``: a byte at ``old`` or after in the old
        file is now ``new - old`` bytes further; None when it was not worth it or the disk
        refused (nothing changed).  The caller holds the lock appends are made under."""
        tail = self._offset_after(acked)
        if tail is None:
            return None
        waste = tail - self._header_size
        if waste < self.offset - tail:  # mostly records not sent yet: copying costs more
            return None
        if waste < (min(worth, _SMALL) if tail == self.offset else worth):
            return None
        temporary = self.path.with_name(self.path.name + ".compacting")
        try:
            with open(self.path, "rb") as old:
                header = old.read(self._header_size)
                old.seek(tail)
                rest = old.read(self.offset - tail)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            handle = open(fd, "wb", buffering=0)  # noqa: SIM115 - becomes the journal's
            if not lock_file(handle, blocking=False):  # pragma: no cover - a file of its own
                handle.close()
                return None
            kept = header + (json.dumps({"ack": acked}) + "\n").encode("utf-8")
            data = kept + rest
            try:
                done = 0
                while done < len(data):
                    written = handle.write(data[done:])
                    if not written:
                        raise OSError(errno.ENOSPC, "disk full")
                    done += written
                os.rename(temporary, self.path)
            except OSError:
                handle.close()
                raise
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink()
            logger.debug("could not compact %s", self.path, exc_info=True)
            return None
        self._handle.close()
        self._handle = handle
        self.offset = len(data)
        self._scanned = (len(kept), acked)
        return tail, len(kept)

    def _offset_after(self, acked: int) -> int | None:
        """Where the first line after record ``acked`` starts (None: not found whole)."""
        start, known = self._scanned
        if known > acked:
            start, known = self._header_size, 0
        position = start
        with open(self.path, "rb") as handle:
            handle.seek(start)
            while position < self.offset:
                line = handle.readline()
                if not line.endswith(b"\n"):
                    return None
                if line.startswith(b'{"s":'):
                    end = 5
                    while line[end : end + 1].isdigit():
                        end += 1
                    if int(line[5:end] or 0) > acked:
                        self._scanned = (position, acked)
                        return position
                position += len(line)
        self._scanned = (position, acked)
        return position

    def finish(self) -> None:
        """Everything is on the server: the journal is not needed any more."""
        self.close()
        remove(self.path)

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()  # releases the lock

    def _write(self, line: str) -> None:
        # One write(2) per line, straight from an unbuffered file (no Python-level buffer to
        # flush): when it returns the line is the OS's, so a SIGKILL loses nothing, and a
        # reader sees whole lines, or a torn last one.  A regular file takes a write whole
        # unless the disk is full: then the piece written is cut back (module docstring).
        data = (line + "\n").encode("utf-8")
        if self._cut_failed:
            data = b"\n" + data
        done = 0
        try:
            while done < len(data):
                written = self._handle.write(data[done:])
                if not written:
                    raise OSError(errno.ENOSPC, f"could not append to the journal {self.path}")
                done += written
        except OSError:
            if done:
                self._cut_back()
            raise
        self.offset += done
        self._cut_failed = False

    def _cut_back(self) -> None:
        fd = self._handle.fileno()
        try:
            os.ftruncate(fd, self.offset)
            os.lseek(fd, self.offset, os.SEEK_SET)
        except OSError:
            # The piece stays: the next line starts on a line of its own (readers skip it).
            self._cut_failed = True
            with contextlib.suppress(OSError):
                self.offset = os.lseek(fd, 0, os.SEEK_END)

    @property
    def closed(self) -> bool:
        return self._handle.closed


def open_journal(
    folder: Path,
    *,
    run_id: str,
    experiment_id: str | None,
    tracking_uri: str,
    ends_run: bool = True,
) -> Journal:
    """Start the journal of ``run_id`` (``tracking_uri`` already masked), locked.
    ``ends_run`` is False for a run the session only attached to: sync never ends it."""
    import socket  # here: `trackcfg --help` imports no network module

    folder.mkdir(parents=True, exist_ok=True)
    path = journal_path(folder, run_id)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    handle = open(fd, "wb", buffering=0)  # noqa: SIM115 - held for the session
    if not lock_file(handle, blocking=False):  # pragma: no cover - a new file nobody else has
        handle.close()
        raise RunError(f"cannot lock the new journal {path}")
    journal = Journal(path, handle, offset=0)
    header = {
        "trackcfg_journal": FORMAT_VERSION,
        "run_id": run_id,
        "experiment_id": experiment_id,
        "tracking_uri": tracking_uri,
        "ends_run": ends_run,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "created": int(time.time() * 1000),
    }
    try:
        journal._write(json.dumps(header))
        journal._header_size = journal.offset
        journal._scanned = (journal.offset, 0)
    except OSError:
        handle.close()
        remove(path)
        raise
    return journal


def check_folder(folder: Path) -> str | None:
    """Why journals cannot be written in ``folder`` (None: they can): checked before a
    session creates its run."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create {folder}: {exc.strerror or type(exc).__name__}"
    if not folder.is_dir():
        return f"{folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{folder} is not writable by this user"
    return None


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    shutil.rmtree(blobs_folder(path), ignore_errors=True)
