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
    uses <root>/prefect/prefect.db, not the PREFECT_HOME database other Prefect processes share."""
    code = ("import os, sys; from flows.cli import _prefect_env; _prefect_env(sys.argv[1]); "
            "print(os.environ.get('PREFECT_SERVER_DATABASE_CONNECTION_URL', '-'))")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "root")], env={**clean, **env},
                         capture_output=True, text=True, check=True).stdout.strip()
    if not env:
        assert out == f"sqlite+aiosqlite:///{tmp_path}/root/prefect/prefect.db" and (tmp_path / "root/prefect").is_dir()
    else:
        assert out == env.get("PREFECT_SERVER_DATABASE_CONNECTION_URL", "-")
