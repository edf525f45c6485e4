"""Errors of the Ray workers as the user sees them: one line, the traceback kept elsewhere."""

from __future__ import annotations

import os

# How often a generation or rollout actor that died is restarted (and its task retried) before
# the command fails: a lost process is worth retrying, a bug that kills it every time is not.
ACTOR_RESTARTS = 2


VERBOSE_ENV = "MFD_VERBOSE"


def verbose() -> bool:
    """MFD_VERBOSE=1: show what Ray and MLflow log besides a command's own output (Ray's start-up
    lines, Ray Train's worker-group events and each worker's traceback of an error). Off, an
    error reaches the user as its one line; what the workers print is shown either way."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


class WorkerError(RuntimeError):
    """Work on a Ray worker failed for good (after its retries); `str()` is one line."""


def one_line(err: BaseException) -> str:
    """`Type: first line of the message` (Ray's errors carry a whole remote traceback)."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def worker_failure(err: BaseException) -> str:
    """One line for an error of a Ray actor or task (call with Ray's exceptions only)."""
    from ray.exceptions import RayActorError, RayTaskError

    if isinstance(err, RayActorError):
        return f"an actor died (restarted up to {ACTOR_RESTARTS} times: {one_line(err)})"
    if isinstance(err, RayTaskError):
        return f"a task failed ({one_line(err.cause)})"
    return one_line(err)
