"""MLflow client plumbing for :mod:`tasks.runtime.tracking`: one lock per tracking URI, retries of transient
store failures, and the text limits MLflow puts on params, tags and metric keys."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("ddflow.tracking")
_METRIC_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")
_LOCKS_GUARD = threading.Lock()
_URI_LOCKS: dict[str, threading.RLock] = {}
# Failures worth retrying: SQLite writer contention, a racing insert of the same dataset row by another
# process, SQLAlchemy pool exhaustion, and an overloaded/restarting tracking server.
_TRANSIENT = re.compile(r"database is locked|database table is locked|UNIQUE constraint failed|IntegrityError|"
                        r"QueuePool limit|disk I/O error|Deadlock|could not serialize|"
                        r"\b(429|502|503|504)\b|Too Many Requests|Service Unavailable|Connection reset", re.I)
RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 6.4, 6.4)


class RetryingClient:
    """An ``MlflowClient`` whose every call holds the tracking URI's process-wide lock and is retried with
    back-off (:data:`RETRY_DELAYS`, ~30 s in all) while it fails transiently (:func:`is_transient`).

    Each MLflow call is one database transaction, so a failed attempt wrote nothing and retrying it is safe;
    a racing insert of the same dataset row by another process succeeds on the retry, which finds the row.
    """

    def __init__(self, inner: Any, lock: threading.RLock) -> None:
        self.inner, self._lock = inner, lock

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            for attempt, delay in enumerate((*RETRY_DELAYS, None)):
                try:
                    with self._lock:
                        return attr(*args, **kwargs)
                except Exception as exc:
                    if delay is None or not is_transient(exc):
                        raise
                    log.debug("tracking: %s failed (attempt %d: %s); retrying", name, attempt + 1, exc)
                    time.sleep(delay)
            raise AssertionError("unreachable")

        return call


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a failure a retry may clear."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if _TRANSIENT.search(f"{type(e).__name__}: {e}"):
            return True
        e = e.__cause__ or e.__context__
    return False


def uri_lock(uri: str | None) -> threading.RLock:
    with _LOCKS_GUARD:
        return _URI_LOCKS.setdefault(str(uri), threading.RLock())


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; lists and scalars become their JSON-ish text."""
    out: dict[str, str] = {}
    for k, v in data.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{name}."))
        else:
            out[name] = clip(v, 6000)
    return out


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def metric_key(k: str) -> str:
    return _METRIC_KEY.sub("_", str(k))[:250]


def clip(v: Any, n: int) -> str:
    if isinstance(v, str):
        s = v
    elif v is None or isinstance(v, bool | list | dict):
        s = json.dumps(v, sort_keys=True, default=str)
    else:
        s = str(v)
    return s if len(s) <= n else s[: n - 3] + "..."
