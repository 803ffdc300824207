"""Every error trackcfg raises on purpose.

::

    TrackcfgError                         base of everything below
    ├── ConfigError (ValueError)          the configuration is wrong: file, line, key, fix
    ├── ExperimentError                   the experiment cannot be used (missing, deleted)
    ├── RunError                          the run cannot be started, resumed or logged to
    │   └── CredentialsError              the server rejected the credentials (HTTP 401/403)
    ├── TrackingUnavailableError (ConnectionError)
    │   │                                 the tracking server did not answer within
    │   │                                 server.request_timeout x server.max_retries
    │   └── ServerError                   it answered, with an error status (HTTP 5xx),
    │                                     to every try
    └── ParamValueTooLongError (ValueError)
                                          a param value passes MLflow's limit under
                                          ``long_params_strategy: fail``

Each subclass also inherits the closest builtin, so ``except ValueError`` keeps working for
callers that do not know trackcfg.  Errors from MLflow are translated where they cross the
backend boundary (``raise ... from exc``) and keep the original as ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "CredentialsError",
    "ExperimentError",
    "ParamValueTooLongError",
    "RunError",
    "ServerError",
    "TrackcfgError",
    "TrackingUnavailableError",
]


class TrackcfgError(Exception):
    """Base class of every error raised by trackcfg."""


class ConfigProblem:
    """One thing wrong with the configuration.

    ``where`` names the origin (``conf/local/mlflow.yml:12``, ``env TRACKCFG_…``,
    ``override``) or is ``None`` when the problem has no single origin.

    Immutable, compared and hashed by value.  A plain class, not attrs: ``import trackcfg``
    imports this module, and attrs alone would cost it tens of milliseconds.
    """

    __slots__ = ("key", "message", "where")
    key: str
    message: str
    where: str | None

    def __init__(self, key: str, message: str, where: str | None = None) -> None:
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "message", message)
        object.__setattr__(self, "where", where)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"ConfigProblem is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"ConfigProblem is immutable: cannot delete {name!r}")

    def _fields(self) -> tuple[str, str, str | None]:
        return (self.key, self.message, self.where)

    def __eq__(self, other: object) -> bool:
        if type(other) is not ConfigProblem:
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __reduce__(self) -> tuple[type[ConfigProblem], tuple[str, str, str | None]]:
        return (ConfigProblem, self._fields())  # pickled with the error (worker processes)

    def __repr__(self) -> str:
        return f"ConfigProblem(key={self.key!r}, message={self.message!r}, where={self.where!r})"

    def __str__(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        key = f"'{self.key}'" if self.key else "(top level)"
        return f"{prefix}{key}: {self.message}"


class ConfigError(TrackcfgError, ValueError):
    """The configuration is invalid. ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: Sequence[ConfigProblem] | str) -> None:
        if isinstance(problems, str):
            problems = [ConfigProblem(key="", message=problems)]
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        if len(self.problems) == 1:
            text = f"invalid trackcfg configuration: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            text = f"invalid trackcfg configuration ({len(self.problems)} problems):\n{lines}"
        super().__init__(text)


class ExperimentError(TrackcfgError):
    """The configured experiment does not exist, is deleted, or cannot be created."""


class RunError(TrackcfgError):
    """A run cannot be started, resumed or written to as configured."""


class CredentialsError(RunError):
    """The tracking server rejected the credentials (HTTP 401) or refused the request (403).
    Buffered logging keeps the data and retries: credentials may be renewed meanwhile."""


class TrackingUnavailableError(TrackcfgError, ConnectionError):
    """The tracking server could not be reached (or stopped answering) within the budget set
    by ``server.request_timeout`` and ``server.max_retries``; or a SQLite store stayed locked
    by other processes longer than MLflow waits (20 s)."""


class ServerError(TrackingUnavailableError):
    """The tracking server answered every try of a request with an error status (HTTP 5xx)
    within the budget: it is up, but fails this request (its log says why).  A kind of
    ``TrackingUnavailableError``: what was not taken is kept and tried again."""


class ParamValueTooLongError(TrackcfgError, ValueError):
    """A parameter value is longer than MLflow accepts and the strategy is ``fail``."""

    def __init__(self, key: str, length: int, limit: int) -> None:
        self.key = key
        self.length = length
        self.limit = limit
        super().__init__(
            f"param {key!r} is {length} characters long; MLflow accepts at most {limit}. "
            "Set tracking.params.long_params_strategy to 'truncate' (keep the first "
            f"{limit} characters) or 'tag' (log the full value as a tag) to log it anyway."
        )
