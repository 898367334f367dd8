"""Method options: NCFM defaults and switches, class chunks, batch norm, Siamese batches, pool blending."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import band_sampler

from ddcore.augment.dsa import draw_params
from ddcore.distill.batches import siamese_batches
from ddcore.distill.config import NCFM_DEFAULTS, DistillConfig
from ddcore.distill.loop import distill
from ddcore.distill.pool import train_pool
from ddcore.errors import ConfigError
from ddcore.nets.registry import build_network
from ddcore.prune.core import PruneConfig
from ddcore.sampling import TensorSampler
from ddcore.seeding import IterationRng

MEAN, STD = (0.3,), (0.35,)


@pytest.fixture
def sampler() -> TensorSampler:
    """Three classes of 12 structured 1x28x28 images (class = bright band position)."""
    return band_sampler(12, seed=1)


def ncfm(**kw: object) -> DistillConfig:
    base: dict = dict(method="ncfm", ipc=2, iterations=3, width=16, batch_real=8, checkpoint_every=0, lr_img=0.01,
                      init="real", ncfm={"num_freqs": 32})
    for key, value in kw.items():
        base[key] = {**base[key], **value} if key == "ncfm" else value  # type: ignore[dict-item]
    return DistillConfig.model_validate(base)


def test_ncfm_unset_keys_take_ncfm_reference_values() -> None:
    """An ncfm config with only its method gets AdamW lr 1e-3, 1024 real per class, mix init, factor 2,
    and no calibration (no pool); DM keeps the DM defaults."""
    cfg = DistillConfig.model_validate({"method": "ncfm"})
    assert (cfg.lr_img, cfg.batch_real, cfg.init, cfg.ncfm.factor) == (1e-3, 1024, "mix", 2)
    assert {k: getattr(cfg, k) for k in NCFM_DEFAULTS} == NCFM_DEFAULTS
    assert cfg.ncfm.calibration_weight == 0.0
    assert DistillConfig.model_validate({"method": "dm"}).lr_img == 1.0
    assert DistillConfig.reference("ncfm") == cfg


def test_ncfm_factor_follows_init_and_real_mosaics_are_refused() -> None:
    """init real without a factor stores whole images (factor 1); an explicit factor 2 with real init
    (each real image cut into four) is refused with one line naming both fixes."""
    assert DistillConfig.model_validate({"method": "ncfm", "init": "real"}).ncfm.factor == 1
    assert DistillConfig.model_validate({"method": "ncfm", "init": "noise"}).ncfm.factor == 1
    with pytest.raises(ConfigError, match="init: mix or ncfm.factor: 1"):
        DistillConfig.from_mapping({"method": "ncfm", "init": "real", "ncfm": {"factor": 2}})


def test_ncfm_calibration_needs_a_pool() -> None:
    """Calibration weight defaults to 1 with a pool and 0 without; asking for it without a pool is refused."""
    assert ncfm(ncfm={"pool": {"num_models": 2}}).ncfm.calibration_weight == 1.0
    with pytest.raises(ConfigError, match="needs the pretrained pool"):
        DistillConfig.from_mapping({"method": "ncfm", "ncfm": {"calibration_weight": 1.0}})


def test_batch_norm_networks_need_per_class_passes() -> None:
    """A batch-norm network in a batched pass would mix classes: refused unless class_chunk is 1."""
    with pytest.raises(ConfigError, match="class_chunk: 1"):
        DistillConfig.from_mapping({"method": "dm", "network": "convnet-bn"})
    assert DistillConfig.model_validate({"method": "dm", "network": "convnet-bn", "class_chunk": 1}).class_chunk == 1


def test_origin_pruning_with_clamp_is_refused() -> None:
    """Pruning by distance to the origin needs the unclamped map (the clamp puts points at one radius)."""
    with pytest.raises(ConfigError, match="clamp_radius: null"):
        PruneConfig.from_mapping({"reference": "origin"})
    assert PruneConfig.model_validate({"reference": "origin", "clamp_radius": None}).reference == "origin"


@pytest.mark.parametrize("extra", [{}, {"ncfm": {"sampling_net": True}}, {"init": "mix", "ncfm": {"factor": 2}}],
                         ids=["gaussian", "psi", "mosaics"])
def test_ncfm_class_chunks_give_the_single_pass_result(sampler: TensorSampler, extra: dict) -> None:
    """NCFM's loss is a sum over classes: one pass per class gives the images (and ψ) of one pass for all."""
    a = distill(sampler, ncfm(**extra))
    b = distill(sampler, ncfm(class_chunk=1, **extra))
    # AdamW divides by sqrt(v): float-rounding differences of near-zero gradients grow to ~5e-5
    torch.testing.assert_close(a.images, b.images, rtol=1e-4, atol=1e-4)
    for (i, la), (j, lb) in zip(a.extra["loss_history"], b.extra["loss_history"], strict=True):
        assert i == j and la == pytest.approx(lb, rel=1e-4)


def test_batch_norm_per_class_run_distils(sampler: TensorSampler) -> None:
    """DM through a batch-norm ConvNet with per-class passes runs and moves the images."""
    cfg = DistillConfig.model_validate(dict(method="dm", ipc=2, iterations=3, width=16, batch_real=8,
                                            checkpoint_every=0, network="convnet-bn", class_chunk=1))
    from ddcore.distill.init import initial_images

    out = distill(sampler, cfg)
    assert not torch.allclose(out.images, initial_images(sampler, ipc=2, init="real", seed=0))


def test_siamese_batches_transform_real_and_synthetic_alike() -> None:
    """Each class's real batch and synthetic images get the same augmentation draw: with every image of a
    class equal to its synthetic image, all augmented rows of that class are equal."""
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(3, 1, 16, 16, generator=g)
    x = protos.repeat_interleave(5, dim=0)
    y = torch.arange(3).repeat_interleave(5)
    s = TensorSampler(x, y, 3, MEAN, STD)
    syn, labels = protos.repeat_interleave(2, dim=0), torch.arange(3).repeat_interleave(2)
    for siamese in (True, False):
        def draw(n: int, shape: tuple[int, ...], gen: torch.Generator, siamese: bool = siamese):
            return draw_params("crop_rotate_scale", batch=n, image_shape=shape, generator=gen, siamese=siamese)

        b = siamese_batches(s, [0, 1, 2], syn, labels, batch_real=2, draw=draw, rng=IterationRng(3, 0),
                            device=torch.device("cpu"))
        same = all(torch.allclose(b.real[b.real_labels == c][i], b.syn[b.syn_labels == c][j], atol=1e-6)
                   for c in range(3) for i in range(2) for j in range(2))
        assert same is siamese  # per-sample draws (the control) do differ


def test_siamese_batches_label_rows_chunk_locally_and_refuse_a_missing_class() -> None:
    """The batch's labels are chunk-local (the i-th class of the chunk is i, on both sides, each class present),
    the synthetic rows of class c are syn's rows labelled c; a class with no synthetic image is one clear error."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4 * 5, 1, 8, 8, generator=g)
    s = TensorSampler(x, torch.arange(4).repeat_interleave(5), 4, MEAN, STD)
    syn, labels = torch.randn(8, 1, 8, 8, generator=g), torch.tensor([3, 1, 3, 1, 0, 0, 2, 2])

    def draw(n: int, shape: tuple[int, ...], gen: torch.Generator):
        return draw_params("none", batch=n, image_shape=shape, generator=gen, siamese=True)

    b = siamese_batches(s, [1, 3], syn, labels, batch_real=3, draw=draw, rng=IterationRng(0, 0),
                        device=torch.device("cpu"))
    assert b.real_labels.tolist() == [0, 0, 0, 1, 1, 1] and b.syn_labels.tolist() == [0, 0, 1, 1]
    assert torch.equal(b.syn, torch.cat([syn[[1, 3]], syn[[0, 2]]]))
    with pytest.raises(ValueError, match="class 3 has 3 real and 0 synthetic"):
        siamese_batches(s, [3], syn, torch.zeros(8, dtype=torch.int64), batch_real=3, draw=draw,
                        rng=IterationRng(0, 0), device=torch.device("cpu"))


def test_pool_blend_is_linear_in_init_and_final_weights(sampler: TensorSampler) -> None:
    """blend_into loads l·θ_init + (1−l)·θ_final: l = 1 is the initial net, l = 0 the trained one."""
    pool = train_pool(sampler, num_models=1, epochs=1, lr=0.01, batch_size=12, seed=0, network="convnet",
                      width=8, depth=None, device=torch.device("cpu"))
    init, final = pool.members[0]
    net = build_network("convnet", channels=1, num_classes=3, image_size=28, seed=9, width=8)
    key = next(k for k, v in final.items() if v.is_floating_point() and not torch.equal(v, init[k]))
    for lam in (0.0, 0.3, 1.0):
        pool.blend_into(net, 0, lam)
        torch.testing.assert_close(net.state_dict()[key], lam * init[key] + (1 - lam) * final[key])


def test_ncfm_calibration_lowers_the_pool_models_cross_entropy(sampler: TensorSampler) -> None:
    """With a pool, the CE calibration step runs (reported) and leaves the synthetic set with a lower
    cross-entropy under the pool's trained model than the same run without calibration."""
    pool_opts = {"num_models": 1, "epochs": 2, "batch_size": 12}
    on = ncfm(iterations=6, ncfm={"pool": pool_opts, "calibration_weight": 1.0})
    off = ncfm(iterations=6, ncfm={"pool": pool_opts, "calibration_weight": 0.0})
    pool = train_pool(sampler, num_models=1, epochs=2, lr=0.01, batch_size=12, seed=0, network="convnet",
                      width=16, depth=None, device=torch.device("cpu"))
    model = pool.final_model(0, torch.device("cpu"))
    seen: list[dict] = []
    a = distill(sampler, on, pool=pool, log=lambda i, m: seen.append(m))
    b = distill(sampler, off, pool=pool)
    assert all("calibration" in m for m in seen)
    with torch.no_grad():
        ce = [float(F.cross_entropy(model(s.images), s.labels)) for s in (a, b)]
    assert ce[0] < ce[1], ce


def test_checkpoint_of_another_config_is_ignored_with_a_warning(sampler: TensorSampler, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A checkpoint written under another config is not resumed from: a warning names it and the run
    equals a fresh one."""
    cfg = DistillConfig.model_validate(dict(method="dm", ipc=2, iterations=4, width=16, batch_real=8,
                                            checkpoint_every=2))
    distill(sampler, cfg.model_copy(update={"seed": 5}), checkpoint_dir=tmp_path, stop_after=2)
    with caplog.at_level(logging.WARNING, logger="ddcore.distill.loop"):
        out = distill(sampler, cfg, checkpoint_dir=tmp_path)
    assert "written by another config" in caplog.text
    assert torch.equal(out.images, distill(sampler, cfg).images)

