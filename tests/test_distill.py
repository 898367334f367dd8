"""Distillation loops: losses go down, resume is exact, bad input fails clearly, baselines and pruning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import band_sampler

from ddcore.config import StageConfig
from ddcore.distill.baselines import herding_order, select_baseline
from ddcore.distill.config import BaselineConfig, DistillConfig
from ddcore.distill.loop import distill
from ddcore.distill.matching import MatchingStep
from ddcore.distill.ncfm import NCFMStep
from ddcore.errors import ConfigError, DataError, DistillationError
from ddcore.prune.core import PruneConfig, prune_real, prune_synthetic
from ddcore.sampling import TensorSampler
from ddcore.seeding import IterationRng


@pytest.fixture
def sampler() -> TensorSampler:
    """Three classes of 20 structured 1x28x28 images (class = bright band position)."""
    return band_sampler(20, seed=0)


def tiny(method: str, **kw) -> DistillConfig:
    base = dict(method=method, ipc=2, iterations=4, width=16, batch_real=10, checkpoint_every=2, log_every=1)
    if method == "ncfm":
        base.update(lr_img=0.01, init="mix", ncfm={"num_freqs": 64})
    base.update(kw)
    return DistillConfig.model_validate(base)


def probe_loss(sampler: TensorSampler, cfg: DistillConfig, syn: torch.Tensor, draws: int = 6) -> float:
    """Mean loss of ``syn`` over fixed random nets/batches, without changing it (lr = 0)."""
    step = NCFMStep(sampler, cfg, torch.device("cpu")) if cfg.method == "ncfm" else MatchingStep(
        sampler, cfg, torch.device("cpu"))
    x = syn.clone().requires_grad_(True)
    opt = torch.optim.SGD([x], lr=0.0)
    labels = torch.arange(3).repeat_interleave(cfg.ipc)
    return sum(step(x, labels, opt, IterationRng(12345, i))["loss"] for i in range(draws)) / draws


@pytest.mark.parametrize(("method", "lr"), [("dm", 1.0), ("hdd", 0.1), ("ncfm", 0.003)])
def test_loss_decreases(sampler: TensorSampler, method: str, lr: float) -> None:
    """A few steps lower each method's loss, measured on the same fixed draws before and after."""
    from ddcore.distill.init import initial_images

    extra = {"init": "real", "ncfm": {"num_freqs": 64, "factor": 1}} if method == "ncfm" else {}
    cfg = tiny(method, iterations=25, checkpoint_every=0, lr_img=lr, **extra)
    init = initial_images(sampler, ipc=2, init=cfg.init, seed=cfg.seed)
    final = distill(sampler, cfg).images
    if method == "ncfm":  # NCFM optimises pixels in [0, 1]
        init, final = (init * 0.35 + 0.3).clamp(0, 1), (final * 0.35 + 0.3).clamp(0, 1)
    before, after = probe_loss(sampler, cfg, init), probe_loss(sampler, cfg, final)
    assert after < 0.9 * before, (before, after)


@pytest.mark.parametrize(("method", "where"), [("dm", "local"), ("hdd", "local"), ("ncfm", "local"),
                                               ("ncfm", "object store")])
def test_resume_equals_uninterrupted(sampler: TensorSampler, method: str, where: str, tmp_path: Path) -> None:
    """Stopping after 2 iterations and resuming from the checkpoint gives bit-identical images, with the
    checkpoint in a local folder or under an fsspec URL (``memory://`` standing in for an object store: what a
    stage re-run on another node reads)."""
    import fsspec

    cfg = tiny(method)
    full = distill(sampler, cfg)
    ck = str(tmp_path) if where == "local" else f"memory://resume-{tmp_path.name}/_checkpoints/distill/k"
    try:
        distill(sampler, cfg, checkpoint_dir=ck, stop_after=2)
        if where != "local":
            saved = fsspec.filesystem("memory").ls(ck.split("://")[1], detail=False)
            assert [p.rsplit("/", 1)[1] for p in saved] == ["loop.pt"]
        resumed = distill(sampler, cfg, checkpoint_dir=ck)
    finally:
        if where != "local":
            fsspec.filesystem("memory").rm(f"/resume-{tmp_path.name}", recursive=True)
    assert torch.equal(full.images, resumed.images)
    assert full.extra["loss_history"] == resumed.extra["loss_history"]


def test_class_chunks_give_the_same_gradients(sampler: TensorSampler) -> None:
    """Per-class forward passes (class_chunk=1) reproduce the all-classes-in-one-pass result."""
    a = distill(sampler, tiny("dm", checkpoint_every=0))
    b = distill(sampler, tiny("dm", checkpoint_every=0, class_chunk=1))
    torch.testing.assert_close(a.images, b.images, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("method", "extra"), [("dm", {}), ("hdd", {"lr_img": 0.1}),
                                               ("ncfm", {"init": "real", "ncfm": {"num_freqs": 64, "factor": 1}})])
def test_class_groups_merge_to_the_single_run(sampler: TensorSampler, method: str, extra: dict) -> None:
    """Distilling class groups {0}, {1, 2} separately and merging gives the single run's images
    (every class draws from its own stream; the losses are sums over classes)."""
    from ddcore.distill.merge import group_configs, is_exact_split, merge_class_groups

    cfg = tiny(method, checkpoint_every=0, **extra)
    assert is_exact_split(cfg)
    whole = distill(sampler, cfg)
    parts = [distill(sampler, c) for c in group_configs(cfg, 3, 2)]
    assert [sorted(set(p.labels.tolist())) for p in parts] == [[0, 1], [2]]
    merged = merge_class_groups(parts)
    assert torch.equal(merged.labels, whole.labels)
    torch.testing.assert_close(merged.images, whole.images, rtol=1e-4, atol=1e-5)
    assert merged.config == whole.config
    for (i, a), (j, b) in zip(merged.extra["loss_history"], whole.extra["loss_history"], strict=True):
        assert i == j and a == pytest.approx(b, rel=1e-4)


def test_merge_refuses_overlapping_or_missing_groups(sampler: TensorSampler) -> None:
    """Parts that overlap or leave a class out are refused with one line."""
    from ddcore.distill.merge import merge_class_groups

    cfg = tiny("dm", iterations=1, checkpoint_every=0)
    a = distill(sampler, cfg.model_copy(update={"classes": (0, 1)}))
    b = distill(sampler, cfg.model_copy(update={"classes": (1, 2)}))
    with pytest.raises(DataError, match="cover classes 0..2 once each"):
        merge_class_groups([a, b])
    with pytest.raises(DataError, match="cover"):
        merge_class_groups([a])


def test_same_seed_same_result_other_seed_differs(sampler: TensorSampler) -> None:
    """The seed determines the run: equal seeds give equal images, another seed other images."""
    a, b = distill(sampler, tiny("hdd")), distill(sampler, tiny("hdd"))
    c = distill(sampler, tiny("hdd", seed=1))
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert a.seeds == {"distill": 0}


def test_nan_stops_with_iteration_and_checkpoint(sampler: TensorSampler, tmp_path: Path) -> None:
    """A diverging run stops with one line naming the iteration and the last good checkpoint."""
    cfg = tiny("dm", lr_img=1e38, iterations=50, checkpoint_every=1)
    with pytest.raises(DistillationError) as exc:
        distill(sampler, cfg, checkpoint_dir=tmp_path)
    msg = str(exc.value)
    assert "at iteration" in msg and str(tmp_path) in msg and "\n" not in msg


def test_ipc_larger_than_class(sampler: TensorSampler) -> None:
    """IPC above a class's sample count is refused with the counts and the fix."""
    with pytest.raises(DataError, match="lower ipc"):
        distill(sampler, tiny("dm", ipc=21))
    with pytest.raises(DataError):
        select_baseline(sampler, BaselineConfig(method="random", ipc=21))


def test_unknown_method_and_network(sampler: TensorSampler) -> None:
    """Unknown method names and network names are one-line config errors."""
    with pytest.raises(ConfigError, match="method"):
        StageConfig.from_mapping.__func__(DistillConfig, {"method": "mtt"})
    with pytest.raises(ConfigError, match="unknown network"):
        StageConfig.from_mapping.__func__(DistillConfig, {"method": "dm", "network": "transformer"})


def test_random_baseline_is_seeded(sampler: TensorSampler) -> None:
    """The random subset is ipc distinct real images per class, fixed by its seed."""
    a = select_baseline(sampler, BaselineConfig(method="random", ipc=3, seed=4))
    b = select_baseline(sampler, BaselineConfig(method="random", ipc=3, seed=4))
    c = select_baseline(sampler, BaselineConfig(method="random", ipc=3, seed=5))
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert a.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(len(set(p)) == 3 for p in a.extra["positions"])


def test_herding_tracks_the_mean_better_than_random() -> None:
    """Herding's chosen mean is closer to the full mean than a random subset's (same size)."""
    g = torch.Generator().manual_seed(0)
    f = torch.randn(200, 8, generator=g) * torch.linspace(0.5, 3, 8)
    h = herding_order(f, 10)
    r = torch.randperm(200, generator=g)[:10]
    mu = f.mean(0)
    assert len(set(h.tolist())) == 10
    assert (f[h].mean(0) - mu).norm() < (f[r].mean(0) - mu).norm()


def test_herding_baseline_runs(sampler: TensorSampler) -> None:
    """Herding returns ipc images per class with their positions recorded."""
    out = select_baseline(sampler, BaselineConfig(method="herding", ipc=2, width=8))
    assert out.images.shape == (6, 1, 28, 28) and out.method == "herding"


def test_prune_real_keeps_exact_fraction(sampler: TensorSampler) -> None:
    """Pruning the real set keeps exactly round(0.2 * 20) = 4 samples per class."""
    keep = prune_real(sampler, PruneConfig(fraction=0.2, width=8))
    assert [len(k) for k in keep] == [4, 4, 4]


def test_prune_synthetic_ipc50_to_10(sampler: TensorSampler) -> None:
    """Pruning a synthetic set at 20% turns IPC 5 into IPC 1 and records the kept keys."""
    big = select_baseline(sampler, BaselineConfig(method="random", ipc=5))
    small = prune_synthetic(big, PruneConfig(fraction=0.2, width=8))
    assert small.labels.tolist() == [0, 1, 2] and len(small.extra["kept_keys"]) == 3
    assert small.method == "random+prune"


@pytest.mark.parametrize("grad", [False, True])
def test_fast_embed_matches_embed(grad: bool) -> None:
    """The channels_last / in-place-ReLU embedding gives the same features as net.embed."""
    from ddcore.nets.fast import fast_embed, prepare
    from ddcore.nets.registry import build_network

    net = build_network("convnet", channels=1, num_classes=3, image_size=28, seed=0, width=16)
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    ref = net.embed(x)
    prepare(net)
    with torch.set_grad_enabled(grad):
        out = fast_embed(net, x.requires_grad_(grad))
    torch.testing.assert_close(out, ref.detach() if not grad else ref, rtol=1e-5, atol=1e-5)
