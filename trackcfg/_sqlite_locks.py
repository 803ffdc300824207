"""SQLite stores' locks, seen from outside the database: who holds the lock a write waits
for (read from ``/proc/locks``), what to say when a write gave up waiting, and the lock that
keeps processes from creating a new store's tables at once.  Needs no mlflow."""

from __future__ import annotations

import contextlib
import gc
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from ._store import mask_uri
from .exceptions import TrackingUnavailableError

__all__ = [
    "locked_store_error",
    "own_lock_let_go",
    "sqlite_busy",
    "sqlite_file",
    "sqlite_lock_holder",
    "store_creation_lock",
]


def sqlite_file(tracking_uri: str) -> Path | None:
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri[len("sqlite:///") :].partition("?")[0]
    return Path(path) if path and not path.startswith(":memory:") else None


@contextlib.contextmanager
def store_creation_lock(tracking_uri: str) -> Iterator[None]:
    """Hold an exclusive lock, across processes, on the folder of a SQLite store's file.

    MLflow creates a new database's tables in EVERY process that finds them missing: processes
    opening a new store at once collide ("table ... already exists", alembic revision errors).
    A ``flock`` on the folder, not on the database file: closing any descriptor of that file
    would drop SQLite's own locks held by this process.  Where ``flock`` does not exist
    (Windows), nothing is locked."""
    db = sqlite_file(tracking_uri)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None  # type: ignore[assignment]
    if db is None or fcntl is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(db.parent, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


# SQLite's result codes for "another connection holds the lock" (sqlite3 names them from 3.11).
_SQLITE_BUSY_CODES = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED


def sqlite_busy(exc: BaseException) -> bool:
    """Whether a SQLite store stayed locked past MLflow's own wait (its busy_timeout, 20 s):
    told by the sqlite3 error code in the chain (Python 3.11+), not by the message."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, sqlite3.OperationalError):
            return getattr(current, "sqlite_errorcode", None) in _SQLITE_BUSY_CODES
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


# SQLite's lock bytes (rollback journal: os_unix.c's PENDING_BYTE, RESERVED_BYTE and the 510
# SHARED bytes after them) and, in WAL mode, the write lock's byte of the ``-shm`` file.
_SQLITE_LOCK_BYTES = (0x40000000, 0x40000000 + 2 + 510)
_WAL_WRITE_LOCK_BYTE = 120


def sqlite_lock_holder(db: Path) -> int | None:
    """The process holding a lock on the SQLite file ``db`` (or its ``-shm`` file) that keeps
    a writer out: another process's id, ``os.getpid()`` when only this process holds one
    (through another connection), None when no lock is held now or where it cannot be told.

    Read from ``/proc/locks`` (Linux): opening the file to ask ``fcntl`` would be wrong, as
    closing any descriptor of it drops every POSIX lock this process holds on it, SQLite's
    included."""
    try:
        targets: dict[str, tuple[int, int]] = {}
        for path, (low, high) in (
            (db, _SQLITE_LOCK_BYTES),
            (db.with_name(db.name + "-shm"), (_WAL_WRITE_LOCK_BYTE, _WAL_WRITE_LOCK_BYTE)),
        ):
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(path)
                key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
                targets[key] = (low, high)
        with open("/proc/locks", encoding="ascii", errors="replace") as listing:
            lines = listing.read().splitlines()
    except OSError:
        return None
    holders: list[tuple[bool, int]] = []  # (a write lock, pid)
    for line in lines:
        fields = line.split()
        if "->" in fields or len(fields) < 8 or fields[1] != "POSIX":
            continue  # a waiter's entry, or another kind of lock
        rw, pid, where, start, end = fields[3], fields[4], fields[5], fields[6], fields[7]
        span = targets.get(where)
        if span is None or not pid.isdigit() or not start.isdigit():
            continue
        last = span[1] + 1 if end == "EOF" else int(end)
        if int(start) <= span[1] and last >= span[0]:
            holders.append((rw == "WRITE", int(pid)))
    for _, holder in sorted(holders, key=lambda held: not held[0]):  # writers first
        if holder != os.getpid():
            return holder
    return os.getpid() if holders else None


def locked_store_error(tracking_uri: str) -> TrackingUnavailableError:
    """What happened when a write to a SQLite store gave up waiting for its lock, naming who
    holds the lock where that can be told (``_sqlite_lock_holder``)."""
    db = sqlite_file(tracking_uri)
    holder = None if db is None else sqlite_lock_holder(db)
    waited = (
        f"a write to SQLite store {mask_uri(tracking_uri)} waited for its lock longer than "
        "MLflow waits (20 s)"
    )
    server = (
        "SQLite lets one connection write at a time, so for many processes writing at once use "
        "a tracking server (mlflow server --backend-store-uri postgresql+psycopg2://...; see "
        "docs/scale.md)"
    )
    if holder == os.getpid():
        return TrackingUnavailableError(
            f"{waited}: this process (pid {holder}) holds that lock itself, through another "
            "connection with a transaction left open (a sqlite3 connection of the program's "
            "own to that file, or a write interrupted by Ctrl-C); commit or close it"
        )
    if holder is not None:
        return TrackingUnavailableError(
            f"{waited}: process {holder} holds it (a program writing to the store, or one "
            f"that left a transaction open); {server}"
        )
    return TrackingUnavailableError(
        f"{waited}: another connection held it (of this process or another); {server}"
    )


def own_lock_let_go(tracking_uri: str) -> bool:
    """After ending a run gave up waiting for a SQLite lock: whether one more try may pass.
    Not when another process holds the lock (MLflow waited for it already); when this
    process held it, the garbage collector may free an interrupted transaction that a cycle
    of references kept (``drop_interrupted`` frees the others): then it is let go."""
    db = sqlite_file(tracking_uri)
    if db is None or sqlite_lock_holder(db) not in (None, os.getpid()):
        return False
    gc.collect()
    return sqlite_lock_holder(db) != os.getpid()
