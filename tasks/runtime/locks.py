"""Per-key locks so that two processes computing the same stage key compute it once.

* Local paths: :class:`filelock.FileLock` (``flock``). The kernel drops the lock when the holder
  dies, so a lock left by a killed process is recovered at once; an ``.owner`` file next to the lock
  names the holder (pid, host) for the "waiting for ..." message.
* Other fsspec filesystems (``memory://``, object stores): a marker file holding ``{pid, host,
  token, time}`` that the holder rewrites (a heartbeat, every ``stale_after_s / 4``) for as long as it holds
  the lock. A marker whose holder is a dead pid on this host, or whose last heartbeat is older than
  ``stale_after_s``, is removed and taken over: a stage whose node died (another machine, so its pid cannot
  be checked) is taken over by a retry elsewhere within ``stale_after_s``, while a long stage on a live node
  keeps its lock however long it runs. This is best effort (object stores have no atomic create-if-absent;
  the hosts' clocks are assumed to agree to well under ``stale_after_s``); threads of one process are
  additionally serialised by an in-process lock.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import filelock

from ddcore.data import storage as fsio
from ddcore.errors import DDFlowError
from tasks.runtime.refs import hostname, utc_now

log = logging.getLogger("ddflow.store")

_PROCESS_LOCKS: dict[str, threading.Lock] = {}
_PROCESS_LOCKS_GUARD = threading.Lock()


class LockTimeoutError(DDFlowError):
    """A stage key stayed locked by another process for longer than the timeout."""


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (non-zombie) process on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _owner_info() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": hostname(), "since": utc_now(), "time": time.time()}


def _describe(owner: dict[str, Any] | None) -> str:
    if not owner:
        return "another process"
    return f"pid {owner.get('pid')} on {owner.get('host')} (since {owner.get('since')})"


def _process_lock(name: str) -> threading.Lock:
    with _PROCESS_LOCKS_GUARD:
        return _PROCESS_LOCKS.setdefault(name, threading.Lock())


@contextmanager
def local_lock(path: str, *, timeout: float | None, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created with its parents)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    owner_path = Path(path + ".owner")
    lock = filelock.FileLock(path, timeout=-1 if timeout is None else timeout)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        owner = _read_json_quietly(owner_path)
        log.info("%s: waiting for the lock held by %s", what, _describe(owner))
        try:
            lock.acquire()
        except filelock.Timeout:
            raise LockTimeoutError(
                f"{what} is still locked by {_describe(_read_json_quietly(owner_path))} after {timeout:g}s; "
                "wait for that run to finish or stop it"
            ) from None
    try:
        with suppress(OSError):
            owner_path.write_text(json.dumps(_owner_info()))
        yield
    finally:
        with suppress(OSError):
            owner_path.unlink(missing_ok=True)
        lock.release()


def _read_json_quietly(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def marker_lock(fs: Any, path: str, *, timeout: float | None, stale_after_s: float, what: str,
                poll_s: float = 0.05) -> Iterator[None]:
    """Hold a marker-file lock at ``path`` on an fsspec filesystem (see the module docstring)."""
    plock = _process_lock(f"{type(fs).__name__}:{path}")
    deadline = None if timeout is None else time.monotonic() + timeout
    if not plock.acquire(timeout=-1 if timeout is None else timeout):
        raise LockTimeoutError(f"{what} is still locked by another thread after {timeout:g}s")
    token = uuid.uuid4().hex
    try:
        waited = False
        while True:
            owner = _read_marker(fs, path)
            if owner is None:
                info = {**_owner_info(), "token": token}
                with fsio.open_write(fs, path) as f:
                    f.write(json.dumps(info).encode())
                time.sleep(poll_s)
                if (_read_marker(fs, path) or {}).get("token") == token:
                    break
                continue
            if _is_stale(owner, stale_after_s):
                log.warning("%s: removing a stale lock left by %s", what, _describe(owner))
                fsio.remove_quietly(fs, path)
                continue
            if not waited:
                log.info("%s: waiting for the lock held by %s", what, _describe(owner))
                waited = True
            if deadline is not None and time.monotonic() > deadline:
                raise LockTimeoutError(
                    f"{what} is still locked by {_describe(owner)} after {timeout:g}s; "
                    "wait for that run to finish or stop it"
                )
            time.sleep(min(1.0, poll_s * 4))
        stop = threading.Event()
        beat = threading.Thread(target=_heartbeat, args=(fs, path, info, stop, stale_after_s / 4),
                                name=f"ddflow-lock-heartbeat:{what}", daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
            if (_read_marker(fs, path) or {}).get("token") == token:
                fsio.remove_quietly(fs, path)
    finally:
        plock.release()


def _heartbeat(fs: Any, path: str, info: dict[str, Any], stop: threading.Event, every_s: float) -> None:
    """Refresh the marker's ``time`` every ``every_s`` while it is still ours (until ``stop`` is set)."""
    while not stop.wait(every_s):
        if (_read_marker(fs, path) or {}).get("token") != info["token"]:
            return  # taken over (we were presumed dead): never overwrite the new holder's marker
        try:
            with fsio.open_write(fs, path) as f:
                f.write(json.dumps({**info, "time": time.time()}).encode())
        except OSError as exc:  # the store is unreachable for a moment: the next beat tries again
            log.warning("lock heartbeat of %s failed (%s); retrying", path, exc)


def _read_marker(fs: Any, path: str) -> dict[str, Any] | None:
    try:
        if not fs.exists(path):
            return None
        return json.loads(fs.cat_file(path).decode())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"pid": -1, "host": "?", "time": 0.0}  # unreadable marker: treat as stale


def _is_stale(owner: dict[str, Any], stale_after_s: float) -> bool:
    if owner.get("host") == hostname() and not pid_alive(int(owner.get("pid", -1))):
        return True
    return time.time() - float(owner.get("time", 0.0)) > stale_after_s
