"""A session's logging calls, from the call to the store: the one path for both modes.

``RunWriter`` takes what a ``TrackingSession`` logs, checks it (the param policy, params
being immutable, metric keys, steps), keeps the run's bookkeeping (params logged, metric keys
as written, the last value of each metric, tables) and hands the call on as one record:

- ``tracking.logging.mode: buffered``: to the run's ``BufferedRun`` (``_buffer``), which
  journals it and returns; its sender thread delivers it;
- ``mode: sync``: through ``_delivery.Delivery`` at once, with ``isolate=False``: the call
  waits for the store and raises what the store's first failure was (``TrackingUnavailableError``
  when it is away, its refusal as it is), as the README says of ``sync`` mode.

Artifacts travel as files in both modes: a text (``log_text``, ``log_dict``, a long param
under ``long_params_strategy: artifact``) is written to a file first (the journal's blobs in
buffered mode, a scratch folder in sync mode).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec

import attrs

from . import _state
from ._artifacts import (
    LOGGED_ARTIFACTS_TAG,
    artifact_places,
    check_artifact_path,
    dict_text,
    logged_tables_tag,
    scratch_artifact,
    table_frame,
    write_figure,
    write_table,
)
from ._backend import Backend, BackendFactory, RunStatus
from ._buffer import BufferedRun
from ._config import LoggingMode, ParamsConfig, RankPolicy, TrackingConfig
from ._delivery import Delivery, give_up
from ._journal import JournalRecord
from ._leaving import RunEnding
from ._params import (
    Limits,
    MetricPoint,
    PreparedParams,
    checked_step,
    prepare_metrics,
    prepare_params,
    prepare_tags,
)
from ._placement import RunPlacer
from ._rules import changed_params
from ._workers import process_rank
from .exceptions import RunError

__all__ = ["Inputs", "RunWriter", "checked_inputs", "logging_call"]

_P = ParamSpec("_P")


@attrs.frozen
class Inputs:
    """What a session checked before touching the store: the params, tags and limits its
    run will be given."""

    limits: Limits
    prepared: PreparedParams
    tags: dict[str, str]


def checked_inputs(
    config: TrackingConfig,
    params: Mapping[str, Any],
    tags: Mapping[str, Any],
    limits: Limits,
    root: Path,
    *,
    top: bool,
) -> Inputs:
    """Step 2 of a session: its up-front params and tags through the policy (a too-long
    value under ``fail`` raises here), a top-level run under ``run.ranks: all`` tagged with
    its rank, and the journal folder checked: all that can be checked before a run exists."""
    prepared = prepare_params(params, config.tracking.params, limits)
    checked = prepare_tags(tags, limits)
    checked.update(prepared.tags)
    if top and config.tracking.run.ranks is RankPolicy.ALL:
        checked.setdefault("trackcfg.rank", str(process_rank()))
    BufferedRun.check_journal_dir(config.tracking.logging, root)
    return Inputs(limits=limits, prepared=prepared, tags=checked)


@attrs.define(eq=False)
class RunWriter:
    """The logging calls of one session's run (``buffer``: buffered logging, else sync)."""

    backend: Backend
    run_id: str
    limits: Limits
    policy: ParamsConfig
    buffer: BufferedRun | None = None  # None: sync mode, or a forked child's copy
    logged_params: dict[str, str] = attrs.field(factory=dict)
    metric_keys: dict[str, str] = attrs.field(factory=dict)  # final key -> key as written
    last_metrics: dict[str, tuple[float, int]] = attrs.field(factory=dict)  # the summary's
    tables: dict[str, Any] = attrs.field(factory=dict)  # log_table's file -> rows so far

    @classmethod
    def for_run(
        cls,
        backend: Backend,
        placed: RunPlacer,
        inputs: Inputs,
        config: TrackingConfig,
        *,
        root: Path,
        tracking_uri: str,
        send_earlier: BackendFactory | None,
    ) -> RunWriter:
        """The writer of the run ``placed`` placed; under ``tracking.logging.mode: buffered``
        with the run's buffer (``BufferedRun.for_run``: journal, sender, earlier journals sent
        with ``send_earlier``, a top-level session's backend factory)."""
        run_id = placed.run_id
        assert run_id is not None
        settings = config.tracking.logging
        buffer = None
        if settings.mode is LoggingMode.BUFFERED:
            buffer = BufferedRun.for_run(
                backend,
                run_id,
                experiment_id=placed.experiment_id,
                limits=inputs.limits,
                config=settings,
                root=root,
                tracking_uri=tracking_uri,
                ends_run=placed.started_run is not None,  # not a run it attached to
                send_earlier=send_earlier,
            )
        writer = cls(backend, run_id, inputs.limits, config.tracking.params, buffer)
        writer.logged_params.update(placed.logged_params)
        return writer

    def __attrs_post_init__(self) -> None:
        if self.buffer is not None:  # a forked child never uses its parent's sender
            _state.reset_in_forked_child(self, RunWriter.leave_to_parent)

    # ------------------------------------------------------------------ the calls

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params through the param policy (flatten, sanitize, long values), batched."""
        prepared = prepare_params(params, self.policy, self.limits)
        self.send(params=prepared.params, tags=prepared.tags, texts=prepared.artifacts)

    def log_param(self, key: str, value: Any) -> None:
        """Log one param, as ``log_params({key: value})``."""
        self.log_params({key: value})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (values as strings, keys through the key policy), batched."""
        self.send(tags=prepare_tags(tags, self.limits))

    def set_tag(self, key: str, value: Any) -> None:
        """Set one tag, as ``set_tags({key: value})``."""
        self.set_tags({key: value})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log metric values (one point each) at ``step`` (default 0), batched.

        Keys go through the param key policy: a key MLflow refuses is logged sanitized with a
        warning (once per run), and two keys that would become one series are refused with a
        ``ConfigError`` naming both.  A step that is not an integer within 64 bits is a
        ``RunError`` before anything is sent."""
        at = checked_step(step)
        prepared = prepare_metrics(metrics, self.limits, earlier=self.metric_keys)
        now = int(time.time() * 1000)
        points = [
            MetricPoint(key=key, value=value, step=at, timestamp=now)
            for key, value in prepared.values.items()
        ]
        if self.buffer is not None:
            # A training loop's every step: metrics need none of send's param bookkeeping.
            self.buffer.submit(metrics=points)
        else:
            self._deliver(JournalRecord(seq=0, metrics=points))
        self.metric_keys.update(prepared.origins)
        self.last_metrics.update({p.key: (p.value, p.step) for p in points})

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        """Log one metric value, as ``log_metrics({key: value}, step=step)``."""
        self.log_metrics({key: value}, step=step)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Copy the local file or folder ``path`` into the run's artifacts, under the folder
        ``artifact_path`` (a relative path; default: the top)."""
        if artifact_path:
            check_artifact_path("log_artifact", "artifact_path", artifact_path)
        self._log_files("log_artifact", [Path(path)], artifact_path or None)

    def log_artifacts(
        self, local_dir: str | os.PathLike[str], artifact_path: str | None = None
    ) -> None:
        """Copy everything in the local folder ``local_dir`` (subfolders included) into the
        run's artifacts, under the folder ``artifact_path`` (default: the top)."""
        if artifact_path:
            check_artifact_path("log_artifacts", "artifact_path", artifact_path)
        folder = Path(local_dir)
        if not folder.is_dir():
            raise RunError(f"log_artifacts: {folder} is not a folder")
        # Each entry as log_artifact logs it: a file by name, a subfolder with its content.
        self._log_files("log_artifacts", sorted(folder.iterdir()), artifact_path or None)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Write ``text`` as the artifact ``artifact_file`` (no temporary file to manage)."""
        check_artifact_path("log_text", "artifact_file", artifact_file)
        self.send(texts={artifact_file: text})

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        """Write ``data`` as JSON (``.json``) or YAML (``.yml``/``.yaml``) artifact."""
        check_artifact_path("log_dict", "artifact_file", artifact_file)
        self.send(texts={artifact_file: dict_text(data, artifact_file)})

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Save a matplotlib or plotly ``figure`` as the artifact ``artifact_file`` (its
        format from the name: ``.png``, ``.svg``, ``.html`` for plotly...), as MLflow's
        ``log_figure`` does.  It is rendered now: drawing on it afterwards changes nothing."""
        check_artifact_path("log_figure", "artifact_file", artifact_file)
        self._log_written(artifact_file, lambda target: write_figure(figure, target))

    def log_table(self, data: Mapping[str, Any] | Any, artifact_file: str) -> None:
        """Log a table (a dict of columns or a pandas DataFrame) as MLflow's ``log_table``
        does: the artifact ``artifact_file`` (``.json`` or ``.parquet``), which
        ``mlflow.load_table`` reads; logged again under the same name in this session, its
        rows are added to the table's."""
        check_artifact_path("log_table", "artifact_file", artifact_file)
        frame = table_frame(data, artifact_file, self.tables.get(artifact_file))
        self._log_written(artifact_file, lambda target: write_table(frame, target))
        self.tables[artifact_file] = frame
        self.set_tags({LOGGED_ARTIFACTS_TAG: logged_tables_tag(self.tables)})

    def _log_written(self, artifact_file: str, write: Callable[[Path], None]) -> None:
        """The artifact ``artifact_file``, as ``write`` writes it now (``_artifacts``)."""
        with scratch_artifact(artifact_file, write) as (target, folder):
            self._log_files("log_artifact", [target], folder)

    def _log_files(self, call: str, sources: Sequence[Path], artifact_path: str | None) -> None:
        """Files or folders into the run's folder ``artifact_path``, in one logging call."""
        for source in sources:
            if not source.exists():
                raise RunError(f"{call}: {source} does not exist")
        if self.buffer is not None:
            # A copy now: the caller may change or delete its file before the upload.
            kept = [(str(self.buffer.keep_file(s, s.name)), artifact_path) for s in sources]
            self.buffer.submit(artifacts=kept)
            return
        self._deliver(
            JournalRecord(seq=0, artifacts=[(os.fspath(s), artifact_path) for s in sources])
        )

    def send(
        self,
        *,
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        texts: Mapping[str, str] | None = None,
    ) -> None:
        """One call's params, tags and texts (``{artifact_file: text}``), already through
        the policy: a param logged before with another value is refused before anything is
        kept or sent, one logged with the same value is left out (a request saved)."""
        params = dict(params or {})
        changed = changed_params(self.logged_params, params)
        if changed:
            raise RunError(f"params are immutable in MLflow and these differ: {changed}")
        params = {k: v for k, v in params.items() if k not in self.logged_params}
        places = artifact_places(texts or {})
        if self.buffer is not None:
            kept = [
                (str(self.buffer.keep_text(text, name)), folder) for name, folder, text in places
            ]
            self.buffer.submit(params=params, tags=dict(tags or {}), artifacts=kept)
        else:
            with _as_files(places) as files:
                record = JournalRecord(seq=0, params=params, tags=dict(tags or {}), artifacts=files)
                self._deliver(record)
        self.logged_params.update(params)

    def _deliver(self, record: JournalRecord) -> None:
        """``mode: sync``: the record on the store before the call returns (``_delivery``)."""
        Delivery(
            backend=self.backend,
            run_id=self.run_id,
            limits=self.limits,
            wait=give_up,
            isolate=False,
        ).send([record])

    # ------------------------------------------------------------------ waiting, the end

    def flush(self, timeout: float | None) -> None:
        if self.buffer is not None:
            self.buffer.flush(timeout)

    def sent_within(self, timeout: float) -> None:
        if self.buffer is not None:
            self.buffer.sent_within(timeout)

    def end(self, status: RunStatus, ending: RunEnding | None, *, root: Path) -> None:
        """Leave the run: ``ending`` (None: no run of the session's own) once what is
        pending is on the store (buffered: within ``exit_timeout``, else the journal keeps
        it and the run's end, ``BufferedRun.end``)."""
        if self.buffer is None:
            if ending is not None:
                ending.end(status)
            return
        self.buffer.end(
            status,
            end_run=(lambda: ending.end(status)) if ending is not None else None,
            let_go=ending.let_go if ending is not None else lambda: None,
            ends_run=ending is not None and ending.started,
            root=root,
        )

    def leave_to_parent(self) -> None:
        """In a forked child's copy: the buffer (its sender thread, the calls it holds, its
        journal) is the parent's, which sends it.  The child's own calls through this copy go
        out as in ``sync`` mode; its journal descriptor is closed (the parent's lock on the
        file stays: the parent has it open too)."""
        buffer, self.buffer = self.buffer, None
        if buffer is not None:
            buffer.leave_to_parent()


@contextlib.contextmanager
def _as_files(places: list[tuple[str, str | None, str]]) -> Iterator[list[tuple[str, str | None]]]:
    """``mode: sync``: texts (``artifact_places``) as files in a scratch folder for the block,
    as ``(file, artifact folder)`` (``Delivery`` sends files)."""
    if not places:
        yield []
        return
    import tempfile  # here: `trackcfg --help` imports no temporary-file module

    with tempfile.TemporaryDirectory(prefix="trackcfg-") as scratch:
        files = []
        for number, (name, folder, text) in enumerate(places):
            target = Path(scratch, str(number), name)
            target.parent.mkdir()
            target.write_text(text, encoding="utf-8")
            files.append((str(target), folder))
        yield files


def logging_call(
    call: Callable[Concatenate[RunWriter, _P], None],
) -> Callable[Concatenate[Any, _P], None]:
    """``TrackingSession``'s logging method for ``call``: done on the session's writer while
    it is open (``_live()``: a ``RunError`` before or after the block, None when the session
    logs nothing); its name, signature and docstring are ``call``'s."""

    @functools.wraps(call)
    def method(session: Any, /, *args: _P.args, **kwargs: _P.kwargs) -> None:
        writer = session._live()
        if writer is not None:
            call(writer, *args, **kwargs)

    method.__qualname__ = f"TrackingSession.{call.__name__}"
    method.__module__ = "trackcfg._session"  # where help() and documentation tools look
    return method
