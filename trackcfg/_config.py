"""The configuration model: the schema of ``mlflow.yml`` as frozen attrs classes.

Pure data: no I/O, no mlflow, no environment reads.  Validation of what a type cannot say
lives in validators here; files, lines and layering live in ``_loading`` (with
``_discovery``, ``_credentials`` and ``_convert``).

The schema is a superset of kedro-mlflow 2.0.3's ``mlflow.yml``.  Keys that kedro-mlflow
has and trackcfg accepts but does not act on yet are kept (so an existing file loads
unchanged and ``trackcfg show`` displays them) and marked "kept, not acted on" below.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from ._store import mask_uri

__all__ = [
    "CreateExperimentKwargs",
    "Credentials",
    "DictParamsConfig",
    "DisableTrackingConfig",
    "ExperimentConfig",
    "InvalidFieldError",
    "LoggingConfig",
    "LoggingMode",
    "LongParamsStrategy",
    "OfflineMode",
    "ParamsConfig",
    "RankPolicy",
    "RequestHeaderProviderConfig",
    "ResumePolicy",
    "RunConfig",
    "ServerConfig",
    "Source",
    "TrackingConfig",
    "TrackingSettings",
    "UIConfig",
]


class RankPolicy(enum.Enum):
    """Which processes of a distributed job log (rank from RANK, SLURM_PROCID,
    OMPI_COMM_WORLD_RANK or PMI_RANK; a process with none of them is rank 0)."""

    ZERO = "zero"
    """Only rank 0 logs; sessions on other ranks are no-ops."""
    ALL = "all"
    """Every rank logs a run of its own, tagged ``trackcfg.rank``."""


class LongParamsStrategy(enum.Enum):
    """What to do with a param value longer than MLflow accepts (6000 characters today)."""

    FAIL = "fail"
    """Raise ``ParamValueTooLongError`` before anything is sent."""
    TRUNCATE = "truncate"
    """Log the first N characters and warn."""
    TAG = "tag"
    """Log the full value as a tag of the same key (and as an artifact past the tag limit)."""


class InvalidFieldError(ValueError):
    """A validator's refusal, naming the field so the loader can point at its file and line."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field!r} {message}")


def _non_empty(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value:
        raise InvalidFieldError(attribute.name, "must not be empty")


def _at_least_one(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise InvalidFieldError(attribute.name, f"must be at least 1, got {value}")


def _at_least_zero(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise InvalidFieldError(attribute.name, f"must be 0 or more, got {value}")


def _at_least_zero_float(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise InvalidFieldError(attribute.name, f"must be 0 or more, got {value!r}")


def _masked_or_none(uri: str | None) -> str:
    # A password inside a URI never appears in a repr (nor, so, in a traceback or a log line).
    return repr(None if uri is None else mask_uri(uri))


def _port_range(_inst: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and not 0 <= value <= 65535:
        raise InvalidFieldError(attribute.name, f"must be between 0 and 65535, got {value}")


class ResumePolicy(enum.Enum):
    """``tracking.run.resume``: whether a session continues the run of its ``run.key``."""

    NEVER = "never"
    """A new run every time (the key is only tagged)."""
    ALLOW = "allow"
    """The latest run of the experiment tagged with the key (any status, not deleted) is
    continued; a new run when there is none."""
    MUST = "must"
    """As ``allow``, but no such run is a ``RunError`` before anything is created."""


#: Characters a run key may not hold: it is matched in MLflow's search filter, quoted.
_KEY_FORBIDDEN = frozenset("'\"`\\")
_KEY_MOST = 250


def _run_key(_inst: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is None:
        return
    if not value.strip():
        raise InvalidFieldError(attribute.name, "must not be empty (or null: no key)")
    if len(value) > _KEY_MOST:
        raise InvalidFieldError(
            attribute.name, f"must be at most {_KEY_MOST} characters, got {len(value)}"
        )
    bad = sorted({c for c in value if c in _KEY_FORBIDDEN or not c.isprintable()})
    if bad:
        raise InvalidFieldError(
            attribute.name,
            f"must not hold quotes, backslashes or control characters, got {value!r}",
        )


class OfflineMode(enum.Enum):
    """``server.offline``: whether sessions log into the project's local store
    (``<root>/mlruns``) instead of the tracking server, for ``trackcfg sync`` to upload later.
    Nothing changes when the tracking URI is a local store already."""

    NEVER = "never"
    """Always the server; a server that does not answer is a ``TrackingUnavailableError``."""
    AUTO = "auto"
    """The server when it answers at session start; else an offline run, said once."""
    ALWAYS = "always"
    """Never contact the server (compute nodes, air-gapped machines): offline runs only."""


@attrs.frozen(kw_only=True)
class RequestHeaderProviderConfig:
    """kedro-mlflow's custom request-header provider: ``type`` is the import path of a
    subclass of MLflow's ``RequestHeaderProvider``, built with ``init_kwargs`` (and
    ``kedro_context=`` under Kedro when ``pass_context``), used while a session is open."""

    type: str | None = None
    pass_context: bool = False
    init_kwargs: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class ServerConfig:
    """WHERE runs are logged."""

    mlflow_tracking_uri: str = attrs.field(default="mlruns", repr=lambda uri: repr(mask_uri(uri)))
    """A URI, or a bare path meaning a local store folder; relative ones resolve against the
    project root. Unset (or ``null``): ``MLFLOW_TRACKING_URI`` when set, else ``mlruns``.
    Its password (``http://user:secret@host``) is masked in the repr."""
    mlflow_registry_uri: str | None = attrs.field(default=None, repr=_masked_or_none)
    credentials: str | None = None
    """Name of an entry in ``credentials.yml``; its keys are exported as environment variables
    for the duration of a session only."""
    request_header_provider: RequestHeaderProviderConfig = attrs.field(
        factory=RequestHeaderProviderConfig
    )
    request_timeout: int = attrs.field(default=10, validator=_at_least_one)
    """Seconds MLflow's HTTP client waits for the server, per attempt (session only)."""
    max_retries: int = attrs.field(default=3, validator=_at_least_zero)
    """Retries of a failed request before ``TrackingUnavailableError`` (session only; MLflow's
    own default retries for about four minutes)."""
    offline: OfflineMode = OfflineMode.NEVER
    """``never``, ``auto`` or ``always``: see ``OfflineMode``.  An offline run carries the tag
    ``trackcfg.offline.destination`` (the server's URI, password masked)."""


@attrs.frozen(kw_only=True)
class DisableTrackingConfig:
    pipelines: tuple[str, ...] = ()
    """Session names (Kedro pipelines, ``@tracked`` functions, scripts) that are not tracked."""
    disable_autologging: bool = True
    """kedro-mlflow's switch (kept, not acted on yet: trackcfg never turns autologging on)."""


@attrs.frozen(kw_only=True)
class CreateExperimentKwargs:
    """Passed to MLflow when trackcfg creates the experiment (never applied to an existing one)."""

    artifact_location: str | None = None
    tags: Mapping[str, str] | None = None


@attrs.frozen(kw_only=True)
class ExperimentConfig:
    name: str | None = None
    """Default: the project's package name (``[tool.kedro].package_name``, else
    ``[project].name`` of ``pyproject.toml``), else the project folder's name."""
    create: bool = True
    restore_if_deleted: bool = True
    create_experiment_kwargs: CreateExperimentKwargs = attrs.field(factory=CreateExperimentKwargs)


@attrs.frozen(kw_only=True)
class RunConfig:
    id: str | None = None
    """Continue this run instead of starting a new one (it is never renamed)."""
    resume_running: bool = False
    """Continue ``id`` even when it is RUNNING: another process may be logging to it, and
    this session ends it.  False: such a run is refused (a FINISHED, FAILED or KILLED run is
    continued, and ends with this session's status)."""
    name: str | None = None
    """Default: the session name (pipeline, function or script name)."""
    nested: bool = True
    """Inside an active run: start a child run (``True``) or log into the active run."""
    ranks: RankPolicy = RankPolicy.ZERO
    """Distributed jobs: ``zero`` (only rank 0 logs) or ``all``."""
    resume: ResumePolicy = ResumePolicy.NEVER
    """``never``, ``allow`` or ``must``: see ``ResumePolicy`` (needs ``key``)."""
    key: str | None = attrs.field(default=None, validator=_run_key)
    """The job's own name for its run (``$SLURM_JOB_ID``), tagged ``trackcfg.run.key``: what
    ``resume`` looks the run up by."""

    def __attrs_post_init__(self) -> None:
        if self.resume is ResumePolicy.NEVER:
            return
        if self.key is None:
            raise InvalidFieldError(
                "resume",
                f"is {self.resume.value!r} but tracking.run.key is not set: set the key the "
                "run is found by (TRACKCFG_TRACKING__RUN__KEY), or resume: never",
            )
        if self.id is not None:
            raise InvalidFieldError(
                "resume",
                f"is {self.resume.value!r} and tracking.run.id is set too: continue a run "
                "either by its id or by tracking.run.key, not both",
            )


@attrs.frozen(kw_only=True)
class DictParamsConfig:
    flatten: bool = False
    recursive: bool = True
    sep: str = attrs.field(default=".", validator=_non_empty)


@attrs.frozen(kw_only=True)
class ParamsConfig:
    dict_params: DictParamsConfig = attrs.field(factory=DictParamsConfig)
    long_params_strategy: LongParamsStrategy = LongParamsStrategy.FAIL


class LoggingMode(enum.Enum):
    """How the session's logging calls reach the server."""

    BUFFERED = "buffered"
    """Return at once; a background sender delivers (never waits on the network)."""
    SYNC = "sync"
    """Every call waits for the server, and raises when it cannot be reached."""


def _positive(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise InvalidFieldError(attribute.name, f"must be greater than 0, got {value!r}")


@attrs.frozen(kw_only=True)
class LoggingConfig:
    """``tracking.logging``: buffered logging and its journal."""

    mode: LoggingMode = LoggingMode.BUFFERED
    flush_seconds: float = attrs.field(default=2.0, validator=_positive)
    """The most a logged value waits in memory before it is sent."""
    max_buffered: int = attrs.field(default=100_000, validator=_at_least_one)
    """Entities (params, tags, metric points) held in memory; past it, the journal holds the
    rest (without a journal, a logging call waits for the sender)."""
    journal: bool = True
    """Append each call to a local journal before it returns (nothing is lost if the process
    is killed or the server stays away; ``trackcfg sync`` sends it)."""
    journal_dir: str | None = None
    """Default: ``<project root>/.trackcfg/journal``; relative paths resolve against the root."""
    exit_timeout: float = attrs.field(default=30.0, validator=_at_least_zero_float)
    """Seconds leaving a session waits for the sender; then the journal keeps the rest."""


@attrs.frozen(kw_only=True)
class TrackingSettings:
    """HOW runs are logged: the ``tracking:`` section."""

    disable_tracking: DisableTrackingConfig = attrs.field(factory=DisableTrackingConfig)
    experiment: ExperimentConfig = attrs.field(factory=ExperimentConfig)
    run: RunConfig = attrs.field(factory=RunConfig)
    params: ParamsConfig = attrs.field(factory=ParamsConfig)
    logging: LoggingConfig = attrs.field(factory=LoggingConfig)


@attrs.frozen(kw_only=True)
class UIConfig:
    port: int | None = attrs.field(default=None, validator=_port_range)
    """``null``: a free port. kedro-mlflow's string form (``"5000"``) is accepted."""
    host: str | None = None
    """``null``: 127.0.0.1."""


@attrs.frozen
class Source:
    """Where one configuration value came from."""

    kind: str
    """``default``, ``file``, ``env`` or ``override``."""
    detail: str | None = None
    """The file path, the environment variable's name, or the override key."""
    line: int | None = None
    """1-based line in ``detail`` for ``file`` sources."""

    def __str__(self) -> str:
        if self.kind == "file":
            return f"{self.detail}:{self.line}" if self.line else str(self.detail)
        if self.kind == "env":
            return f"env {self.detail}"
        if self.kind == "override":
            return f"override {self.detail!r}"
        return self.kind


@attrs.frozen(repr=False)
class Credentials:
    """The values of one ``credentials.yml`` entry. Values never appear in a repr or str."""

    name: str
    _values: Mapping[str, str] = attrs.field(alias="values")
    origin: str | None = None

    def keys(self) -> tuple[str, ...]:
        return tuple(self._values)

    def as_env(self) -> dict[str, str]:
        """The variables to export: the only way to read the values."""
        return dict(self._values)

    def __repr__(self) -> str:
        masked = ", ".join(f"{k}='***'" for k in self._values)
        return f"Credentials(name={self.name!r}, {{{masked}}})"

    __str__ = __repr__


@attrs.frozen(kw_only=True)
class TrackingConfig:
    """The whole configuration: the ``mlflow.yml`` schema plus where it was loaded from.

    Build one in code (every field has a safe default) or with ``trackcfg.load_config``.
    """

    server: ServerConfig = attrs.field(factory=ServerConfig)
    tracking: TrackingSettings = attrs.field(factory=TrackingSettings)
    ui: UIConfig = attrs.field(factory=UIConfig)

    project_root: Path | None = attrs.field(default=None, eq=False)
    """Folder against which relative paths and URIs resolve. ``None`` (a config built in code):
    the nearest folder at or above the current one holding ``pyproject.toml`` or ``.git``,
    else the current folder, decided when a session starts."""
    default_experiment_name: str | None = attrs.field(default=None, eq=False)
    """What ``experiment.name: null`` means for this project (filled by the loader)."""
    credentials: Credentials | None = attrs.field(default=None, eq=False, repr=False)
    """The resolved entry named by ``server.credentials`` (filled by the loader)."""
    sources: Mapping[str, Source] = attrs.field(factory=dict, eq=False, repr=False)
    """Dotted key → where its value came from (filled by the loader; ``trackcfg show``)."""
    files: tuple[Path, ...] = attrs.field(default=(), eq=False, repr=False)
    """The configuration files that were read, lowest priority first."""

    def provenance(self) -> list[tuple[str, Any, Source]]:
        """Every schema key with its effective value and where that value came from,
        sorted by key (what ``trackcfg show`` prints). Enum values are given as strings."""
        out: list[tuple[str, Any, Source]] = []
        for key, source in sorted(self.sources.items()):
            node: Any = self
            for part in key.split("."):
                node = getattr(node, part)
            out.append((key, node.value if isinstance(node, enum.Enum) else node, source))
        return out
