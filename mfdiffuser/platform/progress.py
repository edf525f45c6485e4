"""Progress of long steps on stderr: a rich bar on a terminal, else plain periodic lines.

stdout stays for results (`--json`: one object). `mfd --quiet` (or `MFD_QUIET=1`) turns it off;
the setting is an environment variable so that Ray workers started by this command (a Train
worker reporting epochs) see it too. Plain lines come on the first update, then at most every
`MFD_PROGRESS_SECONDS` (default 10), and when the step is done.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def quiet() -> bool:
    return os.environ.get("MFD_QUIET", "") not in ("", "0")


def _period() -> float:
    try:
        return float(os.environ.get("MFD_PROGRESS_SECONDS", "10"))
    except ValueError:
        return 10.0


class Progress:
    """`advance(n, note)` moves the count; `note` says more (a loss, trials running)."""

    def __init__(self, what: str, total: int, unit: str) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.done, self.note = 0, ""
        self._last = float("-inf")
        self._bar: Any = None
        self._task: Any = None
        if quiet():
            return
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(unit + " {task.fields[note]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(what, total=total, note="")

    def advance(self, n: int = 1, note: str = "") -> None:
        self.done += n
        self.note = note
        if quiet():
            return
        if self._bar is not None:
            self._bar.update(self._task, advance=n, note=note)
            return
        now = time.monotonic()
        if now - self._last >= _period() or self.done >= self.total:
            self._last = now
            line(
                f"{self.what}: {self.done}/{self.total} {self.unit}" + (f", {note}" if note else "")
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def line(text: str) -> None:
    """One plain progress line (also what a Ray worker prints: Ray forwards it to the driver)."""
    if not quiet():
        # Not print(): in a Train worker Ray patches print to log the line through Train's
        # logger too, whose console handler wrote it a second time.
        sys.stderr.write(f"progress: {text}\n")
        sys.stderr.flush()


@contextmanager
def progress(what: str, total: int, unit: str) -> Iterator[Progress]:
    bar = Progress(what, total, unit)
    try:
        yield bar
    finally:
        bar.close()
