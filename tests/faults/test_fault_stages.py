"""In-process faults in the real pipeline (``ddflow run`` through typer's CliRunner, Prefect test harness):
an exception injected in a stage (``DDFLOW_FAULT``) fails the run naming that stage and the next run
recomputes only from there; damaged or half-written outputs are detected, never used, and rebuilt."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

pytest_plugins = ["orchestration_fixtures", "faultkit"]

from faultkit import computed, error_lines, fingerprint, invoke, stage_flags, temp_leftovers  # noqa: E402
from orchestration_fixtures import REPO  # noqa: E402,F401 - sets PREFECT_HOME before prefect is imported

from tasks.runtime.store import ArtifactStore  # noqa: E402

FAULTS = [("ingest", "before", []), ("distill", "after", ["ingest"]), ("evaluate_round", "step1", ["ingest"])]
"""(stage, point, stages that must have finished before the fault whatever the order of parallel branches)"""


@pytest.fixture(autouse=True)
def _no_fault_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DDFLOW_FAULT", "DDFLOW_FAULT_SLEEP"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("stage", "point", "finished"), FAULTS, ids=[f"{s}-{p}" for s, p, _ in FAULTS])
def test_injected_exception_names_the_stage_and_rerun_resumes(stage: str, point: str, finished: list[str],
                                                              fault_config: Path, inprocess_reference: Path,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage raising fails the run with one line naming the stage (exit 2, no traceback) and publishes no
    output for it; the next run reuses every output finished before the fault (shown as Cached, not
    recomputed), continues with the failed stage (finished evaluation rounds are tasks of their own), and ends with the
    outputs of an undisturbed run."""
    root = tmp_path / "root"
    monkeypatch.setenv("DDFLOW_FAULT", f"{stage}:{point}")
    failed = invoke("run", str(fault_config), "--root", str(root))
    assert failed.exit_code == 2, failed.output[-3000:]
    assert error_lines(failed.output) == [failed.output.strip().splitlines()[-1]]
    assert error_lines(failed.output)[0].startswith(
        f"error: stage '{stage}' failed: RuntimeError: injected fault in stage {stage} ({point})")
    assert "Traceback" not in failed.output
    published = [json.loads((p.parent / "results.json").read_text()) if stage == "evaluate_round" else {}
                 for p in root.glob(f"{stage}/*/ref.json")]
    assert temp_leftovers(root) == [] and not [r for r in published if r.get("index", 1) == 1]  # no failed output
    before = computed(root)
    if point == "step1":  # round 0 of the failing set finished as its own task and must be reused
        assert any(k.startswith("evaluate_round/") for k in before), before

    monkeypatch.delenv("DDFLOW_FAULT")
    again = invoke("run", str(fault_config), "--root", str(root))
    assert again.exit_code == 0, again.output[-3000:]
    flags = stage_flags(root)
    assert sum(flags.values()) == len(before) and all(flags[name] for name in finished)
    after = computed(root)
    assert {k: after[k] for k in before} == before
    assert fingerprint(root) == fingerprint(inprocess_reference)


def _folder(root: Path, stage: str, method: str | None = None) -> Path:
    """The output folder of ``stage`` (of ``method``'s config) under ``root``."""
    recs = [r for r in ArtifactStore(root).records() if r.ref.stage == stage
            and (method is None or r.config.get("method") == method)]
    assert len(recs) >= 1 and (method is None or len(recs) == 1), recs
    return root / stage / recs[0].ref.key


def _temp_folder(root: Path) -> str:
    """Rename the dm set's folder (ref.json and all) to a temporary sibling, as if publishing was cut short."""
    folder = _folder(root, "distill", "dm")
    folder.rename(folder.with_name(f".{folder.name}.tmp-99999-deadbeef"))
    return f"distill/{folder.name}"


def _truncated_shard(root: Path) -> str:
    folder = _folder(root, "distill", "dm")
    shard = folder / "train-000000.tar"
    shard.write_bytes(shard.read_bytes()[:-512])
    return f"distill/{folder.name}"


def _digest_mismatch(root: Path) -> str:
    folder = _folder(root, "ingest")
    meta_file = folder / "dataset.json"
    meta = json.loads(meta_file.read_text())
    meta["digest"] = "0" * 64
    meta_file.write_text(json.dumps(meta))
    return f"ingest/{folder.name}"


def _altered_result(root: Path) -> str:
    """Change one digit of an evaluation's results.json (same size: only re-hashing can tell)."""
    folder = _folder(root, "evaluate")
    path = folder / "results.json"
    text = path.read_text()
    assert '"ipc": 2' in text
    path.write_text(text.replace('"ipc": 2', '"ipc": 3', 1))
    return f"evaluate/{folder.name}"


DAMAGE: dict[str, Callable[[Path], str]] = {"temp-folder": _temp_folder, "truncated-shard": _truncated_shard,
                                            "digest-mismatch": _digest_mismatch, "altered-result": _altered_result}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_output_is_detected_and_rebuilt(damage: str, fault_config: Path, inprocess_reference: Path,
                                                tmp_path: Path) -> None:
    """A finished root with one damaged output (complete-looking temporary folder, truncated shard, manifest
    digest mismatch, or a same-size edit): the next run rebuilds exactly that output (a report follows an
    evaluation, whose folder records wall times), never adopts or reads the damaged copy, and ends with
    the outputs of an undisturbed run."""
    root = tmp_path / "root"
    shutil.copytree(inprocess_reference, root, ignore=shutil.ignore_patterns("_prefect"))
    before = computed(root)
    target = DAMAGE[damage](root)
    again = invoke("run", str(fault_config), "--root", str(root))
    assert again.exit_code == 0, again.output[-3000:]
    after = computed(root)
    rebuilt = {k for k in after if before.get(k) != after[k] and not k.startswith("report/")}
    assert rebuilt == {target}
    assert temp_leftovers(root) == []
    assert fingerprint(root) == fingerprint(inprocess_reference)


def test_forked_workers_exit_cleanly_after_a_flow(inprocess_reference: Path) -> None:
    """Once a flow has run in this process (Prefect's background services started), forked children such as
    DataLoader workers inside a stage still exit with code 0 and stream every sample."""
    import multiprocessing

    from ddcore.data import open_artifact, stream

    child = multiprocessing.get_context("fork").Process(target=int)
    child.start()
    child.join(30)
    assert child.exitcode == 0
    art = open_artifact(next((inprocess_reference / "ingest").glob("*/dataset.json")).parent)
    keys = [k for _, _, ks in stream(art, "train", batch_size=16, num_workers=2) for k in ks]
    assert sorted(keys) == sorted(art.keys[i] for i in art.rows("train"))
