"""The session's decisions, as pure functions over facts read from the store.

Each rule and its message lives here once: ``TrackingSession`` acts on a decision (and raises
its refusal), ``trackcfg check`` shows the same decision without acting.  Nothing here reads
the environment, the store or the clock; callers pass in what they found.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

import attrs

from ._config import ExperimentConfig, OfflineMode, RankPolicy, ResumePolicy, TrackingConfig
from ._records import ExperimentRef, RunDetails, RunRef, RunStatus
from .exceptions import ExperimentError, RunError, TrackcfgError

__all__ = [
    "CONTINUED_TAG",
    "OFFLINE_DESTINATION_TAG",
    "RUN_KEY_TAG",
    "TRUTHY",
    "ExperimentAction",
    "ExperimentPlan",
    "KeyedRun",
    "Offline",
    "Placement",
    "Refusal",
    "attach_refusal",
    "changed_params",
    "continued_since",
    "disabled_reason",
    "experiment_plan",
    "key_filter",
    "keyed_run",
    "named_run_refusal",
    "offline_decision",
    "offline_refusal",
    "placement",
    "resume_refusal",
    "run_intent",
]

TRUTHY = frozenset({"1", "true", "yes", "on"})
#: The tag of an offline run (and of its children): where ``trackcfg sync`` uploads it, the
#: destination's tracking URI as the session resolved it, password masked.
OFFLINE_DESTINATION_TAG = "trackcfg.offline.destination"
#: The tag holding ``tracking.run.key``: what ``tracking.run.resume`` finds a run by.
RUN_KEY_TAG = "trackcfg.run.key"
#: When a session last continued the run (epoch ms): a journal written before that belongs to
#: an earlier process, and ``trackcfg sync`` leaves the run's end to the later session.
CONTINUED_TAG = "trackcfg.run.continued"


@attrs.frozen
class Refusal:
    """Why the session will not go on, and the setting or action that changes that."""

    problem: str
    fix: str
    kind: type[TrackcfgError] = RunError

    def error(self, store: str | None = None) -> TrackcfgError:
        """The error a session raises; ``store`` (masked) says where it looked."""
        where = f" (store: {store})" if store else ""
        return self.kind(f"{self.problem}{where}; {self.fix}")


class ExperimentAction(enum.Enum):
    USE = "use"
    CREATE = "create"
    RESTORE = "restore"


@attrs.frozen
class ExperimentPlan:
    """What to do about the configured experiment: ``refusal`` set means do nothing."""

    action: ExperimentAction | None
    summary: str
    refusal: Refusal | None = None
    experiment_id: str | None = None


def experiment_plan(
    name: str, found: ExperimentRef | None, settings: ExperimentConfig
) -> ExperimentPlan:
    """Use, create or restore the experiment ``name`` (``found``: what the store holds)."""
    if found is None:
        if settings.create:
            return ExperimentPlan(
                ExperimentAction.CREATE,
                f"{name!r} does not exist; it will be created (tracking.experiment.create: true)",
            )
        return ExperimentPlan(
            None,
            "",
            Refusal(
                f"experiment {name!r} does not exist and tracking.experiment.create is false",
                "set tracking.experiment.create: true, create the experiment, or change "
                "tracking.experiment.name",
                ExperimentError,
            ),
        )
    if found.deleted:
        if settings.restore_if_deleted:
            return ExperimentPlan(
                ExperimentAction.RESTORE,
                f"{name!r} (id {found.id}) is deleted; it will be restored "
                "(tracking.experiment.restore_if_deleted: true)",
                experiment_id=found.id,
            )
        return ExperimentPlan(
            None,
            "",
            Refusal(
                f"experiment {name!r} (id {found.id}) is deleted and "
                "tracking.experiment.restore_if_deleted is false",
                "set tracking.experiment.restore_if_deleted: true, restore the experiment, or "
                "change tracking.experiment.name",
                ExperimentError,
            ),
            experiment_id=found.id,
        )
    return ExperimentPlan(
        ExperimentAction.USE, f"{name!r} exists (id {found.id})", experiment_id=found.id
    )


def changed_params(logged: Mapping[str, str], new: Mapping[str, str]) -> str | None:
    """The params of ``new`` whose value differs from the one ``logged`` (MLflow params are
    immutable and compared as text), described for a message; None when none differ."""
    changed = [
        f"{key!r}: logged {logged[key]!r}, now {value!r}"
        for key, value in new.items()
        if key in logged and logged[key] != value
    ]
    return "; ".join(changed) or None


def resume_refusal(
    run_id: str,
    existing: RunRef | None,
    params: Mapping[str, str],
    *,
    resume_running: bool,
) -> Refusal | None:
    """Whether continuing ``run_id`` (``tracking.run.id``) with ``params`` is refused.

    A RUNNING run is refused unless ``tracking.run.resume_running``: another process may be
    logging to it, and the session would end it.  A FINISHED, FAILED or KILLED run is
    continued (RUNNING again), and ends with the session's own status."""
    if existing is None or existing.deleted:
        state = "is deleted" if existing is not None else "does not exist"
        return Refusal(
            f"run {run_id!r} (tracking.run.id) {state}",
            "set tracking.run.id: null to start a new run",
        )
    if existing.status is RunStatus.RUNNING and not resume_running:
        return Refusal(
            f"run {run_id!r} (tracking.run.id) is RUNNING: another process may be logging to "
            "it, and this session would end it",
            "let it end first, start a new run (tracking.run.id: null), or set "
            "tracking.run.resume_running: true to continue it anyway",
        )
    changed = changed_params(existing.params, params)
    if changed:
        return Refusal(
            f"cannot resume run {run_id!r}: params differ from the ones it logged ({changed})",
            "MLflow params are immutable; start a new run (tracking.run.id: null) instead",
        )
    return None


def key_filter(key: str) -> str:
    """MLflow's search filter for the runs tagged with ``key`` (validated by the config:
    it holds no quote)."""
    return f"tags.`{RUN_KEY_TAG}` = '{key}'"


@attrs.frozen
class KeyedRun:
    """What ``tracking.run.resume`` does: continue ``run_id``, start a new run (None), or
    nothing (``refusal``)."""

    run_id: str | None
    summary: str
    refusal: Refusal | None = None
    status: RunStatus | None = None  # the continued run's status before it is continued


def keyed_run(
    key: str,
    policy: ResumePolicy,
    found: Sequence[RunDetails] | None,
    params: Mapping[str, str],
) -> KeyedRun:
    """The run ``tracking.run.key`` names: the latest by start time of ``found`` (the
    experiment's runs tagged with the key, deleted ones left out; None: the experiment does
    not exist yet), given the session's ``params``.  A RUNNING one is continued too (a killed
    job's run): what its writer left on this machine is sent first, by the session."""
    runs = sorted(found or (), key=lambda run: (run.start_time or 0, run.id))
    if not runs:
        if policy is ResumePolicy.MUST:
            return KeyedRun(
                None,
                "",
                Refusal(
                    f"no run of the experiment has tracking.run.key {key!r} and "
                    "tracking.run.resume is 'must'",
                    "check the key (TRACKCFG_TRACKING__RUN__KEY) and the experiment, or set "
                    "tracking.run.resume: allow to start a new run",
                ),
            )
        return KeyedRun(None, f"a new run tagged {RUN_KEY_TAG}={key!r} (none has it yet)")
    latest = runs[-1]
    changed = changed_params(latest.params, params)
    if changed:
        return KeyedRun(
            None,
            "",
            Refusal(
                f"cannot continue run {latest.id!r} (tracking.run.key {key!r}): params differ "
                f"from the ones it logged ({changed})",
                "MLflow params are immutable; use another tracking.run.key, or "
                "tracking.run.resume: never for a new run",
            ),
        )
    return KeyedRun(
        latest.id,
        f"continue run {latest.id} ({latest.status.value}, tracking.run.key {key!r})",
        status=latest.status,
    )


def run_intent(config: TrackingConfig) -> str:
    """What a top-level session would do about its run, said without asking the store
    (``trackcfg show``; ``trackcfg check`` says which run, having asked)."""
    run = config.tracking.run
    if run.id:
        return f"continue run {run.id} (tracking.run.id)"
    if run.key is None:
        return "a new run"
    tagged = f"{RUN_KEY_TAG}={run.key!r}"
    if run.resume is ResumePolicy.NEVER:
        return f"a new run tagged {tagged} (tracking.run.resume: never)"
    otherwise = "a new run" if run.resume is ResumePolicy.ALLOW else "an error"
    return (
        f"continue the latest run of the experiment tagged {tagged}, else {otherwise} "
        f"(tracking.run.resume: {run.resume.value})"
    )


def continued_since(tags: Mapping[str, str], created: object) -> bool:
    """Whether the run (its ``tags``) was continued by a session after a journal was
    ``created`` (epoch ms, from its header): its end is that later session's."""
    try:
        continued = int(tags.get(CONTINUED_TAG, "0"))
    except ValueError:
        return False
    return isinstance(created, int) and continued > created


def attach_refusal(
    run_id: str, existing: RunRef | None, *, variable: str | None = "MLFLOW_RUN_ID"
) -> Refusal | None:
    """Whether attaching to the active run ``run_id`` (``run.nested: false``) is refused;
    ``variable``: the environment variable that named it (None: this thread's active run)."""
    return named_run_refusal(run_id, existing, variable=variable, nest=False)


def named_run_refusal(
    run_id: str, existing: RunRef | None, *, variable: str | None, nest: bool
) -> Refusal | None:
    """Whether the run around the session can be used: as the parent of its run (``nest``)
    or as the run it logs into.  ``variable`` is where the id came from (``MLFLOW_RUN_ID``,
    ``TRACKCFG_PARENT_RUN_ID``; None: this thread's active run); ``existing`` what the store
    holds under that id.  A stale variable (a run of another store, of an earlier job, or
    deleted) is refused before anything is created, naming the variable and how to clear it.
    """
    if existing is not None and not existing.deleted:
        return None
    state = "is deleted" if existing is not None else "does not exist in this store"
    role = (
        "the parent of the session's run"
        if nest
        else "the run the session logs into (tracking.run.nested: false)"
    )
    if variable is None:
        return Refusal(
            f"this thread's active run {run_id!r}, {role}, {state}",
            "start the session outside that run, or in the store it belongs to "
            "(server.mlflow_tracking_uri)",
        )
    if variable == "TRACKCFG_PARENT_RUN_ID":
        fix = (
            "TrackingSession.child_env() and share_with_subprocesses() set it for worker "
            "processes while the parent's session is open: unset TRACKCFG_PARENT_RUN_ID (a "
            "leftover of another job), or start the worker from a session open on this store"
        )
    else:
        fix = (
            f"unset {variable} (a leftover of an earlier run, or a run of another store), or "
            "point server.mlflow_tracking_uri at the store that holds that run"
        )
    return Refusal(f"{variable}={run_id!r} names {role}, but that run {state}", fix)


class Placement(enum.Enum):
    NEW = "a new top-level run"
    CHILD = "a child of the active run"
    ATTACH = "the active run itself"


def placement(active: str | None, *, must_nest: bool, nested: bool) -> Placement:
    """Where the session's run goes, given the run active around it (if any).  A worker
    started by ``child_env()`` (``must_nest``) always nests, whatever ``run.nested`` says."""
    if active is None:
        return Placement.NEW
    if must_nest or nested:
        return Placement.CHILD
    return Placement.ATTACH


def disabled_reason(
    config: TrackingConfig,
    name: str,
    *,
    disable_variable: str,
    rank: int,
    parent_enabled: bool = True,
) -> str | None:
    """Why a session named ``name`` logs nothing, or None when it logs.  ``disable_variable``
    is the value of ``TRACKCFG_DISABLE``; ``rank`` the process's rank in a distributed job."""
    if not parent_enabled:
        return "the parent session is disabled"
    if disable_variable.strip().lower() in TRUTHY:
        return "TRACKCFG_DISABLE is set"
    if rank != 0 and config.tracking.run.ranks is RankPolicy.ZERO:
        return f"rank {rank} (tracking.run.ranks: zero logs from rank 0 only)"
    listed = config.tracking.disable_tracking.pipelines
    if name in listed or name.rpartition(".")[2] in listed:
        return f"{name!r} is listed in tracking.disable_tracking.pipelines"
    return None


class Offline(enum.Enum):
    """Where a top-level session logs, by ``server.offline``."""

    NO = "the configured store"
    TRY = "the server if it answers at session start, else the offline store"
    YES = "the offline store, without contacting the server"


def offline_decision(
    mode: OfflineMode, *, destination_is_local: bool, inherited_destination: str | None
) -> Offline:
    """``mode`` applied to the destination.  A worker of an offline parent
    (``inherited_destination``: ``TRACKCFG_OFFLINE_DESTINATION``) is offline whatever its
    own config says: its parent's run exists only in the offline store.  A local destination
    (a folder, ``file:``, ``sqlite:``) leaves nothing to do."""
    if inherited_destination:
        return Offline.YES
    if destination_is_local or mode is OfflineMode.NEVER:
        return Offline.NO
    return Offline.YES if mode is OfflineMode.ALWAYS else Offline.TRY


def offline_refusal(
    destination: str,
    why: str,
    *,
    run_id: str | None,
    named_run: str | None,
    online_parent: str | None,
    always: bool,
) -> Refusal | None:
    """Whether an offline session must stop before creating anything: the run it would
    continue or attach to lives on the server, which it does not reach.  ``destination``:
    the server (masked); ``why``: why the session is offline (``server.offline: always``, or
    the server's silence under ``auto``); ``run_id``: ``tracking.run.id``; ``named_run``:
    ``MLFLOW_RUN_ID``; ``online_parent``: ``TRACKCFG_PARENT_RUN_ID`` of a parent session that
    logs on the server; ``always``: offline by ``server.offline: always`` (else the server did
    not answer)."""
    reach = "set server.offline: auto or never" if always else "start the server"
    offline_fix = "or let the session start a new offline run (uploaded later by trackcfg sync)"
    if run_id:
        return Refusal(
            f"run {run_id!r} (tracking.run.id) lives on tracking server {destination}, which "
            f"this session does not reach ({why}): it cannot be continued offline",
            f"{reach} to continue it there, or set tracking.run.id: null to start a new "
            "offline run (uploaded later by trackcfg sync)",
        )
    if online_parent:
        return Refusal(
            f"TRACKCFG_PARENT_RUN_ID={online_parent!r} names a run of tracking server "
            f"{destination}, which this worker does not reach ({why}): its run cannot be a "
            "child of it offline",
            f"{reach} so that the worker logs beside its parent, or unset "
            f"TRACKCFG_PARENT_RUN_ID {offline_fix}",
        )
    if named_run:
        return Refusal(
            f"MLFLOW_RUN_ID={named_run!r} names a run of tracking server {destination}, which "
            f"this session does not reach ({why}): it cannot be used offline",
            f"{reach} to log into it there, or unset MLFLOW_RUN_ID {offline_fix}",
        )
    return None
