"""The live progress bars of ``ddflow run`` on a terminal (one bar per running stage, removed when done).

Stages report through :mod:`tasks.runtime.progress`; this module only draws. Off a terminal (CI, Prefect
workers, redirected output) nothing is drawn and the stages' periodic log lines carry the progress.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn


@contextlib.contextmanager
def stage_bars(console: Console, *, enabled: bool | None = None) -> Iterator[None]:
    """Draw a bar per reporting stage while the block runs (``enabled``: default whether stderr is a TTY)."""
    if not (sys.stderr.isatty() if enabled is None else enabled):
        yield
        return
    from tasks.runtime.progress import set_display

    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[detail]}"), console=console, transient=True)
    tasks: dict[str, int] = {}
    lock = threading.Lock()

    def display(label: str, done: int, total: int, text: str) -> None:
        detail = text.split(", ", 1)[1] if ", " in text else ""
        with lock:
            if label not in tasks:
                tasks[label] = bars.add_task(label, total=total, detail="")
            bars.update(tasks[label], completed=done, total=total, detail=detail)
            if total and done >= total:
                bars.remove_task(tasks.pop(label))

    with bars:
        set_display(display)
        try:
            yield
        finally:
            set_display(None)
