"""The error a failed stage raises, and which failures are worth retrying as they are."""

from __future__ import annotations

import errno
from typing import Any

from ddcore.errors import DDFlowError

_NON_TRANSIENT_OS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class StageError(DDFlowError):
    """A stage function failed; names the stage and keeps the original exception as ``cause``."""

    def __init__(self, message: str, *, stage: str = "", key: str = "", cause: BaseException | None = None,
                 transient: bool = False) -> None:
        super().__init__(message)
        self.stage, self.key, self.cause, self.transient = stage, key, cause, transient

    @classmethod
    def wrap(cls, stage: str, key: str, exc: BaseException) -> StageError:
        first = (str(exc).strip().splitlines() or [""])[0]
        return cls(f"stage '{stage}' failed: {type(exc).__name__}: {first} (key {key}; finished stages stay "
                   "cached, fix the cause and run again)", stage=stage, key=key, cause=exc,
                   transient=is_transient(exc))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_stage_error, (str(self), self.stage, self.key, self.cause, self.transient))


def _rebuild_stage_error(message: str, stage: str, key: str, cause: BaseException | None,
                         transient: bool) -> StageError:
    return StageError(message, stage=stage, key=key, cause=cause, transient=transient)


def is_transient(exc: BaseException) -> bool:
    """Worth retrying as is: connection/timeouts and I/O errors other than missing/forbidden paths."""
    if isinstance(exc, StageError):
        return exc.transient
    if isinstance(exc, DDFlowError):
        return False
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return False  # a full disk does not empty itself between retries
    return isinstance(exc, OSError) and not isinstance(exc, _NON_TRANSIENT_OS)
