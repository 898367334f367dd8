"""How to trigger each row of docs/errors.md (used by tests/test_error_catalogue.py; no assertions here).

``CASES[row id](tmp, fmnist)`` returns a :class:`Case`: CLI arguments for ``ddflow`` (run in-process), or an
API call for the few errors no CLI command reaches yet, plus the environment and preparation it needs. The
builders live in tests/error_case_support.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from conftest import class_images
from error_case_inputs import INPUT_CASES  # rows for hostile inputs (issue 14), merged at the end
from error_case_support import (  # noqa: F401 - run_config is re-exported for the catalogue test
    Case,
    _artifact,
    _artifact_source,
    _bomb,
    _broken_denoiser,
    _cifar,
    _corrupt_checkpoint_first,
    _damaged,
    _fake_ray,
    _flip_byte,
    _folder,
    _gz_truncated,
    _hf_folder,
    _idx_incomplete,
    _load_teacher,
    _lock_timeout,
    _no_datasets,
    _no_prefect_api,
    _no_space,
    _npz,
    _npz_run,
    _pt,
    _ray_unreachable,
    _run,
    _set_meta,
    _shards,
    _vae_folder,
    _yaml,
    run_config,
)

from flows.temp_server import free_port

FM = "{kind: fashion_mnist}"
CaseFn = Callable[[Path, Path], Case]
CASES: dict[str, CaseFn] = {
    # config
    "config-missing": lambda t, f: Case(args=["run", str(t / "nope.yaml")]),
    "config-yaml": lambda t, f: Case(args=["run", _yaml(t, "name: x\nipcs: [1, 2\n")]),
    "config-not-mapping": lambda t, f: Case(args=["run", _yaml(t, "- a\n- b\n")]),
    "config-unknown-key": lambda t, f: Case(args=["run", _yaml(t, f"data: {{source: {FM}, shards: 3}}")]),
    "config-missing-key": lambda t, f: Case(args=["run", _yaml(t, "name: x\n")]),
    "config-bad-value": lambda t, f: Case(args=["run", _yaml(t, f"data: {{source: {FM}, shard_size: 0}}")]),
    "config-override": lambda t, f: Case(args=["run", run_config(t, f), "--set", "ipcs"]),
    "config-override-section": lambda t, f: Case(args=["run", run_config(t, f), "--set", "name.x=1"]),
    "config-method": lambda t, f: Case(args=["run", run_config(t, f, "methods: {dmm: {}}")]),
    "config-ipcs-empty": lambda t, f: Case(args=["run", run_config(t, f), "--set", "ipcs=[]"]),
    "config-not-finite": lambda t, f: Case(args=["run", run_config(t, f), "--set", "evaluation.weight_decay=.inf"]),
    "config-iterations": lambda t, f: Case(args=["run", run_config(t, f, "methods: {dm: {iterations: 0}}")]),
    "config-class-groups": lambda t, f: _run(t, f, "methods: {dm: {iterations: 1, width: 8}}\nclass_groups: 11"),
    "config-network": lambda t, f: Case(args=["run", run_config(t, f, "methods: {dm: {network: resnet99}}")]),
    "config-ipc": lambda t, f: Case(args=["run", run_config(t, f), "--set", "ipcs=[0]"]),
    "config-prune": lambda t, f: Case(args=["run", run_config(t, f, "methods: {random: {}}\nprune: {methods: [dm]}")]),
    "config-ncfm-factor": lambda t, f: Case(args=["run", run_config(
        t, f, "methods: {ncfm: {init: real, ncfm: {factor: 2}}}")]),
    "config-ncfm-calibration": lambda t, f: Case(args=["run", run_config(
        t, f, "methods: {ncfm: {ncfm: {calibration_weight: 1}}}")]),
    "config-batch-norm": lambda t, f: Case(args=["run", run_config(t, f, "methods: {dm: {network: convnet-bn}}")]),
    "config-prune-origin": lambda t, f: Case(args=["run", run_config(
        t, f, "methods: {dm: {}}\nprune: {methods: [dm], reference: origin}")]),
    "config-run-name": lambda t, f: Case(args=["run", run_config(t, f), "--set", "name=../x"]),
    "config-force": lambda t, f: Case(args=["run", run_config(t, f), "--root", str(t / "root"), "--force", "distil"],
                                      flow=True),
    "plan-format": lambda t, f: Case(args=["plan", run_config(t, f), "--root", str(t / "root"), "--format", "dot"]),
    "export-format": lambda t, f: Case(args=["export", str(_artifact(t)), "--format", "tiff", "--out", str(t / "o")]),
    "config-artifact-subset": lambda t, f: Case(args=["run", run_config(
        t, f, source=f"{{kind: artifact, path: '{t / 'a'}'}}"), "--set", "data.max_per_class=2"]),
    # data
    "data-source-missing": lambda t, f: Case(args=["ingest", str(t / "nope"), "--out", str(t / "out")]),
    "data-source-unknown": lambda t, f: (t / "x.bin").write_bytes(b"?") and Case(
        args=["ingest", str(t / "x.bin"), "--out", str(t / "out")]),
    "data-resize": lambda t, f: Case(args=["ingest", _folder(t, {"a": [(8, 8)]}), "--out", str(t / "o"), "--resize",
                                           "big"]),
    "data-idx-missing": lambda t, f: _idx_incomplete(t),
    "data-idx-truncated": _gz_truncated,
    "data-wrong-shape": lambda t, f: Case(args=["ingest", _folder(t, {"a": [(8, 8)], "b": [(8, 8), (9, 8)]}),
                                                "--out", str(t / "out")]),
    "data-empty-class": lambda t, f: Case(args=["ingest", _folder(t, {"a": [(8, 8)], "b": []}), "--out",
                                                str(t / "out")]),
    "data-no-classes": lambda t, f: (t / "empty").mkdir() or Case(args=["ingest", str(t / "empty"), "--out",
                                                                        str(t / "out")]),
    "data-label-range": lambda t, f: _npz_run(t, f, "[a, b]"),
    "data-class-empty": lambda t, f: _npz_run(t, f, "[a, b, c, d]"),
    "data-corrupt-tar": lambda t, f: (p := _shards(t)).write_bytes(p.read_bytes()[:3000]) and Case(
        args=["ingest", str(p), "--out", str(t / "out")]),
    "data-pipe-url": lambda t, f: Case(args=["ingest", f"pipe:cat {_shards(t)}", "--out", str(t / "out")]),
    "data-pickle-member": lambda t, f: Case(args=["ingest", str(_shards(t, pyd=b"\x80\x04K\x01.")), "--out",
                                                  str(t / "out")]),
    "data-npz-pickle": lambda t, f: Case(args=["ingest", _npz(t, x=np.array([object()], dtype=object)), "--out",
                                               str(t / "out")]),
    "data-npz-not-zip": lambda t, f: (t / "d.npz").write_bytes(b"not a zip") and Case(
        args=["ingest", str(t / "d.npz"), "--out", str(t / "out")]),
    "data-npz-float-labels": lambda t, f: Case(args=["ingest", _npz(t, y=np.array([0, 1.5, 2] * 3)), "--out",
                                                     str(t / "out")]),
    "data-npz-label-huge": lambda t, f: Case(args=["ingest", _npz(t, y=np.array([0, 1, 2**31] * 3)), "--out",
                                                   str(t / "out")]),
    "data-npz-test-length": lambda t, f: Case(args=["ingest", _npz(t, x_test=class_images(3, 3, shape=(8, 8),
                                                                                          seed=1)[0],
                                                                   y_test=np.arange(3)), "--out", str(t / "out")]),
    "data-npz-keys": lambda t, f: Case(args=["ingest", _npz(t, y=None), "--out", str(t / "out")]),
    "data-cifar-code": lambda t, f: Case(args=["ingest", _cifar(t), "--out", str(t / "out")]),
    "data-bomb": lambda t, f: _bomb(t),
    "data-no-space": _no_space,
    "data-exists": lambda t, f: Case(args=["ingest", _npz(t), "--out", str(_artifact(t))]),
    "data-out-not-artifact": lambda t, f: (t / "notes").mkdir() or (t / "notes" / "a.txt").write_text("x") and Case(
        args=["ingest", _npz(t), "--out", str(t / "notes")]),
    "data-out-holds-source": lambda t, f: Case(args=["ingest", _folder(t, {"a": [(8, 8)], "b": [(8, 8)]}), "--out",
                                                     str(t), "--overwrite"]),
    "data-ipc-too-large": lambda t, f: _run(t, f, "methods: {dm: {iterations: 1, width: 8}}\nipcs: [20]"),
    "data-pt-unreadable": lambda t, f: Case(args=["ingest", _pt(t, b"not a torch file"), "--out", str(t / "o")]),
    "data-pt-keys": lambda t, f: Case(args=["ingest", _pt(t, np.zeros((2, 1, 4, 4), np.float32)), "--out",
                                            str(t / "o")]),
    "data-pt-entry": lambda t, f: Case(args=["ingest", _pt(t, {"images": np.zeros((2, 1, 4, 4), np.float32),
                                                               "labels": np.array([0, 1, 1])}), "--out", str(t / "o")]),
    "data-pt-range": lambda t, f: Case(args=["ingest", _pt(t, {"images": np.full((2, 1, 4, 4), -1.5, np.float32),
                                                               "labels": np.array([0, 1])}), "--out", str(t / "o")]),
    "data-hf-folder": lambda t, f: Case(args=["ingest", _hf_folder(t, state=False), "--out", str(t / "o")]),
    "data-hf-columns": lambda t, f: Case(args=["ingest", _hf_folder(t, image_column="img"), "--out", str(t / "o")]),
    # artifacts
    "artifact-missing": lambda t, f: Case(args=["info", str(t / "nope")]),
    "artifact-incomplete": lambda t, f: _damaged(t, lambda a: (a / "dataset.json").unlink()),
    "artifact-corrupt": lambda t, f: _damaged(t, lambda a: (a / "dataset.json").write_text("{oops")),
    "artifact-digest": lambda t, f: _damaged(t, lambda a: _set_meta(a, digest="0" * 64)),
    "artifact-truncated": lambda t, f: _damaged(t, lambda a: (a / "train-000000.tar").write_bytes(
        (a / "train-000000.tar").read_bytes()[:-512])),
    "artifact-missing-shard": lambda t, f: _damaged(t, lambda a: (a / "train-000000.tar").unlink()),
    "artifact-sha": lambda t, f: _damaged(t, _flip_byte, "--verify", "full"),
    "artifact-verify-level": lambda t, f: Case(args=["info", str(_artifact(t)), "--verify", "paranoid"]),
    "artifact-split": lambda t, f: Case(args=["show", str(_artifact(t)), "--split", "val", "--out",
                                              str(t / "g.png")]),
    "artifact-checkpoint": _corrupt_checkpoint_first,
    "root-not-writable": lambda t, f: Case(args=["run", run_config(t, f), "--root", "/proc/ddflow-root"]),
    "lineage-unknown": lambda t, f: Case(args=["lineage", "abcdef12", "--root", str(t / "root")]),
    "lineage-folder": lambda t, f: Case(args=["lineage", str(_artifact(t)), "--root", str(t / "root")]),
    "export-exists": lambda t, f: (t / "full").mkdir() or (t / "full" / "x").write_text("x") and Case(
        args=["export", str(_artifact(t)), "--format", "png", "--out", str(t / "full")]),
    "export-overlaps": lambda t, f: Case(args=["export", str(_artifact(t)), "--format", "png", "--out", str(t),
                                               "--overwrite"]),
    "export-out-url": lambda t, f: Case(args=["export", str(_artifact(t)), "--format", "pt", "--out", "s3://b/x"]),
    "data-out-url": lambda t, f: Case(args=["ingest", _npz(t), "--out", "foo://x"]),
    "export-hf-missing": lambda t, f: Case(args=["export", str(_artifact(t)), "--format", "hf", "--out", str(t / "o")],
                                           context=_no_datasets),
    "artifact-source-missing": lambda t, f: _artifact_source(t, f, t / "nope"),
    "artifact-source-not-dataset": lambda t, f: _artifact_source(t, f, _npz(t)),
    "artifact-source-damaged": lambda t, f: _artifact_source(t, f, _artifact(t), damage=lambda a: (
        a / "train-000000.tar").write_bytes((a / "train-000000.tar").read_bytes()[:-512])),
    "artifact-source-digest": lambda t, f: _artifact_source(t, f, _artifact(t), sha256="0" * 64),
    # weights
    "weights-missing": lambda t, f: _run(t, f, f"methods: {{ddoq: {{}}}}\nvae: {{source: pretrained, "
                                               f"pretrained_path: {t / 'no-vae'}}}"),
    "weights-corrupt": lambda t, f: _run(t, f, "methods: {ddoq: {}}\nvae: {source: pretrained, pretrained_path: "
                                               f"{_vae_folder(t, 'AutoencoderKL', b'garbage')}}}"),
    "weights-wrong-model": lambda t, f: _run(t, f, "methods: {ddoq: {}}\nvae: {source: pretrained, pretrained_path: "
                                                   f"{_vae_folder(t, 'UNet2DModel', b'garbage')}}}"),
    # runner
    "runner-serve": lambda t, f: Case(args=["serve", run_config(t, f), "--interval", "60"], context=_no_prefect_api),
    "runner-ray-api": lambda t, f: Case(args=["run", run_config(t, f, "methods: {random: {}}\nrunner: {kind: ray}")],
                                        env={"PREFECT_API_URL": ""}),
    "weights-denoiser": lambda t, f: Case(call=lambda: _broken_denoiser(t)),
    "weights-teacher-missing": lambda t, f: Case(call=lambda: _load_teacher(t / "no-teacher")),
    "runner-ray-gpus": lambda t, f: Case(call=lambda: _fake_ray(cpus=2.0, gpus=0.0)),
    "runner-ray-unreachable": lambda t, f: Case(call=_ray_unreachable),
    "runner-lock-timeout": lambda t, f: Case(call=lambda: _lock_timeout(t)),
    # distillation and stages
    "distill-nan": lambda t, f: _run(t, f, "methods: {dm: {iterations: 30, width: 8, lr_img: 1.0e+38, "
                                           "checkpoint_every: 1}}"),
    "stage-fault": lambda t, f: _run(t, f, "methods: {random: {width: 8}}", env={"DDFLOW_FAULT": "ingest"}),
    # tracking
    "tracking-unreachable": lambda t, f: _run(t, f, f"methods: {{random: {{width: 8}}}}\ntracking: {{enabled: true, "
                                                    f"uri: 'http://127.0.0.1:{free_port()}'}}", warning=True),
}
CASES.update(INPUT_CASES)  # show/info/lineage/evaluate arguments, config files, shards, CIFAR, 16-bit
