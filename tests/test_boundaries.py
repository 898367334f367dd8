"""Layer boundaries (docs/design.md): ddcore is a pure library; the runtime, the stage modules and the plan load
without Prefect or MLflow; only the executors and adapters pull them in."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_DDCORE = ("prefect", "mlflow", "tasks", "flows", "benchmarks")


def _modules(package: str) -> list[str]:
    root = REPO / package
    return sorted(".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                  for p in root.rglob("*.py"))


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _loaded_after_import(modules: list[str]) -> set[str]:
    """Top-level packages in sys.modules after importing ``modules`` in a fresh interpreter."""
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted({k.split('.')[0] for k in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_ddcore_source_never_imports_orchestration_packages() -> None:
    """No module under ddcore/ has an import (at any depth, even inside a function) of prefect, mlflow, tasks,
    flows or benchmarks."""
    offenders = {str(p.relative_to(REPO)): sorted(_imported_top_levels(p) & set(FORBIDDEN_IN_DDCORE))
                 for p in (REPO / "ddcore").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_ddcore_runtime_stages_and_plan_load_without_prefect_or_mlflow() -> None:
    """Importing every ddcore module, every runtime module except the Prefect adapter, every stage module and the
    plan (its builder and its store view) leaves prefect and mlflow unloaded."""
    modules = [*_modules("ddcore"), *[m for m in _modules("tasks") if m != "tasks.runtime.prefect_task"],
               "flows.plan", "flows.plan_view", "flows.config", "flows.config_docs", "flows.config_schema"]
    loaded = _loaded_after_import(modules)
    assert not loaded & {"prefect", "mlflow"}


def test_direct_benchmark_path_is_prefect_free() -> None:
    """benchmarks/direct_pipeline.py (the executor without orchestration) imports neither prefect nor mlflow."""
    assert not _loaded_after_import(["benchmarks.direct_pipeline"]) & {"prefect", "mlflow"}
