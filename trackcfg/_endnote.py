"""What a session says when its run ends, besides MLflow's own "View run" line.

- An offline run (``server.offline``) reminds where it is and the command that sends it: it
  is not on the server until then, and the note at the session's start scrolled away long
  ago.  A warning, so that it shows without any logging configured.
- On a terminal, a short summary of the run: its status, how many params, the last value of
  each metric the session logged (W&B prints one; MLflow only a link).  Only where a person
  reads it (stdout is a TTY), never in a pipe, a log file or CI output, and off with
  ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT``, the variable that turns MLflow's link off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Mapping
from typing import IO

from ._rules import TRUTHY

__all__ = ["SUPPRESS_VARIABLE", "end_notes", "offline_reminder", "run_summary", "wants_summary"]

logger = logging.getLogger(__name__)

SUPPRESS_VARIABLE = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
SHOWN_METRICS = 10
"""A summary lists this many metrics at most (the first logged), then how many more."""


def offline_reminder(run_id: str, name: str, store: str, destination: str, command: str) -> str:
    return (
        f"run {run_id} of session {name!r} is in the offline store {store}, not yet on "
        f"{destination}; send it there with: {command}"
    )


def wants_summary(stream: IO[str], environ: Mapping[str, str]) -> bool:
    """A person reads ``stream`` (a terminal), and did not turn MLflow's link off."""
    if environ.get(SUPPRESS_VARIABLE, "").strip().lower() in TRUTHY:
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced by an object without it, or closed
        return False


def run_summary(name: str, status: str, params: int, last: Mapping[str, tuple[float, int]]) -> str:
    """A few lines: ``run 'train' FINISHED: 2 params, 3 metrics`` and each metric's last
    value (with its step when not 0), aligned; at most ``SHOWN_METRICS`` of them."""
    lines = [
        f"run {name!r} {status}: {params} param{'' if params == 1 else 's'}, "
        f"{len(last)} metric{'' if len(last) == 1 else 's'}"
    ]
    shown = list(last.items())[:SHOWN_METRICS]
    width = max((len(key) for key, _ in shown), default=0)
    for key, (value, step) in shown:
        at = f"  (step {step})" if step else ""
        lines.append(f"  {key:<{width}}  {value:.6g}{at}")
    if len(last) > SHOWN_METRICS:
        lines.append(f"  ... and {len(last) - SHOWN_METRICS} more")
    return "\n".join(lines)


def end_notes(
    run_id: str,
    name: str,
    status: str,
    *,
    offline: tuple[str, str, str] | None,
    params: int,
    last: Mapping[str, tuple[float, int]],
) -> None:
    """Say both notes for the run that just ended: the offline reminder (``offline``: the
    offline store, the destination and the sync command) as a warning, and the summary on
    stdout when a person reads it."""
    if offline is not None:
        logger.warning("%s", offline_reminder(run_id, name, *offline))
    if wants_summary(sys.stdout, os.environ):
        with contextlib.suppress(OSError, ValueError):  # stdout closed or gone
            sys.stdout.write(f"{run_summary(name, status, params, last)}\n")
            sys.stdout.flush()
