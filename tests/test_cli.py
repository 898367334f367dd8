"""The ddflow CLI: ingest/info/show/run work, and bad input is one error line, exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def test_ingest_info_show(fake_fmnist: Path, tmp_path: Path) -> None:
    """ingest prints counts and digest; info repeats the digest; show writes a grid of 10 rows."""
    r = runner.invoke(app, ["ingest", str(fake_fmnist), "--out", str(tmp_path / "a"), "--shard-size", "50"])
    assert r.exit_code == 0, r.output
    digest = next(line.split()[-1] for line in r.output.splitlines() if line.startswith("digest:"))
    r2 = runner.invoke(app, ["info", str(tmp_path / "a"), "--verify", "full"])
    assert r2.exit_code == 0 and f"digest: {digest}" in r2.output and "120" in r2.output
    r3 = runner.invoke(app, ["show", str(tmp_path / "a"), "--out", str(tmp_path / "g.png"), "--per-class", "4"])
    assert r3.exit_code == 0, r3.output
    img = Image.open(tmp_path / "g.png")
    assert img.size[1] == 10 * (28 * 2 + 2) + 2


def _err(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_errors_are_one_line(tmp_path: Path) -> None:
    """Missing artifact, unknown config key, bad value and missing source: one line each, exit 2."""
    assert "no dataset artifact" in _err(runner.invoke(app, ["info", str(tmp_path / "nope")]))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  source: {kind: fashion_mnist}\n  shards: 3\n")
    assert "unknown key 'data.shards'" in _err(runner.invoke(app, ["run", str(cfg)]))
    cfg.write_text("data:\n  source: {kind: fashion_mnist}\n  shard_size: 0\n")
    assert "bad value for 'data.shard_size'" in _err(runner.invoke(app, ["run", str(cfg)]))
    assert "source not found" in _err(runner.invoke(app, ["ingest", str(tmp_path / "x"), "--out", str(tmp_path / "o")]))
    assert "config file not found" in _err(runner.invoke(app, ["run", str(tmp_path / "none.yaml")]))


def test_debug_shows_traceback(tmp_path: Path) -> None:
    """--debug re-raises the error instead of printing one line."""
    r = runner.invoke(app, ["--debug", "info", str(tmp_path / "nope")])
    assert r.exit_code != 0 and r.exception is not None


def test_image_folder_via_cli(tmp_path: Path) -> None:
    """A folder of class sub-folders is recognised and split with --test-fraction."""
    for c in ("x", "y"):
        (tmp_path / "f" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((8, 8), i * 10, np.uint8)).save(tmp_path / "f" / c / f"{i}.png")
    r = runner.invoke(app, ["ingest", str(tmp_path / "f"), "--out", str(tmp_path / "o"), "--test-fraction", "0.4"])
    assert r.exit_code == 0, r.output
    assert "digest:" in r.output


@pytest.mark.parametrize("env", [{}, {"PREFECT_API_URL": "http://127.0.0.1:4200/api"},
                                 {"PREFECT_SERVER_DATABASE_CONNECTION_URL": "sqlite+aiosqlite:////tmp/mine.db"}])
def test_temporary_prefect_server_keeps_its_database_under_the_root(tmp_path: Path, env: dict[str, str]) -> None:
    """Without a Prefect server (PREFECT_API_URL) or an explicit database, a run's temporary Prefect server
    uses <root>/prefect/prefect.db, not the PREFECT_HOME database other Prefect processes share; with either,
    it chooses none (the server inherits the environment's). The command's own environment is not changed."""
    code = ("import os, sys; from flows.temp_server import server_database; db = server_database(sys.argv[1]); "
            "print(db or '-', os.environ.get('PREFECT_SERVER_DATABASE_CONNECTION_URL', '-'))")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "root")], env={**clean, **env},
                         capture_output=True, text=True, check=True).stdout.strip()
    if not env:
        assert out == f"sqlite+aiosqlite:///{tmp_path}/root/prefect/prefect.db -"
        assert (tmp_path / "root/prefect").is_dir()
    else:
        assert out == f"- {env.get('PREFECT_SERVER_DATABASE_CONNECTION_URL', '-')}"


def test_runs_at_once_on_one_root_get_their_own_prefect_database(tmp_path: Path) -> None:
    """Two temporary servers on one SQLite file fail with 'database is locked': while one process holds
    <root>/prefect/prefect.db, another gets prefect-2.db; once the holder is killed (-9), prefect.db is free again."""
    code = "import sys; from flows.temp_server import server_database; print(server_database(sys.argv[1]), flush=True)"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    root, folder = str(tmp_path / "root"), tmp_path / "root" / "prefect"
    holder = subprocess.Popen([sys.executable, "-c", code + "; import time; time.sleep(300)", root], env=clean,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip().endswith(f"{folder}/prefect.db")
        def claim() -> str:
            return subprocess.run([sys.executable, "-c", code, root], env=clean, capture_output=True, text=True,
                                  check=True).stdout.strip()
        assert claim() == f"sqlite+aiosqlite:///{folder}/prefect-2.db"
    finally:
        holder.kill()
        holder.wait()
    assert claim() == f"sqlite+aiosqlite:///{folder}/prefect.db"


def test_temporary_prefect_server_start_timeout_is_one_line(tmp_path: Path) -> None:
    """When Prefect's temporary server does not come up in time (here: a 1 s limit against a fresh database),
    `ddflow run` prints one error line naming the limit and the ways out, no traceback, exit code 2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "home"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    repo = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(repo / "configs" / "demo.yaml"), "--root",
                          str(tmp_path / "root")], env=env, cwd=repo, capture_output=True, text=True, timeout=300)
    errors = [line for line in res.stderr.splitlines() + res.stdout.splitlines() if line.startswith("error:")]
    assert res.returncode == 2 and "Traceback" not in res.stderr + res.stdout, res.stderr[-2000:]
    assert len(errors) == 1 and "did not start within 1 s" in errors[0] and "PREFECT_API_URL" in errors[0]


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is a Linux feature")
def test_temporary_prefect_server_ends_when_its_command_is_killed(fake_fmnist: Path, tmp_path: Path) -> None:
    """`ddflow run` killed with SIGKILL (no exit handler runs) does not leave its temporary Prefect server
    behind: the kernel stops the server when the command dies."""
    import signal
    import time

    from orchestration_fixtures import prefect_servers_of

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: k\nipcs: [2]\ndata: {{source: {{kind: fashion_mnist, root: {fake_fmnist}}}}}\n"
                   "methods: {dm: {iterations: 400, width: 8, batch_real: 4}}\nrandom_baseline: false\n"
                   "evaluation: {epochs: 1, width: 8, num_eval: 1}\ntracking: {enabled: false}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    root = tmp_path / "root"
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(cfg), "--root", str(root)], env=env,
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not prefect_servers_of(root) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert prefect_servers_of(root), "the temporary server never started"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 20
        while prefect_servers_of(root) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not prefect_servers_of(root)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_version_and_no_import_warnings(tmp_path: Path) -> None:
    """`ddflow --version` prints the package version (and commit); a command prints no FutureWarning from
    torch's import-time deprecation of torch.jit.script."""
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.startswith("ddflow 0.") and res.output.endswith("\n")
    repo = Path(__file__).resolve().parents[1]  # `plan` imports geoopt, whose import calls torch.jit.script
    out = subprocess.run([sys.executable, "-m", "flows.cli", "plan", str(repo / "configs" / "demo.yaml"), "--root",
                          str(tmp_path / "root")], capture_output=True, text=True, timeout=120, cwd=repo)
    assert out.returncode == 0 and "Warning" not in out.stderr, out.stderr[-1000:]
