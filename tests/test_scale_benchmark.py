"""benchmarks/scale.py's bookkeeping: the point configs, the per-stage rows and the growth-exponent fit.

The benchmark's runs themselves take an hour (docs/scale.md); here the parts that turn them into figures are
checked on made-up records.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.scale import MICRO, fit_exponents, merge, parse_point, point_config, stage_rows
from flows.config import RunConfig


def test_parse_point_reads_classes_images_and_size_and_refuses_other_text() -> None:
    assert parse_point("1000x50@64") == (1000, 50, 64)
    with pytest.raises(SystemExit, match="CLASSESxIMAGES@SIZE"):
        parse_point("1000x50")


def test_merge_overrides_nested_keys_and_leaves_its_inputs_alone() -> None:
    base = {"a": {"b": 1, "c": 2}, "d": 3}
    out = merge(base, {"a": {"c": 5}, "e": 6})
    assert out == {"a": {"b": 1, "c": 5}, "d": 3, "e": 6}
    assert base == {"a": {"b": 1, "c": 2}, "d": 3}


def test_point_config_is_the_shipped_imagenet_shape_with_only_budgets_and_inputs_changed(tmp_path: Path) -> None:
    """The config of a point validates, keeps the shipped methods, networks, class groups and soft-label rows,
    reads the shards in place and streams the validation split."""
    for split, n in (("train", 3), ("val", 1)):
        for i in range(n):
            (tmp_path / f"imagenet1k-{split}-{i:06d}.tar").write_bytes(b"")
    data = point_config(name="scale-test", shards=tmp_path, vae=str(tmp_path / "vae"),
                        teacher=str(tmp_path / "t.pth"))
    cfg = RunConfig.from_mapping(data, where="scale")
    assert set(cfg.methods) == {"ncfm", "ddoq", "d4m", "random"}
    assert cfg.class_groups == 8 and cfg.evaluation.network == MICRO["evaluation"]["network"]
    assert cfg.soft_labels is not None and cfg.soft_labels.teacher.pretrained is not None
    assert cfg.data.source.layout == "in_place"
    assert cfg.data.source.urls["train"].endswith("imagenet1k-train-{000000..000002}.tar")
    assert cfg.evaluation.test_memory_mb == MICRO["evaluation"]["test_memory_mb"]
    assert cfg.vae.source == "pretrained" and cfg.ipcs == MICRO["ipcs"]


def _record(root: Path, stage: str, key: str, seconds: float, peak: float, files: dict[str, int],
            where: Path | None = None, method: str | None = None) -> None:
    out = root / stage / key
    rec = {"ref": {"uri": str(out), "stage": stage}, "duration_s": seconds, "peak_rss_mb": peak, "files": files,
           "config": {"method": method} if method else {}}
    folder = where or out
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ref.json").write_text(json.dumps(rec))


def test_stage_rows_sum_time_and_bytes_over_nodes_keep_the_largest_peak_and_skip_copies(tmp_path: Path) -> None:
    """Per stage (distill per method): seconds and bytes summed over its nodes, the largest peak; MLflow's copies of
    a ref.json are no stage outputs."""
    _record(tmp_path, "distill", "aaaa", 2.0, 900.0, {"x": 10, "y": 5}, method="ncfm")
    _record(tmp_path, "distill", "bbbb", 3.0, 1200.0, {"x": 7}, method="ncfm")
    _record(tmp_path, "distill", "dddd", 1.0, 300.0, {"x": 1}, method="ddoq")
    _record(tmp_path, "ingest", "cccc", 0.5, 400.0, {"m": 100})
    # MLflow keeps a copy of a ref.json among a run's artifacts: it is no stage output of its own
    _record(tmp_path, "distill", "aaaa", 2.0, 900.0, {"x": 10}, where=tmp_path / "mlartifacts" / "1" / "r",
            method="ncfm")
    rows = stage_rows(tmp_path)
    assert rows["distill:ncfm"] == {"seconds": 5.0, "peak_rss_mb": 1200.0, "bytes": 22, "nodes": 2}
    assert rows["distill:ddoq"] == {"seconds": 1.0, "peak_rss_mb": 300.0, "bytes": 1, "nodes": 1}
    assert rows["ingest"] == {"seconds": 0.5, "peak_rss_mb": 400.0, "bytes": 100, "nodes": 1}
    assert set(rows) == {"distill:ncfm", "distill:ddoq", "ingest"}


@pytest.mark.parametrize(("b", "c"), [(1.0, 1.0), (0.3, 1.4), (0.0, 0.5)])
def test_fit_exponents_recovers_the_powers_of_a_power_law(b: float, c: float) -> None:
    """Times made as ``t = 0.01 * M^b * C^c`` give back ``images`` = b and ``classes`` = c, and the two-point
    slopes equal them too; the 128-px point's time per pixel gives ``pixels``."""
    rows = [{"classes": cl, "images_per_class": m, "size": 64, "stage": "s", "seconds": 0.01 * m ** b * cl ** c}
            for cl in (10, 100, 1000) for m in (10, 50)]
    rows.append({"classes": 100, "images_per_class": 50, "size": 128, "stage": "s",
                 "seconds": 0.01 * 50 ** b * 100 ** c * 4 ** 0.9})
    e = fit_exponents(rows)["s"]
    assert e["images"] == pytest.approx(b, abs=1e-3) and e["classes"] == pytest.approx(c, abs=1e-3)
    assert e["images_tail"] == pytest.approx(b, abs=1e-3) and e["classes_tail"] == pytest.approx(c, abs=1e-3)
    assert e["pixels"] == pytest.approx(0.9, abs=1e-3)
    assert e["max_seconds"] == pytest.approx(max(r["seconds"] for r in rows))


def test_fit_exponents_gives_none_where_the_points_cannot_separate_the_two_axes() -> None:
    rows = [{"classes": cl, "images_per_class": 10, "size": 64, "stage": "s", "seconds": math.sqrt(cl)}
            for cl in (10, 100, 1000)]
    e = fit_exponents(rows)["s"]
    assert e["images"] is None and e["classes"] is None and e["images_tail"] is None


def test_benchmark_json_is_written_whole_and_as_json_dumps_writes_it(tmp_path: Path) -> None:
    """benchmarks.write_json creates the folder, writes exactly json.dumps's text (with the asked indent and
    trailing newline) and leaves no temporary file beside the result."""
    from benchmarks import write_json

    doc = {"rows": [{"acc": 0.5, "name": "dm"}], "machine": "x86_64, 2 cores"}
    out = write_json(tmp_path / "a" / "r.json", doc, indent=1, newline=True)
    assert out.read_text() == json.dumps(doc, indent=1) + "\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.json"]
    write_json(out, {"rows": []})
    assert json.loads(out.read_text()) == {"rows": []} and not out.read_text().endswith("\n")


def test_run_timed_gives_the_exit_code_and_keeps_the_output_in_its_log(tmp_path: Path) -> None:
    """benchmarks.run_timed runs in the repository, writes stdout and stderr to the log and returns the exit
    code, a non-negative wall time and the load averages around the run."""
    import os
    import sys

    from benchmarks import REPO, run_timed

    code = "import os, sys; print(os.getcwd()); print('err', file=sys.stderr); sys.exit(3)"
    timed = run_timed([sys.executable, "-c", code], tmp_path / "run.log", dict(os.environ))
    assert timed.returncode == 3 and timed.wall_s >= 0 and timed.load_start >= 0 and timed.load_end >= 0
    assert (tmp_path / "run.log").read_text().split() == [str(REPO), "err"]
