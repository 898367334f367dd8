"""The toy 3-stage Prefect flow: cross-run caching, resume after a failure, rebuilds, force, memory://."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

pytest_plugins = ["orchestration_fixtures"]

from orchestration_fixtures import FAIL_ENV, TOY_STAGES, executions, toy_flow  # noqa: E402

pytestmark = pytest.mark.usefixtures("prefect_harness")


def counts(folder: Path) -> list[int]:
    return [executions(folder, s) for s in TOY_STAGES]


def test_second_run_is_all_cached(tmp_path: Path, toy_env: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Re-running the same flow executes no stage: every task ends Cached (state and log line)."""
    first = toy_flow(root=str(tmp_path), value=3)
    assert first["outcomes"] == dict.fromkeys(TOY_STAGES, "completed") and counts(toy_env) == [1, 1, 1]
    with caplog.at_level(logging.INFO, logger="prefect.task_runs"):
        second = toy_flow(root=str(tmp_path), value=3)
    assert second["outcomes"] == dict.fromkeys(TOY_STAGES, "cached") and counts(toy_env) == [1, 1, 1]
    assert second["refs"] == first["refs"]
    cached_lines = [r.getMessage() for r in caplog.records if "Cached(type=COMPLETED)" in r.getMessage()]
    assert len(cached_lines) == 3
    assert (tmp_path / "_prefect" / "results").is_dir()


def test_failure_in_stage_two_then_resume(tmp_path: Path, toy_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception in stage 2 fails the flow with a message naming stage 2; the next run reuses stage 1
    (Cached) and executes only stages 2 and 3."""
    monkeypatch.setenv(FAIL_ENV, "double")
    state = toy_flow(root=str(tmp_path), value=4, return_state=True)
    assert state.is_failed() and "stage 'double' failed" in state.message
    assert "injected failure in double" in state.message and counts(toy_env) == [1, 1, 0]
    monkeypatch.delenv(FAIL_ENV)
    result = toy_flow(root=str(tmp_path), value=4)
    assert result["outcomes"] == {"make": "cached", "double": "completed", "total": "completed"}
    assert counts(toy_env) == [1, 2, 1]


def test_half_written_stage_folder_is_rebuilt(tmp_path: Path, toy_env: Path) -> None:
    """A stage output damaged after a successful run is not trusted even though Prefect cached its result:
    it is rebuilt, and the stage after it stays Cached because the rebuilt content is identical."""
    first = toy_flow(root=str(tmp_path), value=3)
    folder = Path(first["refs"]["double"]["uri"])
    (folder / "numbers.json").write_text("[0, 2")
    again = toy_flow(root=str(tmp_path), value=3)
    assert again["outcomes"] == {"make": "cached", "double": "completed", "total": "cached"}
    assert counts(toy_env) == [1, 2, 1] and (folder / "numbers.json").read_text() == "[0, 2, 4]"
    (folder / "ref.json").unlink()
    assert toy_flow(root=str(tmp_path), value=3)["outcomes"]["double"] == "completed"


def test_force_recomputes_stage_and_downstream(tmp_path: Path, toy_env: Path) -> None:
    """force=['make'] recomputes make and everything downstream of it; force of an unknown stage is refused."""
    toy_flow(root=str(tmp_path), value=2)
    result = toy_flow(root=str(tmp_path), value=2, force=["make"])
    assert result["outcomes"] == dict.fromkeys(TOY_STAGES, "completed") and counts(toy_env) == [2, 2, 2]
    result = toy_flow(root=str(tmp_path), value=2, force=["total"])
    assert result["outcomes"] == {"make": "cached", "double": "cached", "total": "completed"}
    state = toy_flow(root=str(tmp_path), value=2, force=["nope"], return_state=True)
    assert state.is_failed() and "unknown stage 'nope'" in state.message


def test_memory_store_flow(toy_env: Path) -> None:
    """A memory:// store runs the same flow; the second run is all cached."""
    import fsspec

    root = "memory://ddflow-flow-test"
    try:
        assert toy_flow(root=root, value=2)["outcomes"] == dict.fromkeys(TOY_STAGES, "completed")
        assert toy_flow(root=root, value=2)["outcomes"] == dict.fromkeys(TOY_STAGES, "cached")
        assert counts(toy_env) == [1, 1, 1]
    finally:
        fsspec.filesystem("memory").rm("/ddflow-flow-test", recursive=True)
