"""The temporary Prefect API server of one ``ddflow run`` / ``ddflow evaluate``, started before the run's imports.

Without ``PREFECT_API_URL`` Prefect starts a temporary server itself, but only when the flow is first called:
after torch, ddcore and Prefect have been imported, so a cached re-run waited for the two one after the
other (about 5 s each on 2 cores). Here ``prefect server start`` (Prefect's own CLI, UI and background
services off, as Prefect's temporary server runs them) is launched as the first thing the command does, on
a free local port, with the run's own database (:func:`server_database`); the run is pointed at it through
``temporary_settings`` once it is healthy, and the server is stopped when the command ends. A
``PREFECT_API_URL`` from the environment or the active Prefect profile wins: nothing is started then (or the
early start is stopped unused).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ddcore.errors import DDFlowError
from flows.roots import default_root

STARTUP_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
DB_KEYS = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")
_CLAIMS: list[int] = []  # descriptors of the database slots this process holds (released when it exits)


def prefect_env() -> None:
    """Quiet, patient defaults for Prefect in this process (the environment wins). Run before prefect is imported."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault(STARTUP_ENV, "300")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def server_database(root: str | None = None) -> str | None:
    """The database URL of a run's temporary server: ``<root>/prefect/prefect.db`` (folder created), so the
    run's Prefect record lives with its artifacts instead of in the ``PREFECT_HOME`` database every other
    Prefect process of the user shares (SQLite allows one writer: another process holding it made the run's
    server fail with ``database is locked``). Runs on one root at the same time each take their own slot
    (:func:`claim_slot`): ``prefect.db``, then ``prefect-2.db``, ... ``None`` when the environment names a
    server or a database (the server then inherits it) or the root is remote.

    Raises:
        DDFlowError: the root cannot be written (one line).
    """
    if os.environ.get("PREFECT_API_URL") or any(os.environ.get(k) for k in DB_KEYS):
        return None
    local = default_root(root)
    if "://" in local:
        return None
    folder = Path(local, "prefect")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DDFlowError(f"cannot write the artifact root {local} ({exc.strerror or exc}); pass a writable "
                          "--root or set DDFLOW_ROOT") from None
    if not os.access(folder, os.W_OK):
        raise DDFlowError(f"the artifact root {local} is not writable; pass a writable --root or set DDFLOW_ROOT")
    return f"sqlite+aiosqlite:///{claim_slot(folder)}"


def claim_slot(folder: Path) -> Path:
    """The first database file of ``folder`` no other live process holds, claimed for this process's life.

    The claim is an exclusive ``flock`` on ``<name>.lock`` whose descriptor stays open until the process ends
    (the kernel releases it then, also after ``kill -9``): two servers on one SQLite file fail with ``database
    is locked``, so a run started while another works on the same root gets ``prefect-2.db``, a third
    ``prefect-3.db``; runs one after the other all use ``prefect.db``. Where the file system has no locks,
    ``prefect.db`` unclaimed.
    """
    for n in range(1, 1000):
        path = folder / ("prefect.db" if n == 1 else f"prefect-{n}.db")
        fd = os.open(path.with_name(path.name + ".lock"), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        except OSError:  # no locking on this file system
            os.close(fd)
            return folder / "prefect.db"
        _CLAIMS.append(fd)
        return path
    return folder / "prefect.db"


def start_error(detail: str = "", database: str | None = None) -> DDFlowError:
    """The one line for a temporary server that did not come up (``database``: the URL it was given)."""
    limit = os.environ.get(STARTUP_ENV, "?")
    db = database or os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL", "the database in PREFECT_HOME")
    return DDFlowError(f"Prefect's temporary server did not start within {limit} s{detail} (a busy machine, or its "
                       f"database {db} locked by another process); run again, raise {STARTUP_ENV}, or start "
                       "'prefect server start' and set PREFECT_API_URL")


def _die_with_parent() -> None:
    """In the server's process, before it runs: have the kernel send it SIGTERM when the command that started it
    dies, even by ``kill -9`` (exit handlers do not run then, and the server would otherwise live on). The
    signal follows the thread that started it: :class:`RunServer` is created in the command's main thread."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the time of the call."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TemporaryServer:
    """A ``prefect server start`` child process on a free local port (see the module docstring)."""

    def __init__(self, database: str | None = None) -> None:
        self.port, self.database = free_port(), database
        env = {**os.environ, "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        if database is not None:
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database
        cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port),
               "--no-services"]
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None)  # noqa: PLW1509 - no threads yet
        # Stopped at interpreter exit, after Prefect's own exit handlers (registered later, so run earlier) have
        # sent the run's last logs and events to it.
        atexit.register(self.stop, wait=False)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def wait_healthy(self) -> None:
        """Block until ``/api/health`` answers (at most ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``).

        Raises:
            DDFlowError: the server exited or did not answer in time (one line).
        """
        import httpx

        limit = float(os.environ.get(STARTUP_ENV, "300"))
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc and self.proc.stderr else ""
                last = next((ln.strip() for ln in reversed(err.splitlines()) if ln.strip()), "")
                raise start_error(f" (it exited: {last[:200]})" if last else " (it exited)", self.database)
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise start_error(database=self.database)

    def stop(self, *, wait: bool = True) -> None:
        """Terminate the server; with ``wait``, until it has exited (killed after 10 s). Safe to call twice.

        At interpreter exit it is not waited for: its graceful shutdown takes about 2 s, every record of the run
        was written before (Prefect's exit handlers ran first), and it ends on its own."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        proc.terminate()
        if not wait:
            return
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class RunServer:
    """The Prefect side of one command that runs a flow (see the module docstring).

    Created first thing (it sets the database environment and starts the server early);
    :meth:`pointed` wraps the flow call once Prefect is imported; :meth:`close` stops a server left unused.
    """

    def __init__(self, root: str | None = None) -> None:
        prefect_env()
        database = server_database(root)
        wanted = not os.environ.get("PREFECT_API_URL") and "prefect" not in sys.modules
        self.early = TemporaryServer(database) if wanted else None
        self._used = False

    @contextlib.contextmanager
    def pointed(self) -> Iterator[None]:
        """Prefect's settings for the flow call: the early server's API URL when Prefect has no server
        configured (environment or profile) and allows a temporary one; otherwise Prefect's own choice."""
        from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

        settings = get_current_settings()
        if self.early is None or settings.api.url or not settings.server.ephemeral.enabled:
            self.close()
            yield
            return
        self.early.wait_healthy()
        self._used = True
        with temporary_settings(updates={PREFECT_API_URL: self.early.api_url}):
            yield

    def close(self) -> None:
        """Stop a server the run did not use (one it used is stopped at exit, see :class:`TemporaryServer`)."""
        if self.early is not None and not self._used:
            self.early.stop()
