"""The method registry (ddcore/methods.py): built-ins, typed method configs validated once, and a toy method
added with one module-level function and one register line, run through the config, the plan and the stage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
import torch

from ddcore.config import StageConfig
from ddcore.data import open_artifact
from ddcore.data.ingestion import IngestConfig, ingest
from ddcore.data.synthetic_io import load_synthetic
from ddcore.distill.config import BaselineConfig, DistillConfig
from ddcore.errors import ConfigError
from ddcore.latent.ddoq import DDOQConfig
from ddcore.methods import Method, MethodInputs, get_method, method_names, method_of, register, unregister
from ddcore.synthetic import SyntheticSet
from flows.config import RunConfig
from flows.plan import build_plan
from tasks.distill import distill_stage
from tasks.runtime.refs import ArtifactRef
from tasks.runtime.stage import StageContext


class FirstKConfig(StageConfig):
    """Toy method: the first ``ipc`` real images of each class."""

    method: Literal["firstk"] = "firstk"
    ipc: int = 1
    seed: int = 0


def first_k(inputs: MethodInputs, cfg: FirstKConfig) -> SyntheticSet:
    s = inputs.sampler
    xs = [s.get(c, torch.arange(min(cfg.ipc, s.class_size(c)))) for c in range(s.num_classes)]
    labels = torch.cat([torch.full((len(x),), c) for c, x in enumerate(xs)])
    return SyntheticSet(images=torch.cat(xs), labels=labels, mean=s.mean, std=s.std, num_classes=s.num_classes,
                        method="firstk", config=cfg.model_dump(mode="json"), seeds={"none": cfg.seed})


@pytest.fixture
def toy() -> Iterator[Method]:
    yield register(Method("firstk", FirstKConfig, first_k, fields={"method": "firstk"}))
    unregister("firstk")


def _run(methods: dict, **extra: object) -> RunConfig:
    return RunConfig.from_mapping({"data": {"source": {"kind": "fashion_mnist", "root": "/x"}}, "ipcs": [1, 3],
                                   "methods": methods, **extra})


def test_every_builtin_method_is_registered_with_its_config_type() -> None:
    """The seven built-in names map to their typed configs; dm/hdd/ncfm fan out per class group; only the latent
    methods need the VAE and latents."""
    types = {n: get_method(n).config_type for n in method_names()}
    assert types == {"dm": DistillConfig, "hdd": DistillConfig, "ncfm": DistillConfig, "random": BaselineConfig,
                     "herding": BaselineConfig, "ddoq": DDOQConfig, "d4m": DDOQConfig}
    assert {n for n in method_names() if get_method(n).class_groups} == {"dm", "hdd", "ncfm"}
    assert {n for n in method_names() if get_method(n).needs} == {"ddoq", "d4m"}


def test_method_entries_become_typed_configs_keyed_by_name() -> None:
    """``methods: {hdd: {...}, d4m: {...}}`` gives a DistillConfig with method hdd and a DDOQConfig with variant
    d4m at each IPC, with the top-level seed unless the entry sets one; the config a stage gets names its method."""
    cfg = _run({"hdd": {"iterations": 3}, "d4m": {"seed": 7}}, seed=4)
    hdd, d4m = cfg.method_config("hdd", 3), cfg.method_config("d4m", 1)
    assert isinstance(hdd, DistillConfig) and (hdd.method, hdd.ipc, hdd.iterations, hdd.seed) == ("hdd", 3, 3, 4)
    assert isinstance(d4m, DDOQConfig) and (d4m.variant, d4m.seed) == ("d4m", 7)
    assert method_of(hdd).name == "hdd" and method_of(d4m).name == "d4m"
    assert cfg.method_config("hdd", 3) is hdd  # validated once


def test_unknown_names_and_name_clashes_are_one_line_errors() -> None:
    """An unregistered method, a bad field of a registered one, and a field that contradicts the key each fail
    with one ConfigError line naming the key."""
    for methods, pattern in (({"dmm": {}}, "unknown method 'dmm'; choose from dm, hdd, ncfm"),
                             ({"dm": {"init": "bogus"}}, "methods.dm: bad value for 'init'"),
                             ({"dm": {"method": "hdd"}}, "'method' is fixed by the method name")):
        with pytest.raises(ConfigError, match=pattern) as info:
            _run(methods)
        assert "\n" not in str(info.value)


def test_a_toy_method_runs_through_config_plan_and_stage(toy: Method, fake_fmnist: Path, tmp_path: Path) -> None:
    """A method added by one register line validates in a RunConfig, gets distill/evaluate nodes and report rows
    in the plan like any built-in, and the distill stage runs its entry point into a loadable set."""
    cfg = _run({"firstk": {}, "random": {}}, evaluation={"num_eval": 1})
    plan = build_plan(cfg, num_classes=10)
    assert {"distill/firstk/ipc1", "distill/firstk/ipc3", "evaluate/firstk/ipc3/round0"} <= set(plan.ids)
    assert ("firstk", 3) in {(r.label, r.ipc) for r in plan.rows}
    node = plan.node("distill/firstk/ipc3")
    assert node.stage == "distill" and node.inputs == {"dataset": "ingest"}
    ingest(IngestConfig.from_mapping({"source": {"kind": "fashion_mnist", "root": str(fake_fmnist)}}), tmp_path / "d")
    art = open_artifact(tmp_path / "d")
    data = ArtifactRef(uri=art.uri, sha256=art.digest, stage="ingest", key="0" * 20, kind="dataset")
    ctx = StageContext(stage="distill", key="1" * 20, checkpoint_dir=str(tmp_path / "ck"), device="cpu", seed=0)
    metrics = distill_stage({"dataset": data}, node.config, str(tmp_path / "out"), ctx)
    sset = load_synthetic(tmp_path / "out")
    assert metrics["n_images"] == 30 and sset.method == "firstk"
    assert torch.equal(torch.bincount(sset.labels), torch.full((10,), 3))
