"""The journal on a disk that fills up, and journals a user did not write, on real stores.

A full disk is a real one: a small ``tmpfs`` mounted in the test's tmp folder (the tests that
need it are skipped where mounting is not allowed), filled with a file the test deletes to
give the space back.  Stores are local SQLite stores; ``trackcfg sync`` runs in process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import copy_store, project_folder
from mlflow import MlflowClient

from trackcfg import TrackingSession, load_config
from trackcfg._cli import cli
from trackcfg._journal import open_journal
from trackcfg._journal_read import read_journal
from trackcfg._params import MetricPoint
from trackcfg.exceptions import RunError

# ---------------------------------------------------------------------------------------------
# A small disk.


@contextlib.contextmanager
def small_disk(folder: Path, size_kb: int) -> Iterator[Path]:
    """A ``tmpfs`` of ``size_kb`` KiB mounted at ``folder`` (skips the test where mounting
    is not allowed)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(disk: Path, leave_bytes: int = 0) -> Path:
    """A file taking the disk's free space (but ``leave_bytes``); delete it to free it."""
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(filler, "wb") as handle, contextlib.suppress(OSError):
        handle.write(b"\0" * max(free - leave_bytes, 0))
    return filler


def point(step: int) -> MetricPoint:
    return MetricPoint(key="loss", value=1.0 / (step + 1), timestamp=1_700_000_000_000, step=step)


# ---------------------------------------------------------------------------------------------
# The writer on a full disk.


def test_an_append_the_full_disk_cuts_short_is_cut_back_and_later_appends_stay_whole(
    tmp_path: Path,
) -> None:
    """Appends until the disk is full (each failing one raises ``OSError`` and leaves
    nothing behind), then the space comes back: every record that was written whole is read
    back, no line is torn, and nothing is glued onto a piece of another."""
    with small_disk(tmp_path / "disk", 64) as disk:
        journal = open_journal(
            disk, run_id="r" * 32, experiment_id="0", tracking_uri="sqlite:///x.db"
        )
        fill(disk, leave_bytes=3000)
        written, failed = [], 0
        for step in range(400):
            try:
                written.append(journal.append(metrics=[point(step)] * 3).seq)
            except OSError:
                failed += 1
        assert failed > 0, "the disk never filled: the test proves nothing"
        (disk / "filler").unlink()
        for step in range(400, 450):
            written.append(journal.append(metrics=[point(step)] * 3).seq)
        journal.close()

        contents = read_journal(journal.path)
    assert contents.skipped == 0
    assert not contents.torn
    assert [r.seq for r in contents.records] == written
    assert all(len(r.metrics) == 3 for r in contents.records)


# ---------------------------------------------------------------------------------------------
# A session whose journal disk fills.


def config_text(journal_dir: Path | str, store: str = "mlruns", **logging_keys: object) -> str:
    extra = "".join(f"    {key}: {json.dumps(value)}\n" for key, value in logging_keys.items())
    return (
        textwrap.dedent(
            f"""\
        server:
          mlflow_tracking_uri: {store}
        tracking:
          experiment:
            name: disk
          logging:
            mode: buffered
            journal_dir: {journal_dir}
        """
        )
        + extra
    )


def store_client(project: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")


def loss_steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "loss"))


def test_a_full_journal_disk_never_raises_calls_are_sent_and_journaling_resumes(
    migrated_sqlite_db: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Logging calls while the journal's disk is full return normally; one WARNING names
    ``journal_dir``; the calls are sent; when the space comes back the journal is written
    again by itself (its lines are all whole); ``flush`` returns with everything stored."""
    with small_disk(tmp_path / "disk", 128) as disk:
        project = project_folder(tmp_path / "proj", config=config_text(disk, flush_seconds=0.2))
        copy_store(migrated_sqlite_db, project / "mlruns")
        session = TrackingSession(load_config(project), name="full", params={"lr": 0.1})
        with caplog.at_level(logging.WARNING, logger="trackcfg"), session:
            run_id = session.run_id or ""
            filler = fill(disk, leave_bytes=2000)
            for step in range(2000):
                session.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
            (journal,) = disk.glob("*.journal")
            full_size = journal.stat().st_size
            filler.unlink()
            for step in range(2000, 2500):
                session.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
            session.set_tags({"phase": "after"})
            assert journal.stat().st_size > full_size, "journaling did not resume"
            contents = read_journal(journal)
            assert contents.skipped == 0
            assert not contents.torn
            session.flush(120)
            assert loss_steps(store_client(project), run_id) == list(range(2500))

    said = [r.getMessage() for r in caplog.records if "cannot write the journal" in r.getMessage()]
    assert len(said) == 1, said
    assert str(disk) in said[0]
    assert "tracking.logging.journal_dir" in said[0]
    run = store_client(project).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.1"}
    assert run.data.tags["phase"] == "after"


def test_past_max_buffered_on_a_full_disk_calls_are_dropped_counted_tagged_said_once(
    migrated_sqlite_db: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Memory full (``max_buffered``) and the journal unwritable: calls still return; what is
    dropped is counted, said once, tagged on the run, and ``flush`` raises a ``RunError``
    saying how many (what was kept is on the server)."""
    with small_disk(tmp_path / "disk", 128) as disk:
        project = project_folder(
            tmp_path / "proj",
            config=config_text(disk, flush_seconds=3600, max_buffered=50),
        )
        copy_store(migrated_sqlite_db, project / "mlruns")
        session = TrackingSession(load_config(project), name="drops")
        with caplog.at_level(logging.WARNING, logger="trackcfg"), session:
            run_id = session.run_id or ""
            fill(disk)  # the journal's last page may still take a few lines
            for step in range(500):
                session.log_metrics({"loss": 1.0}, step=step)
            with pytest.raises(RunError, match=r"\d+ entities .* were dropped") as flushed:
                session.flush(120)
    assert "tracking.logging.journal_dir" in str(flushed.value)
    said = [r.getMessage() for r in caplog.records if "are dropped" in r.getMessage()]
    assert len(said) == 1, said
    client = store_client(project)
    dropped = int(client.get_run(run_id).data.tags["trackcfg.logging.dropped"])
    kept = loss_steps(client, run_id)
    assert dropped > 0
    assert f"{dropped} entities" in str(flushed.value)
    assert len(kept) + dropped == 500
    assert len(set(kept)) == len(kept)


def test_an_unwritable_journal_dir_is_an_error_naming_it_before_any_run_exists(
    migrated_sqlite_db: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    project = project_folder(tmp_path / "proj", config=config_text(blocker / "journal"))
    copy_store(migrated_sqlite_db, project / "mlruns")
    session = TrackingSession(load_config(project), name="nowhere")
    with pytest.raises(RunError, match=r"tracking\.logging\.journal_dir"), session:
        pass  # pragma: no cover - never entered
    assert store_client(project).search_runs(experiment_ids=["0", "1"]) == []
    experiment = store_client(project).get_experiment_by_name("disk")
    if experiment is not None:
        assert store_client(project).search_runs([experiment.experiment_id]) == []


def test_journal_files_are_owner_only(migrated_sqlite_db: Path, tmp_path: Path) -> None:
    project = project_folder(tmp_path / "proj", config=config_text(".trackcfg/journal"))
    copy_store(migrated_sqlite_db, project / "mlruns")
    note = tmp_path / "note.txt"
    note.write_text("hello")
    with TrackingSession(load_config(project), name="modes") as session:
        session.log_artifact(note)
        (journal,) = (project / ".trackcfg" / "journal").glob("*.journal")
        blobs = journal.with_suffix(".blobs")
        assert stat.S_IMODE(journal.stat().st_mode) == 0o600
        assert stat.S_IMODE(blobs.stat().st_mode) == 0o700
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in blobs.iterdir())


# ---------------------------------------------------------------------------------------------
# Journals trackcfg sync is given.

DIES = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from trackcfg import TrackingSession, load_config

    note = Path(sys.argv[1]) / "hello.txt"
    note.write_text("hello")
    with TrackingSession(load_config(sys.argv[1]), name="dies") as s:
        for step in range(int(sys.argv[2])):
            s.log_metrics({"loss": float(step)}, step=step)
        s.log_artifact(note)
        print(s.run_id, flush=True)
        os._exit(0)
    """
)


def killed_session(project: Path, steps: int) -> str:
    from helpers import TRACKING_SETTINGS, run_python, subprocess_env

    done = run_python(
        "-c",
        DIES,
        str(project),
        str(steps),
        cwd=project,
        env=subprocess_env(drop=TRACKING_SETTINGS),
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-1]


def sync(project: Path, *, fails: bool = False) -> str:
    """``trackcfg sync``'s output; it exits 1 when (and only when) the store refused a value
    or trackcfg refused a file, or a journal could not be sent)."""
    result = CliRunner().invoke(cli, ["sync", str(project)], catch_exceptions=False)
    assert "Traceback" not in result.output
    assert result.exit_code == (1 if fails else 0), result.output
    return str(result.output)


def local_project(root: Path, db: Path) -> Path:
    project = project_folder(root, config=config_text(".trackcfg/journal", flush_seconds=3600))
    copy_store(db, project / "mlruns")
    return project


def the_journal(project: Path) -> Path:
    (journal,) = (project / ".trackcfg" / "journal").glob("*.journal")
    return journal


def test_sync_sends_every_whole_record_around_a_torn_one_in_the_middle(
    migrated_sqlite_db: Path, tmp_path: Path
) -> None:
    """A journal whose line 21 was cut short by a full disk and glued onto by the next
    append (what an older writer left): sync skips the torn record, recovers the glued one,
    sends every other call, says how many lines it skipped, and ends the run."""
    project = local_project(tmp_path / "proj", migrated_sqlite_db)
    run_id = killed_session(project, 40)
    journal = the_journal(project)
    lines = journal.read_bytes().split(b"\n")
    torn = next(i for i, line in enumerate(lines) if b'"m":[["loss",20.0' in line)
    lines[torn] = lines[torn][: len(lines[torn]) // 2] + lines.pop(torn + 1)
    journal.write_bytes(b"\n".join(lines))

    said = sync(project)

    assert "1 line(s) in the middle were not whole records" in said
    client = store_client(project)
    assert loss_steps(client, run_id) == [s for s in range(40) if s != 20]
    assert [a.path for a in client.list_artifacts(run_id)] == ["hello.txt"]
    assert client.get_run(run_id).info.status == "KILLED"


def test_a_moved_project_syncs_its_journal_artifacts_included(
    migrated_sqlite_db: Path, tmp_path: Path
) -> None:
    """The project folder (journal and copies in it) moved before ``trackcfg sync``, the
    store staying where it was: every call and the artifact's copy are sent."""
    store = copy_store(migrated_sqlite_db, tmp_path / "store")
    project = project_folder(
        tmp_path / "here",
        config=config_text(".trackcfg/journal", f"sqlite:///{store}", flush_seconds=3600),
    )
    run_id = killed_session(project, 5)
    moved = tmp_path / "elsewhere"
    project.rename(moved)

    said = sync(moved)

    assert "sent: run" in said, said
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    assert loss_steps(client, run_id) == list(range(5))
    assert [a.path for a in client.list_artifacts(run_id)] == ["hello.txt"]


def test_sync_uploads_no_file_from_outside_the_journals_blobs_folder(
    migrated_sqlite_db: Path, tmp_path: Path
) -> None:
    """A crafted record naming a secret outside the blobs folder, and one naming a symlink
    out of it: neither is uploaded, both are reported, the rest is sent."""
    project = local_project(tmp_path / "proj", migrated_sqlite_db)
    run_id = killed_session(project, 3)
    journal = the_journal(project)
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY")
    link_folder = journal.with_suffix(".blobs") / "99"
    link_folder.mkdir()
    (link_folder / "link").symlink_to(secret)
    with open(journal, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"s": 1000, "a": [[str(secret), None]]}) + "\n")
        handle.write(json.dumps({"s": 1001, "a": [[str(link_folder / "link"), "x"]]}) + "\n")

    said = sync(project, fails=True)

    report, *_, error = said.splitlines()
    assert error.startswith("Error: 1 journal(s) not sent whole: "), said
    assert report.count("not a file inside the journal's own blobs folder") == 2, said
    assert report.count("trackcfg refused artifact ") == 2, said
    assert "the store refused" not in said, said
    client = store_client(project)
    assert [a.path for a in client.list_artifacts(run_id)] == ["hello.txt"]
    assert loss_steps(client, run_id) == [0, 1, 2]


def test_a_journal_whose_header_names_another_run_than_its_file_is_refused(
    migrated_sqlite_db: Path, tmp_path: Path
) -> None:
    project = local_project(tmp_path / "proj", migrated_sqlite_db)
    # B first: every session sends the journals of dead writers it finds in the background,
    # so A's own session may send B's journal before it dies (B gets its steps either way),
    # while nothing can send A's before the tampering below (the other order raced: B's
    # session sent A's journal before its os._exit in 1 of several CI runs)
    run_b = killed_session(project, 2)
    run_a = killed_session(project, 3)
    journal_a = next(p for p in (project / ".trackcfg" / "journal").glob(f"{run_a}.*.journal"))
    lines = journal_a.read_text().split("\n")
    header = json.loads(lines[0])
    header["run_id"] = run_b
    lines[0] = json.dumps(header)
    journal_a.write_text("\n".join(lines))

    said = sync(project, fails=True)

    assert f"names run '{run_b}' in its header but run '{run_a}'" in said, said
    client = store_client(project)
    assert loss_steps(client, run_b) == [0, 1]  # its own journal only
    assert loss_steps(client, run_a) == []


# ---------------------------------------------------------------------------------------------
# Compaction.

COMPACTED = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from trackcfg import TrackingSession, load_config

    with TrackingSession(load_config(sys.argv[1]), name="long") as s:
        for step in range(30_000):
            s.log_metrics({"loss": float(step)}, step=step)
        s.flush(600)
        (journal,) = Path(sys.argv[1], ".trackcfg", "journal").glob("*.journal")
        print(journal.stat().st_size, flush=True)
        for step in range(30_000, 30_100):
            s.log_metrics({"loss": float(step)}, step=step)
        print(s.run_id, flush=True)
        os._exit(0)
    """
)


def test_the_journal_drops_what_the_store_acknowledged_and_keeps_the_rest(
    migrated_sqlite_db: Path, tmp_path: Path
) -> None:
    """30,000 calls flushed leave a journal of a few hundred bytes (not 30,000 records);
    the calls after it, and the process killed: sync sends those, nothing twice."""
    from helpers import TRACKING_SETTINGS, run_python, subprocess_env

    project = project_folder(
        tmp_path / "proj", config=config_text(".trackcfg/journal", flush_seconds=0.05)
    )
    copy_store(migrated_sqlite_db, project / "mlruns")
    done = run_python(
        "-c",
        COMPACTED,
        str(project),
        cwd=project,
        env=subprocess_env(drop=TRACKING_SETTINGS),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    size, run_id = done.stdout.split()[-2:]
    assert int(size) < 4096, f"{size} bytes after 30,000 calls flushed"

    said = sync(project)

    assert "sent: run" in said, said
    assert loss_steps(store_client(project), run_id) == list(range(30_100))


# ---------------------------------------------------------------------------------------------
# A value a PostgreSQL-backed server answers HTTP 500 to, every time.

POISONED = textwrap.dedent(
    """
    import os, sys
    from trackcfg import TrackingSession, load_config

    with TrackingSession(load_config(sys.argv[1]), name="poisoned") as s:
        s.set_tags({"fine": "yes"})
        for step in range(300):
            s.log_metrics({"loss": float(step)}, step=step)
        print(s.run_id, flush=True)
        os._exit(0)
    """
)


def test_sync_to_postgresql_isolates_a_value_answered_500_every_time_and_sends_the_rest(
    pg_mlflow_server: str, tmp_path: Path
) -> None:
    """A journal written before NUL characters were refused at the call: the tag holding one
    is answered HTTP 500 by the PostgreSQL-backed server each time. ``trackcfg sync`` treats
    it as refused after a bounded number of tries, names it, sends the 300 steps and the
    other tag, and ends the run (it used to say the server "could not be reached" forever).
    """
    from helpers import TRACKING_SETTINGS, run_python, subprocess_env

    config = (
        f"server:\n  mlflow_tracking_uri: {pg_mlflow_server}\n  request_timeout: 5\n"
        "  max_retries: 1\ntracking:\n  logging:\n    mode: buffered\n    flush_seconds: 3600\n"
    )
    project = project_folder(tmp_path / "proj", config=config)
    done = run_python(
        "-c",
        POISONED,
        str(project),
        cwd=project,
        env=subprocess_env(drop=TRACKING_SETTINGS),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.split()[-1]
    journal = the_journal(project)
    lines = journal.read_text().split("\n")
    lines.insert(3, json.dumps({"s": 100_000, "t": {"poison": "a\x00b"}}))
    journal.write_text("\n".join(lines))

    said = sync(project, fails=True)

    assert "the store refused tag 'poison'" in said, said
    assert "1 journal(s) not sent whole: run " in said, said
    client = MlflowClient(tracking_uri=pg_mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["fine"] == "yes"
    assert "poison" not in run.data.tags
    assert loss_steps(client, run_id) == list(range(300))


# ---------------------------------------------------------------------------------------------
# A reader racing the writer's compaction.


def test_a_journal_compacted_while_a_reader_takes_its_lock_stays_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compaction puts a new, locked file in place, then closes (unlocks) the old one.  A
    reader (a session's background sync of earlier journals, ``trackcfg sync``) that opened
    the old file just before and locks it just after must still find the journal in use, not
    replay a live session's records (a resumed job's 200 points arrived twice, 1 CI run in
    a few)."""
    import trackcfg._journal as writer
    import trackcfg._journal_read as reader

    journal = open_journal(
        tmp_path, run_id="r" * 32, experiment_id="0", tracking_uri="sqlite:///x.db"
    )
    seqs = [journal.append(metrics=[point(step)] * 3).seq for step in range(200)]
    journal.ack(seqs[-1])
    real_lock = writer.lock_file
    compacted: list[object] = []

    def lock_after_a_compaction(handle: Any, *, blocking: bool) -> bool:
        if not compacted and handle.name == str(journal.path):  # the reader's first lock
            compacted.append(journal.compact(seqs[-1]))
        return real_lock(handle, blocking=blocking)

    monkeypatch.setattr(reader, "lock_file", lock_after_a_compaction)
    with reader.claimed(journal.path) as ours:
        assert compacted, "the reader never took a lock"
        assert compacted[0] is not None, "the journal was not compacted"
        assert not ours, "a reader took the lock of a journal its writer still holds"
    journal.close()
    with reader.claimed(journal.path) as ours:
        assert ours, "a closed journal stays locked"
