"""Per-key locking: concurrent processes compute a key once; stale locks of dead processes are recovered."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import fsspec
import pytest

from tasks.runtime.locks import LockTimeoutError
from tasks.runtime.store import ArtifactStore

REPO = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, os, sys, time, logging
from pathlib import Path
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
from ddcore.config import StageConfig
from tasks.runtime.stage import run_stage
from tasks.runtime.store import ArtifactStore

class Cfg(StageConfig):
    value: int = 3

def slow(inputs, config, out, ctx):
    with open(os.environ["COUNTER"], "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(1.5)
    Path(out, "numbers.json").write_text(json.dumps(list(range(config.value))))
    return {"n": config.value}

barrier = Path(os.environ["BARRIER"])
(barrier / f"ready-{os.getpid()}").touch()
deadline = time.monotonic() + 30
while len(list(barrier.glob("ready-*"))) < 2 and time.monotonic() < deadline:
    time.sleep(0.01)
ref = run_stage(ArtifactStore(sys.argv[1]), "slow", slow, {}, Cfg(), "features", device="cpu")
print(ref.to_json())
"""

HOLDER = r"""
import sys, time
from tasks.runtime.store import ArtifactStore
with ArtifactStore(sys.argv[1]).lock("slow", "0123456789abcdef0123"):
    print("locked", flush=True)
    time.sleep(60)
"""


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def test_two_processes_compute_the_same_key_once(tmp_path: Path) -> None:
    """Two processes asking for the same stage key at the same moment: the stage function runs once, the
    other process waits on the lock, re-checks, and both return the same ref."""
    counter, barrier = tmp_path / "count.txt", tmp_path / "barrier"
    barrier.mkdir()
    env = _env(COUNTER=str(counter), BARRIER=str(barrier))
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "store")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], outs
    refs = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert refs[0] == refs[1]
    assert len(counter.read_text().splitlines()) == 1
    assert sum("computed meanwhile by another run" in err for _, err in outs) == 1


def test_lock_of_a_killed_process_is_recovered(tmp_path: Path) -> None:
    """A process killed while holding a key's lock leaves its lock file behind; the next run gets the lock
    at once instead of waiting."""
    root = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        owner = json.loads((root / "_locks" / "slow" / "0123456789abcdef0123.lock.owner").read_text())
        assert owner["pid"] == proc.pid
        store = ArtifactStore(root, lock_timeout=0.5)
        with pytest.raises(LockTimeoutError, match=f"pid {proc.pid}"), store.lock("slow", "0123456789abcdef0123"):
            pass
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
    assert (root / "_locks" / "slow" / "0123456789abcdef0123.lock").exists()
    t0 = time.monotonic()
    with ArtifactStore(root, lock_timeout=5).lock("slow", "0123456789abcdef0123"):
        pass
    assert time.monotonic() - t0 < 2


def test_marker_lock_of_dead_pid_is_recovered_and_live_one_waited(caplog: pytest.LogCaptureFixture) -> None:
    """On non-local filesystems a lock marker naming a dead pid on this host is taken over (with a warning);
    one held by a live holder makes others wait until the timeout."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    fs = fsspec.filesystem("memory")
    store = ArtifactStore("memory://ddflow-lock-test", lock_timeout=0.5)
    path = "/ddflow-lock-test/_locks/s/0123456789abcdef0123.lock"
    try:
        with fs.open(path, "wb") as f:
            f.write(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "time": time.time()}).encode())
        with caplog.at_level("WARNING", logger="ddflow.store"), store.lock("s", "0123456789abcdef0123"):
            assert json.loads(fs.cat_file(path))["pid"] == os.getpid()
        assert any("stale lock" in r.getMessage() for r in caplog.records) and not fs.exists(path)

        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            with store.lock("s", "0123456789abcdef0123"):
                held.set()
                release.wait(10)

        t = threading.Thread(target=hold)
        t.start()
        try:
            assert held.wait(10)
            with pytest.raises(LockTimeoutError), store.lock("s", "0123456789abcdef0123"):
                pass
        finally:
            release.set()
            t.join(10)
        with store.lock("s", "0123456789abcdef0123"):
            pass
    finally:
        fs.rm("/ddflow-lock-test", recursive=True)


def test_marker_lock_heartbeat_keeps_a_held_lock_fresh_and_a_silent_nodes_lock_expires(
        caplog: pytest.LogCaptureFixture) -> None:
    """Object-store locks are leases: the holder rewrites its marker every quarter of ``stale_lock_s``, so a
    lock held for several times ``stale_lock_s`` never looks stale; a marker from another machine (whose pid
    cannot be checked) is waited for while it is fresh and taken over once it has gone silent for
    ``stale_lock_s`` (a node that died mid-stage)."""
    from tasks.runtime.locks import _is_stale

    fs = fsspec.filesystem("memory")
    store = ArtifactStore("memory://ddflow-lease-test", lock_timeout=0.3, stale_lock_s=0.4)
    path = "/ddflow-lease-test/_locks/s/0123456789abcdef0123.lock"
    try:
        with store.lock("s", "0123456789abcdef0123"):
            first = json.loads(fs.cat_file(path))
            time.sleep(1.2)
            now = json.loads(fs.cat_file(path))
            assert now["token"] == first["token"] and now["time"] > first["time"]
            assert not _is_stale({**now, "host": "elsewhere"}, 0.4)
        assert not fs.exists(path)

        other = {"pid": 1, "host": "gpu-node-7", "since": "then", "token": "t"}
        with fs.open(path, "wb") as f:
            f.write(json.dumps({**other, "time": time.time() + 5}).encode())  # fresh: a live holder elsewhere
        with pytest.raises(LockTimeoutError, match="pid 1 on gpu-node-7"), store.lock("s", "0123456789abcdef0123"):
            pass
        with fs.open(path, "wb") as f:
            f.write(json.dumps({**other, "time": time.time() - 1.0}).encode())  # silent for longer than 0.4 s
        with caplog.at_level("WARNING", logger="ddflow.store"), store.lock("s", "0123456789abcdef0123"):
            assert json.loads(fs.cat_file(path))["host"] == socket.gethostname()
        assert any("stale lock left by pid 1 on gpu-node-7" in r.getMessage() for r in caplog.records)
    finally:
        if fs.exists("/ddflow-lease-test"):
            fs.rm("/ddflow-lease-test", recursive=True)
